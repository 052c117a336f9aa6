"""``tests/run_suite.py`` (``make test``): an interrupt reaches each run's whole process group, also
where this process ignores SIGINT, and a run that ignores it is killed after the grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

from run_suite import interrupt, start_run

#: A run that starts a child in its process group, says so, then waits (SIGINT's default: it ends).
WAITS_WITH_A_CHILD = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""
IGNORES_SIGINT = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(600)
"""


@contextmanager
def sigint_ignored():
    """As in a shell without job control, which starts background commands with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has ended
    except FileNotFoundError:
        return True


def test_an_interrupt_ends_each_run_and_its_children_even_where_sigint_is_ignored():
    with sigint_ignored():
        runs = [
            start_run([sys.executable, "-c", WAITS_WITH_A_CHILD], stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
    children = [int(run.stdout.readline()) for run in runs]
    assert all(
        os.getpgid(child) == run.pid for child, run in zip(children, runs, strict=True)
    )  # each in its run's group

    interrupt(runs, grace_seconds=30)

    assert [run.returncode for run in runs] == [-signal.SIGINT] * 2  # ended by SIGINT, not killed
    # The children got the same SIGINT as their leaders; under load one may still be exiting.
    deadline = time.monotonic() + 10
    while not all(gone(child) for child in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(child) for child in children)
    for run in runs:
        run.stdout.close()


def test_a_run_that_ignores_the_interrupt_is_killed_after_the_grace_period():
    run = start_run([sys.executable, "-c", IGNORES_SIGINT], stdout=subprocess.PIPE, text=True)
    assert run.stdout.readline() == "ready\n"

    interrupt([run], grace_seconds=1)

    assert run.returncode == -signal.SIGKILL
    run.stdout.close()
