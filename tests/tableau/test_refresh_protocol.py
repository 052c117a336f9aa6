"""Edge cases of the refresh protocol that the stand-in cannot stage, with fake TSC endpoints.

Everything else runs against the stand-in (test_tableau_refresh.py); these fakes only mimic the
TSC calls one function makes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from tableauserverclient.server.endpoint.exceptions import FailedSignInError, ServerResponseError

from tasks.tableau.refresh import (
    ContentRef,
    ContentResolutionError,
    PollPolicy,
    RefreshJob,
    ResolvedContent,
    ThrottledError,
    resolve_content,
    trigger_refresh,
    trigger_refreshes,
    wait_for_jobs,
)
from tasks.tableau.session import TableauAuthError, TableauSession

NOW = datetime(2026, 11, 22, tzinfo=UTC)
POLICY = PollPolicy(initial_interval=0.01, max_interval=0.02, rate_limit_default_wait=0.5)


class FakeSession:
    """What the protocol functions use of a TableauSession: ``server``, ``call`` and ``last_retry_after``."""

    def __init__(self, retry_after=None, **endpoints):
        self.server = SimpleNamespace(**endpoints)
        self.retry_after = retry_after

    def call(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def last_retry_after(self):
        return self.retry_after


def job(job_id: str = "job-1", title: str = "Orders", subtitle: str = "Data Source"):
    return SimpleNamespace(id=job_id, created_at=NOW, title=title, subtitle=subtitle)


def trigger_orders(
    session, *, name_is_unique=True, incremental=False, seconds=60.0, policy=POLICY, sleep=None
):
    """``trigger_refresh`` of the data source Sales/Orders (id ds-1), with a deadline ``seconds`` away."""
    return trigger_refresh(
        session,
        ContentRef("datasource", "Sales", "Orders"),
        ResolvedContent("ds-1", "Sales", name_is_unique),
        incremental=incremental,
        deadline=time.monotonic() + seconds,
        policy=policy,
        **({"sleep": sleep} if sleep else {}),
    )


def test_same_named_projects_make_content_ambiguous():
    items = [
        SimpleNamespace(id="a", name="Orders", project_name="Sales", project_id="p1"),
        SimpleNamespace(id="b", name="Orders", project_name="Sales", project_id="p2"),  # nested "Sales"
    ]
    session = FakeSession(datasources=SimpleNamespace(filter=lambda name: items))
    with pytest.raises(
        ContentResolutionError, match=r"Sales/Orders is ambiguous: 2 candidates .*rename one of the projects"
    ):
        resolve_content(session, [ContentRef("datasource", "Sales", "Orders")])


def test_rate_limited_refresh_waits_the_hinted_seconds_then_starts():
    answers = [
        ServerResponseError("429000", "Too Many Requests", "Retry after 7 seconds."),
        ServerResponseError("429000", "Too Many Requests", "Slow down."),  # no hint: the policy's default
        job("job-9"),
    ]

    def refresh(content_id, incremental):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    slept = []
    session = FakeSession(datasources=SimpleNamespace(refresh=refresh))
    result = trigger_orders(session, incremental=True, sleep=slept.append)
    assert result.job_id == "job-9"
    assert not result.adopted
    assert slept == [7.0, 0.5]


def test_a_job_tableau_cancelled_for_spent_quota_is_quota_exhausted_not_cancelled():
    cancelled = SimpleNamespace(
        created_at=NOW,
        started_at=None,
        completed_at=NOW,
        finish_code=2,
        notes=["No more non-interactive quota remaining for your site"],
    )
    plain = SimpleNamespace(created_at=NOW, started_at=None, completed_at=NOW, finish_code=2, notes=[])
    session = FakeSession(
        jobs=SimpleNamespace(get_by_id=lambda job_id: cancelled if job_id == "job-q" else plain)
    )
    quota, other = (RefreshJob(ContentRef("datasource", "S", n), n, job_id=f"job-{n}") for n in ("q", "c"))
    seen = []
    wait_for_jobs(
        session,
        [quota, other],
        deadline=time.monotonic() + 5,
        policy=POLICY,
        on_progress=lambda r: seen.append([x.status for x in r]),
    )
    assert (quota.status, other.status) == ("quota exhausted", "cancelled")
    assert seen[-1] == ["quota exhausted", "cancelled"]


def test_rate_limit_past_the_deadline_is_throttled_without_sleeping():
    def refresh(content_id, incremental):
        raise ServerResponseError("429000", "Too Many Requests", "Retry after 600 seconds.")

    slept = []
    session = FakeSession(datasources=SimpleNamespace(refresh=refresh))
    with pytest.raises(ThrottledError, match=r"waiting 600 s would pass the domain's deadline \(\d s left\)"):
        trigger_orders(session, seconds=5, sleep=slept.append)
    assert slept == []


def test_conflict_that_cannot_be_attributed_waits_then_triggers_its_own_job():
    """409093 while two in-flight jobs carry the content's name: wait for both, then refresh again."""
    refresh_answers = [None, job("own")]  # TSC returns None on 409093
    in_flight = [[job("x"), job("y")], [job("x"), job("other", title="Orders 2")], []]

    session = FakeSession(
        datasources=SimpleNamespace(refresh=lambda content_id, incremental: refresh_answers.pop(0)),
        jobs=SimpleNamespace(get=lambda req_options: (in_flight.pop(0), None)),
    )
    result = trigger_orders(session, name_is_unique=False, sleep=lambda s: None)
    assert result.job_id == "own"
    assert not result.adopted
    assert in_flight == []
    assert refresh_answers == []


def test_interrupted_wait_cancels_the_jobs_still_running():
    cancelled = []

    def get_by_id(job_id):
        raise KeyboardInterrupt  # as when the flow run is cancelled or the process terminated

    session = FakeSession(jobs=SimpleNamespace(get_by_id=get_by_id, cancel=cancelled.append))
    refreshes = [RefreshJob(ContentRef("datasource", "Sales", n), f"id-{n}", job_id=f"job-{n}") for n in "ab"]
    with pytest.raises(KeyboardInterrupt):
        wait_for_jobs(session, refreshes, deadline=time.monotonic() + 60, policy=POLICY)
    assert sorted(cancelled) == ["job-a", "job-b"]
    assert all(r.status == "cancelled" for r in refreshes)


def test_interrupted_triggering_cancels_the_jobs_already_started():
    cancelled = []
    answers = [job("job-a"), KeyboardInterrupt()]

    def refresh(content_id, incremental):
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    session = FakeSession(
        datasources=SimpleNamespace(refresh=refresh), jobs=SimpleNamespace(cancel=cancelled.append)
    )
    resolved = {ContentRef("datasource", "S", n): ResolvedContent(f"id-{n}", "S", True) for n in "ab"}
    with pytest.raises(KeyboardInterrupt):
        trigger_refreshes(session, resolved, incremental=False, deadline=time.monotonic() + 60, policy=POLICY)
    assert cancelled == ["job-a"]


def test_a_job_whose_polls_keep_failing_fails_alone():
    done = SimpleNamespace(created_at=NOW, started_at=NOW, completed_at=NOW, finish_code=0, notes=[])

    def get_by_id(job_id):
        if job_id == "job-bad":
            raise ServerResponseError("500000", "Internal Server Error", "backgrounder unavailable")
        return done

    session = FakeSession(jobs=SimpleNamespace(get_by_id=get_by_id, cancel=lambda job_id: None))
    good, bad = (RefreshJob(ContentRef("datasource", "S", n), n, job_id=f"job-{n}") for n in ("good", "bad"))
    wait_for_jobs(session, [good, bad], deadline=time.monotonic() + 60, policy=POLICY)
    assert good.status == "succeeded"
    assert bad.status == "failed"
    assert "polling failed 5 times" in bad.notes


def test_second_401002_right_after_signing_in_again_means_a_foreign_sign_in(standin):
    from blocks import TableauPersonalAccessToken, TableauSite

    site = TableauSite(server_url=standin.url, site_content_url="analytics", api_version="3.29")
    pat = TableauPersonalAccessToken(token_name="pat-1", token_secret="secret-1")

    def always_invalidated():
        raise FailedSignInError(
            "401002", "Unauthorized Access", "Invalid authentication credentials were provided."
        )

    with TableauSession(site, pat, "pat-1-block") as session:
        with pytest.raises(
            TableauAuthError, match="something outside this PAT pool signs in with the same PAT"
        ):
            session.call(always_invalidated)
        assert session.sign_ins == 2  # signed in again exactly once


def test_conflict_with_no_visible_job_backs_off_until_the_deadline():
    """409093 while Query Jobs shows nothing (e.g. the job just ended): retrigger, but never spin."""
    calls = []

    def refresh(content_id, incremental):
        calls.append(time.monotonic())
        return None  # 409093 every time

    session = FakeSession(
        datasources=SimpleNamespace(refresh=refresh), jobs=SimpleNamespace(get=lambda req_options: ([], None))
    )
    with pytest.raises(TimeoutError, match="stayed busy"):
        trigger_orders(session, seconds=0.3, policy=PollPolicy(initial_interval=0.05))
    assert 2 <= len(calls) <= 7


def test_a_finished_job_without_completed_at_counts_by_its_finish_code():
    finished = SimpleNamespace(created_at=NOW, started_at=NOW, completed_at=None, finish_code=0, notes=[])
    session = FakeSession(jobs=SimpleNamespace(get_by_id=lambda job_id: finished, cancel=lambda job_id: None))
    refresh = RefreshJob(ContentRef("datasource", "S", "a"), "a", job_id="job-a")
    wait_for_jobs(session, [refresh], deadline=time.monotonic() + 5, policy=POLICY)
    assert refresh.status == "succeeded"
    assert refresh.succeeded


def test_an_invalidated_pat_stops_polling_and_cancels_the_jobs():
    cancelled = []

    def get_by_id(job_id):
        raise TableauAuthError(
            "The credential token of PAT 'x' was invalidated (401002) right after signing in"
        )

    session = FakeSession(jobs=SimpleNamespace(get_by_id=get_by_id, cancel=cancelled.append))
    refreshes = [RefreshJob(ContentRef("datasource", "S", n), n, job_id=f"job-{n}") for n in "ab"]
    with pytest.raises(TableauAuthError):
        wait_for_jobs(session, refreshes, deadline=time.monotonic() + 60, policy=POLICY)
    assert sorted(cancelled) == ["job-a", "job-b"]


def test_a_failing_cancel_still_tries_the_other_jobs_and_keeps_outcomes():
    running_job = SimpleNamespace(created_at=NOW, started_at=NOW, completed_at=None, finish_code=-1, notes=[])
    done = SimpleNamespace(created_at=NOW, started_at=NOW, completed_at=NOW, finish_code=0, notes=[])
    polls = {"job-a": [running_job, done], "job-b": [running_job, "auth"], "job-c": [KeyboardInterrupt()]}
    cancelled = []

    def get_by_id(job_id):
        answer = polls[job_id].pop(0)
        if answer == "auth":
            raise TableauAuthError("invalidated right after signing in")
        if isinstance(answer, BaseException):
            raise answer  # the run is cancelled while polling
        return answer

    def cancel(job_id):
        if job_id in ("job-a", "job-b"):
            raise ServerResponseError("409000", "Conflict", "cannot cancel")
        cancelled.append(job_id)

    session = FakeSession(jobs=SimpleNamespace(get_by_id=get_by_id, cancel=cancel))
    a, b, c = (RefreshJob(ContentRef("datasource", "S", n), n, job_id=f"job-{n}") for n in "abc")
    with pytest.raises(KeyboardInterrupt):
        wait_for_jobs(session, [a, b, c], deadline=time.monotonic() + 60, policy=POLICY)
    assert a.status == "succeeded"  # ended before the cancel reached it
    assert b.status == "cancelled"
    assert "cancel request failed" in b.notes
    assert c.status == "cancelled"
    assert cancelled == ["job-c"]  # reached despite b's failures
