"""Lease a personal access token (PAT) from a pool guarded by Prefect global concurrency limits.

Protocol (docs/architecture.md, "PAT pool"): read the pool's limits and, when the pool limit and a
PAT's limit-1 limit show a free slot, take one slot of both in one leased, ``strict`` acquisition
that does not wait (a refusal is an answer, not a logged error); back off and read again otherwise,
until the pool's ``acquire_timeout_seconds``. The lease is renewed in the background while the holder
lives, and the server frees both slots of a killed holder when the lease expires. Every limit read on
the way is checked: a disabled limit is granted by the server without being enforced, so it is an error,
not a free PAT.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse, GlobalConcurrencyLimitResponse
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.exceptions import ObjectNotFound

from blocks import run_logger
from blocks.loading import load_block
from blocks.tableau import TableauPatPool, TableauPersonalAccessToken
from pipelines.retries import Backoff, retrying
from tasks.tableau.limits import LimitNotReadyError, current_holder, limit_drift

logger = logging.getLogger(__name__)

# Back-off between tries for a full limit: 0.2 s doubling up to 5 s, each wait drawn in [0.5, 1] × that.
_BACKOFF = Backoff(0.2, 5.0, jitter="half")


class PatPoolError(LimitNotReadyError):
    """The pool's global concurrency limits are missing, disabled or mis-sized."""


class PatLeaseTimeoutError(TimeoutError):
    """No PAT of the pool became free within the pool's ``acquire_timeout_seconds``."""


@dataclass(frozen=True)
class PatLease:
    """A PAT held by this run: its block name, its limit, and how long acquiring it took (seconds)."""

    pat_block_name: str
    limit_name: str
    wait_seconds: float


def load_pool(
    pool_block_name: str, *, needed_by: str
) -> tuple[TableauPatPool, dict[str, TableauPersonalAccessToken]]:
    """Load a Tableau PAT Pool block and every PAT block it names.

    Returns:
        The pool, and PAT block name -> PAT block.

    Raises:
        BlockNotFoundError: naming the missing block, who needs it, and how to create it.
    """
    hint = "create it (docs/tableau-refresh.md, 'Configure a real Tableau site')"
    pool = load_block(TableauPatPool, pool_block_name, needed_by=needed_by, hint=hint)
    pats = {
        name: load_block(
            TableauPersonalAccessToken, name, needed_by=f"Tableau PAT Pool {pool_block_name!r}", hint=hint
        )
        for name in pool.pat_block_names
    }
    return pool, pats


def expected_limits(pool: TableauPatPool) -> dict[str, int]:
    """Limit name -> slots: the pool limit (number of PATs) and one limit of 1 per PAT."""
    return {
        pool.pool_limit_name: len(pool.pat_block_names),
        **{name: 1 for name in pool.pat_limit_names().values()},
    }


def _not_ready(pool_block_name: str, problems: list[str]) -> PatPoolError:
    block = f" of block {pool_block_name!r}" if pool_block_name else ""
    return PatPoolError(
        f"PAT pool{block} is not ready: "
        + "; ".join(problems)
        + ". Run `python -m deployments.bootstrap --fix` to create or repair the limits."
    )


def read_limits(
    pool: TableauPatPool,
    names: list[str],
    pool_block_name: str = "",
    client: SyncPrefectClient | None = None,
) -> dict[str, GlobalConcurrencyLimitResponse]:
    """Read some of the pool's limits, checking each is fit to guard PATs. ``client``: an open sync
    Prefect client to read with (default: a new one; making one costs ~40 ms of CPU, its TLS context).

    Raises:
        PatPoolError: listing every missing or drifted limit and the command that fixes it.
    """
    expected = expected_limits(pool)
    if client is None:
        with get_client(sync_client=True) as client:
            found = _read_by_name(client, names)
    else:
        found = _read_by_name(client, names)
    problems = []
    for name in names:
        if name not in found:
            problems.append(f"global concurrency limit {name!r} does not exist")
            continue
        problems += [
            f"global concurrency limit {name!r} is {p}" for p in limit_drift(found[name], expected[name])
        ]
    if problems:
        raise _not_ready(pool_block_name, problems)
    return found


#: Up to this many limits are read one request each; more (a pool's PAT limits) with the listing,
#: in pages of the API's maximum page size: one request instead of one per PAT.
_READ_ONE_BY_ONE = 2
_PAGE = 200


def _read_by_name(client: SyncPrefectClient, names: list[str]) -> dict[str, GlobalConcurrencyLimitResponse]:
    """The limits of ``names`` that exist, by name."""
    wanted, found = set(names), {}
    if len(wanted) > _READ_ONE_BY_ONE:
        for offset in itertools.count(0, _PAGE):
            page = client.read_global_concurrency_limits(limit=_PAGE, offset=offset)
            found.update({limit.name: limit for limit in page if limit.name in wanted})
            if len(page) < _PAGE or len(found) == len(wanted):
                break
    for name in wanted - set(found):  # few names, or created while the pages were read
        try:
            found[name] = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
    return found


def _is_free(limit: GlobalConcurrencyLimitResponse) -> bool:
    return limit.active_slots < limit.limit


def _try_acquire(stack: ExitStack, names: list[str], lease_kwargs: dict) -> bool:
    """Take one slot of each of ``names`` in one leased acquisition, without waiting; False if one of
    them is full (423: the server grants all or nothing). The lease is renewed in the background and
    released when ``stack`` closes (``_HeldLease``).

    ``lease_kwargs``: ``lease_duration`` (seconds), ``strict`` (a missing limit is an error rather than
    no guard) and, optionally, ``holder`` (shown in the UI).

    It asks the server through the client's public lease API (``increment_concurrency_slots_with_lease``)
    rather than ``prefect.concurrency.sync.concurrency(max_retries=0)``: Prefect's acquisition service
    logs every refused acquisition as an ERROR (still in 3.9.1), even the 423 that a try which asked not
    to wait expects. Here a full limit is an answer, and nothing is logged.

    Raises:
        ConcurrencySlotAcquisitionError: the server answered another error, or (``strict``) a limit
            does not exist (no slot is then held).
    """
    with get_client(sync_client=True) as client:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=names,
                slots=1,
                mode="concurrency",
                lease_duration=lease_kwargs["lease_duration"],
                holder=lease_kwargs.get("holder"),
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:
                return False
            raise ConcurrencySlotAcquisitionError(
                f"Unable to acquire concurrency slots on {names!r}: {exc.response.status_code} "
                f"{exc.response.text[:300]}"
            ) from exc
        granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
        missing = sorted(set(names) - {limit.name for limit in granted.limits})
        if missing and lease_kwargs.get("strict"):
            if granted.limits:  # the ones that exist: give their slots back at once
                client.release_concurrency_slots_with_lease(lease_id=granted.lease_id)
            raise ConcurrencySlotAcquisitionError(
                f"Concurrency limits {missing!r} must be created before acquiring slots"
            )
    if granted.limits:
        stack.callback(_HeldLease(granted.lease_id, lease_kwargs["lease_duration"], names).release)
    return True


#: A held lease is renewed once this fraction of its duration has passed (as Prefect renews its own).
_RENEW_AT = 0.75
#: After a failed renewal, the next try comes this many seconds later (sooner if the lease ends first).
_RENEW_RETRY_SECONDS = 5.0


class _HeldLease:
    """Slots granted on one lease: renewed in the background until :meth:`release`, which gives them back.

    A failed renewal is tried again until the lease would have expired; then it is lost (the server
    frees its slots: another run may get the same PAT), which is logged as an ERROR in the run's log.
    If this process dies, nothing renews the lease and the server frees the slots when it expires.
    """

    def __init__(self, lease_id: UUID, duration: float, names: list[str]) -> None:
        self.lease_id, self.duration, self.names = lease_id, duration, names
        self._stop = threading.Event()
        self._thread = threading.Thread(  # with the run's context, for the run's logger
            target=contextvars.copy_context().run,
            args=(self._renew,),
            name=f"lease-renewal-{lease_id}",
            daemon=True,
        )
        self._thread.start()

    def _renew(self) -> None:
        renewed = time.monotonic()
        wait = self.duration * _RENEW_AT
        with get_client(sync_client=True) as client:
            while not self._stop.wait(wait):
                try:
                    client.renew_concurrency_lease(lease_id=self.lease_id, lease_duration=self.duration)
                except Exception as exc:
                    if self._stop.is_set():
                        return
                    left = renewed + self.duration - time.monotonic()
                    gone = isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 404
                    if gone or left <= 0:
                        run_logger(__name__).error(
                            "The lease %s of %s could not be renewed (%s) and has expired: the server has "
                            "freed its slots, so another run may be given them.",
                            self.lease_id,
                            self.names,
                            exc,
                        )
                        return
                    logger.warning(
                        "Renewing the lease %s of %s failed (%s); trying again (it expires in %.0f s).",
                        self.lease_id,
                        self.names,
                        exc,
                        left,
                    )
                    wait = min(_RENEW_RETRY_SECONDS, left / 2)
                else:
                    renewed = time.monotonic()
                    wait = self.duration * _RENEW_AT

    def release(self) -> None:
        """Stop renewing and give the slots back (if that fails, the server frees them at expiry)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease_id=self.lease_id)
        except Exception as exc:
            logger.warning(
                "Releasing the lease %s of %s failed (%s): the server frees its slots when it expires.",
                self.lease_id,
                self.names,
                exc,
            )


@contextmanager
def lease_pat(
    pool: TableauPatPool,
    *,
    pool_block_name: str = "",
    rng: random.Random | None = None,
) -> Iterator[PatLease]:
    """Hold one PAT of ``pool`` for the duration of the ``with`` block.

    Each try reads the pool's limits (one listing request) and, if the pool limit and a PAT limit
    show a free slot, takes one slot of both in one leased acquisition (all or nothing, without
    waiting); otherwise it backs off (0.2 s doubling to 5 s, jittered) until
    ``pool.acquire_timeout_seconds``. Free PATs are tried from a random one, so holders spread over
    the pool.

    Yields:
        PatLease: which PAT is ours. Nobody else can sign in with it until the block exits
        (slots released on success, error and cancellation) or, if this process dies, until the
        lease (``pool.lease_duration_seconds``) expires on the server.

    Raises:
        PatPoolError: a limit is missing, disabled, mis-sized or decaying (checked at every try, and
            once more after acquiring the PAT).
        PatLeaseTimeoutError: no PAT was free within ``pool.acquire_timeout_seconds``.
    """
    rng = rng or random.Random()
    pat_limits = list(pool.pat_limit_names().items())
    names = list(expected_limits(pool))
    lease_kwargs = dict(lease_duration=pool.lease_duration_seconds, strict=True, holder=current_holder())
    started = time.monotonic()
    deadline = started + pool.acquire_timeout_seconds

    with ExitStack() as stack:
        with get_client(sync_client=True) as client:  # one client for every read of the acquisition

            def try_once() -> PatLease | None:
                """One try: read the limits, take a free PAT if they show one (None otherwise)."""
                limits = read_limits(pool, names, pool_block_name, client)
                if not _is_free(limits[pool.pool_limit_name]):
                    return None
                offset = rng.randrange(len(pat_limits))
                for pat_block_name, limit_name in pat_limits[offset:] + pat_limits[:offset]:
                    if not (
                        _is_free(limits[limit_name])
                        and _try_acquire(stack, [pool.pool_limit_name, limit_name], lease_kwargs)
                    ):
                        continue
                    # A limit disabled between the read and the acquisition would guard nothing.
                    read_limits(pool, [pool.pool_limit_name, limit_name], pool_block_name, client)
                    wait = time.monotonic() - started
                    return PatLease(pat_block_name=pat_block_name, limit_name=limit_name, wait_seconds=wait)
                return None

            lease = retrying(_BACKOFF, again=lambda got: got is None, deadline=deadline)(try_once)
            if lease is None:
                raise PatLeaseTimeoutError(
                    f"No PAT of pool {pool_block_name or pool.pool_limit_name!r} became free within "
                    f"{pool.acquire_timeout_seconds:.0f} s: all {len(pat_limits)} are leased. Add PATs to "
                    "the pool, or raise acquire_timeout_seconds."
                )
        logger.info(
            "Leased PAT %r (limit %r) after %.2f s",
            lease.pat_block_name,
            lease.limit_name,
            lease.wait_seconds,
        )
        yield lease
