"""Lease a personal access token (PAT) from a pool guarded by Prefect global concurrency limits.

Protocol (design.md §3): acquire one slot of the pool limit (blocking, bounded by the pool's
``acquire_timeout_seconds``), then try the limit-1 limits of the PATs without blocking
(``max_retries=0``) in a rotating order and hold the first one granted. Every acquisition is
``strict`` (a missing limit fails) and leased: Prefect renews the lease in the background while
the holder lives, and the server frees the slots of a killed holder when the lease expires.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from uuid import UUID

import httpx
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectNotFound

from blocks.tableau import TableauPatPool, TableauPersonalAccessToken

logger = logging.getLogger(__name__)

# How long to wait between rounds over the PAT limits when the pool slot is ours but every PAT
# limit is still held, e.g. while a crashed holder's PAT lease outlives its pool lease by moments.
_PAT_ROUND_BACKOFF_SECONDS = (0.2, 2.0)


class BlockNotFoundError(LookupError):
    """A block the pool needs does not exist or cannot be loaded."""


class PatPoolError(RuntimeError):
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
    pool = _load_block(TableauPatPool, pool_block_name, needed_by)
    pats = {
        name: _load_block(TableauPersonalAccessToken, name, f"Tableau PAT Pool {pool_block_name!r}")
        for name in pool.pat_block_names
    }
    return pool, pats


def _load_block(block_type: type[Block], name: str, needed_by: str) -> Block:
    try:
        return block_type.load(name)
    except (ValueError, ObjectNotFound) as exc:
        raise BlockNotFoundError(
            f"{block_type.get_block_type_name()} block {name!r} (needed by {needed_by}) could not be loaded: "
            f"{exc}. Create it (README, 'Configure a real Tableau site') or fix the name."
        ) from None


def check_pool_limits(pool: TableauPatPool, pool_block_name: str = "") -> None:
    """Check that the pool's global concurrency limits exist, are active and correctly sized.

    A disabled limit grants every request (it enforces nothing), so it is an error here, as is a
    missing one or one whose limit is not 1 (PAT) or the number of PATs (pool).

    Raises:
        PatPoolError: listing every problem and the command that fixes it.
    """
    expected = {pool.pool_limit_name: len(pool.pat_block_names)}
    expected.update({name: 1 for name in pool.pat_limit_names().values()})
    problems = []
    with get_client(sync_client=True) as client:
        for name, limit in expected.items():
            try:
                found = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                problems.append(f"global concurrency limit {name!r} does not exist")
                continue
            if not found.active:
                problems.append(f"global concurrency limit {name!r} is disabled (it would guard nothing)")
            if found.limit != limit:
                problems.append(
                    f"global concurrency limit {name!r} has limit {found.limit}, expected {limit}"
                )
    if problems:
        block = f" of block {pool_block_name!r}" if pool_block_name else ""
        raise PatPoolError(
            f"PAT pool{block} is not ready: "
            + "; ".join(problems)
            + ". Run `python -m deployments.bootstrap --fix` to create or repair the limits."
        )


def current_holder() -> ConcurrencyLeaseHolder | None:
    """The lease holder shown in the Prefect UI: the current task run or flow run, if any."""
    if task_ctx := TaskRunContext.get():
        return ConcurrencyLeaseHolder(type="task_run", id=task_ctx.task_run.id)
    if flow_ctx := FlowRunContext.get():
        if flow_ctx.flow_run is not None:
            return ConcurrencyLeaseHolder(type="flow_run", id=UUID(str(flow_ctx.flow_run.id)))
    return None


def _free_first(pat_limits: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The PAT limits that showed a free slot a moment ago, in the given order.

    Only a hint that spares a refused (423) attempt per busy PAT; the acquisition itself decides.
    """
    with get_client(sync_client=True) as client:
        return [
            (pat, name)
            for pat, name in pat_limits
            if (limit := client.read_global_concurrency_limit_by_name(name)).active_slots < limit.limit
        ]


def _is_locked(exc: ConcurrencySlotAcquisitionError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


@contextmanager
def lease_pat(
    pool: TableauPatPool,
    *,
    pool_block_name: str = "",
    rng: random.Random | None = None,
) -> Iterator[PatLease]:
    """Hold one PAT of ``pool`` for the duration of the ``with`` block.

    Yields:
        PatLease: which PAT is ours. Nobody else can sign in with it until the block exits
        (slots released on success, error and cancellation) or, if this process dies, until the
        lease (``pool.lease_duration_seconds``) expires on the server.

    Raises:
        PatPoolError: a limit is missing, disabled or mis-sized (checked before waiting).
        PatLeaseTimeoutError: no PAT was free within ``pool.acquire_timeout_seconds``.
    """
    check_pool_limits(pool, pool_block_name)
    rng = rng or random.Random()
    pat_limits = list(pool.pat_limit_names().items())
    holder = current_holder()
    lease_kwargs = dict(lease_duration=pool.lease_duration_seconds, strict=True, holder=holder)
    started = time.monotonic()
    deadline = started + pool.acquire_timeout_seconds

    with ExitStack() as stack:
        try:
            stack.enter_context(
                concurrency(
                    pool.pool_limit_name, timeout_seconds=pool.acquire_timeout_seconds, **lease_kwargs
                )
            )
        except TimeoutError as exc:
            raise PatLeaseTimeoutError(
                f"No PAT of pool {pool_block_name or pool.pool_limit_name!r} became free within "
                f"{pool.acquire_timeout_seconds:.0f} s: all {len(pat_limits)} are leased. Add PATs to the "
                "pool, or raise acquire_timeout_seconds."
            ) from exc

        # Start the rotation at a random PAT so that concurrent holders spread over the pool.
        offset = rng.randrange(len(pat_limits))
        for attempt in itertools.count():
            for pat_block_name, limit_name in _free_first(pat_limits[offset:] + pat_limits[:offset]):
                try:
                    stack.enter_context(concurrency(limit_name, max_retries=0, **lease_kwargs))
                except ConcurrencySlotAcquisitionError as exc:
                    if _is_locked(exc):
                        continue
                    raise
                wait = time.monotonic() - started
                logger.info("Leased PAT %r (limit %r) after %.2f s", pat_block_name, limit_name, wait)
                yield PatLease(pat_block_name=pat_block_name, limit_name=limit_name, wait_seconds=wait)
                return
            if time.monotonic() >= deadline:
                raise PatLeaseTimeoutError(
                    f"Held a slot of {pool.pool_limit_name!r} but every PAT limit stayed occupied for "
                    f"{pool.acquire_timeout_seconds:.0f} s: are PAT limits "
                    f"{[name for _, name in pat_limits]} acquired outside the pool?"
                )
            time.sleep(min(_PAT_ROUND_BACKOFF_SECONDS[0] * 2**attempt, _PAT_ROUND_BACKOFF_SECONDS[1]))
