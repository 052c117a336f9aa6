"""`make demo` end to end: upstream completions trigger the served domain deployments, the UI reaches
its API, and a demo stopped by Ctrl+C (SIGINT) or SIGTERM stops everything it started."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.end_to_end  # `make test-end-to-end`


@pytest.mark.slow(seconds=165)
def test_demo_refreshes_every_domain_through_the_pool_without_invalidated_tokens():
    """``DEMO_HOLD=1 make demo``: the whole demo, then its Prefect UI (told its server's real API URL),
    then Ctrl+C (SIGINT) stops everything it started."""
    demo = start_demo(hold=True)
    try:
        out = ""
        for line in demo.stdout:  # until the demo holds its stack up for the UI
            out += line
            if line.startswith("Prefect UI: "):
                break
        assert "Prefect UI: " in out, out[-4000:]
        ui_url = out.rsplit("Prefect UI: ", 1)[1].split()[0]
        assert httpx.get(f"{ui_url}/ui-settings", timeout=10).json()["api_url"] == f"{ui_url}/api"
        started = _descendants(demo.pid)
        demo.send_signal(signal.SIGINT)
        out += demo.stdout.read()
        assert demo.wait(timeout=120) == 0, out[-4000:]
    finally:
        stop_demo(demo)
    assert_all_stopped(started)

    assert re.search(r"^sales\s+Completed 10/10 refreshed .* via PAT tableau-pat-\d, 1 sign-in", out, re.M), (
        out
    )
    # marketing: content from lineage, one run started by its pipeline's 9 table materializations,
    # refreshing what is downstream of them (not Ad Spend, on the table the pipeline did not rebuild).
    assert re.search(r"^marketing\s+Completed 8/8 refreshed .* 1 sign-in", out, re.M), out
    assert re.search(
        r"^marketing-pipeline materialized 9 of the domain's 10 tables: 1 refresh run\(s\), created \d+\.\d s after",
        out,
        re.M,
    ), out
    assert "WARNING no extract downstream of athena://awsdatacatalog/marketing/raw_clicks" in out
    assert re.search(
        r"^\s+datasource Marketing/Leads\s+succeeded\s+brought in by crm_contacts, leads$", out, re.M
    ), out
    assert "not refreshed: Ad Spend (no changed table upstream)" in out
    assert re.search(
        r"^=== Tableau assets .*: \d+ under tableau://\S+/analytics, 8 from marketing ===$", out, re.M
    ), out
    assert re.search(
        r"^\s+/workbook/\S+\s+Campaign Dashboard\s+succeeded ← ad_spend, campaigns$", out, re.M
    ), out
    assert re.search(r"^finance\s+Failed\s+8/9 refreshed", out, re.M), out
    assert "✗ datasource Finance/Payroll: failed — ODBC error" in out
    assert re.search(r"^401002 answers served:\s+0\b", out, re.M), out
    assert re.search(r"^records read:\s+50,003$", out, re.M), out
    assert re.search(r"^duplicate deliveries: 0$", out, re.M), out
    assert re.search(r"^second run:\s+skipped", out, re.M), out
    assert re.search(r"^week 1 \(full\)\s+50,003\s+0\s+49,990\s+13\s", out, re.M), out
    assert re.search(r"^week 2 \(diff\)\s+50,253\s+47,500\s+2,740\s+13\s", out, re.M), out
    assert re.search(r"^week 1 isolation:\s+[1-9][\d,]* of the [\d,]+ requests split batches", out, re.M), out
    assert re.search(r"^sync state:\s+\S+\.crm\.crm_export_sync_state: 50,240 keys as HubSpot", out, re.M), (
        out
    )
    assert re.search(r"^accounting:\s+adds up for both weeks$", out, re.M), out
    assert re.search(r"^first run: window .* HWM now ", out, re.M), out
    assert re.search(r"athena-demo_columns_\S+\.csv\.gz\s+872 rows", out), out
    assert re.search(r"^401002 answers served, collector included: 0$", out, re.M), out
    # 25 refresh tasks of the PAT domains' data sources (and Sales Archive/Orders), 2 of operations.
    assert re.search(r"tableau-demo_extract_refresh_tasks_\S+\.csv\.gz\s+27 rows", out), out
    assert re.search(
        r"^operations\s+Completed 2/2 refreshed .* via connected app tableau-connected-app, 1 sign-in",
        out,
        re.M,
    ), out
    assert re.search(
        r"^operations\s+100 %  Tableau refresh of domain \*\*operations\*\*; 2 of 2 refreshes finished; 2 succeeded$",
        out,
        re.M,
    ), out
    assert re.search(
        r"^sales\s+100 %  Tableau refresh of domain \*\*sales\*\*; 10 of 10 refreshes finished", out, re.M
    ), out
    lineage = r"[1-9][\d,]* table edges, [1-9][\d,]* column edges, [1-9][\d,]* columns covered, \d+ unparsed statements of"
    assert re.search(rf"^Athena lineage \(first run\): {lineage} [1-9]", out, re.M), out
    assert re.search(rf"^Tableau lineage \(Metadata API\): {lineage} \d", out, re.M), out
    assert re.search(r"athena-demo_openlineage_\S+\.jsonl\.gz\s+[1-9]", out), out
    assert re.search(r"tableau-demo_openlineage_\S+\.jsonl\.gz\s+[1-9]", out), out


def start_demo(hold: bool = False) -> subprocess.Popen:
    """``python -m devstack.demo`` on its own stack (none of this session's ``PREFECT_*`` settings), in
    a session of its own so that a signal goes to the demo alone, as ``kill <pid>`` would send it.

    Its Ctrl+C (SIGINT) acts as in a terminal even where this suite runs with SIGINT ignored (a shell
    without job control starts a background command so, and Python keeps an ignored SIGINT ignored)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if hold:
        env["DEMO_HOLD"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "devstack.demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def stop_demo(demo: subprocess.Popen) -> None:
    """If the demo still runs (a failed assertion, an interrupted suite), SIGTERM, on which it stops
    everything it started; SIGKILL to its process group if it has not ended 60 s later (its servers,
    in sessions of their own, would then be left running)."""
    if demo.poll() is not None:
        return
    demo.send_signal(signal.SIGTERM)
    try:
        demo.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time (clock ticks since boot) of every live descendant of ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        started[int(entry.name)] = fields[19]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def _alive(pid: int, start_ticks: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == start_ticks  # not a zombie, and not a recycled pid


@pytest.mark.slow(seconds=40)
def test_a_sigterm_stops_every_server_and_process_the_demo_started():
    """Sent once everything is up: prefect server, the Tableau stand-in, serve and its runner, Azurite."""
    demo = start_demo()
    try:
        deadline = time.monotonic() + 180
        for line in demo.stdout:
            if line.startswith("Tableau collector started") or time.monotonic() > deadline:
                break
        started = _descendants(demo.pid)
        assert len(started) >= 4, started
        demo.send_signal(signal.SIGTERM)
        demo.stdout.read()
        assert demo.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        stop_demo(demo)
    assert_all_stopped(started)


def assert_all_stopped(started: dict[int, str]) -> None:
    """No process of ``started`` (pid -> start time) is still alive a moment (up to 10 s) after the demo
    exited: one it signalled may still be exiting when it returns."""

    def left() -> dict[int, bytes]:
        found = {}
        for pid, t in started.items():
            if _alive(pid, t):
                try:
                    found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()[:200]
                except OSError:
                    pass  # exited between the two reads
        return found

    with contextlib.suppress(AssertionError):  # those still alive at the deadline are named below
        wait_for(lambda: not left(), timeout=10, interval=0.1, what="the demo's processes to exit")
    assert left() == {}
