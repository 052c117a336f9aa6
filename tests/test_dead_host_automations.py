"""The automations that keep a dead host from losing a run: their shapes (Prefect's "detect zombie flows"
recipe, a claimed run that never starts, a crashed run rerun once; scoped to this project's tags), what
they do on the session's Prefect server, and their idempotent creation and drift report by
``python -m deployments.bootstrap``."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from conftest import BOOTSTRAP_COMMAND
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed, Pending, Running

from deployments.automations import (
    HEARTBEAT_SECONDS,
    PENDING_AUTOMATION_NAME,
    RERUN_AUTOMATION_NAME,
    ZOMBIE_AUTOMATION_NAME,
    ZOMBIE_CRASH_MESSAGE,
    bootstrap_automation,
    bootstrap_zombie_automation,
    rerun_crashed_flow_runs_automation,
    stuck_pending_flow_runs_automation,
    zombie_flow_runs_automation,
)
from deployments.bootstrap import main

ROOT = Path(__file__).resolve().parents[1]


def named(within_seconds: float = 90):
    """The automation under a name no other test uses."""
    automation = zombie_flow_runs_automation(within_seconds=within_seconds)
    return automation.model_copy(update={"name": f"crash-zombies-{uuid.uuid4().hex[:8]}"})


def test_the_automation_is_the_recipe_scoped_to_the_projects_deployments():
    automation = zombie_flow_runs_automation()
    trigger = automation.trigger
    assert automation.name == ZOMBIE_AUTOMATION_NAME
    assert automation.enabled
    assert trigger.posture == "Proactive"
    assert trigger.threshold == 1
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert trigger.expect == {
        "prefect.flow-run.heartbeat",
        "prefect.flow-run.Completed",
        "prefect.flow-run.Failed",
        "prefect.flow-run.Cancelled",
        "prefect.flow-run.Crashed",
    }
    assert trigger.for_each == {"prefect.resource.id"}
    assert trigger.within.total_seconds() == 3 * HEARTBEAT_SECONDS
    assert trigger.match_related.model_dump()["prefect.resource.id"] == [
        "prefect.tag.tableau",
        "prefect.tag.crm",
        "prefect.tag.metadata",
    ]
    (action,) = automation.actions
    assert action.type == "change-flow-run-state"
    assert action.state == StateType.CRASHED


def test_a_window_within_one_heartbeat_or_no_tag_is_refused():
    with pytest.raises(ValueError, match=r"must exceed the heartbeat period \(30 s\)"):
        zombie_flow_runs_automation(within_seconds=30)
    with pytest.raises(ValueError, match="must name at least one tag"):
        zombie_flow_runs_automation(tags=())


@pytest.mark.parametrize("bad", [5, 9.9, float("nan"), float("inf")])
def test_a_pending_bound_shorter_than_a_start_or_not_finite_is_refused(bad: float):
    with pytest.raises(ValueError, match=r"must be a number of seconds of at least 10, longer than a worker"):
        stuck_pending_flow_runs_automation(pending_seconds=bad)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "pending_seconds=5.0 must be a number of seconds of at least 10"),
        ("2m", "'2m' is not a number of seconds"),
    ],
)
def test_the_bootstrap_command_refuses_a_bad_pending_bound_before_touching_anything(value, message, capsys):
    with pytest.raises(SystemExit) as exited:  # argparse's usage error: nothing was read or created
        main(["--pending-seconds", value])
    assert exited.value.code == 2
    assert f"error: argument --pending-seconds: {message}" in capsys.readouterr().err


def test_created_once_then_reported_unchanged():
    expected = named()
    assert bootstrap_zombie_automation(expected, check_only=True).status == "MISSING"
    assert bootstrap_zombie_automation(expected).status == "created"
    assert bootstrap_zombie_automation(expected).status == "ok"
    with get_client(sync_client=True) as client:
        assert len(client.read_automations_by_name(expected.name)) == 1


def test_disabled_changed_or_duplicated_automations_are_drift_until_fixed():
    expected = named()
    bootstrap_zombie_automation(expected)
    with get_client(sync_client=True) as client:
        (found,) = client.read_automations_by_name(expected.name)
        client.pause_automation(found.id)
        client.create_automation(named(within_seconds=300).model_copy(update={"name": expected.name}))

    report = bootstrap_zombie_automation(expected)
    assert report.status == "DRIFT"
    assert not report.ok
    assert "disabled" in report.problems
    assert "2 automations have this name, expected 1" in report.problems
    # --check wins over --fix: nothing changes
    assert bootstrap_zombie_automation(expected, fix=True, check_only=True).status == "DRIFT"

    assert bootstrap_zombie_automation(expected, fix=True).status == "repaired"
    assert bootstrap_zombie_automation(expected).status == "ok"
    with get_client(sync_client=True) as client:
        (found,) = client.read_automations_by_name(expected.name)
    assert found.enabled
    assert found.trigger.within.total_seconds() == 90


def test_a_changed_window_is_named_in_the_drift():
    expected = named()
    bootstrap_zombie_automation(named(within_seconds=120).model_copy(update={"name": expected.name}))
    (line,) = bootstrap_zombie_automation(expected).lines()
    assert line.startswith("DRIFT")
    assert "trigger within is 120.0, expected 90.0" in line


@BOOTSTRAP_COMMAND
def test_the_bootstrap_command_creates_and_checks_all_three(workspace, capsys):
    workspace.create_pool(["pat-1"])
    assert main(["--pool-block", workspace.pool_block]) == 0
    assert main(["--pool-block", workspace.pool_block, "--check"]) == 0
    out = capsys.readouterr().out
    for name in (ZOMBIE_AUTOMATION_NAME, PENDING_AUTOMATION_NAME, RERUN_AUTOMATION_NAME):
        assert f"ok        automation {name}" in out
        with get_client(sync_client=True) as client:
            assert len(client.read_automations_by_name(name)) == 1
    # Another bound is drift, named, until --fix
    assert main(["--pool-block", workspace.pool_block, "--check", "--pending-seconds", "300"]) == 1
    assert "trigger within is 120.0, expected 300.0" in capsys.readouterr().out
    assert main(["--pool-block", workspace.pool_block]) == 0


@pytest.mark.slow(seconds=20)
def test_a_claimed_run_is_put_back_when_pending_too_long_and_a_crashed_run_is_rerun_once():
    tag = f"dead-host-{uuid.uuid4().hex[:8]}"  # these automations see this test's runs only
    for automation in (
        stuck_pending_flow_runs_automation(pending_seconds=10, tags=(tag,)),
        rerun_crashed_flow_runs_automation(tags=(tag,)),
    ):
        named_for_test = automation.model_copy(update={"name": f"{automation.name}-{tag}"})
        assert bootstrap_automation(named_for_test).status == "created"

    from prefect import flow

    @flow(name=f"dead-host-{tag}")
    def nothing() -> None: ...

    with get_client(sync_client=True) as client:
        stuck = client.create_flow_run(nothing, tags=[tag])
        client.set_flow_run_state(stuck.id, Pending(), force=True)
        crashed = client.create_flow_run(nothing, tags=[tag])
        client.set_flow_run_state(crashed.id, Running(), force=True)  # run count 1
        client.set_flow_run_state(
            crashed.id, Crashed(message=f"{ZOMBIE_CRASH_MESSAGE} for 90 s (test)."), force=True
        )

        def state(run) -> object:
            return client.read_flow_run(run.id).state

        deadline = time.monotonic() + 90
        while not (state(stuck).name == "Rescheduled" and state(crashed).name == "AwaitingRetry"):
            assert time.monotonic() < deadline, (state(stuck), state(crashed))
            time.sleep(0.5)
        assert state(stuck).type == StateType.SCHEDULED
        assert "did not start it within 10 s" in state(stuck).message
        assert state(crashed).type == StateType.SCHEDULED
        assert state(crashed).message.startswith("Rerun once")
        # Its second execution crashes too: it stays Crashed (once is once).
        client.set_flow_run_state(crashed.id, Running(), force=True)  # run count 2
        client.set_flow_run_state(
            crashed.id, Crashed(message=f"{ZOMBIE_CRASH_MESSAGE} for 90 s (again)."), force=True
        )
        time.sleep(5)  # a reactive trigger acts within a second or two of the event
        assert state(crashed).is_crashed()
        assert client.read_flow_run(crashed.id).run_count == 2


PREFECT_FILES = sorted(path.name for path in ROOT.glob("prefect*.yaml"))


@pytest.mark.parametrize("prefect_file", PREFECT_FILES)
def test_every_deployment_of_the_project_is_covered_and_beats_as_the_automations_expect(prefect_file: str):
    """A deployment of a prefect file (process or Docker pools) without a monitored tag, or whose runs
    beat at another period (or not at all), would escape the automations or be crashed between two
    heartbeats."""
    import yaml

    from deployments.automations import DEFAULT_WITHIN_SECONDS, MONITORED_TAGS

    document = yaml.safe_load((ROOT / prefect_file).read_text())
    deployments = document["deployments"]
    assert deployments
    for deployment in deployments:
        name = deployment["name"]
        assert set(deployment.get("tags") or []) & set(MONITORED_TAGS), (name, deployment.get("tags"))
        job_variables = deployment["work_pool"]["job_variables"]
        assert job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS), name
        assert job_variables["stream_output"] is False, name
    assert DEFAULT_WITHIN_SECONDS >= 2 * HEARTBEAT_SECONDS
