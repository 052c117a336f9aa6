"""Write the domain refresh deployments of ``prefect.yaml`` from ``tableau_domains.yaml``.

A domain is added in one place, the domain configuration; this command regenerates its deployment::

    python -m deployments.domains           # rewrite the generated section of prefect.yaml
    python -m deployments.domains --check   # exit 1 if prefect.yaml is out of date (the tests run this)
"""

from __future__ import annotations

import sys
from typing import Any

from deployments.generated import PREFECT_YAML, GeneratedSection
from deployments.triggers import trigger_specs
from tasks.tableau.domains import Domain, domains_file, load_domains

SECTION = GeneratedSection(
    what="domain",
    noun="domain",
    config_name="tableau_domains.yaml",
    command="python -m deployments.domains",
    anchor="refresh",
)
BEGIN, END = SECTION.begin, SECTION.end
__all__ = ["BEGIN", "END", "PREFECT_YAML", "SECTION", "deployment_spec", "main", "render", "updated"]


def deployment_spec(domain: Domain) -> dict[str, Any]:
    """The ``prefect.yaml`` entry of ``domain``'s deployment, less the shared ``*refresh`` keys
    (entrypoint, work pool, ``concurrency_limit: 1``): its triggers (upstream completion, and its
    tables' debounced materializations for a domain with ``upstream_tables``:
    ``deployments.triggers.trigger_specs``), cron fallback (UTC), tags."""
    starts = []
    if domain.upstream is not None:
        starts.append(f"after {domain.upstream.flow} completes")
    if domain.upstream_tables:
        starts.append(
            f"{domain.debounce_seconds:g} s after the last materialization of its "
            f"{len(domain.upstream_tables)} upstream table(s)"
        )
    spec: dict[str, Any] = {
        "name": domain.name,
        "description": f"Refresh the Tableau content of the {domain.name} domain {' and '.join(starts)}.",
        "tags": ["tableau", f"domain-{domain.name}"],
        "parameters": {"domain": domain.name},
    }
    if domain.cron:
        spec["schedules"] = [{"cron": domain.cron, "timezone": "UTC"}]
    spec["triggers"] = trigger_specs(domain)
    return spec


def render(domains: dict[str, Domain]) -> str:
    """The generated section: the markers and one ``- <<: *refresh`` entry per domain, in file order."""
    return SECTION.render(deployment_spec(domain) for domain in domains.values())


def updated(text: str, domains: dict[str, Domain]) -> str:
    """``text`` (prefect.yaml) with its generated section replaced.

    Raises:
        ValueError: the markers are missing, so the section cannot be placed.
    """
    return SECTION.updated(text, [deployment_spec(domain) for domain in domains.values()])


def main(argv: list[str] | None = None) -> int:
    """``python -m deployments.domains [--check] [--config FILE] [--prefect-yaml FILE]``: 0 when the
    section is up to date or was rewritten, 1 when ``--check`` finds it stale.

    Raises:
        DomainConfigError: the domain configuration is not valid.
        ValueError: prefect.yaml has no generated section.
    """
    return SECTION.main(
        argv,
        description=__doc__.splitlines()[0],
        load=load_domains,
        config_file=domains_file,
        spec=deployment_spec,
    )


if __name__ == "__main__":
    sys.exit(main())
