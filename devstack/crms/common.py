"""What the HubSpot and Braze stand-ins share: the contacts they hold (``UserStore``), request counters,
a fixed or rolling request window, injected 5xx faults, and the ``/devstack/*`` endpoints
(stats, reset, config, one user) mounted next to the CRM's own API.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


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
    """``requests``, ``records_received``/``records_accepted``/``records_rejected`` and ``status_counts``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.values = Counter(requests=0, records_received=0, records_accepted=0, records_rejected=0)
            self.statuses: Counter[str] = Counter()

    def add(self, status: int, received: int = 0, accepted: int = 0, rejected: int = 0) -> None:
        with self._lock:
            self.values.update(
                requests=1, records_received=received, records_accepted=accepted, records_rejected=rejected
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


class Faults:
    """Injected server errors: each request draws from ``random.Random(seed)``; with probability
    ``error_rate`` it gets one of ``statuses``. Re-seeded by ``reset``."""

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
    ``configure(changes)``, ``store``)."""

    async def stats(request: Request) -> Response:
        return json_response(200, standin.stats())

    async def reset(request: Request) -> Response:
        standin.reset()
        return Response(status_code=204)

    async def config(request: Request) -> Response:
        if request.method == "POST":
            try:
                standin.configure(orjson.loads(await request.body() or b"{}"))
            except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
                return json_response(400, {"error": "invalid_body", "detail": str(exc)})
        return json_response(200, dataclasses.asdict(standin.config))

    async def user(request: Request) -> Response:
        found = standin.store.get(request.path_params["key"])
        return json_response(404, {"error": "not_found"}) if found is None else json_response(200, found)

    return [
        Route("/devstack/stats", stats),
        Route("/devstack/reset", reset, methods=["POST"]),
        Route("/devstack/config", config, methods=["GET", "POST"]),
        Route("/devstack/users/{key:path}", user),
    ]


class CrmApp:
    """What the HubSpot and Braze stand-ins share: a ``UserStore``, ``RequestCounters``, a lock, the
    Starlette ``app`` of their ``routes`` plus the ``/devstack/*`` routes, and those routes'
    ``configure``/``reset``/``stats``. A subclass defines ``_set(config)``: its limits and faults from
    its settings, called with the lock held (or before serving)."""

    def __init__(self, config: Any, clock: Callable[[], float], routes: list[Route]):
        self.clock = clock
        self.store = UserStore()
        self.counters = RequestCounters()
        self._lock = threading.Lock()
        self._set(config)
        self.app = Starlette(routes=[*routes, *devstack_routes(self)])

    def _set(self, config: Any) -> None:
        raise NotImplementedError

    def configure(self, changes: dict[str, Any]) -> None:
        with self._lock:
            self._set(config_update(self.config, changes))

    def reset(self) -> None:
        with self._lock:
            self._set(self.config)
        self.store.clear()
        self.counters.reset()

    def stats(self) -> dict[str, Any]:
        return {**self.counters.snapshot(), **self.store.counts()}
