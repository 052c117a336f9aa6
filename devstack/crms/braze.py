"""A Braze stand-in: ``POST /users/track`` attributes objects as Braze documents them (checked against
response bodies copied in shape from Braze's documentation, ``tests/fixtures/braze/``).

Facts it follows, and where Braze states them:
- the request (``attributes`` objects keyed by ``external_id``, ``Authorization: Bearer <REST API key>``)
  and its answers (``{"message": "success", "attributes_processed": n}``, with non-fatal ``errors``;
  a fatal error's ``{"message": <fatal error message>, "errors": [...]}``):
  https://braze.com/docs/api/endpoints/user_data/post_user_track;
- the fatal errors (``400 Max Input Length Exceeded`` over 75 attributes objects, ``401 Unauthorized``
  for an unknown or missing REST API key, ``429 Rate Limited``, 5xx to retry with backoff):
  https://braze.com/docs/api/errors;
- 3,000 requests per three seconds, 75 attributes objects per request, the ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (UTC epoch second) headers:
  https://braze.com/docs/api/api_limits.
A non-fatal error is ``{"type", "input_array", "index"}`` (as Braze returns it for an attributes object
without an identifier); the text for an invalid email is the stand-in's own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack.crm.store import EMAIL
from devstack.crms.common import (
    CrmApp,
    Faults,
    FixedWindow,
    json_response,
)

TRACK_PATH = "/users/track"
MAX_ATTRIBUTES = 75
IDENTIFIER_REQUIRED = "'external_id' or 'braze_id' or 'user_alias' is required"
INVALID_EMAIL = "'email' is not a valid email address"
_IDENTIFIERS = ("external_id", "braze_id", "user_alias")


@dataclass(frozen=True)
class BrazeConfig:
    """``requests_per_window`` per ``window_seconds`` (Braze: 3,000 per 3 s for /users/track);
    ``error_rate``/``seed``: injected 500/502/503."""

    requests_per_window: int = 3000
    window_seconds: int = 3
    error_rate: float = 0.0
    seed: int = 0


class BrazeStandIn(CrmApp):
    """The stand-in's state and its Starlette ``app``. ``api_key``: the REST API key it accepts;
    ``clock``: epoch seconds, for the rate-limit window (injectable in tests)."""

    def __init__(
        self, api_key: str, config: BrazeConfig | None = None, clock: Callable[[], float] = time.time
    ):
        self.api_key = api_key
        super().__init__(config or BrazeConfig(), clock, [Route(TRACK_PATH, self.track, methods=["POST"])])

    def _set(self, config: BrazeConfig) -> None:
        self.config = config
        self.window = FixedWindow(config.requests_per_window, config.window_seconds, self.clock)
        self.faults = Faults(config.error_rate, config.seed)

    async def track(self, request: Request) -> Response:
        response, received, accepted, rejected = await self._track(request)
        self.counters.add(response.status_code, received, accepted, rejected)
        return response

    async def _track(self, request: Request) -> tuple[Response, int, int, int]:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return json_response(401, {"message": "Unauthorized", "errors": []}), 0, 0, 0
        with self._lock:
            fits, remaining, reset = self.window.take()
        headers = {
            "X-RateLimit-Limit": str(self.config.requests_per_window),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(reset),
        }
        if not fits:
            return json_response(429, {"message": "Rate Limited", "errors": []}, headers), 0, 0, 0
        if (status := self.faults.draw()) is not None:
            return json_response(status, {"message": "Internal Server Error", "errors": []}, headers), 0, 0, 0
        try:
            document = orjson.loads(await request.body())
            attributes = document.get("attributes", [])
            if not isinstance(attributes, list):
                raise TypeError("attributes is not an array")
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return json_response(400, {"message": "Bad Request", "errors": []}, headers), 0, 0, 0
        if len(attributes) > MAX_ATTRIBUTES:
            return (
                json_response(400, {"message": "Max Input Length Exceeded", "errors": []}, headers),
                0,
                0,
                0,
            )
        errors = []
        for index, item in enumerate(attributes):
            problem = _invalid(item)
            if problem is not None:
                errors.append({"type": problem, "input_array": "attributes", "index": index})
                continue
            # A user is identified by external_id, braze_id or user_alias (one of them, checked above).
            key = item.get("external_id") or item.get("braze_id") or orjson.dumps(item["user_alias"]).decode()
            self.store.upsert(key, {name: value for name, value in item.items() if name not in _IDENTIFIERS})
        processed = len(attributes) - len(errors)
        body: dict[str, Any] = {"message": "success"}
        if attributes:
            body["attributes_processed"] = processed
        if errors:
            body["errors"] = errors
        return json_response(201, body, headers), len(attributes), processed, len(errors)


def _invalid(item: Any) -> str | None:
    if not isinstance(item, dict) or not any(item.get(k) for k in _IDENTIFIERS):
        return IDENTIFIER_REQUIRED
    email = item.get("email")
    if email is not None and (not isinstance(email, str) or not EMAIL.fullmatch(email)):
        return INVALID_EMAIL
    return None
