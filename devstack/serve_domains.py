"""Serve the domain refresh deployments from this machine, for the demo.

``python -m devstack.serve_domains [--poll-policy JSON]`` creates one deployment per domain of the
domain configuration, with the same event triggers and cron fallback as ``prefect.yaml``, and
serves them (a Prefect runner starts each triggered run as a subprocess) until terminated.
"""

from __future__ import annotations

import argparse
import json

from prefect import serve

from deployments.triggers import domain_triggers
from flows.tableau.refresh import refresh_domain
from tasks.tableau.domains import load_domains


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devstack.serve_domains")
    parser.add_argument("--poll-policy", default="{}", help="PollPolicy fields as JSON (seconds)")
    args = parser.parse_args(argv)
    extra = {"poll_policy": json.loads(args.poll_policy)} if args.poll_policy != "{}" else {}
    domains = load_domains()
    deployments = [
        refresh_domain.to_deployment(
            name=domain.name,
            parameters={"domain": domain.name, **extra},
            triggers=domain_triggers(domain, **extra),
            cron=domain.cron,
            tags=["tableau", f"domain-{domain.name}"],
            concurrency_limit=1,
        )
        for domain in domains.values()
    ]
    serve(*deployments, limit=len(deployments), print_starting_message=False)


if __name__ == "__main__":
    main()
