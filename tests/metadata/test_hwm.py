"""High-water marks: window planning, publishing, both stores (the Variable one on a real server), the
pending window of a run that failed halfway, and the source's HWM lock (a global concurrency limit on the
session's Prefect server)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from prefect.variables import Variable
from pydantic import ValidationError

from tasks.metadata.hwm import (
    HWM_FORMAT,
    FileHwmStore,
    HwmError,
    HwmInFutureError,
    HwmLockError,
    HwmStore,
    InvalidSourceNameError,
    MalformedHwmError,
    PendingWindow,
    PendingWindowError,
    PendingWindowFile,
    VariableHwmStore,
    Window,
    WindowInProgressError,
    check_now,
    claim_window,
    format_hwm,
    hwm_file_key,
    hwm_lock,
    hwm_lock_name,
    normalise_source_name,
    pending_window_key,
    plan_or_resume,
    plan_window,
    publish_hwm,
)
from tasks.metadata.landing import LandedFile, LocalLanding

T0 = datetime(2026, 11, 22, 6, 0, 0, tzinfo=UTC)
LAG = timedelta(hours=2)
LOOKBACK = timedelta(days=1)


# --- fakes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeLandedFile:
    key: str
    size: int


class FakeTarget:
    """In-memory stand-in for ``tasks.metadata.landing.LandingTarget`` (same methods)."""

    def __init__(self, landing_dir: str = "catalog/athena/landing"):
        self.landing_dir = landing_dir
        self.objects: dict[str, bytes] = {}
        self.fail_uploads = False

    def upload(self, local_path: Path, name: str) -> FakeLandedFile:
        if self.fail_uploads:
            raise PermissionError(f"upload of {name} denied")
        key = f"{self.landing_dir}/{name}"
        self.objects[key] = local_path.read_bytes()
        return FakeLandedFile(key, len(self.objects[key]))

    def read_text(self, key: str) -> str | None:
        data = self.objects.get(key)
        return None if data is None else data.decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.objects[key] = text.encode("utf-8")

    def describe(self) -> str:
        return f"fake target mem://bucket/{self.landing_dir}"

    def uri(self, key: str) -> str:
        return f"mem://bucket/{key}"


class MemoryStore:
    """An ``HwmStore`` in memory, counting publishes."""

    def __init__(self, value: datetime | None = None):
        self.value = value
        self.publishes = 0

    def read(self) -> datetime | None:
        return self.value

    def publish(self, value: datetime) -> None:
        self.value = value
        self.publishes += 1

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # one thread: nothing to race

    def describe(self) -> str:
        return "memory store"


@pytest.fixture
def variable_source(prefect_api_url: str) -> Iterator[str]:
    """A source name no other test uses; its variable is removed afterwards."""
    name = f"athena-{uuid.uuid4().hex[:8]}"
    yield name
    Variable.unset(f"hwm_{name}")


StoreFactory = Callable[[], HwmStore]


@pytest.fixture(params=["variable", "file"])
def make_store(request: pytest.FixtureRequest, variable_source: str) -> StoreFactory:
    """A factory returning a fresh store object over the same HWM, as each new run would build."""
    if request.param == "variable":
        return lambda: VariableHwmStore(variable_source)
    target = FakeTarget()
    return lambda: FileHwmStore(target, "athena")


# --- a run, as the flow will do it -----------------------------------------------------------------

# Query completion times, one every 7 minutes over four days (ids are their index).
EVENTS = [(f"q{i}", T0 - timedelta(days=3) + timedelta(minutes=7 * i)) for i in range(4 * 24 * 60 // 7)]


def run_collector(
    store: HwmStore, now: datetime, target: FakeTarget, tmp_path: Path
) -> tuple[Window, list[str]]:
    """Plan, extract the events in the window, upload, then publish (upload errors propagate)."""
    window = plan_window(store, now, LAG, LOOKBACK)
    ids = [qid for qid, t in EVENTS if window.contains(t)]
    local = tmp_path / f"queries_{window.start:%Y%m%d%H%M%S}_{window.end:%Y%m%d%H%M%S}.csv"
    local.write_text("query_id\n" + "".join(f"{qid}\n" for qid in ids))
    target.upload(local, local.name)
    publish_hwm(store, window)
    return window, ids


def test_three_runs_give_contiguous_windows_without_gap_or_duplicate(make_store, tmp_path: Path):
    target = FakeTarget()
    runs = [
        run_collector(make_store(), T0 + offset, target, tmp_path)
        for offset in (timedelta(0), timedelta(hours=24, seconds=7.5), timedelta(hours=49, minutes=3))
    ]
    windows = [w for w, _ in runs]
    assert [str(w) for w in windows] == [
        "2026-11-21 04:00:00 → 2026-11-22 04:00:00",
        "2026-11-22 04:00:00 → 2026-11-23 04:00:07",
        "2026-11-23 04:00:07 → 2026-11-24 05:03:00",
    ]
    for previous, current in zip(windows, windows[1:], strict=False):
        assert current.start == previous.end
    ids = [qid for _, run_ids in runs for qid in run_ids]
    assert len(ids) == len(set(ids))
    covered = Window(windows[0].start, windows[-1].end)
    assert sorted(ids) == sorted(qid for qid, t in EVENTS if covered.contains(t))
    assert make_store().read() == windows[-1].end


def test_a_failed_upload_leaves_the_hwm_and_the_rerun_plans_the_same_window(make_store, tmp_path: Path):
    target = FakeTarget()
    first, _ = run_collector(make_store(), T0, target, tmp_path)

    target.fail_uploads = True
    now = T0 + timedelta(days=1)
    with pytest.raises(PermissionError):
        run_collector(make_store(), now, target, tmp_path)
    assert make_store().read() == first.end

    # A retry within the same run (same ``now``) plans the identical window ...
    assert plan_window(make_store(), now, LAG, LOOKBACK) == Window(first.end, first.end + timedelta(days=1))
    # ... and a later run starts where the last delivered window ended: nothing is lost.
    target.fail_uploads = False
    rerun, _ = run_collector(make_store(), now + timedelta(hours=1), target, tmp_path)
    assert rerun.start == first.end
    assert make_store().read() == rerun.end


# --- plan_window -----------------------------------------------------------------------------------


def test_end_is_now_minus_lag_truncated_to_seconds_and_start_the_lookback():
    now = datetime(2026, 11, 22, 6, 0, 0, 999_999, tzinfo=UTC)
    window = plan_window(MemoryStore(), now, timedelta(minutes=30), timedelta(hours=6))
    assert window == Window(
        datetime(2026, 11, 21, 23, 30, tzinfo=UTC), datetime(2026, 11, 22, 5, 30, tzinfo=UTC)
    )
    assert window.end.microsecond == 0
    assert format_hwm(window.end) == "2026-11-22 05:30:00"


def test_zero_lag_and_a_sub_second_lookback_still_give_whole_seconds():
    now = datetime(2026, 11, 22, 6, 0, 0, 250_000, tzinfo=UTC)
    window = plan_window(MemoryStore(), now, timedelta(0), timedelta(seconds=10, microseconds=1))
    assert str(window) == "2026-11-22 05:59:49 → 2026-11-22 06:00:00"
    assert window.start.microsecond == 0  # rounded down: the window widens, never leaves a gap


def test_now_in_another_zone_is_converted_to_utc():
    now = datetime(2026, 11, 22, 16, 0, tzinfo=timezone(timedelta(hours=10)))  # 06:00 UTC
    window = plan_window(MemoryStore(), now, LAG, LOOKBACK)
    assert window.end == datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
    assert window.end.tzinfo is UTC


def test_start_is_the_published_hwm():
    hwm = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert plan_window(MemoryStore(hwm), T0, LAG, LOOKBACK).start == hwm


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"now": datetime(2026, 11, 22, 6)}, "timezone-aware"),
        ({"lag": timedelta(seconds=-1)}, "lag must be"),
        ({"initial_lookback": timedelta(0)}, "initial_lookback must be"),
        ({"earliest": datetime(2026, 1, 1)}, "earliest must be timezone-aware"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    arguments = {"now": T0, "lag": LAG, "initial_lookback": LOOKBACK, **kwargs}
    with pytest.raises(ValueError, match=message):
        plan_window(MemoryStore(), **arguments)


def test_start_before_earliest_is_clamped_with_a_warning(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="tasks.metadata.hwm")
    hwm = datetime(2026, 9, 1, tzinfo=UTC)
    earliest = T0 - timedelta(days=45) + timedelta(microseconds=1)  # rounded up to a whole second
    window = plan_window(MemoryStore(hwm), T0, LAG, LOOKBACK, earliest=earliest)
    assert window.start == datetime(2026, 10, 8, 6, 0, 1, tzinfo=UTC)
    assert window.end == datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "2026-09-01 00:00:00 → 2026-10-08 06:00:01" in message
    assert "37 days, 6:00:01" in message
    assert "not extracted" in message


def test_no_clamp_and_no_warning_inside_the_history(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="tasks.metadata.hwm")
    window = plan_window(MemoryStore(), T0, LAG, LOOKBACK, earliest=T0 - timedelta(days=45))
    assert window.start == T0 - LAG - LOOKBACK
    assert not caplog.records


def test_earliest_after_end_is_an_error():
    with pytest.raises(ValueError, match="lag is longer than the source keeps history"):
        plan_window(MemoryStore(), T0, timedelta(days=50), LOOKBACK, earliest=T0 - timedelta(days=45))


def test_hwm_equal_to_end_gives_an_empty_window(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="tasks.metadata.hwm")
    store = MemoryStore(T0 - LAG)
    window = plan_window(store, T0, LAG, LOOKBACK)
    assert window.empty
    assert window.start == T0 - LAG
    assert window.duration == timedelta(0)
    assert "Empty window" in caplog.text
    publish_hwm(store, window)
    assert store.value == T0 - LAG


def test_hwm_between_end_and_now_gives_an_empty_window_at_the_hwm(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="tasks.metadata.hwm")
    hwm = T0 - timedelta(minutes=30)  # published while the lag was shorter
    window = plan_window(MemoryStore(hwm), T0, LAG, LOOKBACK)
    assert window == Window(hwm, hwm)
    assert "was the lag raised?" in caplog.text


def test_hwm_after_now_is_an_error():
    store = MemoryStore(T0 + timedelta(seconds=1))
    with pytest.raises(
        HwmInFutureError, match=r"holds 2026-11-22 06:00:01 UTC, after now \(2026-11-22 06:00:00"
    ):
        plan_window(store, T0, LAG, LOOKBACK)


# --- publish_hwm -----------------------------------------------------------------------------------


def test_publish_never_moves_the_hwm_backwards():
    store = MemoryStore(T0)
    with pytest.raises(HwmError, match="not moving it backwards"):
        publish_hwm(store, Window(T0 - timedelta(days=1), T0 - timedelta(hours=1), planned_from=T0))
    assert store.value == T0
    assert store.publishes == 0


def test_publish_refuses_when_the_hwm_moved_since_the_window_was_planned():
    store = MemoryStore(T0 - timedelta(hours=2))
    window = plan_window(store, T0, timedelta(0), LOOKBACK)
    store.value = T0 - timedelta(hours=1)  # another run published meanwhile
    with pytest.raises(HwmError, match="moved since this run planned its window"):
        publish_hwm(store, window)
    assert store.value == T0 - timedelta(hours=1)
    assert store.publishes == 0


def test_publish_checks_the_read_back():
    class LossyStore(MemoryStore):
        def publish(self, value: datetime) -> None:
            self.publishes += 1

    with pytest.raises(HwmError, match="read back nothing"):
        publish_hwm(LossyStore(), Window(T0 - LOOKBACK, T0))


def test_sub_second_hwm_is_refused():
    with pytest.raises(ValueError, match="second precision"):
        publish_hwm(MemoryStore(), Window(T0, T0 + timedelta(microseconds=500)))


# --- Window ----------------------------------------------------------------------------------------


def test_window_is_half_open_and_prints_in_hwm_format():
    window = Window(datetime(2026, 11, 21, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC))
    assert str(window) == "2026-11-21 00:00:00 → 2026-11-22 00:00:00"
    assert window.contains(window.start)
    assert window.contains(window.end - timedelta(microseconds=1))
    assert not window.contains(window.end)
    assert not window.contains(window.start - timedelta(microseconds=1))
    with pytest.raises(ValueError, match="naive"):
        window.contains(datetime(2026, 11, 21, 12))


def test_window_rejects_naive_and_negative():
    with pytest.raises(ValueError, match="naive"):
        Window(datetime(2026, 11, 21), T0)
    with pytest.raises(ValueError, match="is after its end"):
        Window(T0, T0 - timedelta(seconds=1))


# --- VariableHwmStore (real Prefect server) --------------------------------------------------------


def test_variable_store_round_trip(variable_source: str):
    store = VariableHwmStore(variable_source)
    assert store.variable_name == f"hwm_{variable_source}"
    assert store.read() is None
    store.publish(datetime(2026, 11, 22, 4, tzinfo=UTC))
    assert Variable.get(store.variable_name) == "2026-11-22 04:00:00"
    store.publish(datetime(2026, 11, 23, 4, tzinfo=UTC))  # overwrites
    assert VariableHwmStore(variable_source).read() == datetime(2026, 11, 23, 4, tzinfo=UTC)


def test_variable_store_normalises_the_source_name(variable_source: str):
    store = VariableHwmStore(f"  {variable_source.upper()} ")
    assert store.variable_name == f"hwm_{variable_source}"
    assert store.describe() == f"Prefect variable 'hwm_{variable_source}'"


@pytest.mark.parametrize(
    "name, message",
    [
        ("Athena Prod", r"not allowed: ' '"),
        ("athena.prod", r"not allowed: '\.'"),
        ("lz/athena", r"not allowed: '/'"),
        ("", "must be lowercase letters, digits, dashes and underscores"),
        ("_athena", "starting with a letter or digit"),
        ("a" * 252, "at most 251 fit a Prefect variable name"),
    ],
)
def test_invalid_source_names_are_rejected(name: str, message: str):
    with pytest.raises(InvalidSourceNameError, match=message):
        VariableHwmStore(name)
    with pytest.raises(InvalidSourceNameError):
        FileHwmStore(FakeTarget(), name)


def test_longest_valid_source_name_fits_prefect(prefect_api_url: str):
    name = normalise_source_name("a" * 251)
    store = VariableHwmStore(name)
    try:
        store.publish(T0)
        assert store.read() == T0
    finally:
        Variable.unset(store.variable_name)


def test_prefect_rejects_uppercase_variable_names_on_write_but_not_on_read(prefect_api_url: str):
    """Why names are checked before a read: a read by an invalid name silently finds nothing."""
    assert Variable.get("hwm_Athena") is None
    with pytest.raises(ValidationError, match="lowercase letters, numbers, and dashes or underscores"):
        Variable.set("hwm_Athena", "2026-11-22 04:00:00")


@pytest.mark.parametrize("value", ["2026-11-22T04:00:00", "2026-11-22", "", 1764734400])
def test_variable_holding_a_malformed_value_is_an_error(variable_source: str, value):
    Variable.set(f"hwm_{variable_source}", value, overwrite=True)
    with pytest.raises(
        MalformedHwmError, match=rf"Prefect variable 'hwm_{variable_source}' holds .*'%Y-%m-%d %H:%M:%S'"
    ):
        VariableHwmStore(variable_source).read()


# --- FileHwmStore ----------------------------------------------------------------------------------


def test_file_store_round_trip_next_to_the_landing_dir():
    target = FakeTarget("catalog/athena/landing")
    store = FileHwmStore(target, "athena")
    assert store.key == "catalog/athena/athena_hwm.txt"
    assert store.read() is None
    store.publish(datetime(2026, 11, 22, 4, tzinfo=UTC))
    assert target.objects == {"catalog/athena/athena_hwm.txt": b"2026-11-22 04:00:00"}
    assert FileHwmStore(target, "athena").read() == datetime(2026, 11, 22, 4, tzinfo=UTC)
    assert store.describe() == "HWM file mem://bucket/catalog/athena/athena_hwm.txt"


@pytest.mark.parametrize(
    "landing_dir, key",
    [
        ("catalog/athena/landing", "catalog/athena/athena_hwm.txt"),
        ("catalog/athena/landing/", "catalog/athena/athena_hwm.txt"),
        ("lz/athena/landing", "lz/athena/athena_hwm.txt"),
        ("landing", "athena_hwm.txt"),
        ("", "athena_hwm.txt"),
    ],
)
def test_hwm_file_key(landing_dir: str, key: str):
    assert hwm_file_key(landing_dir, "athena") == key


def test_file_store_accepts_a_trailing_newline():
    target = FakeTarget()
    target.write_text("catalog/athena/athena_hwm.txt", "2026-11-22 04:00:00\n")
    assert FileHwmStore(target, "athena").read() == datetime(2026, 11, 22, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "2026-11-22",
        "2026-11-22T04:00:00Z",
        "2026-11-22 4:00:00",
        "2026-13-22 04:00:00",
        "2026-11-22 04:00:00\n2026-11-23 04:00:00\n",
    ],
)
def test_malformed_file_is_an_error_naming_file_and_format(content: str):
    target = FakeTarget()
    target.write_text("catalog/athena/athena_hwm.txt", content)
    with pytest.raises(MalformedHwmError) as excinfo:
        plan_window(FileHwmStore(target, "athena"), T0, LAG, LOOKBACK)
    message = str(excinfo.value)
    assert "HWM file mem://bucket/catalog/athena/athena_hwm.txt" in message
    assert HWM_FORMAT in message
    assert "not ignored" in message


def test_file_store_read_errors_propagate():
    class Broken(FakeTarget):
        def read_text(self, key: str) -> str | None:
            raise PermissionError(f"read of {key} denied")

    with pytest.raises(PermissionError, match="athena_hwm.txt denied"):
        plan_window(FileHwmStore(Broken(), "athena"), T0, LAG, LOOKBACK)


def test_variable_store_is_synchronous_inside_an_event_loop(variable_source: str):
    """Prefect 3.9 dispatches ``Variable.get/set`` to coroutines in async contexts; the store does not."""
    import asyncio

    async def in_loop() -> datetime | None:
        store = VariableHwmStore(variable_source)
        store.publish(T0)
        return store.read()

    assert asyncio.run(in_loop()) == T0


# --- now ---------------------------------------------------------------------------------------------


def test_now_later_than_the_current_time_is_refused():
    current = datetime(2026, 12, 7, 7, 0, 3, 250_000, tzinfo=UTC)
    with pytest.raises(ValueError) as raised:
        check_now(datetime(2026, 12, 7, 8, tzinfo=UTC), current)
    assert str(raised.value) == (
        "now 2026-12-07T08:00:00+00:00 is later than the current time (2026-12-07T07:00:03+00:00): a "
        "high-water mark in the future would skip the data until then for good; leave now unset, or "
        "give an instant in the past"
    )
    # the instant as given (its zone kept), compared as an instant
    with pytest.raises(ValueError, match=r"^now 2026-12-07T09:00:04\+02:00 is later than the current time"):
        check_now(datetime(2026, 12, 7, 9, 0, 4, tzinfo=timezone(timedelta(hours=2))), current)
    assert check_now(current, current) == current
    assert check_now(datetime(2026, 12, 7, 9, tzinfo=timezone(timedelta(hours=2))), current) == datetime(
        2026, 12, 7, 7, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        check_now(datetime(2026, 12, 7, 6), current)


# --- the pending window ------------------------------------------------------------------------------

H = T0 - timedelta(hours=6)  # the published HWM of these tests
W = Window(H, T0 - LAG, planned_from=H)  # the window a run planned from it
LANDED = LandedFile(
    "athena_databases_w.csv", "mem://bucket/catalog/athena/landing/athena_databases_w.csv", 10
)


def pending_file(target: FakeTarget | None = None) -> PendingWindowFile:
    return PendingWindowFile(target or FakeTarget(), "athena")


def test_the_pending_window_sits_next_to_the_hwm_file_and_round_trips():
    target = FakeTarget("catalog/athena/landing")
    pending = PendingWindowFile(target, "Athena")
    assert (
        pending.key
        == pending_window_key("catalog/athena/landing", "athena")
        == "catalog/athena/athena_hwm_pending.json"
    )
    assert pending.read() is None
    record = PendingWindow(W, "run-1").with_landed(LANDED)
    pending.write(record)
    stored = json.loads(target.objects[pending.key])
    assert stored == {
        "source": "athena",
        "window_start": "2026-11-22 00:00:00",
        "window_end": "2026-11-22 04:00:00",
        "planned_from": "2026-11-22 00:00:00",
        "flow_run_id": "run-1",
        "published": False,
        "landed": [{"name": LANDED.name, "uri": LANDED.uri, "bytes": 10}],
    }
    read = pending.read()
    assert read == record
    assert read.window.planned_from == H
    first_run = PendingWindow(Window(T0 - LOOKBACK, T0))  # no HWM yet: planned from nothing
    pending.write(first_run)
    assert pending.read() == first_run
    assert pending.read().window.planned_from is None


@pytest.mark.parametrize(
    "text", ["", "{}", "[]", '{"window_start": "2026-11-22", "window_end": "x", "planned_from": null}']
)
def test_a_malformed_pending_window_is_an_error_naming_the_file(text: str):
    target = FakeTarget()
    target.write_text("catalog/athena/athena_hwm_pending.json", text)
    with pytest.raises(
        PendingWindowError, match=r"pending window mem://bucket/catalog/athena/athena_hwm_pending.json is not"
    ):
        plan_or_resume(MemoryStore(H), pending_file(target), T0, LAG, LOOKBACK)


def test_a_pending_window_at_the_hwm_is_resumed_whatever_now_is(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="tasks.metadata.hwm")
    pending = pending_file()
    pending.write(PendingWindow(W, "run-1").with_landed(LANDED))
    later = T0 + timedelta(hours=5)
    window = plan_or_resume(MemoryStore(H), pending, later, LAG, LOOKBACK)
    assert window == W
    assert window.planned_from == H
    assert plan_window(MemoryStore(H), later, LAG, LOOKBACK) != W  # what it would have planned
    assert "Resuming window 2026-11-22 00:00:00 → 2026-11-22 04:00:00" in caplog.text
    assert "1 files landed: athena_databases_w.csv" in caplog.text


def test_a_first_run_that_failed_halfway_is_resumed_too():
    pending = pending_file()
    first = Window(T0 - LAG - LOOKBACK, T0 - LAG)  # planned from no HWM
    pending.write(PendingWindow(first, "run-1"))
    assert plan_or_resume(MemoryStore(), pending, T0 + timedelta(hours=1), LAG, LOOKBACK) == first


@pytest.mark.parametrize(
    "record",
    [
        PendingWindow(W, "run-1", published=True),  # published and marked
        PendingWindow(Window(H - timedelta(hours=6), H, planned_from=H - timedelta(hours=6)), "run-0"),
    ],
    ids=["marked-published", "planned-from-an-earlier-hwm"],
)
def test_a_stale_pending_window_is_not_resumed(record: PendingWindow):
    pending = pending_file()
    pending.write(record)
    window = plan_or_resume(MemoryStore(H), pending, T0 + timedelta(hours=1), LAG, LOOKBACK)
    assert window == Window(H, T0 + timedelta(hours=1) - LAG)


def test_claim_pins_the_window_and_returns_what_landed_before():
    pending, store = pending_file(), MemoryStore(H)
    record = claim_window(store, pending, W, "run-1")
    assert record == PendingWindow(W, "run-1")
    assert pending.read() == record
    pending.write(record.with_landed(LANDED))
    again = claim_window(store, pending, W, "run-1")  # a retry of the same run
    assert again.landed == {LANDED.name: LANDED}
    assert again.flow_run_id == "run-1"


def test_claim_takes_over_from_a_run_that_is_no_longer_active():
    pending, store = pending_file(), MemoryStore(H)
    pending.write(PendingWindow(W, "run-1").with_landed(LANDED))
    asked: list[str] = []
    record = claim_window(store, pending, W, "run-2", is_active=lambda run: asked.append(run) or False)
    assert asked == ["run-1"]
    assert record.flow_run_id == "run-2"
    assert record.landed == {LANDED.name: LANDED}
    assert pending.read().flow_run_id == "run-2"


def test_claim_refuses_a_window_an_active_run_is_landing():
    pending, store = pending_file(), MemoryStore(H)
    pending.write(PendingWindow(W, "run-1").with_landed(LANDED))
    with pytest.raises(WindowInProgressError, match=r"Flow run run-1 is landing window .* 1 files landed"):
        claim_window(store, pending, W, "run-2", is_active=lambda run: True)
    assert pending.read().flow_run_id == "run-1"


def test_claim_refuses_a_window_other_than_the_pending_one():
    """Another run began landing a wider window from the same HWM after this run planned."""
    pending, store = pending_file(), MemoryStore(H)
    pending.write(PendingWindow(Window(H, T0, planned_from=H), "run-1").with_landed(LANDED))
    with pytest.raises(PendingWindowError, match="landing both would overlap. Run again"):
        claim_window(store, pending, W, "run-2", is_active=lambda run: False)


def test_claim_of_a_window_already_published_lands_nothing(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.WARNING, logger="tasks.metadata.hwm")
    pending, store = pending_file(), MemoryStore(W.end)  # another run landed and published W
    pending.write(PendingWindow(W, "run-2", published=True))
    assert claim_window(store, pending, W, "run-1") is None
    assert "was published already" in caplog.text
    empty = Window(H, H, planned_from=H)  # an empty window's HWM stays: its record says it was landed
    pending.write(PendingWindow(empty, "run-2", published=True))
    assert claim_window(MemoryStore(H), pending, empty, "run-1") is None


def test_claim_refuses_when_the_hwm_moved_elsewhere():
    pending = pending_file()
    with pytest.raises(HwmError, match="moved since this run planned its window"):
        claim_window(MemoryStore(H + timedelta(hours=1)), pending, W, "run-1")
    assert pending.read() is None


def test_publish_marks_the_pending_window_published():
    pending, store = pending_file(), MemoryStore(H)
    claim_window(store, pending, W, "run-1")
    publish_hwm(store, W, pending)
    assert store.value == W.end
    assert pending.read().published
    publish_hwm(store, W, pending)  # a retry: already published, not published again
    assert store.publishes == 1


# --- the HWM lock: racing publishes ------------------------------------------------------------------


class GatedPublish:
    """A store whose ``publish`` (reached once publish_hwm's check passed) sets ``inside``, runs
    ``before`` (e.g. waits for the other run, as a slow network would make it), writes and logs the
    value in ``writes``; ``after`` runs once publish_hwm has read the value back. ``locked=False``
    drops the lock."""

    def __init__(self, store: HwmStore, writes: list[datetime], locked: bool = True):
        self.store, self.writes, self.locked = store, writes, locked
        self.inside = threading.Event()
        self.before: Callable[[], object] = lambda: None
        self.after: Callable[[], object] = lambda: None
        self.wrote = self.read_back = False

    def read(self) -> datetime | None:
        value = self.store.read()
        if self.wrote and not self.read_back:
            self.read_back = True
            self.after()
        return value

    def publish(self, value: datetime) -> None:
        self.inside.set()
        self.before()
        self.store.publish(value)
        self.writes.append(value)
        self.wrote = True

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return self.store.lock() if self.locked else contextlib.nullcontext()

    def describe(self) -> str:
        return self.store.describe()


@pytest.fixture(params=["variable", "file"])
def racing_store(request: pytest.FixtureRequest, variable_source: str, tmp_path: Path) -> StoreFactory:
    """A fresh store over one HWM per call: the Prefect Variable, or the file in a local landing."""
    if request.param == "variable":
        return lambda: VariableHwmStore(variable_source)
    (tmp_path / "root").mkdir()
    return lambda: FileHwmStore(LocalLanding(tmp_path / "root", "catalog/landing"), variable_source)


E1, E2 = H + timedelta(hours=1), H + timedelta(hours=2)


def race(
    make: StoreFactory, locked: bool
) -> tuple[list[datetime], datetime | None, list[BaseException | None]]:
    """Two runs planned from the HWM H publish at once. A (window to E2) has passed its check and waits
    for B (window to E1 < E2) to pass its own — up to 1.5 s under the lock, where B cannot; without it
    B always does, however slow the server. B writes only after A wrote and read back. Returns the
    HWMs written in order, the HWM at the end, and each run's error."""
    make().publish(H)
    writes: list[datetime] = []
    a, b = GatedPublish(make(), writes, locked), GatedPublish(make(), writes, locked)
    a_wrote = threading.Event()
    a.before, a.after = lambda: b.inside.wait(1.5 if locked else 30), a_wrote.set
    b.before = lambda: a_wrote.wait(30)
    errors: list[BaseException | None] = [None, None]

    def publish(i: int, store: GatedPublish, end: datetime) -> None:
        try:
            publish_hwm(store, Window(H, end, planned_from=H))
        except BaseException as exc:
            errors[i] = exc

    first = threading.Thread(target=publish, args=(0, a, E2))
    first.start()
    assert a.inside.wait(30)
    second = threading.Thread(target=publish, args=(1, b, E1))
    second.start()
    first.join(60)
    second.join(60)
    return writes, make().read(), errors


def test_racing_publishes_leave_the_later_hwm_and_never_move_it_backwards(racing_store: StoreFactory):
    writes, final, (error_a, error_b) = race(racing_store, locked=True)
    assert error_a is None
    assert isinstance(error_b, HwmError)
    assert "moved since this run planned its window" in str(error_b)
    assert writes == [E2]  # the earlier one was never written
    assert final == E2  # the later HWM stays


def test_without_the_lock_the_same_race_moves_the_hwm_backwards(racing_store: StoreFactory):
    """What the lock prevents: both runs pass the check before either writes."""
    writes, final, errors = race(racing_store, locked=False)
    assert errors == [None, None]
    assert writes == [E2, E1]
    assert final == E1


def test_the_lock_is_a_global_concurrency_limit_of_one(variable_source: str):
    from prefect.client.orchestration import get_client

    name = hwm_lock_name(variable_source)
    assert name == f"metadata-hwm-{variable_source}"
    errors: list[BaseException] = []

    def second_holder() -> None:
        try:
            with hwm_lock(variable_source, timeout_seconds=1):
                pass
        except BaseException as exc:
            errors.append(exc)

    with hwm_lock(variable_source):  # created on first use
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
        assert (limit.limit, limit.active, limit.active_slots) == (1, True, 1)
        waiter = threading.Thread(target=second_holder)
        waiter.start()
        waiter.join(30)
    [error] = errors
    assert isinstance(error, HwmLockError)
    assert "was not granted within 1 s: another run of the source holds it" in str(error)
    with hwm_lock(variable_source, timeout_seconds=5):  # released
        pass


def test_the_lock_is_reentrant_in_its_holders_context_only(variable_source: str):
    """The flow holds the lock around claim, landing and publish; the tasks' own ``with`` inside it
    acquires nothing (a second slot of a limit of one would never come)."""
    from prefect.client.orchestration import get_client

    with hwm_lock(variable_source):
        with hwm_lock(variable_source, timeout_seconds=1):
            with get_client(sync_client=True) as client:
                limit = client.read_global_concurrency_limit_by_name(hwm_lock_name(variable_source))
            assert limit.active_slots == 1
        with get_client(sync_client=True) as client:  # the inner exit released nothing
            assert client.read_global_concurrency_limit_by_name(limit.name).active_slots == 1
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit.name).active_slots == 0


def test_a_disabled_lock_limit_is_an_error(variable_source: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = hwm_lock_name(variable_source)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2, active=False))
    with pytest.raises(
        HwmLockError, match=rf"{name}'.* is disabled, limit 2: it must be active with limit 1"
    ):
        publish_hwm(VariableHwmStore(variable_source), Window(T0 - LOOKBACK, T0))
    assert VariableHwmStore(variable_source).read() is None


def test_the_hwm_file_is_named_where_it_is_next_to_the_landing_directory(tmp_path: Path):
    """Logs and errors name the HWM file's own folder (the landing directory's parent), not the landing
    directory."""
    from tasks.metadata.landing import LocalLanding

    target = LocalLanding(tmp_path, "tableau/landing")
    store = FileHwmStore(target, "tableau")
    assert store.describe() == f"HWM file {(tmp_path / 'tableau' / 'tableau_hwm.txt').as_uri()}"
    assert PendingWindowFile(target, "tableau").describe() == (
        f"pending window {(tmp_path / 'tableau' / 'tableau_hwm_pending.json').as_uri()}"
    )
