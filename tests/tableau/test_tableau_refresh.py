"""The domain refresh flow against the Tableau stand-in and a real Prefect server.

Each test runs real flow runs; the stand-in's audit says what Tableau would have seen.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict

import pytest
from conftest import MARKETING, SALES

from blocks.loading import BlockNotFoundError
from flows.tableau.refresh import refresh_domain, refresh_domains
from tasks.tableau.domains import DomainConfigError
from tasks.tableau.pat_pool import PatPoolError
from tasks.tableau.refresh import ContentResolutionError, DomainRefreshError, PollPolicy
from tasks.tableau.session import TableauAuthError

FAST = PollPolicy(initial_interval=0.1, max_interval=0.5, backoff=1.5, rate_limit_default_wait=0.2)


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def assert_no_pat_shared(audit: dict) -> None:
    """Every PAT session ended by sign-out before the next sign-in with that PAT began."""
    sessions = defaultdict(list)
    for session in audit["sessions"]:
        sessions[session["pat"]].append(session)
    for pat, held in sessions.items():
        held.sort(key=lambda s: s["signed_in_at"])
        assert all(s["end_reason"] == "signed_out" for s in held), (pat, held)
        for earlier, later in zip(held, held[1:], strict=False):
            assert earlier["ended_at"] <= later["signed_in_at"], (pat, earlier, later)


def test_refreshes_every_content_of_a_domain_with_one_sign_in(standin, workspace, caplog):
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains({"sales": SALES})

    # Prefect's run loggers do not propagate to the root logger: listen on them directly.
    caplog.set_level(logging.INFO, logger="prefect")  # the suite runs Prefect at WARNING
    prefect_logger = logging.getLogger("prefect")
    prefect_logger.addHandler(caplog.handler)
    try:
        state = refresh_domain("sales", config, FAST, return_state=True)
    finally:
        prefect_logger.removeHandler(caplog.handler)
    summary = state.result()
    # One line per content as its job is triggered and as it ends, in the run's log (the Prefect UI).
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("prefect.")]
    for r in summary.refreshes:
        ref = f"{r.kind} Sales/{r.content}"
        assert f"Triggered refresh of {ref}: job {r.job_id}" in lines, lines
        assert any(
            line.startswith(f"Refresh of {ref} ended: job {r.job_id} succeeded (finish code 0) after ")
            for line in lines
        ), lines

    assert summary.sign_ins == 1
    assert {(r.kind, r.content, r.status) for r in summary.refreshes} == {
        *{("datasource", n, "succeeded") for n in ("Orders", "Leads", "Targets", "Regions")},
        ("workbook", "Sales Overview", "succeeded"),
    }
    assert all(r.job_id and r.finished_at and r.duration_seconds > 0 for r in summary.refreshes)
    audit = standin.audit()
    assert audit["jobs_created"] == {
        **{f"datasource:Sales/{n}": 1 for n in ("Orders", "Leads", "Targets", "Regions")},
        "workbook:Sales/Sales Overview": 1,
    }
    assert audit["sign_ins"] == {"pat-1": 1}
    assert_no_pat_shared(audit)

    artifact = run_artifact(state.state_details.flow_run_id, "tableau-refresh-sales")
    rows = json.loads(artifact.data)
    assert [row["content"] for row in rows] == [f"{r.kind} Sales/{r.content}" for r in summary.refreshes]
    assert all(
        row["status"] == "succeeded" and row["job"] == r.job_id
        for row, r in zip(rows, summary.refreshes, strict=True)
    )
    assert all(len(row["started"]) == len("06:43:32") for row in rows)  # times of day; the date is described
    assert f"5/5 succeeded; PAT `{workspace.pat_block('pat-1')}`" in artifact.description
    assert "1 sign-in(s). Times UTC on " in artifact.description


def run_artifact(flow_run_id, key: str):
    """The artifact ``key`` that the flow run ``flow_run_id`` published."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
            )
        )
    return artifact


@pytest.mark.slow(seconds=20)
def test_contention_more_domain_runs_than_pats(make_standin, tmp_path):
    from conftest import Workspace

    names = [f"d{i}" for i in range(6)]
    standin = make_standin(
        projects=["Ops"],
        datasources=[
            {"project": "Ops", "name": f"{d}-ds{j}", "duration_seconds": [30, 80]}
            for d in names
            for j in range(3)
        ],
        workbooks=[],
        backgrounder_slots=4,
    )
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1", "pat-2"], acquire_timeout_seconds=120)
    config = workspace.write_domains(
        {d: {"datasources": [{"project": "Ops", "name": f"{d}-ds{j}"} for j in range(3)]} for d in names}
    )

    states = refresh_domains(None, config, FAST)

    assert states == {d: "Completed" for d in names}
    audit = standin.audit()
    assert audit["invalidated_token_requests"] == 0
    assert sum(audit["sign_ins"].values()) == len(names)  # one sign-in per domain run
    assert set(audit["sign_ins"]) <= {"pat-1", "pat-2"}
    assert_no_pat_shared(audit)
    assert all(count == 1 for count in audit["jobs_created"].values())
    assert len(audit["jobs_created"]) == 18
    assert audit["max_concurrent_jobs"] <= 4


@pytest.mark.slow(seconds=18)
def test_rerun_while_refreshes_are_in_flight_adopts_the_jobs(make_standin, tmp_path):
    from conftest import Workspace

    # 15 s jobs: the second run must find them in flight even when a loaded machine is slow to start it
    slow = [{"project": "Sales", "name": n, "duration_seconds": 1500} for n in ("Orders", "Leads", "Targets")]
    standin = make_standin(datasources=slow, workbooks=[], projects=["Sales"])
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1", "pat-2"])
    config = workspace.write_domains(  # incremental: Tableau lists these jobs as increment_extracts
        {
            "sales": {
                "incremental": True,
                "datasources": [{"project": "Sales", "name": n["name"]} for n in slow],
            }
        }
    )

    first, first_outcome = in_thread(refresh_domain, "sales", config, FAST)
    # A loaded machine once took over 30 s to start the first run; one that ended early says why.
    wait_until(lambda: len(standin.audit()["jobs"]) == 3 or not first.is_alive(), 120, "the first run's jobs")
    assert "error" not in first_outcome, first_outcome
    assert len(standin.audit()["jobs"]) == 3, first_outcome
    second = refresh_domain("sales", config, FAST)
    first.join(60)

    assert "error" not in first_outcome, first_outcome.get("error")
    assert all(r.adopted and r.status == "succeeded" for r in second.refreshes)
    assert {r.job_id for r in second.refreshes} == {r.job_id for r in first_outcome["value"].refreshes}
    audit = standin.audit()
    assert audit["jobs_created"] == {f"datasource:Sales/{n['name']}": 1 for n in slow}
    assert audit["conflict_requests"] == 3
    assert audit["invalidated_token_requests"] == 0


def test_token_expiry_mid_poll_signs_in_again_and_finishes(make_standin, tmp_path):
    from conftest import Workspace

    slow = [{"project": "Sales", "name": n, "duration_seconds": 300} for n in ("Orders", "Leads")]
    standin = make_standin(datasources=slow, workbooks=[], projects=["Sales"])
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains(
        {"sales": {"datasources": [{"project": "Sales", "name": n["name"]} for n in slow]}}
    )

    run, outcome = in_thread(refresh_domain, "sales", config, FAST)
    wait_until(lambda: len(standin.audit()["jobs"]) == 2, what="the run's jobs")
    assert standin.expire_sessions() == 1
    run.join(60)

    assert "error" not in outcome, outcome.get("error")
    assert outcome["value"].sign_ins == 2
    assert all(r.status == "succeeded" for r in outcome["value"].refreshes)
    audit = standin.audit()
    assert audit["expired_token_requests"] >= 1
    assert audit["invalidated_token_requests"] == 0
    assert audit["sign_ins"] == {"pat-1": 2}


def test_failed_refresh_fails_the_domain_after_all_finished_and_names_it(make_standin, tmp_path):
    from conftest import Workspace

    content = [
        {"project": "Sales", "name": "Orders", "duration_seconds": 200},
        {"project": "Sales", "name": "Broken", "duration_seconds": 20, "fail_notes": "ODBC: login failed"},
        {"project": "Sales", "name": "Bridged", "duration_seconds": 20, "finish_code": 3},
    ]
    standin = make_standin(datasources=content, workbooks=[], projects=["Sales"])
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains(
        {"sales": {"datasources": [{"project": "Sales", "name": c["name"]} for c in content]}}
    )

    with pytest.raises(
        DomainRefreshError, match=r"1 of 3 .*Sales/Broken: failed \(ODBC: login failed\)"
    ) as raised:
        refresh_domain("sales", config, FAST)

    statuses = {r.content: r.status for r in raised.value.summary.refreshes}
    assert statuses == {
        "Orders": "succeeded",
        "Broken": "failed",
        "Bridged": "succeeded",
    }  # 3 (Bridge) is success
    assert all(job["finish_code"] is not None for job in standin.audit()["jobs"])  # nothing left running


def test_domain_timeout_cancels_the_jobs_still_running(make_standin, tmp_path):
    from conftest import Workspace

    content = [
        {"project": "Sales", "name": "Quick", "duration_seconds": 10},
        {"project": "Sales", "name": "Endless", "duration_seconds": 100000},
    ]
    standin = make_standin(datasources=content, workbooks=[], projects=["Sales"])
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains(
        {
            "sales": {
                "timeout_seconds": 3,
                "datasources": [{"project": "Sales", "name": c["name"]} for c in content],
            }
        }
    )

    with pytest.raises(DomainRefreshError, match=r"Sales/Endless: timed out"):
        refresh_domain("sales", config, FAST)

    finish_codes = {job["name"]: job["finish_code"] for job in standin.audit()["jobs"]}
    assert finish_codes == {"Quick": 0, "Endless": 2}  # 2: cancelled by the run


def test_rate_limited_incremental_refreshes_back_off_and_all_start(make_standin, tmp_path):
    from conftest import Workspace

    standin = make_standin(refresh_rate_limit={"max_requests": 2, "per_seconds": 1, "retry_after_seconds": 1})
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains({"sales": {**SALES, "incremental": True}})

    summary = refresh_domain("sales", config, FAST)

    assert all(r.status == "succeeded" for r in summary.refreshes)
    audit = standin.audit()
    assert audit["rate_limited_requests"] >= 1
    assert sum(audit["jobs_created"].values()) == 5
    assert all(
        job["incremental"] for job in audit["jobs"]
    )  # requested with <extractRefresh incremental="true">


def test_a_429_whose_wait_passes_the_deadline_fails_the_rest_as_throttled_without_asking_again(
    make_standin, tmp_path
):
    from conftest import Workspace

    limit = {"max_requests": 2, "per_seconds": 600, "retry_after_seconds": 1800}
    standin = make_standin(
        refresh_rate_limit={**limit, "retry_after_unit": "minutes", "retry_after_header": False}
    )
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains({"sales": SALES})  # timeout 120 s: far less than 30 minutes

    started = time.monotonic()
    with pytest.raises(
        DomainRefreshError, match=r"3 of 5 refreshes did not succeed: .*Sales/Targets: throttled"
    ) as raised:
        refresh_domain("sales", config, FAST)

    assert time.monotonic() - started < 60  # failed at once, never slept towards the 30 minutes
    statuses = [r.status for r in raised.value.summary.refreshes]
    assert statuses == ["succeeded", "succeeded", "throttled", "throttled", "throttled"]
    assert "Please retry after 30 minutes." in raised.value.summary.refreshes[2].notes
    assert "waiting 1800 s would pass the domain's deadline" in raised.value.summary.refreshes[2].notes
    assert standin.audit()["rate_limited_requests"] == 1  # the contents after it were not requested


def test_jobs_cancelled_for_spent_quota_are_quota_exhausted_and_not_retried(make_standin, tmp_path):
    from conftest import Workspace

    content = [{"project": "Sales", "name": n, "duration_seconds": 60} for n in ("Orders", "Leads")]
    standin = make_standin(
        datasources=content,
        workbooks=[],
        projects=["Sales"],
        daily_job_capacity_seconds=60,
        backgrounder_slots=1,
        clock_start="2026-06-01T12:00:00Z",  # far from midnight UTC, when the capacity resets
    )
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains(
        {"sales": {"datasources": [{"project": "Sales", "name": c["name"]} for c in content]}}
    )

    with pytest.raises(DomainRefreshError) as raised:
        refresh_domain("sales", config, FAST)

    message = str(raised.value)
    assert "Sales/Leads: quota exhausted (No more non-interactive quota remaining for your site)" in message
    assert "daily job capacity is spent; it resets at 24:00 UTC. They were not retried" in message
    assert [r.status for r in raised.value.summary.refreshes] == ["succeeded", "quota exhausted"]
    assert standin.audit()["jobs_created"] == {"datasource:Sales/Orders": 1, "datasource:Sales/Leads": 1}


# --- Bad input: a clear error, and no refresh started ------------------------------------------


def assert_nothing_started(standin) -> None:
    assert standin.audit()["jobs"] == []


def test_unknown_domain(standin, workspace):
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains({"sales": SALES, "marketing": MARKETING})
    with pytest.raises(DomainConfigError, match=r"Unknown domain 'salse'.*\['marketing', 'sales'\]"):
        refresh_domain("salse", config)
    assert_nothing_started(standin)
    assert standin.audit()["sign_ins"] == {}


def test_unknown_content_lists_what_exists(standin, workspace):
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains(
        {
            "sales": {
                "datasources": [
                    {"project": "Sales", "name": "Orders"},
                    {"project": "Marketing", "name": "Orders"},
                    {"project": "Sales", "name": "Nope"},
                ]
            }
        }
    )
    with pytest.raises(ContentResolutionError) as raised:
        refresh_domain("sales", config)
    message = str(raised.value)
    assert (
        "datasource Marketing/Orders not found; found under that name: ['Archive/Orders', 'Sales/Orders']"
        in message
    )
    assert "datasource Sales/Nope not found; no content has that name" in message
    assert_nothing_started(standin)


def test_ambiguous_content_lists_the_candidates(standin, workspace):
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains({"sales": {"datasources": [{"name": "Orders"}, {"name": "Leads"}]}})
    with pytest.raises(
        ContentResolutionError,
        match=r"datasource \*/Orders is ambiguous: 2 candidates \['Archive/Orders .*', 'Sales/Orders .*'\]; name its project",
    ):
        refresh_domain("sales", config)
    assert_nothing_started(standin)


def test_wrong_pat_secret_is_401001_naming_the_block(standin, workspace):
    workspace.create_pool(["pat-1"], secrets={"pat-1": "not-the-secret"})
    config = workspace.write_domains({"sales": SALES})
    with pytest.raises(
        TableauAuthError, match=rf"PAT block '{workspace.pat_block('pat-1')}'.*401001"
    ) as raised:
        refresh_domain("sales", config)
    assert "not-the-secret" not in str(raised.value)
    assert_nothing_started(standin)
    assert standin.audit()["failed_sign_ins"] == 1


def test_missing_pool_block(standin, workspace):
    config = workspace.write_domains({"sales": SALES})
    with pytest.raises(
        BlockNotFoundError,
        match=rf"Tableau PAT Pool block '{workspace.pool_block}', needed by domain 'sales', does not exist",
    ):
        refresh_domain("sales", config)
    assert_nothing_started(standin)


def test_missing_pat_block(standin, workspace):
    from prefect.client.orchestration import get_client

    workspace.create_pool(["pat-1", "pat-2"])
    with get_client(sync_client=True) as client:
        client.delete_block_document(
            client.read_block_document_by_name(
                workspace.pat_block("pat-2"), "tableau-personal-access-token"
            ).id
        )
    config = workspace.write_domains({"sales": SALES})
    with pytest.raises(
        BlockNotFoundError,
        match=rf"Personal Access Token block '{workspace.pat_block('pat-2')}', needed by Tableau PAT Pool",
    ):
        refresh_domain("sales", config)
    assert_nothing_started(standin)


def test_missing_concurrency_limits(standin, workspace):
    workspace.create_pool(["pat-1"], bootstrap=False)
    config = workspace.write_domains({"sales": SALES})
    with pytest.raises(PatPoolError, match=r"'tableau-pat-\w+-pool' does not exist.*deployments.bootstrap"):
        refresh_domain("sales", config)
    assert_nothing_started(standin)


def test_disabled_concurrency_limit(standin, workspace):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    pool = workspace.create_pool(["pat-1", "pat-2"])
    limit = pool.pat_limit_names()[workspace.pat_block("pat-2")]
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(limit, GlobalConcurrencyLimitUpdate(active=False))
    config = workspace.write_domains({"sales": SALES})
    with pytest.raises(PatPoolError, match=rf"'{limit}' is disabled"):
        refresh_domain("sales", config)
    assert_nothing_started(standin)


def test_refresh_domains_rejects_unknown_names_and_empty_configuration(standin, workspace):
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains({"sales": SALES})
    with pytest.raises(DomainConfigError, match="Unknown domain 'nope'"):
        refresh_domains(["sales", "nope"], config)
    empty = workspace.write_domains({})
    with pytest.raises(DomainConfigError, match="defines no domains"):
        refresh_domains(None, empty)
    assert_nothing_started(standin)
