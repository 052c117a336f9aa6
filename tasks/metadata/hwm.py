"""High-water marks (HWM) of the metadata collectors: plan the run's window, pin it while its files
land, publish its end.

The protocol, the two stores (a Prefect Variable ``hwm_<source>``, a file ``<source>_hwm.txt`` next to
the landing directory), the pending window ``<source>_hwm_pending.json`` and the source's HWM lock:
docs/metadata-collectors.md ("A run", "High-water marks", "A run that fails halfway").
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any, Protocol
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.types import MAX_VARIABLE_NAME_LENGTH
from prefect.variables import Variable

from tasks.common import to_utc
from tasks.metadata.landing.base import LandedFile

logger = logging.getLogger(__name__)

HWM_FORMAT = "%Y-%m-%d %H:%M:%S"
"""strftime/strptime format of a stored HWM: UTC, second precision (KADA's ``<name>_hwm.txt``)."""

# strptime accepts "2026-1-2 4:0:0" for HWM_FORMAT; the stored form is exactly zero-padded.
_HWM_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")

# Prefect 3.9 variable names: prefect/types/names.py ``VariableName`` — regex ``^[a-z0-9-_]*$``
# (lowercase ASCII letters, digits, dashes, underscores) and at most ``MAX_VARIABLE_NAME_LENGTH`` = 255
# characters, enforced by ``VariableCreate``/``VariableUpdate`` when a variable is written. Reading by
# an invalid name is not rejected: it simply finds nothing — hence the check before any read.
_SOURCE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
VARIABLE_PREFIX = "hwm_"


class HwmError(RuntimeError):
    """A high-water mark cannot be read, planned from or published."""


class MalformedHwmError(HwmError):
    """A stored HWM is not a string in ``HWM_FORMAT``."""


class HwmInFutureError(HwmError):
    """The published HWM lies after the run's ``now``: the store or a clock is wrong."""


class InvalidSourceNameError(ValueError):
    """A source name cannot name an HWM variable or file."""


class HwmLockError(HwmError):
    """The source's HWM lock (a Prefect global concurrency limit) is unfit, or was not granted in time."""


class PendingWindowError(HwmError):
    """The source's pending window forbids landing this run's window: another run is landing it, or
    the pending window is not the one this run planned, or its record does not parse."""


class WindowInProgressError(PendingWindowError):
    """Another flow run that is still active is landing the source's pending window."""


# --- values --------------------------------------------------------------------------------------


def _require_aware(value: datetime, what: str) -> datetime:
    """``value`` converted to UTC; ``ValueError`` if it is naive (its time zone would be a guess)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return to_utc(value)


def check_now(now: datetime, current: datetime) -> datetime:
    """``now`` (a run's "present", aware) in UTC, refused if later than ``current`` (the clock's time).

    A window ending in the future would publish an HWM in the future: the next runs would start
    there, and what happens until then would never be extracted. Raises ``ValueError`` — starting
    ``now <now in ISO 8601> is later than the current time`` — for a later ``now``, and for a naive one.
    """
    given = now
    now = _require_aware(now, "now")
    current = _require_aware(current, "current time")
    if now > current:
        raise ValueError(
            f"now {given.isoformat()} is later than the current time "
            f"({current.replace(microsecond=0).isoformat()}): a high-water mark in the future would skip "
            "the data until then for good; leave now unset, or give an instant in the past"
        )
    return now


def format_hwm(value: datetime) -> str:
    """``value`` (aware, whole seconds) as stored: UTC in ``HWM_FORMAT``, e.g. ``2026-11-22 04:00:00``.

    Raises ``ValueError`` for a naive datetime or one with sub-second digits (they would be lost, and
    the next window would start before this one ended).
    """
    value = _require_aware(value, "HWM")
    if value.microsecond:
        raise ValueError(f"HWM has second precision; {value.isoformat()} has sub-second digits")
    return value.strftime(HWM_FORMAT)


def parse_hwm(text: str, where: str) -> datetime:
    """A stored HWM string (surrounding whitespace ignored) as an aware UTC datetime.

    ``where`` names the store for the error. Raises ``MalformedHwmError`` naming it and the expected
    format for anything but one ``HWM_FORMAT`` value.
    """
    if not isinstance(text, str):
        raise MalformedHwmError(
            f"{where} holds {type(text).__name__} {text!r}, expected a string in the format "
            f"{HWM_FORMAT!r} (UTC), e.g. '2026-11-22 04:00:00'"
        )
    stripped = text.strip()
    try:
        if not _HWM_PATTERN.fullmatch(stripped):
            raise ValueError("not zero-padded 'YYYY-MM-DD HH:MM:SS'")
        return datetime.strptime(stripped, HWM_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise MalformedHwmError(
            f"{where} holds {text[:80]!r}, expected one value in the format {HWM_FORMAT!r} (UTC), "
            f"e.g. '2026-11-22 04:00:00' ({exc}). Fix or delete it; it is not ignored, since "
            "restarting from the initial look-back would re-extract or lose history."
        ) from exc


def normalise_source_name(source_name: str) -> str:
    """``source_name`` stripped and lowercased; it must then match ``[a-z0-9][a-z0-9_-]*``.

    The result names both stores (``hwm_<name>``, ``<name>_hwm.txt``), so it is limited to what a
    Prefect Variable name allows (see ``_SOURCE_NAME_PATTERN``) and cannot hold a path separator.
    Nothing else is rewritten: mapping e.g. spaces to ``_`` could make two sources share one HWM.
    Raises ``InvalidSourceNameError``.
    """
    if not isinstance(source_name, str):
        raise InvalidSourceNameError(f"source name must be a string, got {type(source_name).__name__}")
    name = source_name.strip().lower()
    if not _SOURCE_NAME_PATTERN.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[a-z0-9_-]", c)})
        detail = f"; not allowed: {''.join(bad)!r}" if bad else ""
        raise InvalidSourceNameError(
            f"source name {source_name!r} cannot name an HWM: it must be lowercase letters, digits, "
            f"dashes and underscores, starting with a letter or digit (Prefect variable names)"
            f"{detail}"
        )
    limit = MAX_VARIABLE_NAME_LENGTH - len(VARIABLE_PREFIX)
    if len(name) > limit:
        raise InvalidSourceNameError(
            f"source name {source_name!r} is {len(name)} characters; at most {limit} fit a Prefect "
            f"variable name ({VARIABLE_PREFIX!r} + name ≤ {MAX_VARIABLE_NAME_LENGTH})"
        )
    return name


@dataclass(frozen=True)
class Window:
    """The half-open extraction window ``[start, end)`` of one run, in UTC.

    ``start`` and ``end`` must be timezone-aware (other zones are converted to UTC); ``start <= end``
    (``start == end`` is the empty window). Raises ``ValueError`` otherwise. ``planned_from``: the
    HWM the window was planned from (None: there was none), which ``publish_hwm`` checks is still
    the store's, so two runs can never publish overlapping or gapped windows.
    """

    start: datetime
    end: datetime
    planned_from: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        start = _require_aware(self.start, "window start")
        end = _require_aware(self.end, "window end")
        if start > end:
            raise ValueError(f"window start {start.isoformat()} is after its end {end.isoformat()}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @property
    def empty(self) -> bool:
        """True when ``start == end``: nothing can fall inside."""
        return self.start == self.end

    @property
    def duration(self) -> timedelta:
        """``end - start`` (zero for the empty window)."""
        return self.end - self.start

    def contains(self, t: datetime) -> bool:
        """``start <= t < end`` for an aware ``t`` (``ValueError`` if naive)."""
        t = _require_aware(t, "instant")
        return self.start <= t < self.end

    def __str__(self) -> str:
        return f"{self.start.strftime(HWM_FORMAT)} → {self.end.strftime(HWM_FORMAT)}"


# --- stores --------------------------------------------------------------------------------------


class HwmStore(Protocol):
    """Where one source's HWM lives."""

    def read(self) -> datetime | None:
        """The published HWM (aware, UTC), or None if none was ever published."""
        ...

    def publish(self, value: datetime) -> None:
        """Store ``value`` (aware, whole seconds) as the HWM."""
        ...

    def lock(self) -> AbstractContextManager[None]:
        """The source's HWM lock: ``publish_hwm`` and ``claim_window`` read, check and write under it."""
        ...

    def describe(self) -> str:
        """Where the HWM lives, for logs and errors."""
        ...


class HwmFileTarget(Protocol):
    """The part of ``tasks.metadata.landing.LandingTarget`` that ``FileHwmStore`` uses (any target fits)."""

    landing_dir: str

    def read_text(self, key: str) -> str | None: ...

    def write_text(self, key: str, text: str) -> None: ...

    def describe(self) -> str: ...

    def uri(self, key: str) -> str: ...


class VariableHwmStore:
    """The HWM in the Prefect Variable ``hwm_<source>``, holding an ``HWM_FORMAT`` string.

    Uses the Prefect API of the current settings (``PREFECT_API_URL``). ``source_name`` is
    normalised by ``normalise_source_name`` (``InvalidSourceNameError``).
    """

    def __init__(self, source_name: str):
        self.source_name = normalise_source_name(source_name)
        self.variable_name = f"{VARIABLE_PREFIX}{self.source_name}"

    def read(self) -> datetime | None:
        """The HWM, None if the variable does not exist; ``MalformedHwmError`` if it holds anything else."""
        # _sync=True: Variable.get dispatches to its coroutine inside async flows/tasks (Prefect 3.9
        # async_dispatch); this store is synchronous everywhere.
        value = Variable.get(self.variable_name, default=None, _sync=True)
        if value is None:
            return None
        return parse_hwm(value, self.describe())

    def publish(self, value: datetime) -> None:
        """Create or overwrite the variable with ``format_hwm(value)``; no check (see ``publish_hwm``)."""
        Variable.set(self.variable_name, format_hwm(value), tags=["hwm"], overwrite=True, _sync=True)

    def lock(self) -> AbstractContextManager[None]:
        """``hwm_lock`` of the source: Prefect Variables have no compare-and-set."""
        return hwm_lock(self.source_name)

    def describe(self) -> str:
        return f"Prefect variable {self.variable_name!r}"


def hwm_file_key(landing_dir: str, source_name: str) -> str:
    """Key of ``<source>_hwm.txt`` next to ``landing_dir`` (in its parent; the root if it has none).

    E.g. ``("catalog/athena/landing", "athena")`` → ``"catalog/athena/athena_hwm.txt"`` and
    ``("landing", "athena")`` → ``"athena_hwm.txt"``. Keys are relative to the target's root.
    """
    name = normalise_source_name(source_name)
    return str(PurePosixPath(landing_dir).parent / f"{name}_hwm.txt")


class FileHwmStore:
    """The HWM as KADA's ``<source>_hwm.txt`` next to the landing directory of ``target``.

    The file holds one line, ``HWM_FORMAT`` (written without a trailing newline; surrounding
    whitespace is ignored on read). A missing file means no HWM; a file that does not parse raises
    ``MalformedHwmError``; failures of the target itself (permission, network) propagate unchanged —
    none of these is read as "no HWM".
    """

    def __init__(self, target: HwmFileTarget, source_name: str):
        self.target = target
        self.source_name = normalise_source_name(source_name)
        self.key = hwm_file_key(target.landing_dir, self.source_name)

    def read(self) -> datetime | None:
        text = self.target.read_text(self.key)
        if text is None:
            return None
        return parse_hwm(text, self.describe())

    def publish(self, value: datetime) -> None:
        self.target.write_text(self.key, format_hwm(value))

    def lock(self) -> AbstractContextManager[None]:
        """``hwm_lock`` of the source (the same lock whichever store holds its HWM)."""
        return hwm_lock(self.source_name)

    def describe(self) -> str:
        return f"HWM file {self.target.uri(self.key)}"


# --- the source's HWM lock -------------------------------------------------------------------------

LOCK_PREFIX = "metadata-hwm-"
LOCK_TIMEOUT_SECONDS = 120.0
"""How long ``hwm_lock`` waits for the lock: its holders keep it for a few requests; a killed holder's
lease expires after ``LOCK_LEASE_SECONDS`` (plus the server's lease-cleanup interval)."""
LOCK_LEASE_SECONDS = 60.0
"""Lease of the lock's slot, renewed while the holder lives (Prefect's minimum sensible lease)."""


_held_locks: ContextVar[frozenset[str]] = ContextVar("held_hwm_locks", default=frozenset())
"""The HWM locks the current context holds (``hwm_lock`` is reentrant through it; tasks called from the
flow see the flow's)."""


def hwm_lock_name(source_name: str) -> str:
    """The global concurrency limit guarding a source's HWM: ``metadata-hwm-<source>``."""
    return f"{LOCK_PREFIX}{normalise_source_name(source_name)}"


def _lock_holder() -> ConcurrencyLeaseHolder | None:
    """The lease holder shown in the Prefect UI: the current task run or flow run, if any."""
    if task_context := TaskRunContext.get():
        return ConcurrencyLeaseHolder(type="task_run", id=task_context.task_run.id)
    if (flow_context := FlowRunContext.get()) and flow_context.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=UUID(str(flow_context.flow_run.id)))
    return None


def _ensure_lock_limit(name: str, source_name: str) -> None:
    """Create the lock's limit (active, limit 1) if missing; ``HwmLockError`` if it exists but is unfit:
    a disabled limit grants every request, a larger one lets two holders in, a decaying slot frees
    itself while held."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1, active=True)
                )
                logger.info(
                    "Created global concurrency limit %r (limit 1), the HWM lock of %r", name, source_name
                )
                return
            except ObjectAlreadyExists:  # another run of the source created it meanwhile
                found = client.read_global_concurrency_limit_by_name(name)
    problems = []
    if not found.active:
        problems.append("disabled")
    if found.limit != 1:
        problems.append(f"limit {found.limit}")
    if found.slot_decay_per_second:
        problems.append(f"slot decay {found.slot_decay_per_second}/s")
    if problems:
        raise HwmLockError(
            f"global concurrency limit {name!r}, the HWM lock of source {source_name!r}, is "
            f"{', '.join(problems)}: it must be active with limit 1 and no slot decay, or two runs could "
            f"move the HWM at once. Fix it (`prefect gcl update {name} --enable --limit 1 --slot-decay-per-second 0`) or delete it: "
            "the collector creates it again."
        )


@contextmanager
def hwm_lock(source_name: str, *, timeout_seconds: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """Hold the HWM lock of ``source_name`` for the ``with`` block: one slot of the global concurrency
    limit ``metadata-hwm-<source>`` (limit 1; created on first use), leased and ``strict``.

    Prefect renews the lease while the holder lives; the server frees a killed holder's slot when the
    lease (``LOCK_LEASE_SECONDS``) expires. Reentrant: inside a ``with`` of the same lock (in this
    context or a task's copy of it) it acquires nothing. Raises ``HwmLockError`` (the limit is unfit, or the slot was
    not granted within ``timeout_seconds``) and ``InvalidSourceNameError``.
    """
    name = hwm_lock_name(source_name)
    held = _held_locks.get()
    if name in held:  # reentrant: the caller holds it already (the flow, around land and publish)
        yield
        return
    _ensure_lock_limit(name, source_name)
    with ExitStack() as stack:
        try:
            stack.enter_context(
                concurrency(
                    name,
                    occupy=1,
                    timeout_seconds=timeout_seconds,
                    lease_duration=LOCK_LEASE_SECONDS,
                    strict=True,
                    holder=_lock_holder(),
                )
            )
        except TimeoutError:
            raise HwmLockError(
                f"The HWM lock of source {source_name!r} (global concurrency limit {name!r}) was not granted "
                f"within {timeout_seconds:.0f} s: another run of the source holds it. A killed holder's slot "
                f"comes back after its {LOCK_LEASE_SECONDS:.0f} s lease; see the limit's holder in the Prefect UI."
            ) from None
        token = _held_locks.set(held | {name})
        try:
            yield
        finally:
            _held_locks.reset(token)


# --- the pending window ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingWindow:
    """The window a run of the source began to land and what of it landed (the record of
    ``PendingWindowFile``).

    ``window``: with its ``planned_from`` (the HWM it was planned from; None: there was none).
    ``flow_run_id``: the flow run landing it (None: not run in a flow). ``landed``: the files of the
    window landed and verified so far, by name. ``published``: ``window.end`` was published; the record
    is then only history.
    """

    window: Window
    flow_run_id: str | None = None
    landed: dict[str, LandedFile] = field(default_factory=dict)
    published: bool = False

    def with_landed(self, file: LandedFile) -> PendingWindow:
        """This record with ``file`` added to ``landed``."""
        return replace(self, landed={**self.landed, file.name: file})

    def to_json(self, source_name: str) -> str:
        """The record as stored: a JSON object, times in ``HWM_FORMAT`` (UTC)."""
        planned_from = self.window.planned_from
        return json.dumps(
            {
                "source": source_name,
                "window_start": format_hwm(self.window.start),
                "window_end": format_hwm(self.window.end),
                "planned_from": None if planned_from is None else format_hwm(planned_from),
                "flow_run_id": self.flow_run_id,
                "published": self.published,
                "landed": [{"name": f.name, "uri": f.uri, "bytes": f.bytes} for f in self.landed.values()],
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> PendingWindow:
        """Parse a stored record; ``PendingWindowError`` naming ``where`` if it is not one."""
        try:
            data: Any = json.loads(text)
            planned_from = data["planned_from"]
            window = Window(
                parse_hwm(data["window_start"], where),
                parse_hwm(data["window_end"], where),
                planned_from=None if planned_from is None else parse_hwm(planned_from, where),
            )
            landed = {
                f["name"]: LandedFile(name=str(f["name"]), uri=str(f["uri"]), bytes=int(f["bytes"]))
                for f in data["landed"]
            }
            flow_run_id = data["flow_run_id"]
            published = data["published"]
            if not isinstance(published, bool) or not (flow_run_id is None or isinstance(flow_run_id, str)):
                raise TypeError("published must be a boolean and flow_run_id a string or null")
        except (ValueError, TypeError, KeyError, MalformedHwmError) as exc:
            raise PendingWindowError(
                f"{where} is not a pending-window record ({type(exc).__name__}: {exc}). Fix it, or delete "
                "it to plan anew — then any file of its window already in the landing directory overlaps "
                "the next window's."
            ) from exc
        return cls(window, flow_run_id, landed, published)


def pending_window_key(landing_dir: str, source_name: str) -> str:
    """Key of ``<source>_hwm_pending.json``: next to ``<source>_hwm.txt`` (see ``hwm_file_key``)."""
    name = normalise_source_name(source_name)
    return str(PurePosixPath(landing_dir).parent / f"{name}_hwm_pending.json")


class PendingWindowFile:
    """The source's pending window, as ``<source>_hwm_pending.json`` next to the landing directory of
    ``target`` (whichever store holds the HWM). A missing file means no pending window."""

    def __init__(self, target: HwmFileTarget, source_name: str):
        self.target = target
        self.source_name = normalise_source_name(source_name)
        self.key = pending_window_key(target.landing_dir, self.source_name)

    def read(self) -> PendingWindow | None:
        """The record, None if there is none; ``PendingWindowError`` if it does not parse."""
        text = self.target.read_text(self.key)
        return None if text is None else PendingWindow.from_json(text, self.describe())

    def write(self, pending: PendingWindow) -> None:
        self.target.write_text(self.key, pending.to_json(self.source_name))

    def describe(self) -> str:
        return f"pending window {self.target.uri(self.key)}"


def flow_run_is_active(flow_run_id: str) -> bool:
    """True unless the flow run is in a final state (completed, failed, crashed, cancelled) or gone."""
    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(UUID(flow_run_id))
        except (ObjectNotFound, ValueError):
            return False
    return flow_run.state is not None and not flow_run.state.is_final()


# --- planning and publishing ---------------------------------------------------------------------


def _ceil_to_second(value: datetime) -> datetime:
    if value.microsecond:
        return value.replace(microsecond=0) + timedelta(seconds=1)
    return value


def plan_window(
    store: HwmStore,
    now: datetime,
    lag: timedelta,
    initial_lookback: timedelta,
    earliest: datetime | None = None,
) -> Window:
    """The window ``[start, end)`` this run extracts. Reads the store; writes nothing.

    - ``end = now - lag`` truncated to whole seconds. Call once per run with one ``now`` (aware) and
      pass the window on: ``end`` is what ``publish_hwm`` publishes.
    - ``start`` = the published HWM, or ``end - initial_lookback`` (rounded down to a whole second)
      when none was published.
    - ``earliest`` (aware; e.g. now − 45 days, Athena's query history): a ``start`` before it is
      clamped to it (rounded up to a whole second) and the lost span is logged as a WARNING.
    - A published HWM at or after ``end`` (but not after ``now``; e.g. the lag was raised) gives the
      empty window ``[hwm, hwm)``, reported in the log; publishing it leaves the HWM unchanged.

    ``lag`` ≥ 0 and ``initial_lookback`` > 0 (``ValueError`` otherwise). Raises ``HwmInFutureError``
    if the published HWM is after ``now``, ``ValueError`` if ``earliest`` is after ``end``, and
    whatever the store raises (``MalformedHwmError``, I/O errors).
    """
    now = _require_aware(now, "now")
    if not isinstance(lag, timedelta) or lag < timedelta(0):
        raise ValueError(f"lag must be a timedelta ≥ 0, got {lag!r}")
    if not isinstance(initial_lookback, timedelta) or initial_lookback <= timedelta(0):
        raise ValueError(f"initial_lookback must be a timedelta > 0, got {initial_lookback!r}")
    end = (now - lag).replace(microsecond=0)

    hwm = store.read()
    if hwm is None:
        start = (end - initial_lookback).replace(microsecond=0)
        origin = f"initial look-back of {initial_lookback} (no HWM in {store.describe()})"
    else:
        if hwm > now:
            raise HwmInFutureError(
                f"{store.describe()} holds {format_hwm(hwm)} UTC, after now ({now.strftime(HWM_FORMAT)} "
                "UTC): the store was edited or a clock is wrong. Nothing was extracted; set the HWM "
                "to the end of the last window that was really delivered."
            )
        start = hwm
        origin = f"HWM in {store.describe()}"

    if earliest is not None:
        earliest = _ceil_to_second(_require_aware(earliest, "earliest"))
        if earliest > end:
            raise ValueError(
                f"earliest available instant {earliest.strftime(HWM_FORMAT)} UTC is after the window "
                f"end {end.strftime(HWM_FORMAT)} UTC (now − lag {lag}): the lag is longer than the "
                "source keeps history"
            )
        if start < earliest:
            logger.warning(
                "Window start from %s is %s UTC, before the earliest instant the source still holds "
                "(%s UTC): clamped; %s → %s (%s) is not extracted",
                origin,
                start.strftime(HWM_FORMAT),
                earliest.strftime(HWM_FORMAT),
                start.strftime(HWM_FORMAT),
                earliest.strftime(HWM_FORMAT),
                earliest - start,
            )
            start = earliest

    if start >= end:
        if start > end:
            logger.warning(
                "%s is %s UTC, after now − lag (%s UTC; was the lag raised?): empty window, the HWM stays",
                origin,
                start.strftime(HWM_FORMAT),
                end.strftime(HWM_FORMAT),
            )
        window = Window(start, start, planned_from=hwm)
        logger.info("Empty window %s from %s: nothing new to extract", window, origin)
        return window
    window = Window(start, end, planned_from=hwm)
    logger.info("Window %s (%s) from %s", window, window.duration, origin)
    return window


def plan_or_resume(
    store: HwmStore,
    pending: PendingWindowFile,
    now: datetime,
    lag: timedelta,
    initial_lookback: timedelta,
    earliest: datetime | None = None,
) -> Window:
    """``plan_window``, unless the source has a pending window planned from the published HWM (a run
    began landing it and failed): then that window, whatever ``now`` is, so that the rerun lands the
    same files under the same names. Reads the store and the record; writes nothing.

    A record that was published, or planned from another HWM (it was published, or the HWM edited),
    is stale and ignored. Raises what ``plan_window`` raises and ``PendingWindowError`` (a record that
    does not parse).
    """
    window = plan_window(store, now, lag, initial_lookback, earliest)
    record = pending.read()
    if record is None or record.published or record.window.planned_from != window.planned_from:
        if record is not None and not record.published:
            logger.info(
                "Ignoring stale %s %s: the HWM moved since it was planned", pending.describe(), record.window
            )
        return window
    logger.warning(
        "Resuming window %s instead: flow run %s began landing it and did not publish it (%d files "
        "landed: %s); this run lands the rest under the same names, then publishes its end",
        record.window,
        record.flow_run_id or "(none)",
        len(record.landed),
        ", ".join(record.landed) or "none",
    )
    return record.window


def claim_window(
    store: HwmStore,
    pending: PendingWindowFile,
    window: Window,
    flow_run_id: str | None,
    is_active: Callable[[str], bool] = flow_run_is_active,
) -> PendingWindow | None:
    """Pin ``window`` as the source's pending window before any of its files lands; under the lock.

    Returns the record to land against — its ``landed`` files (an earlier attempt's) are not landed
    again — or None when ``window`` was already published (``window.end`` is the HWM): land nothing.
    The record names ``flow_run_id`` as the run landing it; a record of another flow run is taken
    over once that run is no longer active (``is_active``: its id → bool).

    Raises ``HwmError`` (the HWM moved since ``window`` was planned, other than to its end),
    ``WindowInProgressError`` (an active run lands the pending window), ``PendingWindowError`` (another
    window is pending at this HWM), ``HwmLockError``, and whatever the stores raise.
    """
    with store.lock():
        current = store.read()
        record = pending.read()
        if current != window.planned_from:
            if current == window.end:
                logger.warning(
                    "Window %s was published already (%s holds its end): nothing lands again",
                    window,
                    store.describe(),
                )
                return None
            raise _moved(store, window, current)
        if record is not None and record.window.planned_from == current:
            if record.published and record.window == window:  # an empty window [hwm, hwm), landed
                logger.warning("Window %s was published already: nothing lands again", window)
                return None
            if not record.published:
                owner = record.flow_run_id
                if owner is not None and owner != flow_run_id and is_active(owner):
                    raise WindowInProgressError(
                        f"Flow run {owner} is landing window {record.window} of source {pending.source_name!r} "
                        f"({pending.describe()}; {len(record.landed)} files landed): this run lands nothing. "
                        "Wait for it; if it is dead, mark it Crashed or Cancelled and run again."
                    )
                if record.window != window:
                    raise PendingWindowError(
                        f"Window {record.window} of source {pending.source_name!r} is pending ({pending.describe()}: "
                        f"{len(record.landed)} of its files landed, its end not published), but this run "
                        f"planned {window}; landing both would overlap. Run again: the rerun lands that window."
                    )
                if owner != flow_run_id:
                    record = replace(record, flow_run_id=flow_run_id)
                    pending.write(record)
                    logger.warning(
                        "Taking over window %s from flow run %s (%d files landed already)",
                        window,
                        owner or "(none)",
                        len(record.landed),
                    )
                return record
        record = PendingWindow(window, flow_run_id)
        pending.write(record)
        return record


def _moved(store: HwmStore, window: Window, current: datetime | None) -> HwmError:
    was = "no HWM" if window.planned_from is None else format_hwm(window.planned_from)
    now_held = "none" if current is None else format_hwm(current)
    return HwmError(
        f"{store.describe()} moved since this run planned its window from {was}: it now holds "
        f"{now_held}. Not publishing {format_hwm(window.end)} (that would overlap or skip a window); "
        "did another run of this source publish, or was the HWM edited? Run again to plan anew."
    )


def publish_hwm(store: HwmStore, window: Window, pending: PendingWindowFile | None = None) -> None:
    """Publish ``window.end`` as the new HWM, then read it back; under the source's lock, so that the
    check and the write are one step: of two runs racing, the second sees what the first published.

    Call only after every file of the run was uploaded and verified (exists, size): publishing
    earlier would lose the window if an upload then failed. A run that fails before this call leaves
    the HWM unchanged, so the rerun plans the same ``start``. ``pending``: the record of the window,
    marked published afterwards (a failure to mark it is logged: the HWM has moved, so the record
    is stale anyway). A window already published (the store holds its end) is not published again.

    Raises ``HwmError`` if the store moved since the window was planned or already holds a later HWM
    (an HWM never moves backwards), or if the read-back differs; ``HwmLockError``; ``ValueError`` if
    ``window.end`` has sub-second digits; and whatever the store raises.
    """
    with store.lock():
        current = store.read()
        if current != window.planned_from and current == window.end:
            logger.warning("HWM %s UTC was published already to %s", format_hwm(window.end), store.describe())
        else:
            if current != window.planned_from:
                raise _moved(store, window, current)
            if current is not None and current > window.end:
                raise HwmError(
                    f"{store.describe()} already holds {format_hwm(current)} UTC, after this window's end "
                    f"({window}); not moving it backwards — did another run of this source publish meanwhile?"
                )
            store.publish(window.end)
            stored = store.read()
            if stored != window.end:
                shown = "nothing" if stored is None else format_hwm(stored)
                raise HwmError(
                    f"published {format_hwm(window.end)} to {store.describe()} but read back {shown}"
                )
            logger.info("Published HWM %s UTC to %s", format_hwm(window.end), store.describe())
        if pending is not None:
            _mark_published(pending, window)


def _mark_published(pending: PendingWindowFile, window: Window) -> None:
    try:
        record = pending.read()
        if (
            record is not None
            and not record.published
            and record.window == window
            and record.window.planned_from == window.planned_from
        ):
            pending.write(replace(record, published=True))
    except (
        Exception
    ) as exc:  # the HWM moved: a record left unmarked is stale (it is planned from another HWM)
        logger.warning("Could not mark %s published (%s); it is stale anyway", pending.describe(), exc)
