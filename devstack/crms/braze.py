"""A Braze stand-in: ``POST /users/track`` attributes objects as Braze documents them (checked against
response bodies copied in shape from Braze's documentation, ``tests/fixtures/braze/``).

Facts it follows, and where Braze states them:
- the request (``attributes`` objects keyed by ``external_id``, ``Authorization: Bearer <REST API key>``)
  and its answers (``{"message": "success", "attributes_processed": n}``, with non-fatal ``errors``;
  a fatal error's ``{"message": <fatal error message>, "errors": [...]}``):
  https://braze.com/docs/api/endpoints/user_data/post_user_track;
- the fatal errors (``400 Max Input Length Exceeded`` over the objects a request may hold, ``401
  Unauthorized`` without a REST API key, ``403 Access Denied`` for a key without the ``users.track``
  permission, ``404`` for a key Braze does not know ("Unknown REST API Key"), ``429 Rate Limited``, 5xx to
  retry with backoff): https://braze.com/docs/api/errors;
- 3,000 requests per three seconds, 75 attributes objects per request (50 in total on contracts priced
  by monthly active users), the ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``
  (UTC epoch second) headers: https://braze.com/docs/api/api_limits.
A non-fatal error is ``{"type", "input_array", "index"}``, and ``attributes_processed`` counts the objects
not refused (as clients have met them: the types "'external_id' or 'braze_id' or 'user_alias' is
required" and "The value provided for the 'email' field is not a valid email."); a request whose every
object is refused answers 400 "Valid data must be provided in the 'attributes', 'events', or 'purchases'
fields." with the same errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack.crms.common import (
    EMAIL,
    CrmApp,
    Faults,
    FixedWindow,
    json_response,
)

TRACK_PATH = "/users/track"
MAX_ATTRIBUTES = 75
IDENTIFIER_REQUIRED = "'external_id' or 'braze_id' or 'user_alias' is required"
INVALID_EMAIL = "The value provided for the 'email' field is not a valid email."
NO_VALID_DATA = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
_IDENTIFIERS = ("external_id", "braze_id", "user_alias")


@dataclass(frozen=True)
class BrazeConfig:
    """``requests_per_window`` per ``window_seconds`` (Braze: 3,000 per 3 s for /users/track);
    ``objects_per_request``: 75, or 50 on an MAU contract; ``permissions``: the REST API key's (a key
    without ``users.track`` gets 403); ``error_rate``/``seed``: injected 500/502/503."""

    requests_per_window: int = 3000
    window_seconds: int = 3
    objects_per_request: int = MAX_ATTRIBUTES
    permissions: list[str] = field(default_factory=lambda: ["users.track"])
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
        authorization = request.headers.get("authorization") or ""
        if not authorization.startswith("Bearer ") or not authorization[7:].strip():
            return json_response(401, {"message": "Unauthorized", "errors": []}), 0, 0, 0
        if authorization[7:] != self.api_key:
            return json_response(404, {"message": "Unknown REST API Key", "errors": []}), 0, 0, 0
        if "users.track" not in self.config.permissions:
            return json_response(403, {"message": "Access Denied", "errors": []}), 0, 0, 0
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
        if len(attributes) > self.config.objects_per_request:
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
        if attributes and not processed:
            body = {"message": NO_VALID_DATA, "errors": errors}
            return json_response(400, body, headers), len(attributes), 0, len(errors)
        body: dict[str, Any] = {"message": "success"}
        if attributes:
            body["attributes_processed"] = processed
        if errors:
            body["errors"] = errors
        return json_response(201, body, headers), len(attributes), processed, len(errors)


def _invalid(item: Any) -> str | None:
    if not isinstance(item, dict) or not any(item.get(k) for k in _IDENTIFIERS):
        return IDENTIFIER_REQUIRED
    if any(name in item and not isinstance(item[name], str) for name in ("external_id", "braze_id")):
        return IDENTIFIER_REQUIRED  # an identifier is a string
    email = item.get("email")
    if email is not None and (not isinstance(email, str) or not EMAIL.fullmatch(email)):
        return INVALID_EMAIL
    return None
