"""docs/getting-started.md, run as a user types it: every ``bash`` block of the page, in order, in one
shell from the repository's root, in a fresh Prefect home and with the project's environment not yet
active (the page activates it). Then what the runs left is checked where a user would look: the
deployments on the server, the files in the landing bucket, the CRM stand-in's request count."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import httpx
import pytest

from devstack.prefect_server import free_port

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "getting-started.md"
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)
#: Variables of the test's own environment that a user's fresh shell would not have.
NOT_INHERITED = (
    "PREFECT_",
    "TABLEAU_",
    "METADATA_SOURCES_FILE",
    "ANALYTICS_FLOWS_DIR",
    "VIRTUAL_ENV",
    "AWS_",
)


def page_commands() -> str:
    """The page's ``bash`` blocks, joined in order."""
    blocks = BASH_BLOCK.findall(PAGE.read_text())
    assert len(blocks) >= 5, f"{PAGE.name} has {len(blocks)} bash blocks"
    return "\n".join(blocks)


def fresh_environment(tmp_path: Path, port: int) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    env = {name: value for name, value in os.environ.items() if not name.startswith(NOT_INHERITED)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_PORT": str(port),
        "TMPDIR": str(tmp_path),
    }


def read_env_file(path: Path) -> dict[str, str]:
    import shlex

    values = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        values[name] = shlex.split(value)[0]
    return values


def stop_group(process: subprocess.Popen, grace_seconds: float = 10) -> None:
    """SIGTERM to the shell's process group (the server, the stand-ins, the workers it started in the
    background), SIGKILL after ``grace_seconds``; returns once the group is gone (at most 10 s more).

    A worker started with ``&`` by a non-interactive shell ignores SIGINT (POSIX shells do so for
    background commands without job control), and Prefect's worker answers SIGTERM by sending SIGINT to
    its own process: there it never ends by itself. In a terminal, Ctrl-C stops it."""

    def alive() -> bool:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return False
        return True

    for sig, seconds in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10)):
        if not alive():
            return
        os.killpg(process.pid, sig)
        deadline = time.monotonic() + seconds
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)


def test_the_page_lists_the_steps_a_user_takes():
    commands = page_commands()
    for step in (
        "source .venv/bin/activate",
        "prefect server start",
        "prefect block register -m blocks",
        "python -m deployments.bootstrap --pool-block tableau-pat-pool",
        "prefect --no-prompt deploy --all",
        "prefect worker start --pool",
        "prefect deployment run refresh-tableau-domain/sales",
        "prefect deployment run collect-metadata/metadata-athena-prod",
        "--param dry_run=true",
    ):
        assert step in commands, step


@pytest.mark.end_to_end  # `make test-end-to-end`
@pytest.mark.slow(seconds=150)
def test_getting_started_runs_as_written(tmp_path: Path):
    port = free_port()
    script = "set -euo pipefail\n" + page_commands()
    log = tmp_path / "page.log"
    with open(log, "wb") as output:
        shell = subprocess.Popen(
            ["bash", "-c", script],
            cwd=ROOT,
            env=fresh_environment(tmp_path, port),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            code = shell.wait(timeout=900)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, f"the page's commands ended with {code}:\n{log.read_text()[-6000:]}"
        output = log.read_text()
        assert output.count("Flow run finished successfully in 'Completed'") == 3, output[-4000:]
        trial = read_env_file(tmp_path / "trial.env")
        check_deployments(f"http://127.0.0.1:{port}/api", ROOT)
        check_landing(trial)
        stats = httpx.get(f"{trial['HUBSPOT_URL']}/devstack/stats", timeout=10).json()
        assert stats["requests"] == 0 and stats["distinct_users"] == 0, stats  # the dry run sent nothing
    finally:
        stop_group(shell)
    # Whatever the page started is gone: no process is left in the shell's group.
    with pytest.raises(ProcessLookupError):
        os.killpg(shell.pid, 0)


def check_landing(trial: dict[str, str]) -> None:
    """The Athena collection landed its files in the landing bucket, beside its high-water mark."""
    s3 = boto3.client(
        "s3",
        endpoint_url=trial["AWS_TRIAL_ENDPOINT_URL"],
        region_name="eu-west-1",
        aws_access_key_id=trial["AWS_TRIAL_ACCESS_KEY_ID"],
        aws_secret_access_key=trial["AWS_TRIAL_SECRET_ACCESS_KEY"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="catalog-landing").get("Contents", [])]
    assert any(key.startswith("athena/landing/") for key in keys), keys


def check_deployments(api_url: str, root: Path) -> None:
    """What `prefect deploy --all` made of prefect.yaml: pools, schedules (the examples paused), the
    upstream trigger, the pull step, heartbeats; and the runs the page started, each completed once."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        automations = {a.name: a for a in client.read_automations()}
        runs = client.read_flow_runs()
    for name in ("sales", "marketing", "finance", "all-domains"):
        assert deployments[name].work_pool_name == "tableau-refresh"
    sales = deployments["sales"]
    assert sales.parameters == {"domain": "sales"}
    assert [s.schedule.cron for s in sales.schedules] == ["0 7 * * *"]
    assert [s.active for s in sales.schedules] == [True]
    assert sales.global_concurrency_limit.limit == 1
    assert sales.pull_steps == [
        {"deployments.steps.set_project_directory": {"variable": "ANALYTICS_FLOWS_DIR"}}
    ]
    trigger = next(a for a in automations.values() if str(sales.id) in str(a.actions))
    assert trigger.trigger.expect == {"prefect.flow-run.Completed"}
    assert {"prefect.resource.role": "flow", "prefect.resource.name": "sales-pipeline"} in [
        spec.root for spec in trigger.trigger.match_related
    ]
    # The dead-host automations of the bootstrap.
    assert {"crash-zombie-flow-runs", "reschedule-stuck-pending-flow-runs", "rerun-crashed-flow-runs"} <= set(
        automations
    )

    crm = deployments["crm-export-weekly"]
    assert crm.work_pool_name == "crm-export" and crm.global_concurrency_limit.limit == 1
    assert [s.schedule.cron for s in crm.schedules] == ["0 3 * * 1"]
    # The shipped examples with placeholder sources are deployed paused, never live by accident.
    assert [s.active for s in crm.schedules] == [False]
    assert [s.active for s in deployments["metadata-athena-prod"].schedules] == [False]
    assert crm.parameters["runner"] == {"kind": "dataflow", "options_block": "crm-export"}
    assert crm.parameters["crm"]["block"] == "hubspot-crm/crm-export"  # a block name, never the key
    metadata = deployments["metadata-athena-prod"]
    assert metadata.work_pool_name == "metadata" and metadata.global_concurrency_limit.limit == 1
    # Every run beats every 30 s (the dead-host automation watches it) and keeps its output off the worker.
    beats = {"stream_output": False, "env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
    assert sales.job_variables == crm.job_variables == metadata.job_variables == beats

    by_deployment = {}  # the runs started by hand (an active schedule adds Scheduled ones ahead)
    for run in runs:
        if run.state_name != "Scheduled":
            by_deployment.setdefault(run.deployment_id, []).append(run.state_name)
    for name in ("sales", "metadata-athena-prod", "crm-export-weekly"):
        assert by_deployment.get(deployments[name].id) == ["Completed"], (name, by_deployment)
