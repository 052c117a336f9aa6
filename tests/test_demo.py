"""`make demo` end to end: upstream completions trigger the served domain deployments."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    assert re.search(r"^first run: window .* HWM now ", out, re.M), out
    assert re.search(r"athena-demo_columns_\S+\.csv\.gz\s+872 rows", out), out
    assert re.search(r"^401002 answers served, collector included: 0$", out, re.M), out
    assert re.search(r"tableau-demo_extract_refresh_tasks_\S+\.csv\.gz\s+25 rows", out), out
