"""The one retry policy (exponential back-off, on tenacity) and the one ``Retry-After`` parser.

Here rather than in ``tasks/``: tasks, blocks and the pipelines' Dataflow workers all use them, and
``pipelines/`` imports neither tasks nor blocks (layering, issue 25), as for ``pipelines.transport``.
Imports neither Beam nor Prefect. tenacity is imported only when ``retrying`` builds a ``Retrying``:
the workers' package (``pipelines/setup.py``) does not install it, and ``PostBatchesFn`` needs only
``Backoff`` and ``retry_after_seconds``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    import tenacity

#: How a back-off's wait is drawn below its ceiling (AWS Architecture Blog, "Exponential Backoff And
#: Jitter", 2015): "none", the ceiling itself; "half", uniform in [0.5, 1] × the ceiling; "full",
#: uniform in [0, the ceiling].
Jitter = Literal["none", "half", "full"]

# 2.0 ** 1024 overflows a float; long before that every ceiling is its cap.
_MAX_EXPONENT = 1000


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: the n-th wait (n = 1, 2, …) has the ceiling ``first`` · 2^(n−1) seconds, at
    most ``cap`` seconds, and is drawn below it as ``jitter`` says.

    Also a tenacity wait: called with a ``RetryCallState`` it gives the wait after its attempt
    (``attempt_number`` n), drawn from the ``random`` module.
    """

    first: float
    cap: float = math.inf
    jitter: Jitter = "none"

    def ceiling(self, n: int) -> float:
        """The n-th wait before jitter, in seconds (n from 1)."""
        return min(self.cap, self.first * 2.0 ** min(n - 1, _MAX_EXPONENT))

    def delay(self, n: int, rng: random.Random | None = None) -> float:
        """The n-th wait, in seconds (n from 1), drawn with ``rng`` (default: the ``random`` module)."""
        ceiling = self.ceiling(n)
        if self.jitter == "half":
            return (rng or random).uniform(0.5, 1.0) * ceiling
        if self.jitter == "full":
            return (rng or random).uniform(0, ceiling)
        return ceiling

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


def retrying(
    backoff: Backoff,
    *,
    again: Callable[[Any], bool],
    retries: int | None = None,
    deadline: float | None = None,
    after_failure: Callable[[Any, int], None] | None = None,
    before_sleep: Callable[[Any, float], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> tenacity.Retrying:
    """A tenacity ``Retrying`` that calls a function again, after ``backoff``'s wait, while ``again``
    holds for its result; use it as ``retrying(...)(fn, *args)`` or as a decorator.

    It gives up after ``retries`` retries (``retries + 1`` calls), or once ``time.monotonic()`` has
    reached ``deadline`` after a call, and then returns the last result: the caller raises its own
    error. An exception of the function is not retried: it propagates as raised.

    Args:
        backoff: the waits, in seconds.
        again: whether a result asks for another call.
        retries: the most retries (None: no limit but the deadline).
        deadline: a ``time.monotonic()`` value after which no call starts (None: none).
        after_failure: called with each result that asked for another call and its attempt number
            (from 1), before the limits are checked: also after the last.
        before_sleep: called with that result and the wait (seconds) just before waiting.
        sleep: the wait (tests pass a fake clock); default ``time.sleep``.
    """
    import tenacity

    def stop(state: tenacity.RetryCallState) -> bool:
        return (retries is not None and state.attempt_number > retries) or (
            deadline is not None and time.monotonic() >= deadline
        )

    hooks: dict[str, Any] = {}
    if after_failure is not None:
        hooks["after"] = lambda state: after_failure(state.outcome.result(), state.attempt_number)
    if before_sleep is not None:
        hooks["before_sleep"] = lambda state: before_sleep(state.outcome.result(), state.upcoming_sleep)
    if sleep is not None:
        hooks["sleep"] = sleep
    return tenacity.Retrying(
        wait=backoff,
        stop=stop,
        retry=tenacity.retry_if_result(again),
        retry_error_callback=lambda state: state.outcome.result(),
        **hooks,
    )


# Tableau's wording of a 429000 (REST API error codes, "429000: Too many requests"): Tableau Cloud words
# the wait in the unit it chooses, "Too many requests for 'api.rest.refresh_extracts'. Please retry after
# 29 minutes." (tableau/server-client-python #952).
_RETRY_AFTER_WORDS = re.compile(
    r"retry after (\d+(?:\.\d+)?)\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b", re.IGNORECASE
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


@overload
def retry_after_seconds(
    header: str | None, message: str | None = None, *, default: float, now: float | None = None
) -> float: ...


@overload
def retry_after_seconds(
    header: str | None, message: str | None = None, *, default: None = None, now: float | None = None
) -> float | None: ...


def retry_after_seconds(
    header: str | None,
    message: str | None = None,
    *,
    default: float | None = None,
    now: float | None = None,
) -> float | None:
    """How long a server asks to wait before the next request, in seconds (≥ 0).

    A ``Retry-After`` header wins (RFC 9110, section 10.2.3: ``HTTP-date / delay-seconds``): whole
    seconds (``"120"``), or an HTTP date (``"Wed, 21 Oct 2015 07:28:00 GMT"``; also the obsolete RFC 850
    and asctime forms, section 5.6.7; a date without a zone is in UTC), its distance from ``now``, 0 if
    past. Else ``message``'s "retry after N <unit>", in seconds, minutes or hours (Tableau's 429000:
    "Please retry after 29 minutes."). Else ``default``.

    Args:
        header: the response's Retry-After header, if any; one it cannot read is ignored.
        message: the error's words (Tableau: its summary and detail), if any.
        default: the wait when neither says one (None: None).
        now: epoch seconds, for an HTTP-date header (default: the current time).
    """
    if header:
        header = header.strip()
        if header.isdigit():
            return float(header)
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:  # "-0000": an HTTP date is in UTC (RFC 9110, 5.6.7), not our zone
                when = when.replace(tzinfo=dt.UTC)
            return max(0.0, when.timestamp() - (time.time() if now is None else now))
    if message and (match := _RETRY_AFTER_WORDS.search(message)):
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()]
    return default
