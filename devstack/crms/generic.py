"""The generic CRM endpoint's stand-in: ``POST /v1/users/batch`` into SQLite, its injected faults
(``FaultConfig``) and its ``/devstack/*`` endpoints, a Starlette app (``GenericStandIn``) that
``python -m devstack.crms generic`` serves and ``CrmStandIn`` (``devstack.crms.standin``) launches. The API
itself is described in docs/crm-export.md, "The generic CRM stand-in".
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devstack.asgi_server import HttpServerMethods
from devstack.crms.common import CrmApp, Faults, RequestCounters, TokenBucket, json_response
from devstack.crms.generic_store import IdempotencyKeyReused, Store, split_batch

logger = logging.getLogger(__name__)

BATCH_PATH = "/v1/users/batch"
DEFAULT_MAX_BATCH_SIZE = 5000
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
        """The `python -m devstack.crms generic` options that set this configuration."""
        args = []
        for name, value in self.to_dict().items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        return args


class LengthRequired:
    """ASGI middleware: 411 ``{"error": "length_required"}`` (and ``Connection: close``) to a request
    with a ``Transfer-Encoding``: the stand-in takes bodies of a declared length only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(
            name == b"transfer-encoding" and value for name, value in scope["headers"]
        ):
            response = json_response(411, {"error": "length_required"}, {"Connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _not_found(request: Request, exc: Exception) -> Response:
    """A path it does not serve, or a method the path does not take: 404 (405 for the batch path)."""
    if isinstance(exc, HTTPException) and exc.status_code == 405 and request.url.path == BATCH_PATH:
        return json_response(405, {"error": "method_not_allowed"}, {"Allow": "POST"})
    return json_response(404, {"error": "not_found"})


async def _internal_error(request: Request, exc: Exception) -> Response:
    return json_response(500, {"error": "internal_error"})


class GenericStandIn(CrmApp):
    """The stand-in's state (SQLite ``store`` at ``db_path``, created if missing; counters; faults) and
    its Starlette ``app``. ``api_key``: the key it accepts; ``max_batch_size``: records per request.
    ``close()`` closes the store."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        api_key: str,
        faults: FaultConfig | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.max_batch_size = max_batch_size
        self._authorization = f"Bearer {api_key}".encode()
        super().__init__(
            faults or FaultConfig(),
            time.monotonic,
            [Route(BATCH_PATH, self.batch, methods=["POST"]), Route("/devstack/users", self.users)],
            store=Store(db_path),
            counters=RequestCounters(
                ("batches_accepted", *RequestCounters.RECORDS, "replays", "slow_responses")
            ),
            middleware=[Middleware(HttpServerMethods), Middleware(LengthRequired)],
            exception_handlers={404: _not_found, 405: _not_found, Exception: _internal_error},
        )
        self.app.router.redirect_slashes = False  # another path is a 404, never a redirect

    def _set(self, config: FaultConfig) -> None:
        self.config = config
        self.faults = Faults(config.error_rate, config.seed, _SERVER_ERRORS)
        self.bucket = (
            None if config.rate_limit_rps is None else TokenBucket(config.rate_limit_rps, self.clock)
        )

    def _updated(self, changes: Any) -> FaultConfig:
        if type(changes) is not dict:
            raise ValueError("expected a JSON object of fault settings")
        return self.config.updated(changes)

    def close(self) -> None:
        """Close the SQLite store."""
        self.store.close()

    def users(self, request: Request) -> Response:
        """``GET /devstack/users``: every stored user."""
        return json_response(200, {"users": self.store.users()})

    async def batch(self, request: Request) -> Response:
        """``POST /v1/users/batch``; counts the request and its outcome."""
        increments: dict[str, int] = {}
        try:
            response = await self._batch(request.headers, await request.body(), increments)
        except Exception:
            logger.exception("POST %s failed", BATCH_PATH)
            response = json_response(500, {"error": "internal_error"})
        self.counters.add(response.status_code, **increments)
        return response

    def _draw(self) -> tuple[Response | None, float]:
        """For one batch request: an injected error response (or None), and seconds to sleep first."""
        with self._lock:
            config, faults = self.config, self.faults
            if self.bucket is not None and not self.bucket.take():
                retry_after = config.retry_after_seconds
                body = {"error": "rate_limited", "retry_after": retry_after}
                return json_response(429, body, {"Retry-After": str(retry_after)}), 0.0
            if (status := faults.draw()) is not None:
                headers = {"Retry-After": "1"} if status == 503 else {}
                return json_response(status, {"error": "server_error"}, headers), 0.0
            return None, config.slow_seconds if faults.chance(config.slow_rate) else 0.0

    async def _batch(self, headers: Mapping[str, str], body: bytes, increments: dict[str, int]) -> Response:
        given = (headers.get("Authorization") or "").encode()
        if not hmac.compare_digest(given, self._authorization):
            return json_response(401, {"error": "invalid_api_key"}, {"WWW-Authenticate": "Bearer"})
        injected, delay_seconds = self._draw()
        if injected is not None:
            return injected
        if delay_seconds:
            increments["slow_responses"] = 1
            await asyncio.sleep(delay_seconds)
        key = headers.get("Idempotency-Key") or None
        return await run_in_threadpool(self._store_batch, key, body, increments)

    def _store_batch(self, key: str | None, body: bytes, increments: dict[str, int]) -> Response:
        """Validate and store the batch, or replay the answer its idempotency key got (SQLite: in the
        thread pool)."""
        body_sha256 = hashlib.sha256(body).hexdigest() if key else ""
        try:
            if key is not None and (stored := self.store.replay(key, body_sha256)) is not None:
                increments["replays"] = 1
                return _replay(stored)
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                return json_response(400, {"error": "invalid_body", "detail": f"malformed JSON: {e}"})
            users = document.get("users") if type(document) is dict else None
            if type(users) is not list:
                detail = 'expected an object with a "users" list'
                return json_response(400, {"error": "invalid_body", "detail": detail})
            if len(users) > self.max_batch_size:
                too_large = {"error": "batch_too_large", "max_batch_size": self.max_batch_size}
                return json_response(413, too_large)
            rows, rejected = split_batch(users)
            answer = (
                b"{}"
                if self.faults.chance(self.config.empty_answer_rate)
                else orjson.dumps({"accepted": len(rows), "rejected": rejected})
            )
            sent, replayed = self.store.commit_batch(rows, answer, key, body_sha256)
        except IdempotencyKeyReused:
            return json_response(422, {"error": "idempotency_key_reused"})
        if replayed:  # the same key was committed while this request was being validated
            increments["replays"] = 1
            return _replay(sent)
        increments.update(batches_accepted=1, received=len(users), accepted=len(rows), rejected=len(rejected))
        return Response(sent, 200, media_type="application/json")


def _replay(answer: bytes) -> Response:
    return Response(answer, 200, {"Idempotent-Replayed": "true"}, media_type="application/json")
