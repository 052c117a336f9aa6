"""A HubSpot stand-in: ``POST /crm/v3/objects/contacts/batch/upsert`` as HubSpot documents it (its
answers are parsed by ``hubspot-api-client`` in ``tests/devstack/test_hubspot_standin.py``).

Facts it follows, and where HubSpot states them:
- the request and its 200/207 answers: https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts
  (``inputs`` of ``{"id", "idProperty", "properties"}``; ``status``, ``results``, ``startedAt``,
  ``completedAt``; with errors ``numErrors`` and ``errors`` of ``{"status", "category", "message",
  "context", "errors": [{"message", "code", "context"}]}``);
- 207 Multi-Status for a batch with errors and successes, 401 for invalid authentication:
  https://developers.hubspot.com/docs/api-reference/error-handling;
- limits and their headers (``X-HubSpot-RateLimit-Daily``, ``-Daily-Remaining``, ``-Interval-Milliseconds``,
  ``-Max``, ``-Remaining``) and the 429 body (``errorType`` ``RATE_LIMIT``, ``policyName``
  ``TEN_SECONDLY_ROLLING`` or ``DAILY``): https://developers.hubspot.com/docs/guides/apps/api-usage/usage-details;
- 100 inputs per batch request: the CRM batch endpoints' limit.
What HubSpot does not spell out, the stand-in words itself: the 400 for an oversize batch, the
per-input validation messages (codes ``INVALID_EMAIL``, ``PROPERTY_DOESNT_EXIST``).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack.crm.store import EMAIL
from devstack.crms.common import (
    CrmApp,
    Faults,
    RollingWindow,
    json_response,
)

UPSERT_PATH = "/crm/v3/objects/contacts/batch/upsert"
MAX_INPUTS = 100
_AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more "
    "details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


@dataclass(frozen=True)
class HubSpotConfig:
    """``ten_second_limit``: requests per rolling interval (HubSpot: 100 or 190 per 10 s for private
    apps, by tier); ``interval_milliseconds``: the interval (10,000); ``daily_limit``: requests per day;
    ``unique_properties``: properties an upsert may use as ``idProperty``; ``known_properties``: the
    contact properties that exist (None: any); ``error_rate``/``seed``: injected 500/502/503/504."""

    ten_second_limit: int = 190
    interval_milliseconds: int = 10_000
    daily_limit: int = 500_000
    unique_properties: list[str] = field(default_factory=lambda: ["email", "external_id", "hs_object_id"])
    known_properties: list[str] | None = None
    error_rate: float = 0.0
    seed: int = 0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(
    status: int, message: str, category: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }
    return json_response(status, body, headers)


class HubSpotStandIn(CrmApp):
    """The stand-in's state (contacts, limits, faults, counters) and its Starlette ``app``.

    ``token``: the private app access token it accepts. ``clock``: monotonic seconds, for the rolling
    interval (injectable in tests).
    """

    def __init__(
        self, token: str, config: HubSpotConfig | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.token = token
        self._next_id = 1
        super().__init__(
            config or HubSpotConfig(), clock, [Route(UPSERT_PATH, self.upsert, methods=["POST"])]
        )

    def _set(self, config: HubSpotConfig) -> None:
        self.config = config
        self.window = RollingWindow(config.ten_second_limit, config.interval_milliseconds / 1000, self.clock)
        self.daily_used = 0
        self.faults = Faults(config.error_rate, config.seed, (500, 502, 503, 504))

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "daily_used": self.daily_used}

    def _limits(self) -> tuple[Response | None, dict[str, str]]:
        """Count the request against both limits: a 429 if it exceeds one, and the rate-limit headers."""
        config = self.config
        with self._lock:
            daily_ok = self.daily_used < config.daily_limit
            interval_ok = daily_ok and self.window.take()
            self.daily_used += daily_ok and interval_ok
            headers = {
                "X-HubSpot-RateLimit-Daily": str(config.daily_limit),
                "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, config.daily_limit - self.daily_used)),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(config.interval_milliseconds),
                "X-HubSpot-RateLimit-Max": str(config.ten_second_limit),
                "X-HubSpot-RateLimit-Remaining": str(self.window.remaining()),
            }
        if not daily_ok:
            return self._rate_limited("You have reached your daily limit.", "DAILY", headers), headers
        if not interval_ok:
            message = "You have reached your ten_secondly_rolling limit."
            return self._rate_limited(message, "TEN_SECONDLY_ROLLING", headers), headers
        return None, headers

    @staticmethod
    def _rate_limited(message: str, policy: str, headers: dict[str, str]) -> Response:
        body = {
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": policy,
            "requestId": str(uuid.uuid4()),
        }
        return json_response(429, body, headers)

    async def upsert(self, request: Request) -> Response:
        response, received, accepted, rejected = await self._upsert(request)
        self.counters.add(response.status_code, received, accepted, rejected)
        return response

    async def _upsert(self, request: Request) -> tuple[Response, int, int, int]:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, _AUTH_MESSAGE, "INVALID_AUTHENTICATION"), 0, 0, 0
        limited, headers = self._limits()
        if limited is not None:
            return limited, 0, 0, 0
        if (status := self.faults.draw()) is not None:
            return _error(status, "internal error", "INTERNAL_ERROR", headers), 0, 0, 0
        started = _now()
        try:
            inputs = orjson.loads(await request.body())["inputs"]
            if not isinstance(inputs, list):
                raise TypeError("inputs is not a list")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _error(400, f"Invalid input JSON: {exc}", "VALIDATION_ERROR", headers), 0, 0, 0
        if len(inputs) > MAX_INPUTS:
            message = f"Batch input size {len(inputs)} exceeds the limit of {MAX_INPUTS} inputs per request"
            return _error(400, message, "VALIDATION_ERROR", headers), 0, 0, 0
        results, errors = [], []
        for item in inputs:
            problem = self._invalid(item)
            if problem is not None:
                errors.append(problem)
                continue
            id_property, key = item["idProperty"], item["id"]
            stored, new = self.store.upsert(key, {**item.get("properties", {}), id_property: key})
            if new:
                with self._lock:
                    stored["hs_object_id"] = str(self._next_id)
                    self._next_id += 1
            results.append(
                {
                    "id": stored["hs_object_id"],
                    "properties": dict(stored),
                    "createdAt": started,
                    "updatedAt": started,
                    "archived": False,
                    "new": new,
                }
            )
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _now(),
        }
        if errors:
            body |= {"numErrors": len(errors), "errors": errors}
        return json_response(207 if errors else 200, body, headers), len(inputs), len(results), len(errors)

    def _invalid(self, item: Any) -> dict[str, Any] | None:
        """The per-input error of an input HubSpot would refuse, or None."""
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            return _input_error(None, "Input is missing a non-empty id", "INVALID_INPUT", None)
        key, id_property = item["id"], item.get("idProperty")
        if id_property not in self.config.unique_properties:
            message = f"{id_property!r} is not a unique property; use one of {self.config.unique_properties}"
            return _input_error(key, message, "INVALID_ID_PROPERTY", "idProperty")
        properties = item.get("properties") or {}
        known = self.config.known_properties
        for name, value in properties.items():
            if known is not None and name not in known:
                return _input_error(key, f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST", name)
            if not isinstance(value, str):
                return _input_error(key, f"{value!r} is not a valid string value", "INVALID_STRING", name)
        email = key if id_property == "email" else properties.get("email")
        if email and not EMAIL.fullmatch(email):
            return _input_error(key, f"Email address {email} is invalid", "INVALID_EMAIL", "email")
        return None


def _input_error(key: str | None, message: str, code: str, property_name: str | None) -> dict[str, Any]:
    detail: dict[str, Any] = {"message": message, "code": code}
    if property_name is not None:
        detail["context"] = {"propertyName": [property_name]}
    return {
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": f"Property values were not valid: {orjson.dumps([detail]).decode()}",
        "context": {"ids": [key]} if key is not None else {},
        "errors": [detail],
    }
