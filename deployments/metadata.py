"""Write the metadata collection deployments of ``prefect.yaml`` from ``metadata_sources.yaml``.

A source is added in one place, the sources file; this command regenerates its deployment
``metadata-<source>`` (work pool ``metadata``, concurrency limit 1, the entry's ``schedule``)::

    python -m deployments.metadata           # rewrite the generated section of prefect.yaml
    python -m deployments.metadata --check   # exit 1 if prefect.yaml is out of date (the tests run this)
"""

from __future__ import annotations

import sys
from typing import Any

from deployments.generated import PREFECT_YAML, GeneratedSection
from tasks.metadata.sources import SourceConfig, load_sources, sources_file

SECTION = GeneratedSection(
    what="metadata",
    noun="source",
    config_name="metadata_sources.yaml",
    command="python -m deployments.metadata",
    anchor="collect",
)
BEGIN, END = SECTION.begin, SECTION.end
__all__ = ["BEGIN", "END", "PREFECT_YAML", "SECTION", "deployment_name", "deployment_spec", "main", "updated"]

#: What a deployment collects, by extractor kind (its description); another kind gets a generic one.
_COLLECTS = {
    "athena": "Athena and Glue metadata (new query history since the HWM)",
    "tableau": "Tableau metadata (through a PAT from the refresh pool)",
}


def deployment_name(source: str) -> str:
    """The name of ``source``'s deployment: ``metadata-<source>``."""
    return f"metadata-{source}"


def deployment_spec(source: SourceConfig) -> dict[str, Any]:
    """The ``prefect.yaml`` entry of ``source``'s deployment, less the shared ``*collect`` keys
    (entrypoint ``flows/metadata/collect.py:collect_metadata``, work pool ``metadata``,
    ``concurrency_limit: 1``): name, description, tags (``metadata`` and the extractor's kind), the
    ``source`` parameter and one cron schedule (``cron``, ``timezone``, ``active``: false deploys it
    paused) from the entry's ``schedule``."""
    kind = source.extractor.kind
    collects = _COLLECTS.get(kind, f"the {kind} metadata of the source {source.name}")
    schedule = source.schedule
    return {
        "name": deployment_name(source.name),
        "description": f"Collect {collects} to the landing directory.",
        "tags": ["metadata", kind],
        "parameters": {"source": source.name},
        "schedules": [{"cron": schedule.cron, "timezone": schedule.timezone, "active": schedule.active}],
    }


def updated(text: str, sources: dict[str, SourceConfig]) -> str:
    """``text`` (prefect.yaml) with its generated metadata section replaced: one ``- <<: *collect``
    entry per source, in file order.

    Raises:
        ValueError: the markers are missing, so the section cannot be placed.
    """
    return SECTION.updated(text, [deployment_spec(source) for source in sources.values()])


def main(argv: list[str] | None = None) -> int:
    """``python -m deployments.metadata [--check] [--config FILE] [--prefect-yaml FILE]``: 0 when the
    section is up to date or was rewritten, 1 when ``--check`` finds it stale (the message names the
    command to run).

    Raises:
        SourceConfigError: the sources file is not valid (e.g. a bad ``schedule``; the message names the
            line, the source and the key).
        ValueError: prefect.yaml has no generated metadata section.
    """
    return SECTION.main(
        argv,
        description=__doc__.splitlines()[0],
        load=load_sources,
        config_file=sources_file,
        spec=deployment_spec,
    )


if __name__ == "__main__":
    sys.exit(main())
