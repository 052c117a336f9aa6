"""What the CRM stand-ins (generic, HubSpot, Braze) share: the contacts the HubSpot and Braze ones hold
(``UserStore``), request counters, a fixed or rolling request window or a token bucket, injected 5xx
faults from a seeded generator, and the ``/devstack/*`` endpoints (stats, reset, config, one user)
mounted next to the CRM's own API (``CrmApp``); and what their command line and its launcher agree on.
"""

from __future__ import annotations

import dataclasses
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ExceptionHandler

LISTENING = "CRM stand-in listening on "  # the line `python -m devstack.crms` prints once it serves
API_KEY_ENV = "CRM_STANDIN_API_KEY"  # how the launcher hands the key over (not in argv, which `ps` shows)

#: What the stand-ins take for an email address (they reject anything else, as the CRMs do).
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def json_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=dict(headers or {}), media_type="application/json")


class UserStore:
    """Contacts by key: their properties (merged on every upsert, as a CRM update does) and how many
    times each was delivered. ``upsert`` returns whether the contact is new."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self.users: dict[str, dict[str, Any]] = {}
            self.deliveries: Counter[str] = Counter()

    def upsert(self, key: str, properties: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        with self._lock:
            user = self.users.get(key)
            new = user is None
            if new:
                user = self.users[key] = {}
            user.update(properties)
            self.deliveries[key] += 1
            return user, new

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            user = self.users.get(key)
            return (
                None
                if user is None
                else {"key": key, "properties": dict(user), "deliveries": self.deliveries[key]}
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "distinct_users": len(self.users),
                "deliveries": sum(self.deliveries.values()),
                "duplicate_deliveries": sum(1 for n in self.deliveries.values() if n > 1),
            }


class RequestCounters:
    """``requests``, then the counters ``names`` (by default ``records_received``/``records_accepted``/
    ``records_rejected``, which ``add`` always counts), and ``status_counts``."""

    RECORDS = ("records_received", "records_accepted", "records_rejected")

    def __init__(self, names: Sequence[str] = RECORDS) -> None:
        self._names = ("requests", *names)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.values = Counter(dict.fromkeys(self._names, 0))
            self.statuses: Counter[str] = Counter()

    def add(self, status: int, received: int = 0, accepted: int = 0, rejected: int = 0, **extra: int) -> None:
        """Count one answered request with ``status``, its records, and ``extra`` increments."""
        with self._lock:
            self.values.update(
                requests=1,
                records_received=received,
                records_accepted=accepted,
                records_rejected=rejected,
                **extra,
            )
            self.statuses[str(status)] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self.values, "status_counts": dict(self.statuses)}


class RollingWindow:
    """At most ``limit`` requests in any ``seconds``-long window (HubSpot's "ten-secondly rolling"):
    ``take()`` counts a request and says whether it fits; ``remaining()``; ``clock`` is injectable."""

    def __init__(self, limit: int, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.seconds, self.clock = limit, seconds, clock
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.seconds:
            self._times.popleft()

    def take(self) -> bool:
        now = self.clock()
        self._expire(now)
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True

    def remaining(self) -> int:
        self._expire(self.clock())
        return max(0, self.limit - len(self._times))


class FixedWindow:
    """At most ``limit`` requests per window of ``seconds`` aligned on the epoch (Braze: a window that
    resets at a given UTC second, ``X-RateLimit-Reset``); ``clock`` is the wall clock, injectable."""

    def __init__(self, limit: int, seconds: int, clock: Callable[[], float] = time.time):
        self.limit, self.seconds, self.clock = limit, seconds, clock
        self._window = -1
        self._used = 0

    def take(self) -> tuple[bool, int, int]:
        """(fits, remaining, reset epoch second) for one more request."""
        now = self.clock()
        window = int(now // self.seconds)
        if window != self._window:
            self._window, self._used = window, 0
        fits = self._used < self.limit
        self._used += fits
        return fits, self.limit - self._used, (window + 1) * self.seconds


class TokenBucket:
    """``rate`` requests per second, at most max(1, rate) saved up; starts full. ``take()`` counts a
    request and says whether it fits; ``clock`` is injectable. Not thread-safe."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Faults:
    """Injected faults, drawn from ``random.Random(seed)``: ``draw()`` gives, with probability
    ``error_rate``, one of ``statuses``; ``chance(rate)`` is another fault's draw from the same generator
    (no draw when the rate is 0). Re-seeded by ``reset``."""

    def __init__(self, error_rate: float, seed: int, statuses: tuple[int, ...] = (500, 502, 503)):
        self.error_rate, self.seed, self.statuses = error_rate, seed, statuses
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._random = random.Random(self.seed)

    def draw(self) -> int | None:
        if not self.error_rate:
            return None
        with self._lock:
            if self._random.random() < self.error_rate:
                return self._random.choice(self.statuses)
        return None

    def chance(self, rate: float) -> bool:
        if not rate:
            return False
        with self._lock:
            return self._random.random() < rate


def config_update(config: Any, changes: Any) -> Any:
    """A copy of the dataclass ``config`` with ``changes`` (a JSON object); unknown names or a wrong type
    raise ``ValueError`` (a stand-in configured with a typo would test nothing)."""
    if not isinstance(changes, dict):
        raise ValueError("expected a JSON object of settings")
    names = {f.name: f for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; known: {sorted(names)}")
    for name, value in changes.items():
        current = getattr(config, name)
        allowed = (float, int) if isinstance(current, float) else (type(current),)
        if (
            current is not None
            and value is not None
            and (not isinstance(value, allowed) or isinstance(value, bool) != isinstance(current, bool))
        ):
            raise ValueError(f"setting {name!r} must be of type {type(current).__name__}, got {value!r}")
    return dataclasses.replace(config, **changes)


def devstack_routes(standin: Any) -> list[Route]:
    """``GET /devstack/stats``, ``POST /devstack/reset``, ``GET``/``POST /devstack/config``,
    ``GET /devstack/users/{key}`` over ``standin`` (``stats()``, ``reset()``, ``config``,
    ``configure(changes)``, ``store.get(key)``). Those that only read or reset are sync endpoints:
    Starlette runs them in the thread pool, off the event loop (a store may be SQLite)."""

    def stats(request: Request) -> Response:
        return json_response(200, standin.stats())

    def reset(request: Request) -> Response:
        standin.reset()
        return Response(status_code=204)

    async def config(request: Request) -> Response:
        if request.method == "POST":
            try:
                standin.configure(orjson.loads(await request.body() or b"{}"))
            except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
                return json_response(400, {"error": "invalid_body", "detail": str(exc)})
        return json_response(200, dataclasses.asdict(standin.config))

    def user(request: Request) -> Response:
        found = standin.store.get(request.path_params["key"])
        return json_response(404, {"error": "not_found"}) if found is None else json_response(200, found)

    return [
        Route("/devstack/stats", stats),
        Route("/devstack/reset", reset, methods=["POST"]),
        Route("/devstack/config", config, methods=["GET", "POST"]),
        Route("/devstack/users/{key:path}", user),
    ]


class CrmApp:
    """What the CRM stand-ins share: a ``store`` (a ``UserStore`` unless given), ``counters`` (a
    ``RequestCounters`` unless given), a lock, the Starlette ``app`` of their ``routes`` plus the
    ``/devstack/*`` routes (with ``middleware`` and ``exception_handlers``, if given), and those routes'
    ``configure``/``reset``/``stats``. A subclass defines ``_set(config)``: its limits and faults from
    its settings, called with the lock held (or before serving); ``_updated(changes)`` checks a change
    of settings (by default ``config_update``)."""

    def __init__(
        self,
        config: Any,
        clock: Callable[[], float],
        routes: list[Route],
        *,
        store: Any = None,
        counters: RequestCounters | None = None,
        middleware: Sequence[Middleware] = (),
        exception_handlers: Mapping[Any, ExceptionHandler] | None = None,
    ):
        self.clock = clock
        self.store = UserStore() if store is None else store
        self.counters = RequestCounters() if counters is None else counters
        self._lock = threading.Lock()
        self._set(config)
        self.app = Starlette(
            routes=[*routes, *devstack_routes(self)],
            middleware=middleware,
            exception_handlers=exception_handlers,
        )

    def _set(self, config: Any) -> None:
        raise NotImplementedError

    def _updated(self, changes: Any) -> Any:
        return config_update(self.config, changes)

    def configure(self, changes: Any) -> None:
        with self._lock:
            self._set(self._updated(changes))

    def reset(self) -> None:
        with self._lock:
            self._set(self.config)
        self.store.clear()
        self.counters.reset()

    def stats(self) -> dict[str, Any]:
        return {**self.counters.snapshot(), **self.store.counts()}

    def close(self) -> None:
        """Release what the stand-in holds once it no longer serves (nothing, unless a subclass says)."""
