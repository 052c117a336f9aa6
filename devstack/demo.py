"""``make demo``: Tableau refreshes through a 3-PAT pool, then the weekly CRM export of 200,000 users.

Starts ``prefect server start`` (SQLite, filesystem lease storage) and the Tableau REST stand-in
seeded from ``tableau_domains.yaml``; creates the blocks and global concurrency limits of a
3-PAT pool; serves the domain refresh deployments (``devstack.serve_domains``); runs each
domain's stand-in upstream pipeline, which materializes its tables (``@materialize``) and whose
completion triggers that domain's deployment — but the lineage domain's (``marketing``: content from
the stand-in's Metadata API lineage), which its tables' materializations start, debounced; waits
for every refresh run; prints a summary, and what the lineage domain refreshed and why; then runs the CRM export on the local launcher into the
CRM stand-in (``devstack.demo_crm``) and prints its summary; then collects Athena metadata from
moto's server into its S3 landing directory, twice (``devstack.demo_metadata``); stops everything
it started. The Tableau collector runs during the refreshes, on a PAT from the same pool, and
lands its files in Azurite.

Set ``DEMO_HOLD=1`` to keep the stack up (for the Prefect UI) until Ctrl+C.

Prefect reads its settings when first imported, so this module imports Prefect (and the project's
flows) only inside functions, after ``main`` has pointed ``PREFECT_API_URL`` at the demo server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx

from devstack.demo_crm import run_crm_export
from devstack.demo_metadata import print_tableau_collection, run_athena_collector, start_tableau_collector
from devstack.demo_tableau import (
    LINEAGE_DOMAIN,
    connected_app_seed,
    create_connected_app,
    lineage_seed,
    pipelines,
    print_lineage_domain,
    print_progress,
)
from devstack.prefect_server import PrefectServer

PATS = ["tableau-pat-1", "tableau-pat-2", "tableau-pat-3"]
POOL_BLOCK = "tableau-pat-pool"
SITE = "analytics"
TIME_SCALE = 120  # one real second is two simulated minutes: 5-15 min refreshes take 2.5-7.5 s
FAILING = ("finance", "Payroll", "ODBC error: login failed for user 'tableau_svc' (password expired)")
POLL_POLICY = {"initial_interval": 0.5, "max_interval": 2.0, "backoff": 1.5, "rate_limit_default_wait": 1.0}
RUN_TIMEOUT_SECONDS = 600


def stand_in_seed(domains: dict) -> dict:
    """The stand-in's seed: every configured content, plus look-alikes in other projects; the lineage
    domain's content and its lineage to the domain's tables (``devstack.demo_tableau.lineage_seed``)."""
    datasources, workbooks = [], []
    lineage_domain = domains.get(LINEAGE_DOMAIN)
    lineage = lineage_seed(lineage_domain) if lineage_domain and lineage_domain.upstream_tables else {}
    datasources += lineage.get("datasources", [])
    workbooks += lineage.get("workbooks", [])
    for domain in domains.values():
        for content in domain.datasources:
            entry = {"project": content.project, "name": content.name, "duration_seconds": [300, 900]}
            if (domain.name, content.name) == FAILING[:2]:
                entry["fail_notes"] = FAILING[2]
            datasources.append(entry)
        workbooks += [
            {"project": c.project, "name": c.name, "duration_seconds": [120, 300]} for c in domain.workbooks
        ]
    # Same names in another project: resolution must go by (project, name).
    datasources += [{"project": "Sales Archive", "name": "Orders", "duration_seconds": 600}]
    projects = sorted({c["project"] for c in datasources + workbooks})
    return {
        "site_content_url": SITE,
        "seed": 7,
        "time_scale": TIME_SCALE,
        "backgrounder_slots": 4,
        "refresh_rate_limit": {"max_requests": 20, "per_seconds": 10, "retry_after_seconds": 2},
        "pats": [{"name": pat, "secret": f"demo-secret-{pat}"} for pat in PATS],
        **connected_app_seed(),
        "projects": projects,
        "datasources": datasources,
        "workbooks": workbooks,
        **({"metadata_api": lineage["metadata_api"]} if lineage else {}),
    }


def start_tableau(workdir: Path, seed: dict, stack: ExitStack) -> str:
    config, url_file = workdir / "tableau-seed.json", workdir / "tableau.url"
    config.write_text(json.dumps(seed, indent=2))
    argv = [sys.executable, "-m", "devstack.tableau", "--config", str(config), "--port", "0"]
    process = start_process([*argv, "--url-file", str(url_file)], workdir / "tableau.log", stack)
    deadline = time.monotonic() + 30
    while not url_file.exists() or not url_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Tableau stand-in did not start; see {workdir / 'tableau.log'}")
        time.sleep(0.1)
    return url_file.read_text().strip()


def start_process(argv: list[str], log_path: Path, stack: ExitStack) -> subprocess.Popen:
    """Start ``argv`` in a process group of its own, its output in ``log_path``; ``stack`` stops the
    whole group (the process and whatever it started, e.g. the flow runs ``serve`` spawns)."""
    log = stack.enter_context(open(log_path, "wb"))
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack.callback(stop_process_group, process)
    return process


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the process's group, SIGKILL after ``timeout`` seconds; nothing if it is gone."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def create_blocks_and_limits(tableau_url: str) -> None:
    from blocks.tableau import TableauSite
    from devstack.pat_pool import save_pat_pool

    # Saving a block registers its type; `prefect block register -m blocks` is for the UI's forms.
    site = TableauSite(server_url=tableau_url, site_content_url=SITE)
    pats = {pat: (pat, f"demo-secret-{pat}") for pat in PATS}
    _, report = save_pat_pool(POOL_BLOCK, site, pats, lease_duration_seconds=60)
    print("Global concurrency limits:", ", ".join(report.created + report.unchanged))


def wait_for_deployments(names: list[str], timeout: float = 120) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = {d.name for d in client.read_deployments()}
            automations = client.read_automations()
            if set(names) <= found and len(automations) >= len(names):
                return
            time.sleep(1)
    raise TimeoutError(f"deployments {names} (with their triggers) were not served within {timeout} s")


def run_upstreams(domains: dict) -> None:
    """Run the stand-in upstream pipelines at once: each materializes its tables (``@materialize``) and
    completes; the completions start the listed domains, the materializations the lineage domain."""
    from devstack.upstream import stand_in_pipeline

    flows = [stand_in_pipeline(name, seconds=2, tables=tables) for name, tables in pipelines(domains)]
    with ThreadPoolExecutor(len(flows)) as pool:
        list(pool.map(lambda p: p(), flows))


def wait_for_refresh_runs(domains: list[str], timeout: float) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["refresh-tableau-domain"]))
            )
            # The runs the upstreams' events started; the cron fallback's scheduled runs are not ours.
            by_domain = {
                r.parameters.get("domain"): r
                for r in runs
                if r.created_by and r.created_by.type == "AUTOMATION"
            }
            if set(domains) <= set(by_domain) and all(by_domain[d].state.is_final() for d in domains):
                return by_domain
            if time.monotonic() > deadline:
                states = {d: r.state_name for d, r in by_domain.items()}
                raise TimeoutError(f"refresh runs not finished within {timeout} s: {states}")
            time.sleep(2)


def _run_summary(run):
    """The ``DomainRefreshSummary`` a refresh run persisted (its result, or the one its
    ``DomainRefreshError`` carries), or the error text if there is none (e.g. the run crashed)."""
    try:
        result = run.state.result(raise_on_failure=False)
    except Exception as exc:
        return str(exc)
    return getattr(result, "summary", result) or str(result)


def summarize(runs: dict, audit: dict) -> bool:
    """Print the per-domain and pool summary; True when no credential token was invalidated."""
    print("\n=== Tableau refresh per domain ===")
    waits = []
    for domain, run in sorted(runs.items()):
        summary = _run_summary(run)
        elapsed = (run.end_time - run.start_time).total_seconds() if run.end_time and run.start_time else 0
        if isinstance(summary, str):
            print(f"{domain:<10} {run.state_name:<9} ✗ {run.state.message or summary}")
            continue
        rows = summary.refreshes
        ok = [r for r in rows if r.status == "succeeded"]
        durations = [r.duration_seconds for r in rows if r.duration_seconds is not None]
        waits.append(summary.lease_wait_seconds)
        print(
            f"{domain:<10} {run.state_name:<9} {len(ok)}/{len(rows)} refreshed in {elapsed:.0f} s wall "
            f"(Tableau job time {sum(durations) / 60:.0f} simulated min) via "
            f"{f'connected app {summary.connected_app}' if summary.connected_app else f'PAT {summary.pat}'}, "
            f"{summary.sign_ins} sign-in(s), lease wait {summary.lease_wait_seconds:.1f} s"
        )
        for row in summary.failed:
            print(f"           ✗ {row.kind} {row.project}/{row.content}: {row.status} — {row.notes}")
    invalidated = audit["invalidated_token_requests"]
    print("\n=== PAT pool ===")
    print(f"sign-ins per PAT:            {audit['sign_ins']}")
    print(f"lease waits (s):             {', '.join(f'{w:.1f}' for w in waits)}")
    print(f"429 answers (backed off):    {audit.get('rate_limited_requests', 0)}")
    print(f"max concurrent Tableau jobs: {audit['max_concurrent_jobs']}")
    print(
        f"401002 answers served:       {invalidated}  {'(no token was ever invalidated)' if invalidated == 0 else '<-- TOKENS INVALIDATED'}"
    )
    return invalidated == 0


def main() -> int:
    hold = os.environ.get("DEMO_HOLD") == "1"
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="analytics-flows-demo-")))
        print(f"Starting prefect server and the Tableau stand-in (work directory {workdir}) ...")
        server = stack.enter_context(PrefectServer(workdir / "prefect"))
        os.environ.update(server.client_env())
        from tasks.tableau.domains import load_domains  # imports Prefect: only now that the API URL is set

        domains = load_domains()
        tableau_url = start_tableau(workdir, stand_in_seed(domains), stack)
        print(
            f"Prefect API {server.api_url}; Tableau stand-in {tableau_url} (site '{SITE}', {len(PATS)} PATs)"
        )
        create_blocks_and_limits(tableau_url)
        print(create_connected_app(tableau_url, SITE))

        start_process(
            [sys.executable, "-m", "devstack.serve_domains", "--poll-policy", json.dumps(POLL_POLICY)],
            workdir / "serve.log",
            stack,
        )
        wait_for_deployments(list(domains))
        print(f"Serving deployments {sorted(domains)}; running their upstream pipelines ...")
        started = time.monotonic()
        collector = start_tableau_collector(workdir, stack, POOL_BLOCK)
        run_upstreams(domains)
        print(
            "Upstreams completed; their events trigger the refresh deployments (the lineage domain's once its "
            "tables' materializations are quiet). Waiting for the refreshes ..."
        )
        runs = wait_for_refresh_runs(list(domains), RUN_TIMEOUT_SECONDS)
        print(f"All domain runs ended {time.monotonic() - started:.0f} s after the upstreams started.")
        audit = httpx.get(f"{tableau_url}/devstack/audit").json()
        clean = summarize(runs, audit)
        one_run = print_lineage_domain(
            domains[LINEAGE_DOMAIN],
            runs[LINEAGE_DOMAIN],
            _run_summary(runs[LINEAGE_DOMAIN]),
            tableau_url,
            SITE,
        )
        clean = clean and one_run
        print_progress(runs)
        collected_tableau = print_tableau_collection(collector, RUN_TIMEOUT_SECONDS)
        audit = httpx.get(f"{tableau_url}/devstack/audit").json()
        print(f"401002 answers served, collector included: {audit['invalidated_token_requests']}")
        clean = clean and audit["invalidated_token_requests"] == 0
        exported = run_crm_export(workdir, stack)
        collected = run_athena_collector(workdir, stack)
        print(
            f"\nThe failed refresh of {FAILING[0]}/{FAILING[1]} is deliberate: its domain run fails and names it.\n"
            "To look around in the Prefect UI, run `DEMO_HOLD=1 make demo` and open the URL it prints:\n"
            "  - Runs: each refresh-<domain> run was started by its upstream's Completed event, and\n"
            f"    refresh-{LINEAGE_DOMAIN} by its tables' materializations, debounced (see Automations);\n"
            "  - Events: the prefect.asset.materialization.* events of the warehouse tables (athena://...)\n"
            "    and of the Tableau content (tableau://...), each with its upstream tables as related assets;\n"
            "  - Artifacts: tableau-refresh-<domain> tables (job id, status, queued/started/finished, notes);\n"
            "  - Concurrency: the tableau-pat-* global concurrency limits (one per PAT, and the pool);\n"
            "  - the crm-export runs and their crm-export artifact (records, batches, retries, dead letters);\n"
            "  - the collect-metadata runs, their metadata-athena-demo artifact and the hwm_athena-demo variable."
        )
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the in-process flow runs' logs, before the server stops
        if hold:
            print(f"\nPrefect UI: {server.ui_url}   (Ctrl+C stops the demo stack)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if clean and exported and collected and collected_tableau else 1


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds main()'s ExitStack: every server and process is stopped


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl+C: main()'s ExitStack has stopped everything on the way out
        sys.exit(128 + signal.SIGINT)
