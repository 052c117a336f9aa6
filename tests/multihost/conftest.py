"""The multi-host stack of these tests: PostgreSQL, Redis, a Prefect API server and its background
services on them, and two process-worker hosts; the clients of this module talk to it. A run of this
directory alone starts no session server (tests/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.multihost import MultiHostStack

#: Heartbeat-driven crash detection and lease expiry at the shortest Prefect allows: a 60 s lease
#: (the pool block's minimum) and a 60 s heartbeat window (two missed 30 s heartbeats).
LEASE_SECONDS = 60
WITHIN_SECONDS = 60
#: A run claimed by a worker (Pending) for this long is put back to Scheduled. It must exceed a run's
#: start-up on this machine under ``make test``'s load: runs took up to 35 s from the claim to Running
#: beside the xdist workers, and with 30 s here the automation put starting runs back (they then ran
#: twice). The default is 120 s.
PENDING_SECONDS = 90
REPOSSESSOR_LOOP_SECONDS = 1
#: The servers' basic auth, as a team runs them (``user:password``; the test's own, not a secret).
AUTH_STRING = "flows:multihost-auth-7c2e"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiHostStack]:
    """The stack, with this module's Prefect clients (blocks, limits, deployments) pointed at it."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )

    workdir = tmp_path_factory.mktemp("multihost")
    with MultiHostStack(
        workdir,
        repossessor_loop_seconds=REPOSSESSOR_LOOP_SECONDS,
        # A run that waits for its deployment's concurrency slot tries again every 2 s (default 30 s).
        server_settings={"PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2"},
        auth_string=AUTH_STRING,
    ) as started:
        with temporary_settings(
            {
                PREFECT_API_URL: started.api_url,
                PREFECT_API_AUTH_STRING: AUTH_STRING,
                PREFECT_LOCAL_STORAGE_PATH: workdir / "results",
            }
        ):
            yield started


def host_env(workdir: Path) -> dict[str, str]:
    """What the hosts' flow runs need here: INFO logs shipped to the API (the session's conftest turns
    both down for its own process) and one result store for both hosts."""
    return {
        "PREFECT_LOGGING_TO_API_ENABLED": "true",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_LOCAL_STORAGE_PATH": str(workdir / "results"),
    }


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> object:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` at ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value
