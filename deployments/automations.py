"""The automation that marks a flow run Crashed when its heartbeats stop (its host died), created
idempotently by ``python -m deployments.bootstrap``, which reports drift as it does for the limits.

It is Prefect's "detect zombie flows" recipe (docs: "How to detect and respond to zombie flows"):
after each ``prefect.flow-run.heartbeat`` of a run, expect another heartbeat or a terminal state
event of that run within ``within_seconds``, else change the run to CRASHED. The runs emit a
heartbeat every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (``HEARTBEAT_SECONDS``, set for the
deployments in ``prefect.yaml``). It covers only runs tagged with one of ``MONITORED_TAGS``, so that
runs of other deployments of the workspace, which may beat at Prefect's default of 180 s, are not
crashed by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

ZOMBIE_AUTOMATION_NAME = "crash-zombie-flow-runs"
#: Heartbeat period of the deployments' runs (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``; Prefect's minimum is 30).
HEARTBEAT_SECONDS = 30
#: Three missed heartbeats, as in Prefect's recipe.
DEFAULT_WITHIN_SECONDS = 3 * HEARTBEAT_SECONDS
#: The tags of this project's deployments (prefect.yaml): Tableau refresh, CRM export, metadata collection.
MONITORED_TAGS = ("tableau", "crm", "metadata")
_TERMINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


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
    if within_seconds <= HEARTBEAT_SECONDS:
        raise ValueError(
            f"within_seconds={within_seconds} must exceed the heartbeat period ({HEARTBEAT_SECONDS} s), "
            "or every live run is marked Crashed between two heartbeats."
        )
    if not tags:
        raise ValueError("tags must name at least one tag: the automation would cover no flow run.")
    return AutomationCore(
        name=ZOMBIE_AUTOMATION_NAME,
        description=(
            f"Marks a flow run tagged {', '.join(tags)} Crashed when no heartbeat or final state follows "
            f"its last heartbeat within {within_seconds:.0f} s: its host or process died "
            "(created by python -m deployments.bootstrap)."
        ),
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification(
                {"prefect.resource.role": "tag", "prefect.resource.id": [f"prefect.tag.{t}" for t in tags]}
            ),
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _TERMINAL_EVENTS)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"Marked Crashed: no heartbeat for {within_seconds:.0f} s (its worker host or process died). "
                    "Its deployment's concurrency slot is free again; rerun it."
                ),
            )
        ],
    )


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
    """What bootstrap found and did about the automation, as one line."""

    status: str = ""  # created | repaired | ok | MISSING | DRIFT
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("created", "repaired", "ok")

    def lines(self) -> list[str]:
        return [f"{self.status:<9} automation {ZOMBIE_AUTOMATION_NAME}{self.detail}"]


def bootstrap_zombie_automation(
    expected: AutomationCore | None = None, *, fix: bool = False, check_only: bool = False
) -> AutomationReport:
    """Create the automation if missing; report (or, with ``fix``, repair) drift: disabled, another
    trigger or action, or several automations of that name. With ``check_only`` nothing is written."""
    expected = expected or zombie_flow_runs_automation()
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(expected.name)
        if not found:
            if check_only:
                return AutomationReport("MISSING")
            created = client.create_automation(expected)
            # Another bootstrap may have created it at the same moment: all keep the same one.
            found = client.read_automations_by_name(expected.name)
            keep = min(found, key=lambda automation: str(automation.id))
            if keep.id != created:
                client.delete_automation(created)
                return AutomationReport("ok")
            return AutomationReport("created")
        first, extra = found[0], found[1:]
        problems = list(
            dict.fromkeys(p for automation in found for p in automation_drift(automation, expected))
        )
        if extra:
            problems.append(f"{len(found)} automations have this name, expected 1")
        if not problems:
            return AutomationReport("ok")
        if not fix or check_only:
            return AutomationReport("DRIFT", ": " + "; ".join(problems), problems)
        for duplicate in extra:
            client.delete_automation(duplicate.id)
        client.update_automation(first.id, expected)
        return AutomationReport("repaired", ": was " + "; ".join(problems), problems)
