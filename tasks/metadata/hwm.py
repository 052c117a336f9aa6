"""High-water marks (HWM) of the metadata collectors: plan the run's window, publish its end.

The protocol and the two stores (a Prefect Variable ``hwm_<source>``, a file ``<source>_hwm.txt`` next
to the landing directory): docs/metadata-collectors.md ("A run", "High-water marks").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Protocol

from prefect.types import MAX_VARIABLE_NAME_LENGTH
from prefect.variables import Variable

from tasks.common import to_utc

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


# --- values --------------------------------------------------------------------------------------


def _require_aware(value: datetime, what: str) -> datetime:
    """``value`` converted to UTC; ``ValueError`` if it is naive (its time zone would be a guess)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return to_utc(value)


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

    def describe(self) -> str:
        """Where the HWM lives, for logs and errors."""
        ...


class HwmFileTarget(Protocol):
    """The part of ``tasks.metadata.landing.LandingTarget`` that ``FileHwmStore`` uses (any target fits)."""

    landing_dir: str

    def read_text(self, key: str) -> str | None: ...

    def write_text(self, key: str, text: str) -> None: ...

    def describe(self) -> str: ...


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
        """Create or overwrite the variable with ``format_hwm(value)``."""
        Variable.set(self.variable_name, format_hwm(value), tags=["hwm"], overwrite=True, _sync=True)

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

    def describe(self) -> str:
        return f"HWM file {self.key!r} in {self.target.describe()}"


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


def publish_hwm(store: HwmStore, window: Window) -> None:
    """Publish ``window.end`` as the new HWM, then read it back.

    Call only after every file of the run was uploaded and verified (exists, size): publishing
    earlier would lose the window if an upload then failed. A run that fails before this call leaves
    the HWM unchanged, so the rerun plans the same ``start``.

    Raises ``HwmError`` if the store already holds a later HWM (an HWM never moves backwards; another
    run published meanwhile, or the store was edited) or if the read-back differs; ``ValueError``
    if ``window.end`` has sub-second digits; and whatever the store raises.
    """
    current = store.read()
    if current != window.planned_from and (window.planned_from is not None or current is not None):
        was = "no HWM" if window.planned_from is None else format_hwm(window.planned_from)
        now_held = "none" if current is None else format_hwm(current)
        raise HwmError(
            f"{store.describe()} moved since this run planned its window from {was}: it now holds "
            f"{now_held}. Not publishing {format_hwm(window.end)} (that would overlap or skip a window); "
            "did another run of this source publish, or was the HWM edited? Run again to plan anew."
        )
    if current is not None and current > window.end:
        raise HwmError(
            f"{store.describe()} already holds {format_hwm(current)} UTC, after this window's end "
            f"({window}); not moving it backwards — did another run of this source publish meanwhile?"
        )
    store.publish(window.end)
    stored = store.read()
    if stored != window.end:
        shown = "nothing" if stored is None else format_hwm(stored)
        raise HwmError(f"published {format_hwm(window.end)} to {store.describe()} but read back {shown}")
    logger.info("Published HWM %s UTC to %s", format_hwm(window.end), store.describe())
