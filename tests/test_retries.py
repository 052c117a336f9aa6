"""pipelines.retries: the back-off every retry loop uses, and the one Retry-After parser."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from devstack.tableau.errors import too_many_refreshes
from pipelines.retries import Backoff, retry_after_seconds, retrying

# --- Retry-After ---------------------------------------------------------------------------------------

# RFC 9110, section 10.2.3's examples: "Retry-After: Fri, 31 Dec 1999 23:59:59 GMT", "Retry-After: 120".
RFC_DATE = "Fri, 31 Dec 1999 23:59:59 GMT"
RFC_DATE_EPOCH = datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("message", "header", "seconds"),
    [
        ("Too many requests for 'api.rest.refresh_extracts'. Please retry after 29 minutes.", None, 1740),
        ("Please retry after 1 minute.", None, 60),
        ("Please retry after 2 hours.", None, 7200),
        ("Retry after 45 seconds.", None, 45),
        ("Please retry after 29 minutes.", "120", 120),  # the header wins
        ("Please retry after 29 minutes.", "Thu, 01 Jan 2026 00:10:00 GMT", 600),  # an HTTP date
        ("Please retry after 29 minutes.", "Thu, 01 Jan 2026 00:05:00 -0000", 300),  # a date in UTC, no zone
        ("Please retry after 1 minute.", "soon", 60),  # an unreadable header: the message
        ("Slow down.", None, 30),  # neither: the default
    ],
)
def test_the_wait_after_a_429_is_read_in_seconds_minutes_or_hours(message, header, seconds):
    """Moved from tests/tableau/test_refresh_protocol.py (tasks.tableau.refresh's parser)."""
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert retry_after_seconds(header, message, default=30.0, now=now) == seconds


def test_retry_after_takes_seconds_or_an_http_date():
    """Moved from tests/crm_export/test_crm_pipeline.py (pipelines.crm_export.destinations' parser)."""
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 -0000", now=1445412480.0) == 10.0  # UTC too
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),  # delay-seconds
        (" 120 ", 120.0),  # surrounding white space
        ("0", 0.0),
        (RFC_DATE, 90.0),  # IMF-fixdate
        ("Friday, 31-Dec-99 23:59:59 GMT", 90.0),  # obsolete RFC 850 form (RFC 9110, 5.6.7)
        ("Fri Dec 31 23:59:59 1999", 90.0),  # obsolete asctime form: no zone, so UTC
        ("Fri, 31 Dec 1999 23:00:00 GMT", 0.0),  # a date already past: no wait
    ],
)
def test_a_retry_after_header_in_seconds_or_an_http_date(header, seconds):
    assert retry_after_seconds(header, now=RFC_DATE_EPOCH - 90) == seconds


@pytest.mark.parametrize("header", [None, "", "   ", "soon", "-3", "1.5", "120 seconds", "Fri, 32 Dec 1999"])
def test_an_unreadable_header_is_no_wait_or_the_default(header):
    assert retry_after_seconds(header) is None
    assert retry_after_seconds(header, "Slow down.", default=30.0) == 30.0
    assert retry_after_seconds(header, "Please retry after 2 minutes.", default=30.0) == 120.0


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        ("please RETRY AFTER 3 Minutes", 180.0),
        ("Retry after 1.5 hours.", 5400.0),
        ("retry after 30 secs", 30.0),
        ("retry after 30s", 30.0),
        ("retry after 5 mins", 300.0),
        ("retry after 2 hrs", 7200.0),
        ("retry after 1 h", 3600.0),
    ],
)
def test_tableau_words_its_wait_in_a_unit_it_chooses(message, seconds):
    assert retry_after_seconds(None, message) == seconds


@pytest.mark.parametrize(
    "message", ["", "Slow down.", "retry after soon", "retry after 5 days", "retry after 5 minutesago"]
)
def test_a_message_without_a_wait_is_no_wait_or_the_default(message):
    assert retry_after_seconds(None, message) is None
    assert retry_after_seconds(None, message, default=30.0) == 30.0


@pytest.mark.parametrize(
    ("wait", "unit", "seconds"),
    [(45, "seconds", 45), (1740, "minutes", 1740), (61, "minutes", 120), (3600, "hours", 3600)],
)
def test_the_standins_429000_is_read_with_and_without_its_header(wait, unit, seconds):
    """devstack/tableau's 429000, worded as Tableau Cloud words it (summary and detail, as
    tasks.tableau.refresh joins them), rounded up to whole units; with a header, the header wins."""
    error = too_many_refreshes(wait, unit)
    said = f"{error.summary} {error.detail}"
    assert retry_after_seconds(None, said, default=30.0) == seconds
    assert retry_after_seconds(error.headers["Retry-After"], said, default=30.0) == wait


# --- Backoff -------------------------------------------------------------------------------------------


def test_the_ceiling_doubles_from_the_first_wait_up_to_the_cap():
    assert [Backoff(0.2, 5.0).ceiling(n) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert [Backoff(1.0).delay(n) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]  # no cap, no jitter
    assert Backoff(0.2, 5.0).ceiling(100_000) == 5.0  # no float overflow however long it retries


def test_jitter_draws_the_wait_below_its_ceiling():
    rng = random.Random(7)
    for backoff, low in ((Backoff(2.0, 60.0, jitter="half"), 0.5), (Backoff(1.0, 10.0, jitter="full"), 0.0)):
        for n in range(1, 9):
            waits = [backoff.delay(n, rng) for _ in range(50)]
            assert all(low * backoff.ceiling(n) <= w <= backoff.ceiling(n) for w in waits)
            assert len(set(waits)) == 50  # drawn, not fixed


def test_the_waits_are_those_of_the_loops_it_replaced():
    """The same numbers from the same random draws as the four hand-written loops it replaced."""
    attempts = range(1, 12)

    def drawn(formula, seed=3):
        rng = random.Random(seed)
        return [formula(n, rng) for n in attempts]

    # tasks/tableau/pat_pool.py: uniform(0.5, 1) × min(0.2 · 2^attempt, 5), attempt from 0.
    assert drawn(lambda n, rng: Backoff(0.2, 5.0, jitter="half").delay(n, rng)) == drawn(
        lambda n, rng: rng.uniform(0.5, 1.0) * min(0.2 * 2 ** (n - 1), 5.0)
    )
    # tasks/metadata/lineage/metadata_api.py: min(cap, base · 2^attempt) × uniform(0.5, 1), attempt from 0.
    assert drawn(lambda n, rng: Backoff(2.0, 60.0, jitter="half").delay(n, rng)) == drawn(
        lambda n, rng: min(60.0, 2.0 * 2 ** (n - 1)) * rng.uniform(0.5, 1)
    )
    # tasks/metadata/extractors/athena/query_history.py: base · 2^(attempt − 1), attempt from 1.
    assert [Backoff(1.0).delay(n) for n in attempts] == [1.0 * 2 ** (n - 1) for n in attempts]
    # pipelines/crm_export/post_batches.py: uniform(0, min(cap, base · 2^(attempt − 1))), attempt from 1.
    assert drawn(lambda n, rng: Backoff(1.0, 60.0, jitter="full").delay(n, rng)) == drawn(
        lambda n, rng: rng.uniform(0, min(60.0, 1.0 * 2 ** (n - 1)))
    )


def test_a_backoff_is_a_tenacity_wait():
    assert Backoff(0.5, 3.0)(SimpleNamespace(attempt_number=3)) == 2.0


# --- retrying ------------------------------------------------------------------------------------------


def answers(*results):
    """A function returning ``results`` one call after the other, and the list of its calls."""
    calls: list[int] = []
    pending = list(results)

    def fn():
        calls.append(len(calls) + 1)
        return pending.pop(0)

    return fn, calls


def test_it_calls_again_after_each_wait_until_the_result_will_do():
    fn, calls = answers(None, None, "lease")
    slept: list[float] = []
    result = retrying(Backoff(0.2, 5.0), again=lambda r: r is None, sleep=slept.append)(fn)
    assert result == "lease"
    assert calls == [1, 2, 3]
    assert slept == [0.2, 0.4]


def test_after_its_retries_it_returns_the_last_result_and_hooks_saw_every_try():
    fn, calls = answers(["q-1", "q-2"], ["q-2"], ["q-2"])
    slept: list[float] = []
    failures: list[tuple[object, int]] = []
    sleeps: list[tuple[object, float]] = []
    result = retrying(
        Backoff(1.0),
        again=bool,
        retries=2,
        after_failure=lambda r, attempt: failures.append((r, attempt)),
        before_sleep=lambda r, wait: sleeps.append((r, wait)),
        sleep=slept.append,
    )(fn)
    assert result == ["q-2"]
    assert calls == [1, 2, 3]
    assert slept == [1.0, 2.0]
    # after_failure: after every result that asked for another try, the last one included.
    assert failures == [(["q-1", "q-2"], 1), (["q-2"], 2), (["q-2"], 3)]
    assert sleeps == [(["q-1", "q-2"], 1.0), (["q-2"], 2.0)]


def test_zero_retries_is_one_call():
    fn, calls = answers(None)
    slept: list[float] = []
    assert retrying(Backoff(1.0), again=lambda r: r is None, retries=0, sleep=slept.append)(fn) is None
    assert calls == [1]
    assert slept == []


def test_at_the_deadline_it_stops_and_returns_the_last_result():
    fn, calls = answers(None, None)
    slept: list[float] = []
    result = retrying(Backoff(1.0), again=lambda r: r is None, deadline=0.0, sleep=slept.append)(fn)
    assert result is None
    assert calls == [1]
    assert slept == []


def test_an_exception_is_not_retried_and_propagates_as_raised():
    calls = []

    def fn():
        calls.append(1)
        raise LookupError("limit missing")

    with pytest.raises(LookupError, match="limit missing"):
        retrying(Backoff(1.0), again=lambda r: True, retries=5, sleep=lambda s: None)(fn)
    assert calls == [1]


def test_without_a_sleep_it_waits_with_time_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    fn, _ = answers(None, "done")
    assert retrying(Backoff(0.01), again=lambda r: r is None)(fn) == "done"
    assert slept == [0.01]


def test_the_dataflow_workers_need_no_tenacity():
    """The workers' package (pipelines/setup.py) does not install tenacity: Backoff and the parser work
    without it; only ``retrying`` needs it."""
    code = (
        "import sys; sys.modules['tenacity'] = None\n"
        "from pipelines.retries import Backoff, retry_after_seconds, retrying\n"
        "import pipelines.crm_export.destinations\n"
        "assert Backoff(1.0, 4.0, jitter='full').delay(9) <= 4.0\n"
        "assert retry_after_seconds('3') == 3.0\n"
        "try:\n"
        "    retrying(Backoff(1.0), again=bool)\n"
        "except ImportError:\n"
        "    print('retrying needs tenacity')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "retrying needs tenacity"
