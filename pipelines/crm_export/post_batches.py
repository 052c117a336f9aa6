"""``PostBatchesFn``: the DoFn that sends batches of CRM records to the CRM (any ``Destination``) and
accounts for every record: accepted (output), dead-lettered, or not sent (the CRM's daily limit reached).
Retries, isolation of bad inputs, pacing, idempotency and dead letters: docs/crm-export.md, "The
pipeline" and "Posting batches".
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipelines.crm_export.accounting import DEAD_LETTER, KEY_REFUSED, NAMESPACE, SETTINGS_REFUSED, dead_letter
from pipelines.crm_export.api_key import ApiKey, KmsEncryptedApiKey
from pipelines.crm_export.destinations import destination_for
from pipelines.crm_export.settings import Answer, PipelineSettings
from pipelines.retries import Backoff

#: The longest Retry-After honoured (seconds); a longer hint is treated as this.
MAX_RETRY_AFTER_SECONDS = 900.0


class CrmRejectedCredentialsError(RuntimeError):
    """The CRM refused the key (401/403, Braze's 404): it is wrong or lacks the import permission.
    ``PostBatchesFn`` counts it (``accounting.KEY_REFUSED``) as it fails the bundle."""


class CrmRejectedSettingsError(ValueError):
    """The CRM refused a setting every request carries (HubSpot: an ``idProperty`` without unique values), so
    no request can succeed. ``PostBatchesFn`` counts it (``accounting.SETTINGS_REFUSED``) as it fails the
    bundle, and with it the job: nothing is dead-lettered."""


class PostingStopped(RuntimeError):
    """``teardown`` began while a batch waited to be sent again (a failed or cancelled job): the batch
    is neither accepted nor dead-lettered, and the job's bundle is discarded with it."""


def idempotency_key(namespace: str, body: bytes) -> str:
    """A key that is the same for the same batch body in the same export (job name as namespace)."""
    digest = hashlib.sha256(namespace.encode() + b"\0")
    digest.update(body)  # not concatenated: a body is ~1 MB
    return digest.hexdigest()


class EncodedBatch(NamedTuple):
    """One batch as its destination sends it (``ShapeBatch``'s output): ``payload``, the request body
    ``Destination.encode`` made, ``keys``, the record keys in the body's order (at least one), and
    ``fingerprints``, each record's fingerprint from the export's plan (None without a plan)."""

    payload: Any
    keys: list[str]
    fingerprints: list[str | None]


def accepted_lines(
    keys: Sequence[str], fingerprints: Sequence[str | None], positions: Sequence[int]
) -> bytes:
    """The accepted records at ``positions`` as JSON lines ``{"key", "fingerprint"}`` (no final newline):
    what the sync state records (``tasks.crm_export.sync_state.ACCEPTED_SCHEMA``).

    Each line is formatted as soon as its parts are encoded: holding thousands of orjson outputs at once
    (``orjson.dumps`` of a dict per record, joined) took 2.7 µs a record here, this 0.2 µs."""
    dumps = orjson.dumps
    return b"\n".join(
        [b'{"key":%b,"fingerprint":%b}' % (dumps(keys[i]), dumps(fingerprints[i])) for i in positions]
    )


@dataclass
class BatchOutcome:
    """What became of one batch: ``accepted_positions`` (what the CRM says it wrote), ``rejected`` (records
    it refused), ``dead_letters`` (those and the records of requests that failed), ``not_sent`` (the
    daily limit was reached first), ``requests`` sent, ``retries`` (requests sent again),
    ``isolation_requests`` (the halves of requests refused whole) and the HTTP statuses seen."""

    size: int
    accepted_positions: list[int] = field(default_factory=list)
    rejected: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    not_sent: int = 0
    retries: int = 0
    requests: int = 0
    isolation_requests: int = 0
    statuses: list[int] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return len(self.accepted_positions)


@dataclass
class _Part:
    """A request to send: a ``payload`` of the batch's records at ``positions``, its ``attempt``."""

    payload: Any
    positions: list[int]
    attempt: int = 1


class Pacer:
    """At most ``rate`` requests a second from this process, whichever thread sends them: each request
    gets the next free slot of a schedule spaced ``1 / rate`` seconds apart (no burst beyond one)."""

    def __init__(self, rate: float, clock: Any = time.monotonic):
        self.interval = 1.0 / rate
        self.clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def delay(self) -> float:
        """Take the next slot; the seconds to wait for it."""
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        return slot - now


_process_lock = threading.Lock()
#: One pacer per CRM URL and rate in this process, shared by every DoFn instance and thread.
_pacers: dict[tuple[str, float], Pacer] = {}
#: The jobs (``PostBatchesFn.job_token``) that met their CRM's daily limit in this process, with the CRM's
#: words: they send nothing more.
_daily_limits: dict[str, str] = {}


def pacer(url: str, rate: float) -> Pacer | None:
    """This process's pacer of requests to ``url`` at ``rate`` a second; None when ``rate`` is 0."""
    if rate <= 0:
        return None
    with _process_lock:
        return _pacers.setdefault((url, rate), Pacer(rate))


class PostBatchesFn(beam.DoFn):
    """Send each batch (an ``EncodedBatch``) to the CRM that ``settings.destination`` names; output the
    records the CRM accepted, one element per batch (``accepted_lines``), and the dead letters
    (tag ``DEAD_LETTER``).

    ``settings``: the destination, endpoint, record key, read timeout, attempts, backoff cap, requests
    in flight and the CRM's rate limit (``PipelineSettings``). ``api_key``: an ``ApiKey`` (local runner)
    or a ``KmsEncryptedApiKey`` (Dataflow), read once per DoFn instance in ``setup``, where the
    destination's client is made. ``namespace``: the export's job name, part of every idempotency key
    (for a destination that takes one). ``parallelism``: how many processes of the job send at once: this
    process paces itself at its share of the rate limit (``PipelineSettings.requests_per_second``).
    ``connect_timeout_seconds``: per request. ``backoff_base_seconds``: the exponential backoff's base
    (after attempt n, base · 2^(n−1) seconds capped at ``settings.max_backoff_seconds``, full jitter:
    ``pipelines.retries.Backoff``); a CRM's Retry-After hint is waited instead (at most
    ``MAX_RETRY_AFTER_SECONDS``, plus up to 10 % jitter). Up to
    ``settings.max_in_flight`` batches are sent at once per DoFn instance, so a worker keeps shaping the
    next batch while the CRM ingests the last; all are finished before the bundle commits. Raises
    ``CrmRejectedCredentialsError`` when the CRM refuses the key, counted first as ``crm_key_refused``
    (``accounting.KEY_REFUSED``: the flow's signal), and ``CrmRejectedSettingsError`` when it refuses a
    setting no request can succeed with, counted as ``crm_settings_refused``. Batch pipelines only (global
    window).
    """

    def __init__(
        self,
        settings: PipelineSettings,
        api_key: ApiKey | KmsEncryptedApiKey,
        namespace: str,
        *,
        parallelism: int = 1,
        connect_timeout_seconds: float = 10.0,
        backoff_base_seconds: float = 1.0,
    ):
        self.url = settings.url
        self.api_key = api_key
        self.namespace = namespace
        self.timeout = (connect_timeout_seconds, settings.read_timeout_seconds)
        self.max_attempts = settings.max_attempts
        self.backoff = Backoff(backoff_base_seconds, settings.max_backoff_seconds, jitter="full")
        self.max_in_flight = settings.max_in_flight
        self.requests_per_second = settings.requests_per_second(parallelism)
        self.destination = destination_for(settings)
        # Made when the pipeline is built, pickled with the DoFn: the same in every instance of one job.
        self.job_token = uuid.uuid4().hex
        self.batches = Metrics.counter(NAMESPACE, "batches")
        self.requests = Metrics.counter(NAMESPACE, "requests")
        self.requests_isolating = Metrics.counter(NAMESPACE, "requests_isolating")
        self.records_sent = Metrics.counter(NAMESPACE, "records_sent")
        self.records_accepted = Metrics.counter(NAMESPACE, "records_accepted")
        self.records_rejected = Metrics.counter(NAMESPACE, "records_rejected")
        self.records_dead_lettered = Metrics.counter(NAMESPACE, "records_dead_lettered")
        self.records_not_sent = Metrics.counter(NAMESPACE, "records_not_sent")
        self.retries = Metrics.counter(NAMESPACE, "retries")
        self.key_refused = Metrics.counter(NAMESPACE, KEY_REFUSED)
        self.settings_refused = Metrics.counter(NAMESPACE, SETTINGS_REFUSED)
        self.batch_size = Metrics.distribution(NAMESPACE, "batch_size")

    def setup(self) -> None:
        self._secret = self.api_key.get_secret_value()  # to redact it from the CRM's error text
        self._connection = self.destination.connect(self._secret, self.timeout, self.max_in_flight)
        self._random = random.Random()
        self._stopping = threading.Event()
        self._pacer = pacer(self.url, self.requests_per_second)
        self._executor = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="post-batches")

    def teardown(self) -> None:
        # Batches still in flight here belong to a bundle being discarded (finish_bundle waits for all
        # of them otherwise): those waiting to be sent again stop now, rather than hold a cancelled
        # job's process for their remaining attempts and backoffs (minutes).
        stopping = getattr(self, "_stopping", None)
        if stopping is not None:
            stopping.set()
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        connection = getattr(self, "_connection", None)
        if connection is not None:
            connection.close()

    def start_bundle(self) -> None:
        self._pending: deque[Future[tuple[BatchOutcome, bytes]]] = deque()

    def process(self, batch: EncodedBatch) -> Iterator[Any]:
        # Metrics are per thread in Beam: the requests run in the pool, the counting happens here.
        keys = batch.keys
        self.batches.inc()
        self.batch_size.update(len(keys))
        self.records_sent.inc(len(keys))
        self._pending.append(self._executor.submit(self._post, batch))
        while len(self._pending) >= self.max_in_flight:
            yield from self._account(*self._sent(self._pending.popleft()))

    def finish_bundle(self) -> Iterator[Any]:
        while self._pending:
            for output in self._account(*self._sent(self._pending.popleft())):
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
                else:
                    yield GlobalWindows.windowed_value(output)

    def _sent(self, future: Future[tuple[BatchOutcome, bytes]]) -> tuple[BatchOutcome, bytes]:
        """What became of a batch sent in the pool. A key the CRM refused is counted here, in the bundle's
        thread (Beam's metrics are per thread), before it fails the bundle."""
        try:
            return future.result()
        except CrmRejectedCredentialsError:
            self.key_refused.inc()
            raise
        except CrmRejectedSettingsError:
            self.settings_refused.inc()
            raise

    def _post(self, batch: EncodedBatch) -> tuple[BatchOutcome, bytes]:
        outcome = self.post_body(batch.payload, batch.keys)
        return outcome, accepted_lines(batch.keys, batch.fingerprints, sorted(outcome.accepted_positions))

    def _account(self, outcome: BatchOutcome, accepted: bytes) -> Iterator[Any]:
        self.requests.inc(outcome.requests)
        self.requests_isolating.inc(outcome.isolation_requests)
        self.records_accepted.inc(outcome.accepted)
        self.records_rejected.inc(outcome.rejected)
        self.records_dead_lettered.inc(len(outcome.dead_letters))
        self.records_not_sent.inc(outcome.not_sent)
        self.retries.inc(outcome.retries)
        for status in outcome.statuses:
            Metrics.counter(NAMESPACE, f"http_{status}").inc()
        for entry in outcome.dead_letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, entry)
        if accepted:
            yield accepted

    def post_body(self, payload: Any, keys: Sequence[Any]) -> BatchOutcome:
        """Send one encoded batch (records keyed ``keys``) until the CRM has answered for every record or
        the attempts run out; never loses a record: each is accepted (the CRM's answer says it wrote
        it), dead-lettered (it refused it, or the request failed for good) or not sent (its daily limit
        was reached: sent with the next export).

        A request the CRM refuses whole for an input error is split in halves, sent again, until the
        refused inputs are alone (each half a request of its own, counted in ``isolation_requests``); the
        records an answer does not confirm are sent again (a protocol error); 429, 5xx and no answer are
        retried with backoff. Raises ``CrmRejectedCredentialsError`` when the CRM refuses the key,
        ``CrmRejectedSettingsError`` when it refuses a setting no request can succeed with (HubSpot's
        non-unique ``idProperty``), ``PostingStopped`` if ``teardown`` begins while it waits to send again.
        """
        outcome = BatchOutcome(size=len(keys))
        parts = deque([_Part(payload, list(range(len(keys))))])
        while parts:
            part = parts.popleft()
            if self.job_token in _daily_limits:
                outcome.not_sent += len(part.positions)
                continue
            answer = self._send(part, keys, outcome)
            if answer.credentials_rejected:
                raise CrmRejectedCredentialsError(
                    f"the CRM at {self.url} answered {answer.status}: check the API key in the CRM block (or the "
                    f"secret block it names) and {self.destination.key_permission} "
                    f"({self._redacted(answer.reason)})"
                )
            if answer.settings_rejected:
                raise CrmRejectedSettingsError(
                    f"the CRM at {self.url} refused a setting every request carries, so no request can succeed: "
                    f"{self._redacted(answer.reason)}"
                )
            if answer.daily_limit:
                with _process_lock:
                    _daily_limits.setdefault(self.job_token, answer.reason)
                outcome.not_sent += len(part.positions)
            elif answer.refused_whole and len(part.positions) > 1:
                half = len(part.positions) // 2
                for local in (range(half), range(half, len(part.positions))):
                    positions = [part.positions[i] for i in local]
                    parts.appendleft(_Part(self.destination.subset(part.payload, list(local)), positions))
                outcome.isolation_requests += 2
            elif answer.succeeded:
                self._settle(part, answer, keys, outcome, parts)
            elif answer.retry and part.attempt < self.max_attempts:
                self._pause(self._backoff(part.attempt, answer.retry_after_seconds))
                parts.appendleft(_Part(part.payload, part.positions, part.attempt + 1))
            else:
                reason = answer.reason
                if answer.retry:
                    reason = f"retries exhausted: {part.attempt} attempts, the last: {reason}"
                elif answer.refused_whole:  # the input isolated: the CRM refused it
                    outcome.rejected += len(part.positions)
                outcome.dead_letters += [
                    dead_letter(keys[i], reason, answer.status, part.attempt, "crm") for i in part.positions
                ]
        return outcome

    def _send(self, part: _Part, keys: Sequence[Any], outcome: BatchOutcome) -> Answer:
        key = (
            idempotency_key(self.namespace, part.payload)
            if self.destination.idempotency_keys and isinstance(part.payload, bytes)
            else None
        )
        if self._pacer is not None:
            self._pause(self._pacer.delay())
        answer = self._connection.send(part.payload, [keys[i] for i in part.positions], key)
        outcome.requests += 1
        outcome.retries += part.attempt > 1
        if answer.status is not None:
            outcome.statuses.append(answer.status)
        return answer

    def _settle(
        self, part: _Part, answer: Answer, keys: Sequence[Any], outcome: BatchOutcome, parts: deque[_Part]
    ) -> None:
        """Account a successful answer: what it says was written is accepted, what it refused is
        dead-lettered; the rest is sent again, or dead-lettered as unconfirmed after the last attempt."""
        unconfirmed = []
        for local, position in enumerate(part.positions):
            if local in answer.rejected:
                outcome.rejected += 1
                outcome.dead_letters.append(
                    dead_letter(keys[position], answer.rejected[local], answer.status, part.attempt, "crm")
                )
            elif local in answer.accepted:
                outcome.accepted_positions.append(position)
            else:
                unconfirmed.append(local)
        if not unconfirmed:
            return
        if part.attempt < self.max_attempts:
            self._pause(self._backoff(part.attempt, None))
            positions = [part.positions[i] for i in unconfirmed]
            parts.appendleft(
                _Part(self.destination.subset(part.payload, unconfirmed), positions, part.attempt + 1)
            )
        else:
            reason = f"{answer.reason} ({part.attempt} attempts)"
            outcome.dead_letters += [
                dead_letter(keys[part.positions[i]], reason, answer.status, part.attempt, "crm")
                for i in unconfirmed
            ]

    def _redacted(self, text: str) -> str:
        """``text`` (the CRM's error words, which may quote the key) without the API key."""
        return text.replace(self._secret, "***") if self._secret else text

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` before the next request; raises ``PostingStopped`` if ``teardown`` begins."""
        if seconds > 0 and self._stopping.wait(seconds):
            raise PostingStopped(f"stopped while waiting {seconds:.1f} s to send a batch again")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """The wait after ``attempt`` (from 1), in seconds: the CRM's hint, else the back-off's."""
        if retry_after is not None:
            wait = min(retry_after, MAX_RETRY_AFTER_SECONDS)
            return wait + self._random.uniform(0, 0.1 * wait)
        return self.backoff.delay(attempt, self._random)
