"""Benchmark: how long a served domain refresh run takes from its start to its first Tableau request.

    python -m bench.tableau_start [--runs 6] [--repeat 1]

On a real ``prefect server start`` and the Tableau stand-in, it serves one ``refresh-tableau-domain``
deployment per domain with ``serve`` (each flow run is a subprocess, as a process worker runs it), then
starts one run alone and then ``--runs`` at once, on a pool with a PAT per run (so no run waits for a
PAT: the figures are start-up, not contention). For each run it prints, in seconds:

- start -> first request: from the flow run's start (it enters Running) to its sign-in, the first
  Tableau request (the site's API version is set, so no serverInfo call comes first);
- "Beginning flow run" -> first request: from that log line (written once the flow is loaded);
- spawn -> start: from the runner submitting the run (Pending) to its start: the subprocess and imports.

Targets: start -> first request <= 3 s for one run alone and <= 10 s for six at once (2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import requests
import yaml

from devstack.prefect_server import PrefectServer

SITE = "bench"
ROOT = Path(__file__).resolve().parents[1]
SERVE = """
import json, sys
from prefect import serve
from flows.tableau.refresh import refresh_domain
names, config, policy = sys.argv[1].split(","), sys.argv[2], json.loads(sys.argv[3])
serve(*[refresh_domain.to_deployment(name=n, parameters={"domain": n, "config_path": config, "poll_policy": policy})
        for n in names], limit=len(names), print_starting_message=False)
"""


def setup(url: str, runs: int, tmp: Path) -> tuple[list[str], str]:
    """PAT blocks, the pool and its limits, and a domain configuration: domain -> one data source."""
    from blocks import TableauSite
    from devstack.pat_pool import save_pat_pool

    save_pat_pool(
        "bench-start-pool",
        TableauSite(server_url=url, site_content_url=SITE, api_version="3.29"),
        {f"bench-pat-{i}": (f"pat-{i}", f"secret-{i}") for i in range(runs)},
        fix=True,
        concurrency_limit_prefix="bench-start",
        lease_duration_seconds=60,
    )
    domains = [f"start-{i}" for i in range(runs)]
    config = tmp / "domains.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "defaults": {"pat_pool_block": "bench-start-pool", "timeout_seconds": 600},
                "domains": {
                    d: {
                        "upstream": {"flow": f"{d}-pipeline"},
                        "datasources": [{"project": "Bench", "name": d}],
                    }
                    for d in domains
                },
            }
        )
    )
    return domains, str(config)


def beginning_logged_at(client, run_id, timeout_seconds: float = 60) -> float:
    """When the run logged "Beginning flow run" (unix seconds). A run's logs reach the API in batches
    after its state does, later still on a busy machine: wait for the line."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
    deadline = time.monotonic() + timeout_seconds
    while True:
        logs = client.read_logs(log_filter=log_filter)
        times = [log.timestamp.timestamp() for log in logs if log.message.startswith("Beginning flow run")]
        if times:
            return min(times)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f'flow run {run_id}: no "Beginning flow run" log line within {timeout_seconds:.0f} s'
            )
        time.sleep(0.5)


def run_batch(domains: list[str], audit_url: str) -> list[dict[str, float]]:
    """Start one run per domain at once; wait for all; each run's figures (seconds)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments() if d.name in domains}
        ids = [client.create_flow_run_from_deployment(deployments[d].id).id for d in domains]
        deadline = time.monotonic() + 600
        while True:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
            if len(runs) == len(ids) and all(r.state.is_final() for r in runs):
                break
            if time.monotonic() > deadline:
                raise TimeoutError({r.name: r.state_name for r in runs})
            time.sleep(0.5)
        audit = requests.get(audit_url, timeout=10).json()
        signed_in = {s["pat"]: s["signed_in_at"] for s in audit["sessions"]}
        figures = []
        for run in runs:
            if not run.state.is_completed():
                raise RuntimeError(f"{run.name} ended {run.state_name}: {run.state.message}")
            summary = run.state.result()
            first_request = signed_in[f"pat-{summary.pat.rsplit('-', 1)[1]}"]
            beginning = beginning_logged_at(client, run.id)
            states = client.read_flow_run_states(run.id)
            pending = min(s.timestamp.timestamp() for s in states if s.type.value == "PENDING")
            started = run.start_time.timestamp()
            figures.append(
                {
                    "start_to_request": first_request - started,
                    "beginning_to_request": first_request - beginning,
                    "spawn_to_start": started - pending,
                }
            )
    return figures


def show(label: str, figures: list[dict[str, float]], target: float) -> None:
    worst = max(f["start_to_request"] for f in figures)
    print(f"\n{label} ({len(figures)} run(s))")
    for key, text in (
        ("start_to_request", "start -> first Tableau request"),
        ("beginning_to_request", '"Beginning flow run" -> first request'),
        ("spawn_to_start", "spawn (Pending) -> start"),
    ):
        values = [f[key] for f in figures]
        print(f"  {text:<40} median {statistics.median(values):6.2f} s, max {max(values):6.2f} s")
    print(
        f"  target: start -> first request <= {target:g} s: {'met' if worst <= target else 'MISSED'} ({worst:.2f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tableau_start", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=6, help="runs started at once in the second batch")
    parser.add_argument("--repeat", type=int, default=1, help="batches of each kind")
    args = parser.parse_args(argv)

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-start-")))
        server = stack.enter_context(PrefectServer(tmp / "prefect"))
        os.environ.update(server.client_env())
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
        from devstack.tableau import TableauStandIn, load_config

        config = {
            "site_content_url": SITE,
            "time_scale": 600,
            "backgrounder_slots": args.runs,
            "pats": [{"name": f"pat-{i}", "secret": f"secret-{i}"} for i in range(args.runs)],
            "projects": ["Bench"],
            "datasources": [
                {"project": "Bench", "name": f"start-{i}", "duration_seconds": 60} for i in range(args.runs)
            ],
            "workbooks": [],
        }
        standin = stack.enter_context(TableauStandIn(load_config(config)))
        domains, domains_file = setup(standin.url, args.runs, tmp)
        policy = {"initial_interval": 0.1, "max_interval": 0.5}
        log = stack.enter_context(open(tmp / "serve.log", "wb"))
        serve = subprocess.Popen(
            [sys.executable, "-c", SERVE, ",".join(domains), domains_file, json.dumps(policy)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        stack.callback(lambda: (serve.terminate(), serve.wait(30)))
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while len([d for d in client.read_deployments() if d.name in domains]) < len(domains):
                if serve.poll() is not None:
                    raise RuntimeError(f"serve exited; see {tmp / 'serve.log'}")
                time.sleep(0.5)
        audit_url = f"{standin.url}/devstack/audit"
        print(f"Serving {len(domains)} deployments; python {sys.version.split()[0]}, {os.cpu_count()} cores")
        alone, together = [], []
        for _ in range(args.repeat):
            requests.post(f"{standin.url}/devstack/reset", timeout=10)
            alone += run_batch(domains[:1], audit_url)
            requests.post(f"{standin.url}/devstack/reset", timeout=10)
            together += run_batch(domains, audit_url)
        show("One run alone", alone, 3)
        show(f"{args.runs} runs at once", together, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
