"""Fault injection for the stand-in's batch endpoint: `FaultConfig` (what to inject), the token bucket
behind its rate limit, and `Faults` (the configuration in force, its seeded generator and its bucket)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devstack.crm.response import Response, _json

_SERVER_ERRORS = (500, 502, 503)


@dataclass(frozen=True)
class FaultConfig:
    """Faults injected into `POST /v1/users/batch`, in this order, before the batch is processed:

    - `rate_limit_rps`: a token bucket of this many requests per second (burst: max(1, rate));
      a request finding it empty gets 429 with `Retry-After: retry_after_seconds`. None: no limit.
    - `error_rate`: probability (0..1) of a 500, 502 or 503 (503 with `Retry-After: 1`).
    - `slow_rate`: probability (0..1) of sleeping `slow_seconds` before processing normally.
    - `empty_answer_rate`: probability (0..1) that a processed batch is answered 200 `{}` — stored, but
      without saying so (a broken CRM: the export must not count it as accepted).

    Draws come from `random.Random(seed)`, one generator for the server, so a given sequence of
    requests meets the same faults. Invalid values raise `ValueError`.
    """

    rate_limit_rps: float | None = None
    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    seed: int = 0
    retry_after_seconds: int = 1
    empty_answer_rate: float = 0.0

    def __post_init__(self) -> None:
        def number(value: Any) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if self.rate_limit_rps is not None and not (number(self.rate_limit_rps) and self.rate_limit_rps > 0):
            raise ValueError("rate_limit_rps must be a number > 0, or null for no limit")
        for name in ("error_rate", "slow_rate", "empty_answer_rate"):
            value = getattr(self, name)
            if not (number(value) and 0 <= value <= 1):
                raise ValueError(f"{name} must be a probability between 0 and 1")
        if not (number(self.slow_seconds) and self.slow_seconds >= 0):
            raise ValueError("slow_seconds must be a number >= 0")
        if not integer(self.seed):
            raise ValueError("seed must be an integer")
        if not (integer(self.retry_after_seconds) and self.retry_after_seconds >= 0):
            raise ValueError("retry_after_seconds must be an integer >= 0")

    def updated(self, changes: Mapping[str, Any]) -> FaultConfig:
        """A copy with `changes` applied; unknown field names raise `ValueError` (they are typos)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault settings {sorted(unknown)}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cli_args(self) -> list[str]:
        """The `python -m devstack.crm` options that set this configuration."""
        args = []
        for name, value in self.to_dict().items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        return args


class _TokenBucket:
    """`rate` tokens per second, at most max(1, rate) saved up; starts full. Not thread-safe."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Faults:
    """The current `FaultConfig`, its seeded generator and its token bucket, under one lock."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self._set(config)

    def _set(self, config: FaultConfig) -> None:
        self.config = config
        self._random = random.Random(config.seed)
        self._bucket = None if config.rate_limit_rps is None else _TokenBucket(config.rate_limit_rps)

    def update(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Apply `changes` (FaultConfig fields); the generator is re-seeded and the bucket refilled."""
        with self._lock:
            self._set(self.config.updated(changes))
            return self.config

    def reset(self) -> None:
        """Re-seed the generator and refill the bucket, keeping the configuration."""
        with self._lock:
            self._set(self.config)

    def draw(self) -> tuple[Response | None, float]:
        """For one batch request: an injected error response (or None), and seconds to sleep first."""
        with self._lock:
            config = self.config
            if self._bucket is not None and not self._bucket.take():
                retry_after = config.retry_after_seconds
                return _json(
                    429,
                    {"error": "rate_limited", "retry_after": retry_after},
                    {"Retry-After": str(retry_after)},
                ), 0.0
            if config.error_rate and self._random.random() < config.error_rate:
                status = self._random.choice(_SERVER_ERRORS)
                headers = {"Retry-After": "1"} if status == 503 else {}
                return _json(status, {"error": "server_error"}, headers), 0.0
            if config.slow_rate and self._random.random() < config.slow_rate:
                return None, config.slow_seconds
            return None, 0.0

    def empty_answer(self) -> bool:
        """For one processed batch: whether to answer it `{}`."""
        with self._lock:
            rate = self.config.empty_answer_rate
            return bool(rate) and self._random.random() < rate
