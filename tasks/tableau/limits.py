"""What the PAT pool (``pat_pool``) and a connected app's refresh capacity (``connected_app``) share: both
are Prefect global concurrency limits, leased ``strict`` in the name of the current run, and checked
before they are trusted, since a disabled limit grants every request without enforcing anything.
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.context import FlowRunContext, TaskRunContext


class LimitNotReadyError(RuntimeError):
    """A global concurrency limit that guards Tableau (a PAT pool's, a connected app's refresh capacity)
    is missing, disabled, mis-sized or decaying; the message names it and the command that fixes it."""


def limit_drift(found: GlobalConcurrencyLimitResponse, slots: int) -> list[str]:
    """What makes an existing limit unfit to guard PATs or refresh slots: disabled (a disabled limit
    grants every request), a limit other than ``slots``, or slot decay (a decaying slot frees itself
    while held)."""
    problems = []
    if not found.active:
        problems.append("disabled")
    if found.limit != slots:
        problems.append(f"limit {found.limit}, expected {slots}")
    if found.slot_decay_per_second:
        problems.append(f"slot decay {found.slot_decay_per_second}/s, expected none")
    return problems


def current_holder() -> ConcurrencyLeaseHolder | None:
    """The lease holder shown in the Prefect UI: the current task run or flow run, if any."""
    if task_ctx := TaskRunContext.get():
        return ConcurrencyLeaseHolder(type="task_run", id=task_ctx.task_run.id)
    if flow_ctx := FlowRunContext.get():
        if flow_ctx.flow_run is not None:
            return ConcurrencyLeaseHolder(type="flow_run", id=UUID(str(flow_ctx.flow_run.id)))
    return None
