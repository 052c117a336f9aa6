"""The PAT lease on Prefect global concurrency limits, against a real ``prefect server start``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tasks.tableau.pat_pool import PatLeaseTimeoutError, lease_pat

HOLD_PAT = """
import sys, time
from blocks import TableauPatPool
from tasks.tableau.pat_pool import lease_pat
with lease_pat(TableauPatPool.load(sys.argv[1])) as lease:
    print("HELD", lease.pat_block_name, flush=True)
    time.sleep(600)
"""


def active_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_concurrent_leases_get_different_pats_and_the_pool_bounds_them(workspace):
    pool = workspace.create_pool(["pat-1", "pat-2"], acquire_timeout_seconds=2)
    with lease_pat(pool) as first, lease_pat(pool) as second:
        assert {first.pat_block_name, second.pat_block_name} == set(pool.pat_block_names)
        assert active_slots(pool.pool_limit_name) == 2
        with pytest.raises(PatLeaseTimeoutError, match="became free within 2 s"):
            with lease_pat(pool):
                pass
    assert active_slots(pool.pool_limit_name) == 0


def test_lease_is_released_when_the_holder_fails(workspace):
    pool = workspace.create_pool(["pat-1"])
    with pytest.raises(RuntimeError, match="boom"):
        with lease_pat(pool) as lease:
            assert active_slots(lease.limit_name) == 1
            raise RuntimeError("boom")
    assert active_slots(lease.limit_name) == 0
    assert active_slots(pool.pool_limit_name) == 0


@pytest.mark.slow(seconds=70)
def test_killed_holder_frees_its_pat_when_the_lease_expires(workspace):
    """The holder is SIGKILLed: no release runs; the server's lease expiry frees the PAT."""
    pool = workspace.create_pool(["pat-1"], lease_duration_seconds=60, acquire_timeout_seconds=3)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_PAT, workspace.pool_block],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        assert holder.stdout.readline().startswith("HELD")
        killed_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with pytest.raises(PatLeaseTimeoutError):  # still held by the dead process's lease
            with lease_pat(pool):
                pass
        patient = pool.model_copy(update={"acquire_timeout_seconds": 150})
        with lease_pat(patient) as lease:
            freed_after = time.monotonic() - killed_at
    finally:
        holder.kill()
    assert lease.pat_block_name == workspace.pat_block("pat-1")
    assert 30 < freed_after < 150  # at lease expiry (60 s after the last renewal), not at once


def test_a_limit_disabled_while_a_run_waits_fails_that_run(workspace, monkeypatch):
    import threading

    from conftest import wait_for
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from tasks.tableau import pat_pool
    from tasks.tableau.pat_pool import PatPoolError

    pool = workspace.create_pool(["pat-1"], acquire_timeout_seconds=30)
    with lease_pat(pool):
        waiting = {}

        def wait_for_pat():
            try:
                with lease_pat(pool):
                    waiting["leased"] = True
            except Exception as exc:
                waiting["error"] = exc

        thread = threading.Thread(target=wait_for_pat)
        reads_by_waiter = []
        read_limits = pat_pool.read_limits

        def counted_read_limits(*args, **kwargs):
            found = read_limits(*args, **kwargs)
            if threading.current_thread() is thread:
                reads_by_waiter.append(found)
            return found

        monkeypatch.setattr(pat_pool, "read_limits", counted_read_limits)
        thread.start()
        # The second run is waiting for the pool slot: it has read the limits (the slot is ours) at least once.
        wait_for(
            lambda: reads_by_waiter or not thread.is_alive(), timeout=30, what="the second run's first try"
        )
        assert thread.is_alive(), waiting
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(
                pool.pool_limit_name, GlobalConcurrencyLimitUpdate(active=False)
            )
        thread.join(30)
    assert "leased" not in waiting
    assert isinstance(waiting["error"], PatPoolError)
    assert "is disabled" in str(waiting["error"])


def test_a_held_lease_is_renewed_until_released(workspace, monkeypatch):
    """The slots of a try are held on one lease, renewed in the background (at 3/4 of its duration; here
    sooner) through the client's public API, and given back when the holder's stack closes."""
    import threading
    from contextlib import ExitStack

    from conftest import wait_for
    from prefect.client.orchestration import SyncPrefectClient

    from tasks.tableau import pat_pool

    pool = workspace.create_pool(["pat-1"])
    limit = pool.pat_limit_names()[workspace.pat_block("pat-1")]
    renewals = []
    renew = SyncPrefectClient.renew_concurrency_lease

    def counted_renew(self, lease_id, lease_duration):
        renewals.append(lease_duration)
        return renew(self, lease_id=lease_id, lease_duration=lease_duration)

    monkeypatch.setattr(SyncPrefectClient, "renew_concurrency_lease", counted_renew)
    monkeypatch.setattr(pat_pool, "_RENEW_AT", 0.01)  # every 0.6 s of a 60 s lease
    with ExitStack() as stack:
        assert pat_pool._try_acquire(
            stack, [pool.pool_limit_name, limit], dict(lease_duration=60, strict=True)
        )
        assert active_slots(limit) == 1
        assert active_slots(pool.pool_limit_name) == 1
        wait_for(lambda: len(renewals) >= 2, timeout=30, what="two renewals of the lease")
    assert active_slots(limit) == 0
    assert active_slots(pool.pool_limit_name) == 0
    assert set(renewals) == {60}
    wait_for(
        lambda: not any(t.name.startswith("lease-renewal-") for t in threading.enumerate()),
        what="the renewal thread to end",
    )


def test_a_strict_try_on_a_missing_limit_fails_and_holds_nothing(workspace):
    from contextlib import ExitStack

    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    from tasks.tableau.pat_pool import _try_acquire

    pool = workspace.create_pool(["pat-1"])
    limit = pool.pat_limit_names()[workspace.pat_block("pat-1")]
    missing = f"{limit}-missing"
    with ExitStack() as stack, pytest.raises(ConcurrencySlotAcquisitionError) as raised:
        _try_acquire(stack, [limit, missing], dict(lease_duration=60, strict=True))
    assert str(raised.value) == f"Concurrency limits [{missing!r}] must be created before acquiring slots"
    assert active_slots(limit) == 0  # the slot of the limit that exists was given back


def test_a_refused_try_on_a_full_limit_logs_no_error(workspace, caplog):
    """Prefect 3.9.1's ``concurrency(max_retries=0)`` logs every refused acquisition as an ERROR ("Service
    ... failed to process item"), from its acquisition service's thread; a try asks the server through
    the client's public lease API instead, so a full limit (423) is an answer and nothing is logged."""
    import logging
    from contextlib import ExitStack

    from tasks.tableau.pat_pool import _try_acquire

    pool = workspace.create_pool(["pat-1"])
    limit = pool.pat_limit_names()[workspace.pat_block("pat-1")]
    with caplog.at_level(logging.DEBUG), lease_pat(pool), ExitStack() as stack:
        assert not _try_acquire(stack, [limit], dict(lease_duration=60, strict=True))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert active_slots(limit) == 0


def test_limits_are_read_from_every_page_of_the_listing_and_missing_ones_by_name():
    """More than two names: one listing (pages of 200), then by name what the listing did not show."""
    from types import SimpleNamespace

    from prefect.exceptions import ObjectNotFound

    from tasks.tableau.pat_pool import _read_by_name

    class Client:
        def __init__(self) -> None:
            self.limits = [SimpleNamespace(name=f"limit-{i:03}") for i in range(250)]
            self.calls: list[tuple] = []

        def read_global_concurrency_limits(self, limit: int, offset: int):
            self.calls.append(("list", offset))
            return self.limits[offset : offset + limit]

        def read_global_concurrency_limit_by_name(self, name: str):
            self.calls.append(("by name", name))
            if name == "created-meanwhile":
                return SimpleNamespace(name=name)
            raise ObjectNotFound(http_exc=None)

    client = Client()
    found = _read_by_name(client, ["limit-001", "limit-240", "created-meanwhile", "absent"])
    assert sorted(found) == ["created-meanwhile", "limit-001", "limit-240"]
    assert client.calls[:2] == [("list", 0), ("list", 200)]
    assert sorted(client.calls[2:]) == [("by name", "absent"), ("by name", "created-meanwhile")]

    client.calls.clear()
    assert sorted(_read_by_name(client, ["limit-001", "limit-002", "limit-003"])) == [
        "limit-001",
        "limit-002",
        "limit-003",
    ]
    assert client.calls == [("list", 0)]  # all found on the first page: no second request
