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
- 100 inputs per batch request: the CRM batch endpoints' limit;
- the limits by tier (Free and Starter 100 requests per 10 s and 250,000 a day, Professional 190 and
  625,000, Enterprise 190 and 1,000,000; the daily limit resets at midnight in the account's time zone):
  https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines;
- per-input errors of a batch only for inputs carrying an ``objectWriteTraceId`` (207, the error's
  ``context.objectWriteTraceId``): "Multi-status errors" of the error-handling page. Without it one
  invalid input fails the whole request (400 ``VALIDATION_ERROR``, nothing written; as the v1 batch
  endpoint documents) — or, as clients have met it, a 207 whose ``results`` are empty;
- "Unable to perform update/upsert by non-unique 0-1 property <name> in portal ID <id>" (400) for an
  ``idProperty`` without unique values, ``hs_object_id`` included (HubSpot/hubspot-api-nodejs#548), and
  "Duplicate IDs found in batch input: [...]. IDs must be unique" (400, ``context.ids``) for two inputs
  of one record — emails compared case-insensitively, as HubSpot compares them.
Where HubSpot is unclear the stand-in takes the stricter reading: results do not echo the trace id
(HubSpot's example does not), and an input error without a trace id refuses the whole batch. What
HubSpot does not spell out, the stand-in words itself: the 400 for an oversize batch.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from devstack.crms.common import (
    EMAIL,
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


#: A private app's limits by the account's tier: (requests per 10 s, requests per day).
TIERS = {
    "free": (100, 250_000),
    "starter": (100, 250_000),
    "professional": (190, 625_000),
    "enterprise": (190, 1_000_000),
}
PORTAL_ID = 21939747


@dataclass(frozen=True)
class HubSpotConfig:
    """``tier``: the account's tier, whose limits (``TIERS``) apply unless ``ten_second_limit`` or
    ``daily_limit`` is given; ``interval_milliseconds``: the rolling interval (10,000); ``time_zone``: the
    account's, whose midnight resets the daily limit; ``unique_properties``: the properties with unique
    values an upsert may use as ``idProperty`` (``hs_object_id`` is not one); ``known_properties``: the
    contact properties that exist (None: any); ``trace_ids``: per-input errors (207) for inputs carrying
    an ``objectWriteTraceId``; ``refusal``: how a batch refused whole for an input error answers, ``400``
    or ``207-empty`` (a 207 with empty ``results``); ``error_rate``/``seed``: injected 500/502/503/504."""

    tier: str = "professional"
    ten_second_limit: int | None = None
    daily_limit: int | None = None
    interval_milliseconds: int = 10_000
    time_zone: str = "UTC"
    unique_properties: list[str] = field(default_factory=lambda: ["email", "external_id"])
    known_properties: list[str] | None = None
    trace_ids: bool = True
    refusal: str = "400"
    error_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"tier {self.tier!r}: one of {sorted(TIERS)}")
        if self.refusal not in ("400", "207-empty"):
            raise ValueError(f"refusal {self.refusal!r}: '400' or '207-empty'")
        ZoneInfo(self.time_zone)

    def limits(self) -> tuple[int, int]:
        """(requests per interval, requests per day)."""
        per_interval, per_day = TIERS[self.tier]
        return (
            per_interval if self.ten_second_limit is None else self.ten_second_limit,
            per_day if self.daily_limit is None else self.daily_limit,
        )


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
    interval; ``wall_clock``: epoch seconds, for the day (both injectable in tests). A change of its
    configuration (``POST /devstack/config``) starts the limits afresh, as a new day does.
    """

    def __init__(
        self,
        token: str,
        config: HubSpotConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ):
        self.token = token
        self.wall_clock = wall_clock
        self._next_id = 1
        super().__init__(
            config or HubSpotConfig(), clock, [Route(UPSERT_PATH, self.upsert, methods=["POST"])]
        )

    def _set(self, config: HubSpotConfig) -> None:
        self.config = config
        self.ten_second_limit, self.daily_limit = config.limits()
        self.window = RollingWindow(self.ten_second_limit, config.interval_milliseconds / 1000, self.clock)
        self.daily_used, self.day = 0, self._today()
        self.faults = Faults(config.error_rate, config.seed, (500, 502, 503, 504))

    def _today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.wall_clock(), ZoneInfo(self.config.time_zone)).date()

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "daily_used": self.daily_used}

    def _limits(self) -> tuple[Response | None, dict[str, str]]:
        """Count the request against both limits: a 429 if it exceeds one, and the rate-limit headers."""
        config = self.config
        with self._lock:
            if (today := self._today()) != self.day:  # midnight in the account's time zone
                self.daily_used, self.day = 0, today
            daily_ok = self.daily_used < self.daily_limit
            interval_ok = daily_ok and self.window.take()
            self.daily_used += daily_ok and interval_ok
            headers = {
                "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
                "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self.daily_used)),
                "X-HubSpot-RateLimit-Interval-Milliseconds": str(config.interval_milliseconds),
                "X-HubSpot-RateLimit-Max": str(self.ten_second_limit),
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
        refused = self._refused(inputs, headers)
        if refused is not None:
            return refused, len(inputs), 0, len(inputs)
        problems = [(item, self._invalid(item)) for item in inputs]
        errors = [problem for _, problem in problems if problem is not None]
        traced = self.config.trace_ids and all(
            _trace_id(item) for item, problem in problems if problem is not None
        )
        if errors and not traced:  # one input error refuses the whole batch: nothing is written
            if self.config.refusal == "207-empty":  # as recorded: nothing written, and nothing said
                body = {
                    "status": "COMPLETE",
                    "results": [],
                    "errors": [],
                    "startedAt": started,
                    "completedAt": _now(),
                }
                return json_response(207, body, headers), len(inputs), 0, len(inputs)
            details = [detail for error in errors for detail in error["errors"]]
            validations = [validation for error in errors for validation in error["validations"]]
            message = f"Property values were not valid: {orjson.dumps(validations).decode()}"
            response = _error(400, message, "VALIDATION_ERROR", headers, errors=details)
            return response, len(inputs), 0, len(inputs)
        results = []
        for item, problem in problems:
            if problem is not None:
                problem["context"] = {"objectWriteTraceId": [_trace_id(item)]}
                del problem["validations"]
                continue
            id_property, key = item["idProperty"], item["id"]
            stored, new = self.store.upsert(
                self._record(key, id_property), {**item.get("properties", {}), id_property: key}
            )
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

    @staticmethod
    def _record(key: str, id_property: str) -> str:
        """The contact a key names: emails compared case-insensitively, as HubSpot does."""
        return key.lower() if id_property == "email" else key

    def _refused(self, inputs: list[Any], headers: dict[str, str]) -> Response | None:
        """The 400 of a batch HubSpot refuses whatever its inputs hold: an ``idProperty`` without unique
        values, or two inputs of one contact."""
        for item in inputs:
            id_property = item.get("idProperty") if isinstance(item, dict) else None
            if isinstance(id_property, str) and id_property not in self.config.unique_properties:
                message = (
                    f"Unable to perform update/upsert by non-unique 0-1 property {id_property} in portal ID "
                    f"{PORTAL_ID}"
                )
                return _error(400, message, "VALIDATION_ERROR", headers)
        seen: dict[str, str] = {}
        duplicates = []
        for item in inputs:
            if (
                isinstance(item, dict)
                and isinstance(item.get("id"), str)
                and isinstance(item.get("idProperty"), str)
            ):
                record = self._record(item["id"], item["idProperty"])
                if record in seen:
                    duplicates.append(item["id"])
                seen.setdefault(record, item["id"])
        if duplicates:
            message = f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique"
            return _error(400, message, "VALIDATION_ERROR", headers, context={"ids": duplicates})
        return None

    def _invalid(self, item: Any) -> dict[str, Any] | None:
        """The per-input error of an input HubSpot would refuse, or None."""
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            return _input_error("Input is missing a non-empty id", "INVALID_INPUT", None)
        if not isinstance(item.get("idProperty"), str) or not item["idProperty"]:
            return _input_error("Input is missing its idProperty", "INVALID_INPUT", None)
        if not isinstance(item.get("properties", {}), dict):
            return _input_error("properties must be an object", "INVALID_INPUT", None)
        key, id_property = item["id"], item["idProperty"]
        properties = item.get("properties") or {}
        known = self.config.known_properties
        for name, value in properties.items():
            if known is not None and name not in known:
                return _input_error(f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST", name)
            if not isinstance(value, str):
                return _input_error(f"{value!r} is not a valid string value", "INVALID_STRING", name)
        email = key if id_property == "email" else properties.get("email")
        if email and not EMAIL.fullmatch(email):
            return _input_error(f"Email address {email} is invalid", "INVALID_EMAIL", "email")
        return None


def _trace_id(item: Any) -> str | None:
    trace = item.get("objectWriteTraceId") if isinstance(item, dict) else None
    return trace if isinstance(trace, str) and trace else None


def _input_error(message: str, code: str, property_name: str | None) -> dict[str, Any]:
    """One entry of a 207's ``errors`` (its ``context`` is set when the input carries a trace id); its
    message lists the validation as HubSpot words it (``isValid``, ``message``, ``error``, ``name``), its
    ``errors`` the detail (``message``, ``code``, ``context``). ``validations``: the stand-in's, for a 400."""
    detail: dict[str, Any] = {"message": message, "code": code}
    if property_name is not None:
        detail["context"] = {"propertyName": [property_name]}
    validation = {"isValid": False, "message": message, "error": code, "name": property_name or "id"}
    return {
        "status": "error",
        "category": "VALIDATION_ERROR",
        "message": f"Property values were not valid: {orjson.dumps([validation]).decode()}",
        "context": {},
        "errors": [detail],
        "validations": [validation],
    }
