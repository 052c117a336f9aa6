"""Stand-in upstream pipelines: flows named like the domains' upstreams, which rebuild their tables.

In production a domain's upstream is the real pipeline (dbt, ingestion ...) whose completion event
triggers the domain's refresh deployment, and whose table materializations (``@materialize``, events
``prefect.asset.materialization.succeeded``) trigger a domain with ``upstream_tables``. The demo and
the tests run these instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prefect import Flow, flow, get_run_logger
from prefect.assets import materialize
from prefect.cache_policies import NO_CACHE


def _load(seconds: float) -> None:
    time.sleep(seconds)


def stand_in_pipeline(flow_name: str, seconds: float = 2.0, tables: Sequence[str] = ()) -> Flow[[], None]:
    """A flow called ``flow_name`` that 'loads data' for ``seconds`` and completes: with ``tables``
    (asset keys), one ``@materialize`` task per table, one after the other, sharing the time."""
    builds = [
        materialize(key, name=f"build-{key.rsplit('/', 1)[-1]}", by="stand-in", cache_policy=NO_CACHE)(_load)
        for key in tables
    ]

    @flow(name=flow_name)
    def pipeline() -> None:
        get_run_logger().info(
            "Stand-in for %s: loading the domain's tables (%.0f s)%s",
            flow_name,
            seconds,
            f": materializing {len(tables)} tables" if tables else "",
        )
        if not builds:
            time.sleep(seconds)
        for build in builds:
            build(seconds / len(builds))

    return pipeline
