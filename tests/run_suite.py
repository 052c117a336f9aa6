"""``make test``: the suite as two pytest runs at once, so that tests/multihost's waits (Prefect's 60 s
minimum lease, its 60 s heartbeat window) overlap the rest of the suite instead of following it.

    python tests/run_suite.py [--workers N]

- the rest of the suite on ``N`` pytest-xdist workers (default 4), its output on the terminal, less the
  tests marked ``end_to_end`` (``make test-end-to-end`` runs those);
- ``tests/multihost`` (its own PostgreSQL + Redis stack and timed scenario), its output printed once
  both have finished (or been interrupted).

Exits with the first non-zero status of the two (the rest's first), 130 if interrupted. Ctrl+C or
SIGTERM interrupts both runs as Ctrl+C in a terminal would, so that each stops the servers it
started; a run still there ``STOP_GRACE_SECONDS`` later is killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 120.0


def _default_sigint() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and Python then
    # keeps ignoring it: restore the default, so that an interrupt reaches the run.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(argv: list[str], **popen: Any) -> subprocess.Popen:
    """Start ``argv`` in a process group of its own (with its children: xdist workers, servers), with
    SIGINT's default action; ``popen``: further ``subprocess.Popen`` arguments (``stdout`` ...)."""
    return subprocess.Popen(argv, cwd=ROOT, process_group=0, preexec_fn=_default_sigint, **popen)


def interrupt(runs: list[subprocess.Popen], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """SIGINT to the process group of each run still going, then SIGKILL to the group of each run not
    ended ``grace_seconds`` later; returns once every run has ended."""
    for run in runs:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_seconds
    for run in runs:
        try:
            run.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=4, help="pytest-xdist workers of the rest of the suite"
    )
    args = parser.parse_args(argv)
    pytest = [sys.executable, "-m", "pytest"]

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with tempfile.TemporaryFile() as multihost_log:
        runs: list[subprocess.Popen] = []
        try:
            runs.append(
                start_run(
                    [*pytest, "tests/multihost", "--durations=5"],
                    stdout=multihost_log,
                    stderr=subprocess.STDOUT,
                )
            )
            # --no-loadscope-reorder keeps tests/conftest.py's order (the slow tests, longest first):
            # xdist would otherwise send groups of several tests first.
            rest = [
                "-m",
                "not end_to_end",  # `make test-end-to-end`
                "--dist=loadgroup",
                "--no-loadscope-reorder",
                "--durations=25",
                "--ignore=tests/multihost",
            ]
            runs.append(start_run([*pytest, f"-n{args.workers}", *rest]))
            statuses = [run.wait() for run in reversed(runs)]  # the rest's, then tests/multihost's
        except KeyboardInterrupt:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal does not cut the cleanup short
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            interrupt(runs)
            statuses = [130]
        multihost_log.seek(0)
        print("\n" + " tests/multihost (ran beside the rest) ".center(78, "="), flush=True)
        sys.stdout.buffer.write(multihost_log.read())
        sys.stdout.flush()
    return next((status for status in statuses if status), 0)


if __name__ == "__main__":
    sys.exit(main())
