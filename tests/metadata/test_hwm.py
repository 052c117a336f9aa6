"""High-water marks: window planning, publishing, and both stores (the Variable one on a real server)."""

from __future__ import annotations

import logging
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
    HwmStore,
    InvalidSourceNameError,
    MalformedHwmError,
    VariableHwmStore,
    Window,
    format_hwm,
    hwm_file_key,
    normalise_source_name,
    plan_window,
    publish_hwm,
)

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
        return "fake target mem://bucket"


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
    assert window.empty and window.start == T0 - LAG and window.duration == timedelta(0)
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
    assert store.value == T0 and store.publishes == 0


def test_publish_refuses_when_the_hwm_moved_since_the_window_was_planned():
    store = MemoryStore(T0 - timedelta(hours=2))
    window = plan_window(store, T0, timedelta(0), LOOKBACK)
    store.value = T0 - timedelta(hours=1)  # another run published meanwhile
    with pytest.raises(HwmError, match="moved since this run planned its window"):
        publish_hwm(store, window)
    assert store.value == T0 - timedelta(hours=1) and store.publishes == 0


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
    assert store.describe() == "HWM file 'catalog/athena/athena_hwm.txt' in fake target mem://bucket"


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
    assert "HWM file 'catalog/athena/athena_hwm.txt' in fake target mem://bucket" in message
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
