"""Write the domain refresh deployments of ``prefect.yaml`` from ``tableau_domains.yaml``.

A domain is added in one place, the domain configuration; this command regenerates its deployment::

    python -m deployments.domains           # rewrite the generated section of prefect.yaml
    python -m deployments.domains --check   # exit 1 if prefect.yaml is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from deployments.triggers import upstream_trigger_spec
from tasks.tableau.domains import Domain, domains_file, load_domains

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
BEGIN = "  # BEGIN domain deployments: generated from tableau_domains.yaml by `python -m deployments.domains`"
END = "  # END domain deployments"


def deployment_spec(domain: Domain) -> dict[str, Any]:
    """The ``prefect.yaml`` entry of ``domain``'s deployment, less the shared ``*refresh`` keys
    (entrypoint, work pool, ``concurrency_limit: 1``): upstream trigger, cron fallback (UTC), tags."""
    spec: dict[str, Any] = {
        "name": domain.name,
        "description": (
            f"Refresh the Tableau content of the {domain.name} domain after {domain.upstream.flow} completes."
        ),
        "tags": ["tableau", f"domain-{domain.name}"],
        "parameters": {"domain": domain.name},
    }
    if domain.cron:
        spec["schedules"] = [{"cron": domain.cron, "timezone": "UTC"}]
    spec["triggers"] = [upstream_trigger_spec(domain)]
    return spec


def render(domains: dict[str, Domain]) -> str:
    """The generated section: the markers and one ``- <<: *refresh`` entry per domain, in file order."""
    entries = []
    for domain in domains.values():
        body = yaml.safe_dump(deployment_spec(domain), sort_keys=False, width=110, allow_unicode=True)
        entries.append("  - <<: *refresh\n" + "".join(f"    {line}\n" for line in body.splitlines()))
    return "\n".join([BEGIN, "\n".join(entries).rstrip("\n"), END])


def updated(text: str, domains: dict[str, Domain]) -> str:
    """``text`` (prefect.yaml) with its generated section replaced.

    Raises:
        ValueError: the markers are missing, so the section cannot be placed.
    """
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(
            f"prefect.yaml has no generated section: put the lines {BEGIN.strip()!r} and {END.strip()!r} "
            "under 'deployments:' where the domain deployments belong"
        )
    return text[:start] + render(domains) + text[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.domains", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if prefect.yaml is stale"
    )
    parser.add_argument("--config", default=None, help="domain configuration (default: tableau_domains.yaml)")
    parser.add_argument("--prefect-yaml", type=Path, default=PREFECT_YAML)
    args = parser.parse_args(argv)

    domains = load_domains(args.config)
    text = args.prefect_yaml.read_text()
    new = updated(text, domains)
    if new == text:
        print(f"{args.prefect_yaml.name}: the deployments of {len(domains)} domain(s) are up to date")
        return 0
    if args.check:
        print(
            f"{args.prefect_yaml.name} is out of date with {domains_file(args.config)}: "
            "run `python -m deployments.domains`",
            file=sys.stderr,
        )
        return 1
    args.prefect_yaml.write_text(new)
    print(
        f"{args.prefect_yaml.name}: wrote the deployments of {len(domains)} domain(s): {', '.join(domains)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
