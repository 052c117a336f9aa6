"""The refresh capacity of a Tableau connected app: a Prefect global concurrency limit every domain run
through the app holds one slot of, so that no more than ``refresh_capacity`` domain runs refresh at
once. No credential is leased: each run signs in with its own JWT (``tasks.tableau.session``).

The slot is taken ``strict`` (a missing limit fails) and leased like the PAT pool's: Prefect renews the
lease while the run lives and the server frees a killed run's slot when the lease expires. The limit is
checked first: a disabled limit is granted without being enforced, so it is an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from blocks.loading import load_block
from blocks.tableau import TableauConnectedApp
from tasks.tableau.limits import LimitNotReadyError, current_holder, limit_drift

logger = logging.getLogger(__name__)


class RefreshCapacityError(LimitNotReadyError):
    """The connected app's global concurrency limit is missing, disabled, mis-sized or decaying."""


class RefreshCapacityTimeoutError(TimeoutError):
    """No slot of the connected app's refresh capacity became free within ``acquire_timeout_seconds``."""


def load_connected_app(block_name: str, *, needed_by: str) -> TableauConnectedApp:
    """Load a Tableau Connected App block.

    Raises:
        BlockNotFoundError: naming the block, who needs it, and how to create it.
    """
    return load_block(
        TableauConnectedApp,
        block_name,
        needed_by=needed_by,
        hint="create it (docs/tableau-refresh.md, 'Configure a real Tableau site')",
    )


def expected_capacity_limit(app: TableauConnectedApp) -> dict[str, int]:
    """Limit name -> slots: the app's refresh-capacity limit."""
    return {app.concurrency_limit_name: app.refresh_capacity}


def check_capacity_limit(app: TableauConnectedApp, block_name: str = "") -> None:
    """Check that the app's global concurrency limit exists, is active, sized ``refresh_capacity`` and
    does not decay.

    Raises:
        RefreshCapacityError: naming the problem and the command that fixes it.
    """
    name, slots = app.concurrency_limit_name, app.refresh_capacity
    with get_client(sync_client=True) as client:
        try:
            problem = "is " + ", ".join(
                limit_drift(client.read_global_concurrency_limit_by_name(name), slots)
            )
        except ObjectNotFound:
            problem = "does not exist"
    if problem != "is ":
        flag = f" --connected-app-block {block_name}" if block_name else ""
        raise RefreshCapacityError(
            f"Refresh capacity of connected app{f' block {block_name!r}' if block_name else ''} is not ready: "
            f"global concurrency limit {name!r} {problem}. Run "
            f"`python -m deployments.bootstrap{flag} --fix` to create or repair it."
        )


@contextmanager
def hold_refresh_capacity(app: TableauConnectedApp, *, block_name: str = "") -> Iterator[float]:
    """Hold one slot of the app's refresh-capacity limit for the duration of the ``with`` block.

    Yields:
        How long acquiring the slot took, in seconds.

    Raises:
        RefreshCapacityError: the limit is missing, disabled, mis-sized or decaying.
        RefreshCapacityTimeoutError: no slot became free within ``app.acquire_timeout_seconds``.
    """
    check_capacity_limit(app, block_name)
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            stack.enter_context(
                concurrency(
                    app.concurrency_limit_name,
                    occupy=1,
                    timeout_seconds=app.acquire_timeout_seconds,
                    lease_duration=app.lease_duration_seconds,
                    strict=True,
                    holder=current_holder(),
                )
            )
        except TimeoutError:
            raise RefreshCapacityTimeoutError(
                f"No slot of {app.concurrency_limit_name!r} (refresh capacity {app.refresh_capacity}) became "
                f"free within {app.acquire_timeout_seconds:.0f} s. Raise refresh_capacity (and run the bootstrap "
                "with --fix) or acquire_timeout_seconds."
            ) from None
        wait = time.monotonic() - started
        logger.info("Holding a slot of %r after %.2f s", app.concurrency_limit_name, wait)
        yield wait
