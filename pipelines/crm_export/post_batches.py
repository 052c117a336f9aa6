"""``PostBatchesFn``: the DoFn that POSTs batches of CRM records to the CRM's batch API and accounts for
every record: accepted (counted) or dead-lettered. The API, retries and idempotency keys:
docs/crm-export.md, "The CRM batch API".
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import email.utils
import hashlib
import random
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipelines.crm_export.accounting import DEAD_LETTER, NAMESPACE, dead_letter
from pipelines.crm_export.api_key import ApiKey, KmsEncryptedApiKey
from pipelines.crm_export.settings import PipelineSettings

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: The longest Retry-After honoured (seconds); a longer hint is treated as this.
MAX_RETRY_AFTER_SECONDS = 900.0


class CrmRejectedCredentialsError(RuntimeError):
    """The CRM answered 401/403: the API key is wrong or lacks the import permission."""


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


def idempotency_key(namespace: str, body: bytes) -> str:
    """A key that is the same for the same batch body in the same export (job name as namespace)."""
    return hashlib.sha256(namespace.encode() + b"\0" + body).hexdigest()


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
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class BatchOutcome:
    """What became of one batch: records accepted, dead-letter entries, retries and HTTP statuses seen."""

    size: int
    accepted: int = 0
    rejected: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0
    statuses: list[int] = field(default_factory=list)


class PostBatchesFn(beam.DoFn):
    """POST each batch (a list of CRM records) to the CRM's batch import endpoint ``settings.url``.

    ``settings``: the endpoint, record key, read timeout, attempts, backoff cap and requests in
    flight (``PipelineSettings``). ``api_key``: an ``ApiKey`` (local runner) or a ``KmsEncryptedApiKey``
    (Dataflow), read once per DoFn instance in ``setup``. ``namespace``: the export's job name, part of
    every idempotency key. ``connect_timeout_seconds``: per request. ``backoff_base_seconds``: the
    exponential backoff's base (base · 2^attempt seconds, full jitter, capped at
    ``settings.max_backoff_seconds``). Up to ``settings.max_in_flight`` batches are posted at once per
    DoFn instance, so a worker keeps shaping the next batch while the CRM ingests the last; all are
    finished before the bundle commits. Raises ``CrmRejectedCredentialsError`` on 401/403. Batch
    pipelines only (global window).
    """

    def __init__(
        self,
        settings: PipelineSettings,
        api_key: ApiKey | KmsEncryptedApiKey,
        namespace: str,
        *,
        connect_timeout_seconds: float = 10.0,
        backoff_base_seconds: float = 1.0,
    ):
        self.url = settings.url
        self.api_key = api_key
        self.namespace = namespace
        self.key_field = settings.key_field
        self.timeout = (connect_timeout_seconds, settings.read_timeout_seconds)
        self.max_attempts = settings.max_attempts
        self.backoff_base_seconds = backoff_base_seconds
        self.max_backoff_seconds = settings.max_backoff_seconds
        self.max_in_flight = settings.max_in_flight
        self.batches = Metrics.counter(NAMESPACE, "batches")
        self.records_sent = Metrics.counter(NAMESPACE, "records_sent")
        self.records_accepted = Metrics.counter(NAMESPACE, "records_accepted")
        self.records_rejected = Metrics.counter(NAMESPACE, "records_rejected")
        self.records_dead_lettered = Metrics.counter(NAMESPACE, "records_dead_lettered")
        self.retries = Metrics.counter(NAMESPACE, "retries")
        self.batch_size = Metrics.distribution(NAMESPACE, "batch_size")

    def setup(self) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self._session = requests.Session()
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, HTTPAdapter(pool_connections=1, pool_maxsize=self.max_in_flight))
        self._session.headers.update(
            {
                "Authorization": f"Bearer {self.api_key.get_secret_value()}",
                "Content-Type": "application/json",
                "User-Agent": "analytics-flows-crm-export",
            }
        )
        self._random = random.Random()
        self._executor = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="post-batches")

    def teardown(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        session = getattr(self, "_session", None)
        if session is not None:
            session.close()

    def start_bundle(self) -> None:
        self._pending: deque[Future[BatchOutcome]] = deque()

    def process(self, batch: Sequence[dict[str, Any]]) -> Iterator[Any]:
        # Metrics are per thread in Beam: the requests run in the pool, the counting happens here.
        self.batches.inc()
        self.batch_size.update(len(batch))
        self.records_sent.inc(len(batch))
        # Serialised here, so the records are freed now rather than held (and scanned by Python's
        # garbage collector) while the request is in flight; only their keys are kept.
        try:
            body = orjson.dumps({"users": list(batch)}, default=json_default)
            keys = [record.get(self.key_field) for record in batch]
        except TypeError:
            body, keys, unserialisable = self._serialise_each(batch)
            self.records_dead_lettered.inc(len(unserialisable))
            for entry in unserialisable:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, entry)
            if not keys:
                return
        self._pending.append(self._executor.submit(self.post_body, body, keys))
        while len(self._pending) >= self.max_in_flight:
            yield from self._account(self._pending.popleft().result())

    def _serialise_each(
        self, batch: Sequence[dict[str, Any]]
    ) -> tuple[bytes, list[Any], list[dict[str, Any]]]:
        """The batch body without the records JSON cannot hold; those become dead letters."""
        parts: list[bytes] = []
        keys: list[Any] = []
        unserialisable: list[dict[str, Any]] = []
        for record in batch:
            try:
                parts.append(orjson.dumps(record, default=json_default))
                keys.append(record.get(self.key_field))
            except TypeError as exc:
                unserialisable.append(
                    dead_letter(record.get(self.key_field), f"not JSON: {exc}", None, 0, "crm")
                )
        return b'{"users":[' + b",".join(parts) + b"]}", keys, unserialisable

    def finish_bundle(self) -> Iterator[Any]:
        while self._pending:
            for output in self._account(self._pending.popleft().result()):
                yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))

    def _account(self, outcome: BatchOutcome) -> Iterator[beam.pvalue.TaggedOutput]:
        self.records_accepted.inc(outcome.accepted)
        self.records_rejected.inc(outcome.rejected)
        self.records_dead_lettered.inc(len(outcome.dead_letters))
        self.retries.inc(outcome.retries)
        for status in outcome.statuses:
            Metrics.counter(NAMESPACE, f"http_{status}").inc()
        for entry in outcome.dead_letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, entry)

    def post_body(self, body: bytes, keys: Sequence[Any]) -> BatchOutcome:
        """POST one serialised batch (``{"users": [...]}``, records keyed ``keys``) until it is answered
        200 or the attempts run out; never loses a record: each one not accepted is dead-lettered.

        Raises ``CrmRejectedCredentialsError`` on 401/403.
        """
        import requests

        outcome = BatchOutcome(size=len(keys))
        headers = {"Idempotency-Key": idempotency_key(self.namespace, body)}
        status: int | None = None
        reason = ""
        for attempt in range(1, self.max_attempts + 1):
            outcome.retries = attempt - 1
            wait: float | None = None
            try:
                response = self._session.post(self.url, data=body, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:  # timeouts, refused/reset connections, broken bodies
                status, reason = None, f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                outcome.statuses.append(status)
                if status == 200:
                    self._rejections(keys, response.content, attempt, outcome)
                    return outcome
                reason = f"HTTP {status}: {response.text[:300]}"
                if status in (401, 403):
                    raise CrmRejectedCredentialsError(
                        f"the CRM at {self.url} answered {status}: check the API key's secret block and its "
                        "permission to import users"
                    )
                if status not in RETRYABLE_STATUS:
                    break
                wait = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt < self.max_attempts:
                time.sleep(self._backoff(attempt, wait))
        else:
            reason = f"retries exhausted after {self.max_attempts} attempts; last: {reason}"
        outcome.dead_letters = [dead_letter(key, reason, status, attempt, "crm") for key in keys]
        return outcome

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            wait = min(retry_after, MAX_RETRY_AFTER_SECONDS)
            return wait + self._random.uniform(0, 0.1 * wait)
        ceiling = min(self.max_backoff_seconds, self.backoff_base_seconds * 2 ** (attempt - 1))
        return self._random.uniform(0, ceiling)

    def _rejections(self, keys: Sequence[Any], content: bytes, attempts: int, outcome: BatchOutcome) -> None:
        """Dead-letter the records the CRM rejected; the rest of the batch counts as accepted."""
        try:
            answer = orjson.loads(content)
            rejected = answer.get("rejected") or []
        except (orjson.JSONDecodeError, AttributeError):
            answer = None
            rejected = [{"index": i, "reason": "unparseable CRM response"} for i in range(len(keys))]
        reasons: dict[int, str] = {}
        for entry in rejected:
            index = entry.get("index") if isinstance(entry, dict) else None
            if isinstance(index, int) and 0 <= index < len(keys):
                reasons[index] = str(entry.get("reason") or "rejected by the CRM")
        acknowledged = answer.get("accepted") if isinstance(answer, dict) else None
        if isinstance(acknowledged, int) and acknowledged != len(keys) - len(reasons):
            # The CRM took fewer (or more) than it did not reject: which ones is unknown, so none
            # counts as accepted; a re-export re-sends them (the CRM upserts by record key).
            note = f"the CRM acknowledged {acknowledged} of the {len(keys) - len(reasons)} records it did not reject"
            reasons.update({i: note for i in range(len(keys)) if i not in reasons})
        outcome.accepted = len(keys) - len(reasons)
        outcome.rejected = len(reasons)
        outcome.dead_letters = [
            dead_letter(keys[i], reason, 200, attempts, "crm") for i, reason in sorted(reasons.items())
        ]
