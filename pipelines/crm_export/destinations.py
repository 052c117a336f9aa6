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
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from pipelines.crm_export.accounting import dead_letter
from pipelines.crm_export.settings import BATCH_LIMITS, Answer, Connection, Destination, PipelineSettings
from pipelines.retries import retry_after_seconds

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
    max_batch_size = BATCH_LIMITS["generic"].records
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

    def subset(self, payload: bytes, positions: Sequence[int]) -> bytes:
        return _json_subset(payload, "users", positions)

    @staticmethod
    def parse(status: int, headers: Mapping[str, str], content: bytes, size: int) -> Answer:
        """The generic API's answer to a batch of ``size`` records: 200 ``{"accepted": n, "rejected":
        [{"index", "reason"}]}``. An answer without an integer ``accepted`` says nothing: a protocol error,
        retried. When ``accepted`` is not the batch less its rejections, which records were written is
        unknown: they are unconfirmed (sent again)."""
        if status != 200:
            return _failed(status, headers, f"HTTP {status}: {content[:300].decode(errors='replace')}")
        body = _json_object(content)
        accepted = body.get("accepted") if body is not None else None
        entries = body.get("rejected", []) if body is not None else None
        if type(accepted) is not int or not isinstance(entries, list):
            return _protocol_error(status, "an integer 'accepted' and a 'rejected' list", content)
        reasons: dict[int, str] = {}
        for entry in entries:
            index = entry.get("index") if isinstance(entry, dict) else None
            if type(index) is int and 0 <= index < size:
                reasons[index] = str(entry.get("reason") or "rejected by the CRM")
        taken = [i for i in range(size) if i not in reasons]
        if accepted != len(taken):
            return Answer(
                status,
                rejected=reasons,
                reason=f"unconfirmed: the CRM acknowledged {accepted} of the {len(taken)} records it did not "
                "reject, so which it wrote is unknown",
            )
        return Answer(status, frozenset(taken), reasons)


def _json_object(content: bytes) -> dict[str, Any] | None:
    """The answer's JSON object, or None when it is not one."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _protocol_error(status: int, expected: str, content: bytes) -> Answer:
    """A 2xx whose body does not say what was written: sent again, then dead-lettered with this reason."""
    return Answer(
        status,
        retry=True,
        reason=f"protocol error: HTTP {status} without {expected}: {content[:200].decode(errors='replace')}",
    )


def _json_subset(payload: bytes, array: str, positions: Sequence[int]) -> bytes:
    """The JSON body ``{array: [...]}`` holding only the records at ``positions`` (the rare resend or split:
    decoded and encoded again, as the records are not kept)."""
    records = orjson.loads(payload)[array]
    return orjson.dumps({array: [records[i] for i in positions]})


def _failed(
    status: int,
    headers: Mapping[str, str],
    reason: str,
    retry_after: float | None = None,
    credentials_statuses: tuple[int, ...] = (401, 403),
) -> Answer:
    """A request that did not succeed: retried on 429 and 5xx, a credentials failure on
    ``credentials_statuses``, else its records are dead-lettered with ``reason``."""
    return Answer(
        status,
        retry=status in RETRYABLE_STATUS,
        retry_after_seconds=retry_after
        if retry_after is not None
        else retry_after_seconds(headers.get("Retry-After")),
        credentials_rejected=status in credentials_statuses,
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

    Each input is ``{"idProperty", "id": <key>, "properties": {...}, "objectWriteTraceId": <key>}``: a
    contact is created or updated by that unique property, so a batch sent twice (HubSpot takes no
    idempotency key) sets the same values again. The trace id asks for per-input errors: a 207 whose
    ``errors[].context.objectWriteTraceId`` names the inputs refused ("Multi-status errors",
    https://developers.hubspot.com/docs/api-reference/error-handling). Without it — and where HubSpot
    does not honour it — one invalid input refuses the whole batch with a 400 ``VALIDATION_ERROR``, and a
    2xx/207 with empty ``results`` has been seen to write nothing: both are ``refused_whole``, split until
    the bad inputs are isolated. Accepted are only the inputs ``results`` lists (matched by their
    ``objectWriteTraceId``, else by the ``idProperty`` value; emails compared case-insensitively). Two inputs
    of one record in a batch refuse it ("Duplicate IDs found in batch input"): ``encode`` never puts two in
    one. 429 ``RATE_LIMIT``: ``policyName`` ``TEN_SECONDLY_ROLLING`` is retried, ``DAILY`` stops sending
    until the daily reset (https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines).
    A 400 for an ``idProperty`` that is not unique ("Unable to perform update/upsert by non-unique …
    property"; HubSpot/hubspot-api-nodejs#548) is ``settings_rejected``: every request carries it, so none
    can succeed, and the job fails at once instead of dead-lettering the shard batch by batch.
    """

    name = "hubspot"
    max_batch_size = BATCH_LIMITS["hubspot"].records
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

    def _record(self, key: str) -> str:
        """The record a key resolves to in HubSpot: emails compared case-insensitively."""
        return key.lower() if self.keys_case_insensitive else key

    def encode(
        self, records: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
        mapping, key_field, id_property = self.field_map, self.key_field, self.id_property
        inputs = []
        keys = []
        unserialisable = []
        seen: dict[str, str] = {}
        for record in records:
            key = record[key_field]
            first = seen.setdefault(self._record(key), key)
            if first is not key:
                reason = (
                    f"duplicate key: HubSpot takes {key!r} and {first!r} for one contact ({id_property}), and "
                    "refuses a batch holding both; the first was sent"
                )
                unserialisable.append(dead_letter(key, reason, None, 0, "crm"))
                continue
            try:
                properties = {prop: hubspot_value(value) for prop, value in mapping(record).items()}
            except TypeError as exc:
                unserialisable.append(dead_letter(key, f"not JSON: {exc}", None, 0, "crm"))
                continue
            inputs.append(
                {"idProperty": id_property, "id": key, "properties": properties, "objectWriteTraceId": key}
            )
            keys.append(key)
        return {"inputs": inputs}, keys, unserialisable

    def subset(self, payload: dict[str, Any], positions: Sequence[int]) -> dict[str, Any]:
        inputs = payload["inputs"]
        return {"inputs": [inputs[i] for i in positions]}

    def connect(self, api_key: str, timeout: tuple[float, float], max_in_flight: int) -> Connection:
        return _HubSpotConnection(self, api_key, timeout, max_in_flight)

    def parse(self, status: int, headers: Mapping[str, str], content: bytes, keys: Sequence[str]) -> Answer:
        """HubSpot's answer to a batch upsert of the inputs keyed ``keys``."""
        if status in (200, 201, 207):
            body = _json_object(content)
            results = body.get("results") if body is not None else None
            if not isinstance(results, list):
                return _protocol_error(status, "a 'results' list", content)
            position = {self._record(key): i for i, key in enumerate(keys)}
            accepted = {i for result in results if (i := self._position(result, position)) is not None}
            rejected: dict[int, str] = {}
            for error in body.get("errors") or []:
                text = _hubspot_error(error)
                context = error.get("context") if isinstance(error, dict) else None
                named = (context or {}).get("objectWriteTraceId") or (context or {}).get("ids") or []
                for key in named if isinstance(named, list) else []:
                    if isinstance(key, str) and (i := position.get(self._record(key))) is not None:
                        rejected[i] = text
            if not results and not rejected:
                return Answer(
                    status,
                    refused_whole=True,
                    reason=f"HTTP {status}, nothing written: {_error_text(content, 'message')}",
                )
            return Answer(
                status,
                frozenset(accepted - rejected.keys()),
                rejected,
                reason="unconfirmed: HubSpot's answer lists it neither among the results nor the errors",
            )
        text = _error_text(content, "category", "message")
        if status == 429:
            body = _json_object(content) or {}
            if body.get("policyName") == "DAILY":
                return Answer(
                    status, daily_limit=True, reason=f"not sent: HubSpot's daily limit reached ({text})"
                )
        if status == 400 and "non-unique" in text:
            return Answer(status, settings_rejected=True, reason=f"HTTP 400: {text}")
        if status == 400:
            return Answer(status, refused_whole=True, reason=f"HTTP 400: {text}")
        return _failed(status, headers, f"HTTP {status}: {text}")

    def _position(self, result: Any, position: Mapping[str, int]) -> int | None:
        """The input a ``results`` entry is of: its ``objectWriteTraceId``, else its ``idProperty`` value."""
        if not isinstance(result, dict):
            return None
        traced = result.get("objectWriteTraceId")
        if isinstance(traced, str) and traced:
            return position.get(self._record(traced))
        value = (result.get("properties") or {}).get(self.id_property)
        return position.get(self._record(value)) if isinstance(value, str) else None


def _hubspot_error(error: Any) -> str:
    """``<code>: <message>`` of one entry of a 207's ``errors`` (its first detail's code, else its category)."""
    if not isinstance(error, dict):
        return "ERROR: rejected by HubSpot"
    details = error.get("errors") or [{}]
    detail = details[0] if isinstance(details[0], dict) else {}
    code = detail.get("code") or error.get("category") or "ERROR"
    return f"{code}: {detail.get('message') or error.get('message') or 'rejected by HubSpot'}"


class _HubSpotConnection(Connection):
    """``hubspot.HubSpot`` with the access token, no retries of its own (the sink retries), a connection
    pool of ``max_in_flight``; answers are read raw (``_preload_content=False``: no model object per
    result) and parsed by ``HubSpotDestination.parse``, an error status (which the client raises as
    ``ApiException``) included."""

    def __init__(
        self, destination: HubSpotDestination, api_key: str, timeout: tuple[float, float], max_in_flight: int
    ):
        from hubspot import HubSpot
        from urllib3.util.retry import Retry

        url = destination.settings.url
        self.parse = destination.parse
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
            return self.parse(exc.status, exc.headers or {}, body, keys)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Answer(None, retry=True, reason=f"{type(exc).__name__}: {exc}")
        return self.parse(response.status, response.headers, response.data, keys)

    def close(self) -> None:
        self.batch_api.api_client.rest_client.pool_manager.clear()


# -- Braze ---------------------------------------------------------------------------------------


class BrazeDestination(Destination):
    """Braze ``POST <REST endpoint>/users/track`` with ``{"attributes": [{"external_id": <key>, ...}]}``
    and ``Authorization: Bearer <REST API key>``
    (https://braze.com/docs/api/endpoints/user_data/post_user_track, https://braze.com/docs/api/errors,
    https://braze.com/docs/api/api_limits).

    Setting attributes is an upsert by ``external_id``: a batch sent twice (Braze takes no idempotency
    key) sets the same values again. At most 75 objects per request, 50 on MAU-based contracts
    (``objects_per_request``). Answers: 2xx ``{"message": "success", "attributes_processed": n}``, with
    ``errors`` ``[{"type", "input_array", "index"}]`` for objects it refused (non-fatal); the accepted
    are the objects not refused when ``attributes_processed`` counts them (it counts the valid objects;
    the client also takes a count of every object less the errors), else they are unconfirmed. 400 "Valid
    data must be provided in the 'attributes', 'events', or 'purchases' fields.": every object refused. 401
    (invalid key), 403 (access denied: the key lacks ``users.track``) and 404 ("Unknown REST API Key", or
    a wrong REST endpoint) fail the job at once. 429 with ``X-RateLimit-Reset`` (a UTC epoch second):
    waited until then. 5xx: retried.
    """

    name = "braze"
    max_batch_size = BATCH_LIMITS["braze"].records
    key_permission = "the REST API key's users.track permission and the instance's REST endpoint"

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

    def subset(self, payload: bytes, positions: Sequence[int]) -> bytes:
        return _json_subset(payload, "attributes", positions)

    def connect(self, api_key: str, timeout: tuple[float, float], max_in_flight: int) -> Connection:
        url = self.settings.url.rstrip("/") + "/users/track"
        return _RequestsConnection(url, api_key, timeout, max_in_flight, self.parse)

    @staticmethod
    def parse(
        status: int, headers: Mapping[str, str], content: bytes, size: int, now: float | None = None
    ) -> Answer:
        """Braze's answer to a /users/track request of ``size`` attributes objects."""
        body = _json_object(content)
        if 200 <= status < 300:
            if body is None:
                return _protocol_error(status, "a JSON object", content)
            if body.get("message") == "queued":  # 202 during maintenance: received, processed later
                return Answer(status, frozenset(range(size)))
            rejected = {
                error["index"]: f"{error.get('type') or 'rejected by Braze'}"
                for error in body.get("errors") or []
                if isinstance(error, dict)
                and error.get("input_array", "attributes") == "attributes"
                and type(error.get("index")) is int
                and 0 <= error["index"] < size
            }
            processed = body.get("attributes_processed")
            if type(processed) is not int:
                return _protocol_error(status, "an integer 'attributes_processed'", content)
            taken = frozenset(range(size)) - rejected.keys()
            if processed not in (len(taken), size):  # the valid objects, or every object less the errors
                return Answer(
                    status,
                    rejected=rejected,
                    reason=f"unconfirmed: Braze processed {processed} of the {len(taken)} objects it did not "
                    "refuse, so which it wrote is unknown",
                )
            return Answer(status, taken, rejected)
        message = str((body or {}).get("message") or content[:300].decode(errors="replace"))
        retry_after = None
        if status == 429 and (reset := headers.get("X-RateLimit-Reset", "")).isdigit():
            retry_after = max(0.0, int(reset) - (time.time() if now is None else now))
        return _failed(status, headers, f"HTTP {status}: {message}", retry_after, (401, 403, 404))


DESTINATIONS: dict[str, type[Destination]] = {
    cls.name: cls for cls in (GenericDestination, HubSpotDestination, BrazeDestination)
}


def destination_for(settings: PipelineSettings) -> Destination:
    """The ``Destination`` that ``settings.destination`` names, configured by ``settings``."""
    return DESTINATIONS[settings.destination](settings)
