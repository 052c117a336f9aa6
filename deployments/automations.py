"""The automations that keep a dead worker host from losing a flow run, created idempotently by
``python -m deployments.bootstrap``, which reports drift as it does for the limits (docs/operations.md, "A host
that dies", says when each acts):

- ``crash-zombie-flow-runs``: Prefect's "detect zombie flows" recipe (docs: "How to detect and respond
  to zombie flows"): after each ``prefect.flow-run.heartbeat`` of a run, expect another heartbeat or a
  terminal state event within ``within_seconds``, else mark the run CRASHED. The runs beat every
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (``HEARTBEAT_SECONDS``, set in ``prefect.yaml``).
- ``reschedule-stuck-pending-flow-runs``: a run a worker claimed (Pending) that neither started nor
  ended within ``pending_seconds`` — its worker died between the claim and the start, so it sends no
  heartbeat — goes back to Scheduled, for any worker of its pool to claim again.
- ``rerun-crashed-flow-runs``: a run the first automation marked Crashed during its first execution
  (``prefect.run-count`` 1) goes back to Scheduled once: the same flow run, parameters and id, so a
  refresh adopts its in-flight Tableau jobs and a CRM export its Dataflow job.

Each covers only runs tagged with one of ``MONITORED_TAGS``, so that runs of other deployments of the
workspace, which may beat at Prefect's default of 180 s, are left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

ZOMBIE_AUTOMATION_NAME = "crash-zombie-flow-runs"
PENDING_AUTOMATION_NAME = "reschedule-stuck-pending-flow-runs"
RERUN_AUTOMATION_NAME = "rerun-crashed-flow-runs"
#: Heartbeat period of the deployments' runs (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``; Prefect's minimum is 30).
HEARTBEAT_SECONDS = 30
#: Three missed heartbeats, as in Prefect's recipe.
DEFAULT_WITHIN_SECONDS = 3 * HEARTBEAT_SECONDS
#: How long a claimed run may stay Pending before it is put back. It must exceed the longest time from a
#: worker's claim to Running, or a run still starting is put back and may execute twice. Measured here for
#: a process worker (the flow-run process's start, the engine's and the flow's imports): 3–15 s alone
#: (docs/benchmarks.md: 4 s alone, ~20 s for six at once on 2 cores), up to 35 s beside ``make test``'s
#: workers (tests/multihost). 120 s is over three times the slowest start measured. Pools whose workers
#: pull an image or wait for a node first (Docker, Kubernetes) need that time too:
#: ``bootstrap --pending-seconds``.
DEFAULT_PENDING_SECONDS = 120
#: The shortest pending bound accepted: a live process worker takes seconds to start a run.
MIN_PENDING_SECONDS = 10
#: The message prefix of the zombie automation's Crashed state: what the rerun automation matches.
ZOMBIE_CRASH_MESSAGE = "Marked Crashed: no heartbeat"
#: The tags of this project's deployments (prefect.yaml): Tableau refresh, CRM export, metadata collection.
MONITORED_TAGS = ("tableau", "crm", "metadata")
_TERMINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")
#: Pending-type states (a claimed run not yet running) and every state a run leaves them for.
_PENDING_STATES = ("Pending", "Submitting", "InfrastructurePending")
_LEFT_PENDING_STATES = (
    "Running",
    "Scheduled",
    "AwaitingRetry",
    "AwaitingConcurrencySlot",
    "Late",
    "Cancelling",
    "Paused",
    "Suspended",
    *_TERMINAL_EVENTS,
)


def _tagged(tags: tuple[str, ...]) -> ResourceSpecification:
    """The related resources of a run tagged with any of ``tags``."""
    if not tags:
        raise ValueError("tags must name at least one tag: the automation would cover no flow run.")
    return ResourceSpecification(
        {"prefect.resource.role": "tag", "prefect.resource.id": [f"prefect.tag.{t}" for t in tags]}
    )


def _silence_trigger(
    after: set[str], expect: set[str], tags: tuple[str, ...], within_seconds: float
) -> EventTrigger:
    """A proactive trigger, per flow run tagged with any of ``tags``: fires when one of ``after`` is
    followed by none of ``expect`` within ``within_seconds``."""
    return EventTrigger(
        match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
        match_related=_tagged(tags),
        after=after,
        expect=expect,
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=within_seconds),
    )


def zombie_flow_runs_automation(
    within_seconds: float = DEFAULT_WITHIN_SECONDS, tags: tuple[str, ...] = MONITORED_TAGS
) -> AutomationCore:
    """The automation that marks a run Crashed ``within_seconds`` after its last heartbeat.

    Args:
        within_seconds: how long after a heartbeat another heartbeat or a final state must come; keep
            it at least two heartbeat periods, or a run whose heartbeat is late by moments is crashed.
        tags: the runs covered: those with any of these tags (the deployment's tags).

    Raises:
        ValueError: ``within_seconds`` is not longer than one heartbeat period, or no tag is given.
    """
    if not math.isfinite(within_seconds) or within_seconds <= HEARTBEAT_SECONDS:
        raise ValueError(
            f"within_seconds={within_seconds} must exceed the heartbeat period ({HEARTBEAT_SECONDS} s), "
            "or every live run is marked Crashed between two heartbeats."
        )
    return AutomationCore(
        name=ZOMBIE_AUTOMATION_NAME,
        description=(
            f"Marks a flow run tagged {', '.join(tags)} Crashed when no heartbeat or final state follows "
            f"its last heartbeat within {within_seconds:.0f} s: its host or process died "
            "(created by python -m deployments.bootstrap)."
        ),
        trigger=_silence_trigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _TERMINAL_EVENTS)},
            tags=tags,
            within_seconds=within_seconds,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"{ZOMBIE_CRASH_MESSAGE} for {within_seconds:.0f} s (its worker host or process died). "
                    f"Its deployment's concurrency slot is free again; automation {RERUN_AUTOMATION_NAME} "
                    "reruns it once."
                ),
            )
        ],
    )


def check_pending_seconds(pending_seconds: float) -> float:
    """``pending_seconds`` (a bound on claim → Running, in seconds) if it is a finite number of at least
    ``MIN_PENDING_SECONDS``; else ``ValueError`` saying why and what to give (``DEFAULT_PENDING_SECONDS``)."""
    if not math.isfinite(pending_seconds) or pending_seconds < MIN_PENDING_SECONDS:
        raise ValueError(
            f"pending_seconds={pending_seconds} must be a number of seconds of at least {MIN_PENDING_SECONDS}, "
            "longer than a worker takes from its claim to Running (3-15 s for a process worker, up to 35 s on "
            f"a loaded host), or runs starting normally would be put back; the default is {DEFAULT_PENDING_SECONDS}"
        )
    return pending_seconds


def stuck_pending_flow_runs_automation(
    pending_seconds: float = DEFAULT_PENDING_SECONDS, tags: tuple[str, ...] = MONITORED_TAGS
) -> AutomationCore:
    """The automation that puts back to Scheduled a run still Pending ``pending_seconds`` after a worker
    claimed it (the worker died before the run's process started: no heartbeat ever comes).

    The state change is forced (Prefect refuses Pending → Scheduled otherwise) and releases the run's
    deployment concurrency slot. Raises ``ValueError`` for ``pending_seconds`` that ``check_pending_seconds``
    refuses, or no tag."""
    check_pending_seconds(pending_seconds)
    return AutomationCore(
        name=PENDING_AUTOMATION_NAME,
        description=(
            f"Puts back to Scheduled a flow run tagged {', '.join(tags)} that a worker claimed and did not "
            f"start within {pending_seconds:.0f} s: the worker died between the claim and the start "
            "(created by python -m deployments.bootstrap)."
        ),
        trigger=_silence_trigger(
            after={f"prefect.flow-run.{state}" for state in _PENDING_STATES},
            expect={f"prefect.flow-run.{state}" for state in _LEFT_PENDING_STATES},
            tags=tags,
            within_seconds=pending_seconds,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="Rescheduled",
                force=True,
                message=(
                    f"Rescheduled: a worker claimed it and did not start it within {pending_seconds:.0f} s (the "
                    "worker died); any worker of its pool claims it again."
                ),
            )
        ],
    )


def rerun_crashed_flow_runs_automation(tags: tuple[str, ...] = MONITORED_TAGS) -> AutomationCore:
    """The automation that reruns, once, a run the zombie automation marked Crashed during its first
    execution: the Crashed event's ``prefect.run-count`` is 1 and its message is the zombie automation's.
    The run goes back to Scheduled (``AwaitingRetry``, forced): the same flow run, id and parameters.
    A run that crashes again (run count 2) stays Crashed."""
    return AutomationCore(
        name=RERUN_AUTOMATION_NAME,
        description=(
            f"Reruns once a flow run tagged {', '.join(tags)} that was marked Crashed because its host died "
            "while it ran (created by python -m deployments.bootstrap)."
        ),
        trigger=EventTrigger(
            match=ResourceSpecification(
                {
                    "prefect.resource.id": "prefect.flow-run.*",
                    "prefect.run-count": "1",
                    "prefect.state-message": f"{ZOMBIE_CRASH_MESSAGE}*",
                }
            ),
            match_related=_tagged(tags),
            expect={"prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.SCHEDULED,
                name="AwaitingRetry",
                force=True,
                message="Rerun once: its host died while it ran (it was marked Crashed for lack of heartbeats).",
            )
        ],
    )


def project_automations(
    within_seconds: float = DEFAULT_WITHIN_SECONDS,
    pending_seconds: float = DEFAULT_PENDING_SECONDS,
    tags: tuple[str, ...] = MONITORED_TAGS,
) -> list[AutomationCore]:
    """The three automations bootstrap keeps: crash the runs whose heartbeats stop, put back the claimed
    runs that never started, rerun once the crashed ones."""
    return [
        zombie_flow_runs_automation(within_seconds, tags),
        stuck_pending_flow_runs_automation(pending_seconds, tags),
        rerun_crashed_flow_runs_automation(tags),
    ]


def _shape(automation: AutomationCore) -> dict[str, Any]:
    """What must match: enabled, the trigger (without its id; its sets in order) and the actions."""
    trigger = automation.trigger.model_dump(mode="json", exclude={"id"})
    for key in ("after", "expect", "for_each"):
        if isinstance(trigger.get(key), list):
            trigger[key] = sorted(trigger[key])
    return {
        "enabled": automation.enabled,
        "trigger": trigger,
        "actions": [action.model_dump(mode="json") for action in automation.actions],
    }


def automation_drift(found: AutomationCore, expected: AutomationCore) -> list[str]:
    """How ``found`` differs from ``expected``: disabled, or which trigger fields or actions differ."""
    have, want = _shape(found), _shape(expected)
    problems = [] if have["enabled"] else ["disabled"]
    for key in sorted(set(have["trigger"]) | set(want["trigger"])):
        if have["trigger"].get(key) != want["trigger"].get(key):
            problems.append(
                f"trigger {key} is {have['trigger'].get(key)!r}, expected {want['trigger'].get(key)!r}"
            )
    if have["actions"] != want["actions"]:
        problems.append(f"actions are {have['actions']!r}, expected {want['actions']!r}")
    return problems


@dataclass
class AutomationReport:
    """What bootstrap found and did about one automation, as one line."""

    name: str
    status: str = ""  # created | repaired | ok | MISSING | DRIFT
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("created", "repaired", "ok")

    def lines(self) -> list[str]:
        return [f"{self.status:<9} automation {self.name}{self.detail}"]


def bootstrap_automations(
    expected: list[AutomationCore] | None = None, *, fix: bool = False, check_only: bool = False
) -> list[AutomationReport]:
    """``bootstrap_automation`` of each of ``expected`` (default ``project_automations()``)."""
    return [
        bootstrap_automation(automation, fix=fix, check_only=check_only)
        for automation in expected or project_automations()
    ]


def bootstrap_zombie_automation(
    expected: AutomationCore | None = None, *, fix: bool = False, check_only: bool = False
) -> AutomationReport:
    """``bootstrap_automation`` of the zombie automation (default ``zombie_flow_runs_automation()``)."""
    return bootstrap_automation(expected or zombie_flow_runs_automation(), fix=fix, check_only=check_only)


def bootstrap_automation(
    expected: AutomationCore, *, fix: bool = False, check_only: bool = False
) -> AutomationReport:
    """Create the automation ``expected`` if missing; report (or, with ``fix``, repair) drift: disabled,
    another trigger or action, or several automations of its name. With ``check_only`` nothing is written."""
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(expected.name)
        if not found:
            if check_only:
                return AutomationReport(expected.name, "MISSING")
            created = client.create_automation(expected)
            # Another bootstrap may have created it at the same moment: all keep the same one.
            found = client.read_automations_by_name(expected.name)
            keep = min(found, key=lambda automation: str(automation.id))
            if keep.id != created:
                client.delete_automation(created)
                return AutomationReport(expected.name, "ok")
            return AutomationReport(expected.name, "created")
        first, extra = found[0], found[1:]
        problems = list(
            dict.fromkeys(p for automation in found for p in automation_drift(automation, expected))
        )
        if extra:
            problems.append(f"{len(found)} automations have this name, expected 1")
        if not problems:
            return AutomationReport(expected.name, "ok")
        if not fix or check_only:
            return AutomationReport(expected.name, "DRIFT", ": " + "; ".join(problems), problems)
        for duplicate in extra:
            client.delete_automation(duplicate.id)
        client.update_automation(first.id, expected)
        return AutomationReport(expected.name, "repaired", ": was " + "; ".join(problems), problems)
