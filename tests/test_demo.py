"""`make demo` end to end: upstream completions trigger the served domain deployments; a signalled demo
stops everything it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_refreshes_every_domain_through_the_pool_without_invalidated_tokens():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # the demo runs its own stack
    demo = subprocess.run(
        [sys.executable, "-m", "devstack.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = demo.stdout
    assert demo.returncode == 0, out[-4000:] + demo.stderr[-4000:]
    assert re.search(r"^sales\s+Completed 10/10 refreshed .* via PAT tableau-pat-\d, 1 sign-in", out, re.M), (
        out
    )
    assert re.search(r"^marketing\s+Completed 9/9 refreshed .* 1 sign-in", out, re.M), out
    assert re.search(r"^finance\s+Failed\s+8/9 refreshed", out, re.M), out
    assert "✗ datasource Finance/Payroll: failed — ODBC error" in out
    assert re.search(r"^401002 answers served:\s+0\b", out, re.M), out
    assert re.search(r"^records read:\s+200,000$", out, re.M), out
    assert re.search(r"^duplicate deliveries: 0$", out, re.M), out
    assert re.search(r"^second run:\s+skipped", out, re.M), out
    assert re.search(r"^week 1 \(full\)\s+200,000\s+0\s", out, re.M), out
    assert re.search(r"^week 2 \(diff against 2026-11-16\)\s+201,000\s", out, re.M), out
    assert re.search(r"^accounting:\s+adds up for both weeks$", out, re.M), out
    assert re.search(r"^first run: window .* HWM now ", out, re.M), out
    assert re.search(r"athena-demo_columns_\S+\.csv\.gz\s+872 rows", out), out
    assert re.search(r"^401002 answers served, collector included: 0$", out, re.M), out
    assert re.search(r"tableau-demo_extract_refresh_tasks_\S+\.csv\.gz\s+25 rows", out), out


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


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "ready", "processes"),
    [
        # Everything up: prefect server, the Tableau stand-in, serve and its runner, Azurite.
        (signal.SIGTERM, "Tableau collector started", 4),
        # Early, while the blocks are being created: prefect server and the Tableau stand-in.
        (signal.SIGINT, "Prefect API ", 2),
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_the_demo_stops_everything_it_started_when_it_is_signalled(signum, ready, processes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "devstack.demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the signal goes to the demo alone, as `kill <pid>` would send it
    )
    try:
        deadline = time.monotonic() + 180
        for line in demo.stdout:
            if line.startswith(ready) or time.monotonic() > deadline:
                break
        started = _descendants(demo.pid)
        assert len(started) >= processes, started
        demo.send_signal(signum)
        demo.stdout.read()
        assert demo.wait(timeout=120) == 128 + signum
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    time.sleep(1)
    left = {
        pid: (Path(f"/proc/{pid}/cmdline").read_bytes()[:200]) for pid, t in started.items() if _alive(pid, t)
    }
    assert left == {}, left
