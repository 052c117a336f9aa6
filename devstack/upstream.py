"""Stand-in upstream pipelines: flows named like the domains' upstreams, which just complete.

In production a domain's upstream is the real pipeline (dbt, ingestion ...) whose completion
event triggers the domain's refresh deployment. The demo runs these instead.
"""

from __future__ import annotations

import time

from prefect import Flow, flow, get_run_logger


def stand_in_pipeline(flow_name: str, seconds: float = 2.0) -> Flow[[], None]:
    """A flow called ``flow_name`` that 'loads data' for ``seconds`` and completes."""

    @flow(name=flow_name)
    def pipeline() -> None:
        get_run_logger().info("Stand-in for %s: loading the domain's tables (%.0f s)", flow_name, seconds)
        time.sleep(seconds)

    return pipeline
