"""The three CRMs the export speaks, each a ``Destination`` (``pipelines.crm_export.settings``):

- ``GenericDestination``: a JSON batch endpoint for in-house services (docs/crm-export.md, "The generic
  batch API");
- ``HubSpotDestination``: contacts batch upsert through the official ``hubspot-api-client``;
- ``BrazeDestination``: ``POST /users/track`` attributes objects, with ``requests``.

Beam-free; each client library is imported when a worker connects.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import email.utils
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from pipelines.crm_export.accounting import dead_letter
from pipelines.crm_export.settings import Answer, Connection, Destination, PipelineSettings

#: Statuses worth sending a batch again for.
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def json_default(value: Any) -> Any:
    """orjson's fallback for BigQuery types JSON lacks: NUMERIC → int or float, BYTES → base64 text.

    Raises ``TypeError`` for anything else (the record is then dead-lettered).
    """
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is in UTC (RFC 9110, 5.6.7), not the worker's zone
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class FieldMap:
    """BigQuery fields → CRM properties (``PipelineSettings.field_map``) applied to a shaped record.

    A field is a path in the record, its parts joined by ``flat_separator`` as the table's columns are
    (``properties.plan`` is the union ``properties.plan.*_value`` after shaping). A field the record lacks
    (its null was dropped) is not sent.
    """

    def __init__(self, field_map: Mapping[str, str], separator: str):
        self.paths = [(tuple(name.split(separator)), prop) for name, prop in field_map.items()]

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path, prop in self.paths:
            node: Any = record
            for part in path:
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                out[prop] = node
        return out


def _environment(url: str) -> tuple[dict[str, str], str | None]:
    """(proxies, CA bundle) for requests to ``url``, read from the environment as requests reads them
    with ``trust_env``: ``get_environ_proxies`` (the proxy variables, ``NO_PROXY`` honoured; scheme or
    ``all`` → proxy URL), then ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` (None: the default CAs).
    Every connection reads them once: a worker's environment does not change during a job."""
    from requests.utils import get_environ_proxies

    return get_environ_proxies(url), os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")


def _error_text(content: bytes, *names: str) -> str:
    """The CRM's error text from a JSON error body (the first of ``names`` present), else the body's start."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        parts = [str(body[name]) for name in names if body.get(name)]
        if parts:
            return ": ".join(parts)
    return content[:300].decode(errors="replace")


# -- the generic JSON batch endpoint --------------------------------------------------------------


class GenericDestination(Destination):
    """``POST <url>`` ``{"users": [record, ...]}`` with a bearer key and an ``Idempotency-Key``; 200
    ``{"accepted": n, "rejected": [{"index", "reason"}]}`` (docs/crm-export.md, "The generic batch API").

    Without a field map a record is sent whole (nested, as shaped); with one, as its key and the mapped
    properties.
    """

    name = "generic"
    max_batch_size = 5000
    idempotency_keys = True
    key_permission = "your endpoint's permission to import users"

    def __init__(self, settings: PipelineSettings):
        super().__init__(settings)
        self.key_field = settings.key_field
        self.field_map = FieldMap(settings.field_map, settings.flat_separator) if settings.field_map else None

    def encode(self, records: Sequence[dict[str, Any]]) -> tuple[bytes, list[str], list[dict[str, Any]]]:
        key_field = self.key_field
        if self.field_map is not None:
            mapping = self.field_map
            records = [{key_field: r[key_field], **mapping(r)} for r in records]
        try:
            return (
                orjson.dumps({"users": list(records)}, default=json_default),
                [r.get(key_field) for r in records],
                [],
            )
        except TypeError:
            pass
        parts: list[bytes] = []
        keys: list[str] = []
        unserialisable: list[dict[str, Any]] = []
        for record in records:
            try:
                parts.append(orjson.dumps(record, default=json_default))
                keys.append(record.get(key_field))
            except TypeError as exc:
                unserialisable.append(dead_letter(record.get(key_field), f"not JSON: {exc}", None, 0, "crm"))
        return b'{"users":[' + b",".join(parts) + b"]}", keys, unserialisable

    def connect(self, api_key: str, timeout: tuple[float, float], max_in_flight: int) -> Connection:
        return _RequestsConnection(self.settings.url, api_key, timeout, max_in_flight, self.parse)

    @staticmethod
    def parse(status: int, headers: Mapping[str, str], content: bytes, size: int) -> Answer:
        """The generic API's answer to a batch of ``size`` records."""
        if status == 200:
            try:
                answer = orjson.loads(content)
                rejected = answer.get("rejected") or []
            except (orjson.JSONDecodeError, AttributeError):
                return Answer(status, {i: "unparseable CRM response" for i in range(size)}, 0)
            reasons: dict[int, str] = {}
            for entry in rejected:
                index = entry.get("index") if isinstance(entry, dict) else None
                if isinstance(index, int) and 0 <= index < size:
                    reasons[index] = str(entry.get("reason") or "rejected by the CRM")
            acknowledged = answer.get("accepted") if isinstance(answer, dict) else None
            return Answer(status, reasons, acknowledged if isinstance(acknowledged, int) else None)
        return _failed(status, headers, f"HTTP {status}: {content[:300].decode(errors='replace')}")


def _failed(status: int, headers: Mapping[str, str], reason: str, retry_after: float | None = None) -> Answer:
    """A request that did not succeed: retried on 429 and 5xx, a credentials failure on 401/403."""
    return Answer(
        status,
        retry=status in RETRYABLE_STATUS,
        retry_after_seconds=retry_after
        if retry_after is not None
        else retry_after_seconds(headers.get("Retry-After")),
        credentials_rejected=status in (401, 403),
        reason=reason,
    )


class _RequestsConnection(Connection):
    """A ``requests`` session POSTing bytes with a bearer key; ``parse`` reads the CRM's answer."""

    def __init__(self, url: str, api_key: str, timeout: tuple[float, float], max_in_flight: int, parse: Any):
        import requests
        from requests.adapters import HTTPAdapter

        self.url = url
        self.timeout = timeout
        self.parse = parse
        self.session = requests.Session()
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(pool_connections=1, pool_maxsize=max_in_flight))
        self.session.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "User-Agent": "analytics-flows-crm-export",
            }
        )
        # With trust_env, requests reads the environment again for every request, and a ~/.netrc entry
        # for the CRM's host would replace the bearer key with basic auth: read once, ~/.netrc never.
        proxies, ca_bundle = _environment(url)
        self.session.proxies, self.session.verify = proxies, ca_bundle or True
        self.session.trust_env = False

    def send(self, payload: bytes, keys: Sequence[str], idempotency_key: str | None) -> Answer:
        import requests

        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        try:
            response = self.session.post(self.url, data=payload, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:  # timeouts, refused/reset connections, broken bodies
            return Answer(None, retry=True, reason=f"{type(exc).__name__}: {exc}")
        return self.parse(response.status_code, response.headers, response.content, len(keys))

    def close(self) -> None:
        self.session.close()


# -- HubSpot ------------------------------------------------------------------------------------

#: HubSpot's limit of inputs per batch request (CRM API, batch endpoints: 100 records per request).
HUBSPOT_MAX_INPUTS = 100


def hubspot_value(value: Any) -> str:
    """A HubSpot property value: HubSpot stores every value as a string (``properties`` is
    ``dict[str, str]`` in its API); booleans are ``true``/``false``, a null clears the property (an
    empty string, as HubSpot documents for clearing), objects and arrays are sent as JSON text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value, default=json_default).decode()


class HubSpotDestination(Destination):
    """HubSpot contacts batch upsert, ``POST /crm/v3/objects/contacts/batch/upsert``
    (https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts),
    through ``hubspot-api-client`` with the private app's access token.

    Each input is ``{"idProperty": id_property, "id": <key>, "properties": {...}}``: a contact is
    created or updated by that unique property, so a batch sent twice (HubSpot takes no idempotency
    key) sets the same values again. Answers (https://developers.hubspot.com/docs/api-reference/error-handling,
    https://developers.hubspot.com/docs/guides/apps/api-usage/usage-details): 200 with ``results``;
    207 with ``errors``, each naming its inputs in ``context.ids`` and its code in ``errors[].code``;
    401 (``INVALID_AUTHENTICATION``); 429 ``RATE_LIMIT`` with ``policyName`` ``TEN_SECONDLY_ROLLING``
    (retried) or ``DAILY`` (not retried before the daily reset: the batch is dead-lettered); 5xx.
    """

    name = "hubspot"
    max_batch_size = HUBSPOT_MAX_INPUTS
    key_permission = "the private app's scope crm.objects.contacts.write"

    def __init__(self, settings: PipelineSettings):
        super().__init__(settings)
        self.key_field = settings.key_field
        self.id_property = settings.id_property
        self.field_map = FieldMap(settings.field_map, settings.flat_separator)

    @property
    def keys_case_insensitive(self) -> bool:
        """HubSpot compares emails case-insensitively: upserting by ``email`` matches ``A@x.com`` and
        ``a@x.com`` to one contact."""
        return self.id_property == "email"

    def encode(
        self, records: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
        mapping, key_field, id_property = self.field_map, self.key_field, self.id_property
        inputs = []
        keys = []
        unserialisable = []
        for record in records:
            key = record[key_field]
            try:
                properties = {prop: hubspot_value(value) for prop, value in mapping(record).items()}
            except TypeError as exc:
                unserialisable.append(dead_letter(key, f"not JSON: {exc}", None, 0, "crm"))
                continue
            inputs.append({"idProperty": id_property, "id": key, "properties": properties})
            keys.append(key)
        return {"inputs": inputs}, keys, unserialisable

    def connect(self, api_key: str, timeout: tuple[float, float], max_in_flight: int) -> Connection:
        return _HubSpotConnection(self.settings.url, api_key, timeout, max_in_flight)

    @staticmethod
    def parse(status: int, headers: Mapping[str, str], content: bytes, keys: Sequence[str]) -> Answer:
        """HubSpot's answer to a batch upsert of the inputs keyed ``keys``."""
        if status in (200, 207):
            try:
                body = orjson.loads(content)
                results = body["results"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return Answer(status, {i: "unparseable HubSpot response" for i in range(len(keys))}, 0)
            index = {key: i for i, key in enumerate(keys)}
            rejected: dict[int, str] = {}
            for error in body.get("errors") or []:
                details = error.get("errors") or [{}]
                code = details[0].get("code") or error.get("category") or "ERROR"
                text = f"{code}: {details[0].get('message') or error.get('message') or 'rejected by HubSpot'}"
                for key in (error.get("context") or {}).get("ids") or []:
                    if key in index:
                        rejected[index[key]] = text
            return Answer(status, rejected, len(results))
        text = _error_text(content, "category", "message")
        if status == 429:
            try:
                policy = orjson.loads(content).get("policyName")
            except (orjson.JSONDecodeError, AttributeError):
                policy = None
            if policy == "DAILY":
                return Answer(status, reason=f"HTTP 429, HubSpot's daily limit is used up: {text}")
        return _failed(status, headers, f"HTTP {status}: {text}")


class _HubSpotConnection(Connection):
    """``hubspot.HubSpot`` with the access token, no retries of its own (the sink retries), a connection
    pool of ``max_in_flight``; answers are read raw (``_preload_content=False``: no model object per
    result) and parsed by ``HubSpotDestination.parse``, an error status (which the client raises as
    ``ApiException``) included."""

    def __init__(self, url: str, api_key: str, timeout: tuple[float, float], max_in_flight: int):
        from hubspot import HubSpot
        from urllib3.util.retry import Retry

        proxies, ca_bundle = _environment(url)  # urllib3 reads no environment; None settings are left out
        client = HubSpot(
            access_token=api_key,
            host=url.rstrip("/"),
            retry=Retry(total=0, redirect=0, raise_on_status=False),
            connection_pool_maxsize=max_in_flight,
            proxy=proxies.get(urlsplit(url).scheme) or proxies.get("all"),
            ssl_ca_cert=ca_bundle,
        )
        self.batch_api = client.crm.contacts.batch_api
        self.timeout = timeout

    def send(self, payload: dict[str, Any], keys: Sequence[str], idempotency_key: str | None) -> Answer:
        import urllib3
        from hubspot.crm.contacts.exceptions import ApiException

        try:
            response = self.batch_api.upsert(
                batch_input_simple_public_object_batch_input_upsert=payload,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:  # the client raises for every status outside 2xx; 0: no response
            if not exc.status:
                return Answer(None, retry=True, reason=f"ApiException: {exc.reason}")
            body = exc.body if isinstance(exc.body, bytes) else (exc.body or "").encode()
            return HubSpotDestination.parse(exc.status, exc.headers or {}, body, keys)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Answer(None, retry=True, reason=f"{type(exc).__name__}: {exc}")
        return HubSpotDestination.parse(response.status, response.headers, response.data, keys)

    def close(self) -> None:
        self.batch_api.api_client.rest_client.pool_manager.clear()


# -- Braze ---------------------------------------------------------------------------------------

#: Braze's limit of attributes objects per /users/track request (https://braze.com/docs/api/api_limits).
BRAZE_MAX_ATTRIBUTES = 75


class BrazeDestination(Destination):
    """Braze ``POST <REST endpoint>/users/track`` with ``{"attributes": [{"external_id": <key>, ...}]}``
    and ``Authorization: Bearer <REST API key>``
    (https://braze.com/docs/api/endpoints/user_data/post_user_track, https://braze.com/docs/api/errors).

    Setting attributes is an upsert by ``external_id``: a batch sent twice (Braze takes no idempotency
    key) sets the same values again. Answers: 201 ``{"message": "success", "attributes_processed": n}``,
    with ``errors`` ``[{"type", "input_array", "index"}]`` for objects it refused (non-fatal); 400
    (e.g. ``Max Input Length Exceeded``), 401 (unknown or missing REST API key), 429 with
    ``X-RateLimit-Reset`` (a UTC epoch second, https://braze.com/docs/api/api_limits), 5xx.
    """

    name = "braze"
    max_batch_size = BRAZE_MAX_ATTRIBUTES
    key_permission = "the REST API key's users.track permission"

    def __init__(self, settings: PipelineSettings):
        super().__init__(settings)
        self.key_field = settings.key_field
        self.field_map = FieldMap(settings.field_map, settings.flat_separator)

    def encode(self, records: Sequence[dict[str, Any]]) -> tuple[bytes, list[str], list[dict[str, Any]]]:
        mapping, key_field = self.field_map, self.key_field
        parts: list[bytes] = []
        keys: list[str] = []
        unserialisable: list[dict[str, Any]] = []
        for record in records:
            key = record[key_field]
            try:
                parts.append(orjson.dumps({"external_id": key, **mapping(record)}, default=json_default))
            except TypeError as exc:
                unserialisable.append(dead_letter(key, f"not JSON: {exc}", None, 0, "crm"))
                continue
            keys.append(key)
        return b'{"attributes":[' + b",".join(parts) + b"]}", keys, unserialisable

    def connect(self, api_key: str, timeout: tuple[float, float], max_in_flight: int) -> Connection:
        url = self.settings.url.rstrip("/") + "/users/track"
        return _RequestsConnection(url, api_key, timeout, max_in_flight, self.parse)

    @staticmethod
    def parse(
        status: int, headers: Mapping[str, str], content: bytes, size: int, now: float | None = None
    ) -> Answer:
        """Braze's answer to a /users/track request of ``size`` attributes objects."""
        if 200 <= status < 300:
            try:
                body = orjson.loads(content)
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict):  # not JSON, or JSON but not the documented object
                return Answer(status, {i: "unparseable Braze response" for i in range(size)}, 0)
            if body.get("message") == "queued":  # 202 during maintenance: received, processed later
                return Answer(status)
            rejected = {
                error["index"]: str(error.get("type") or "rejected by Braze")
                for error in body.get("errors") or []
                if isinstance(error, dict)
                and error.get("input_array", "attributes") == "attributes"
                and isinstance(error.get("index"), int)
                and 0 <= error["index"] < size
            }
            processed = body.get("attributes_processed")
            return Answer(status, rejected, processed if isinstance(processed, int) else None)
        retry_after = None
        if status == 429 and (reset := headers.get("X-RateLimit-Reset", "")).isdigit():
            retry_after = max(0.0, int(reset) - (time.time() if now is None else now))
        return _failed(status, headers, f"HTTP {status}: {_error_text(content, 'message')}", retry_after)


DESTINATIONS: dict[str, type[Destination]] = {
    cls.name: cls for cls in (GenericDestination, HubSpotDestination, BrazeDestination)
}


def destination_for(settings: PipelineSettings) -> Destination:
    """The ``Destination`` that ``settings.destination`` names, configured by ``settings``."""
    return DESTINATIONS[settings.destination](settings)
