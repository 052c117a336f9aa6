"""The weekly CRM export pipeline: ``ReadRows`` → ``WriteToCrm`` → ``WriteAccepted``, ``WriteDeadLetters``
(``build_pipeline``).

Its options are ``CrmExportOptions`` (no secrets: options are job metadata; the API key is an
argument of ``build_pipeline``). Diagram and dead letters: docs/crm-export.md, "The pipeline".
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.crm_export.accounting import (
    ATTEMPTED_COUNTERS,
    DEAD_LETTER,
    KEY_REFUSED,
    NAMESPACE,
    REASON_COUNTER_PREFIX,
    SETTINGS_REFUSED,
    Counters,
    Distribution,
    ExportMetrics,
    dead_letter,
    reason_code,
)
from pipelines.crm_export.api_key import ApiKey, KmsEncryptedApiKey
from pipelines.crm_export.bigquery_read import ReadFromStorageApi
from pipelines.crm_export.destinations import destination_for
from pipelines.crm_export.post_batches import (
    CrmRejectedCredentialsError,
    CrmRejectedSettingsError,
    EncodedBatch,
    PostBatchesFn,
)
from pipelines.crm_export.settings import (
    DUPLICATE_OF_COLUMN,
    FINGERPRINT_COLUMN,
    PLAN_COLUMN_PREFIX,
    Destination,
    PipelineSettings,
    add_setting_flags,
    settings_from_options,
)
from pipelines.crm_export.users import MalformedRowError, UserShaper


class CrmExportOptions(PipelineOptions):
    """The export's own pipeline options (no secrets here: options are job metadata)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        source = parser.add_argument_group("source (one of)")
        source.add_argument(
            "--input_table",
            help="BigQuery table of the rows to send (the export's plan), PROJECT:DATASET.TABLE",
        )
        source.add_argument("--input_file", help="newline-delimited JSON file (or glob) of the same rows")
        parser.add_argument(
            "--bigquery_storage_endpoint",
            help="read --input_table with the Storage Read API at this endpoint (host:port, https://..., or "
            "http://127.0.0.1:PORT for an emulator) instead of Beam's ReadFromBigQuery",
        )
        parser.add_argument("--dead_letter_prefix", help="path prefix of the dead-letter JSON lines files")
        parser.add_argument(
            "--accepted_prefix",
            help="path prefix of the accepted records' JSON lines files {key, fingerprint}, which the flow "
            "records in the sync state",
        )
        parser.add_argument(
            "--idempotency_namespace", default="", help="part of every idempotency key (the job name)"
        )
        parser.add_argument(
            "--crm_parallelism",
            type=int,
            default=1,
            help="processes of the job sending at once at most (max workers × SDK processes per worker): each "
            "paces itself at this share of the CRM's rate limit",
        )
        plan = parser.add_argument_group("the export's plan (set by the flow)")
        plan.add_argument(
            "--rows_in_shard", type=int, help="rows of the whole shard (the input may be its changes)"
        )
        plan.add_argument(
            "--records_unchanged",
            type=int,
            default=0,
            help="rows of the shard not read: the CRM has them as they are",
        )
        plan.add_argument(
            "--records_removed_from_source",
            type=int,
            default=0,
            help="keys the CRM holds that the shard no longer has (reported, never deleted)",
        )
        add_setting_flags(parser)


class ParseRows(beam.DoFn):
    """Count every row read; parse JSON lines (a BigQuery row dict passes as it is).

    A line that is not JSON goes to ``dead_letter``. The count is summed per bundle and reported in
    ``finish_bundle`` (a per-element ``inc`` costs as much as the parsing); a failed bundle commits
    none of it, as Beam's committed metrics do.
    """

    def __init__(self):
        self.records_read = Metrics.counter(NAMESPACE, "records_read")
        self.records_malformed = Metrics.counter(NAMESPACE, "records_malformed")
        self.records_dead_lettered = Metrics.counter(NAMESPACE, "records_dead_lettered")

    def start_bundle(self) -> None:
        self._read = self._malformed = 0

    def process(self, element: str | bytes | Mapping[str, Any]) -> Iterator[Any]:
        self._read += 1
        if not isinstance(element, (str, bytes)):
            yield element
            return
        try:
            yield orjson.loads(element)
        except orjson.JSONDecodeError as exc:
            self._malformed += 1
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, dead_letter(None, f"malformed JSON: {exc}: {element[:120]!r}", None, 0, "read")
            )

    def finish_bundle(self) -> None:
        self.records_read.inc(self._read)
        self.records_malformed.inc(self._malformed)
        self.records_dead_lettered.inc(self._malformed)


class ReportPlan(beam.DoFn):
    """Report the plan's figures as counters (``rows_in_shard``, ``records_unchanged``,
    ``records_removed_from_source``), once per job: the job's metrics then hold every figure its
    accounting needs, whoever reads them."""

    def __init__(self, figures: Mapping[str, int]):
        self.figures = dict(figures)

    def process(self, element: Any) -> Iterator[Any]:
        for name, value in self.figures.items():
            Metrics.counter(NAMESPACE, name).inc(value)
        return iter(())


class ShapeBatch(beam.DoFn):
    """A batch of rows → the CRM records (``UserShaper``) → one request body of the destination
    (``Destination.encode``): an ``EncodedBatch``. Rows the shaper rejects, records the destination
    cannot encode and rows the plan marked as duplicates of another row's key → ``dead_letter``.

    The plan's columns (``PLAN_COLUMN_PREFIX``) are never sent: each row's fingerprint
    (``FINGERPRINT_COLUMN``) goes with its record into the ``EncodedBatch``.

    One call per batch, after ``BatchElements``, spares Beam's per-element overhead. The records live only
    inside that call, and Python's cyclic garbage collector is paused for it: shaping allocates some 20,000
    dicts per batch and no reference cycles, and a collection while records are alive scans them and moves
    them to older generations, to be scanned again by full collections. (Measured with ``gc.callbacks`` on
    bench/crm_export.py's 1 M-record export: 0.44 s of collections when the records were encoded by the
    next step, 0.14 s now.) The batch is never larger than the input batch.
    """

    def __init__(self, shaper: UserShaper, destination: Destination):
        self.shaper = shaper
        self.destination = destination
        self.records_malformed = Metrics.counter(NAMESPACE, "records_malformed")
        self.records_duplicate = Metrics.counter(NAMESPACE, "records_duplicate")
        self.records_dead_lettered = Metrics.counter(NAMESPACE, "records_dead_lettered")

    def process(self, rows: list[Any]) -> Iterator[Any]:
        shape = self.shaper
        records: list[dict[str, Any]] = []
        fingerprints: list[str | None] = []
        rejected: list[dict[str, Any]] = []
        duplicates = 0
        batch, unserialisable = None, []
        collecting = gc.isenabled()
        gc.disable()
        try:
            for row in rows:
                fingerprint = None
                if type(row) is dict and FINGERPRINT_COLUMN in row:  # a row of the export's plan
                    fingerprint, first = row[FINGERPRINT_COLUMN], row.get(DUPLICATE_OF_COLUMN)
                    row = {k: v for k, v in row.items() if not k.startswith(PLAN_COLUMN_PREFIX)}
                    if first is not None:
                        duplicates += 1
                        rejected.append(_duplicate(row.get(shape.key_field), first))
                        continue
                try:
                    records.append(shape(row))
                except MalformedRowError as exc:
                    key = row.get(shape.key_field) if isinstance(row, Mapping) else None
                    rejected.append(dead_letter(key, f"malformed row: {exc}", None, 0, "shape"))
                    continue
                fingerprints.append(fingerprint)
            if records:
                payload, keys, unserialisable = self.destination.encode(records)
                if unserialisable:  # left out of the payload: keep the others' fingerprints in order
                    by_key = {
                        record[shape.key_field]: f for record, f in zip(records, fingerprints, strict=True)
                    }
                    fingerprints = [by_key[key] for key in keys]
                batch = EncodedBatch(payload, keys, fingerprints) if keys else None
            del records  # freed before the collector resumes
        finally:
            if collecting:
                gc.enable()
        if len(rejected) > duplicates:
            self.records_malformed.inc(len(rejected) - duplicates)
        if duplicates:
            self.records_duplicate.inc(duplicates)
        if rejected or unserialisable:
            self.records_dead_lettered.inc(len(rejected) + len(unserialisable))
            for entry in (*rejected, *unserialisable):
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, entry)
        if batch is not None:
            yield batch


def _duplicate(key: Any, first: str) -> dict[str, Any]:
    return dead_letter(
        key,
        f"duplicate key: the shard has another row of this key, {first!r}, which was exported instead "
        "(one row per key: docs/crm-export.md, 'Duplicate keys')",
        None,
        0,
        "plan",
    )


class ReadRows(beam.PTransform):
    """The rows to send: main output ``rows`` (dicts), tagged output ``DEAD_LETTER`` (lines that are not JSON).

    Exactly one of ``input_table`` (a BigQuery table ``PROJECT:DATASET.TABLE``, read with the Storage
    Read API: Beam's ``ReadFromBigQuery``, or ``ReadFromStorageApi`` at ``storage_endpoint``) and
    ``input_file`` (a newline-delimited JSON file or glob holding the same rows); else ``ValueError``.
    Counts ``records_read`` and, for lines that are not JSON, ``records_malformed``.
    """

    def __init__(
        self,
        input_table: str | None = None,
        input_file: str | None = None,
        storage_endpoint: str | None = None,
    ):
        super().__init__()
        if bool(input_table) == bool(input_file):
            raise ValueError(
                "give exactly one of --input_table (BigQuery) and --input_file (local JSON lines)"
            )
        self.input_table = input_table
        self.input_file = input_file
        self.storage_endpoint = storage_endpoint

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        if self.input_file:
            lines = pbegin | "ReadJsonLines" >> beam.io.ReadFromText(self.input_file)
        elif self.storage_endpoint:
            lines = pbegin | "ReadFromStorageApi" >> ReadFromStorageApi(
                self.input_table, self.storage_endpoint
            )
        else:
            lines = pbegin | "ReadFromBigQuery" >> beam.io.ReadFromBigQuery(
                table=self.input_table, method=beam.io.ReadFromBigQuery.Method.DIRECT_READ
            )
        return lines | "ParseRows" >> beam.ParDo(ParseRows()).with_outputs(DEAD_LETTER, main="rows")


class WriteToCrm(beam.PTransform):
    """Rows → CRM records in batches of at most ``settings.batch_limit()`` (``batch_size``, capped at the
    destination's limit) → sent to the CRM of ``settings.destination``.

    ``BatchElements`` (no shuffle: batches form within a bundle) → ``ShapeBatch`` (shaped and encoded into
    the destination's request body) → ``PostBatchesFn``.
    Output: ``{"accepted": the accepted records (JSON lines, one element per batch), DEAD_LETTER: the
    rows the shaper rejects and the records the CRM does not take}``. ``namespace``: part of every
    idempotency key. ``parallelism``: the job's sending processes at most (each paces itself at its share
    of the CRM's rate limit).
    """

    def __init__(
        self,
        settings: PipelineSettings,
        api_key: ApiKey | KmsEncryptedApiKey,
        namespace: str,
        parallelism: int = 1,
    ):
        super().__init__()
        self.settings = settings
        self.api_key = api_key
        self.namespace = namespace
        self.parallelism = parallelism

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        size = self.settings.batch_limit()
        shaped = (
            rows
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "ShapeBatch"
            >> beam.ParDo(ShapeBatch(UserShaper(self.settings), destination_for(self.settings))).with_outputs(
                DEAD_LETTER, main="batches"
            )
        )
        posted = shaped.batches | "PostBatches" >> beam.ParDo(
            PostBatchesFn(self.settings, self.api_key, self.namespace, parallelism=self.parallelism)
        ).with_outputs(DEAD_LETTER, main="accepted")
        dead = (shaped[DEAD_LETTER], posted[DEAD_LETTER]) | "DeadLetters" >> beam.Flatten()
        return {"accepted": posted.accepted, DEAD_LETTER: dead}


class CountReasons(beam.DoFn):
    """Count dead letters by reason code (``reason_code``) in the counters ``dead_lettered_<code>``, summed
    per bundle; past ``MAX_CODES`` codes per instance, under ``dead_lettered_other`` (Dataflow keeps a
    bounded number of counters)."""

    MAX_CODES = 30

    def setup(self) -> None:
        self._counters: dict[str, Any] = {}

    def start_bundle(self) -> None:
        self._counts: dict[str, int] = {}

    def process(self, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
        code = reason_code(str(entry.get("reason") or ""))
        self._counts[code] = self._counts.get(code, 0) + 1
        yield entry

    def finish_bundle(self) -> None:
        for code, count in self._counts.items():
            if code not in self._counters:
                name = code if len(self._counters) < self.MAX_CODES else "other"
                self._counters[code] = Metrics.counter(NAMESPACE, REASON_COUNTER_PREFIX + name)
            self._counters[code].inc(count)


class WriteDeadLetters(beam.PTransform):
    """Dead-letter entries (a tuple of PCollections) → JSON lines files ``<prefix>-SSSSS-of-NNNNN.jsonl``,
    counted by reason (``CountReasons``)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, dead_letters: tuple[beam.PCollection, ...]) -> beam.pvalue.PDone:
        return (
            dead_letters
            | "Flatten" >> beam.Flatten()
            | "CountReasons" >> beam.ParDo(CountReasons())
            | "ToJson" >> beam.Map(lambda entry: orjson.dumps(entry).decode())
            | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl", num_shards=0)
        )


class WriteAccepted(beam.PTransform):
    """The accepted records (JSON lines, one element per batch) → ``<prefix>-SSSSS-of-NNNNN.jsonl``: what
    the flow merges into the sync state once the job is DONE."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, accepted: beam.PCollection) -> beam.pvalue.PDone:
        return accepted | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl", num_shards=0)


def build_pipeline(pipeline: beam.Pipeline, api_key: ApiKey | KmsEncryptedApiKey) -> None:
    """Add the export to ``pipeline``, whose options carry ``CrmExportOptions``: read rows, write them to
    the CRM, write what the CRM accepted (with ``--accepted_prefix``) and what it did not take (the dead
    letters).

    Raises ``ValueError`` for a missing source or dead-letter prefix, or a missing or invalid setting
    (``pipelines.crm_export.settings.settings_from_options``).
    """
    options = pipeline.options.view_as(CrmExportOptions)
    settings = settings_from_options(options)
    if not options.dead_letter_prefix:
        raise ValueError("--dead_letter_prefix is required: records the CRM does not take are written there")

    if options.rows_in_shard is not None:
        if options.rows_in_shard < 0 or not 0 <= options.records_unchanged <= options.rows_in_shard:
            raise ValueError(
                f"--rows_in_shard={options.rows_in_shard} --records_unchanged={options.records_unchanged}: "
                "need 0 <= unchanged <= rows in shard"
            )
        figures = {
            "rows_in_shard": options.rows_in_shard,
            "records_unchanged": options.records_unchanged,
            "records_removed_from_source": options.records_removed_from_source,
        }
        pipeline | "Plan" >> beam.Create([None]) | "ReportPlan" >> beam.ParDo(ReportPlan(figures))
    read = pipeline | "ReadRows" >> ReadRows(
        options.input_table, options.input_file, options.bigquery_storage_endpoint
    )
    written = read.rows | "WriteToCrm" >> WriteToCrm(
        settings, api_key, options.idempotency_namespace, options.crm_parallelism
    )
    if options.accepted_prefix:
        written["accepted"] | "WriteAccepted" >> WriteAccepted(options.accepted_prefix)
    (read[DEAD_LETTER], written[DEAD_LETTER]) | "WriteDeadLetters" >> WriteDeadLetters(
        options.dead_letter_prefix
    )


def pipeline_metrics(result: Any) -> ExportMetrics:
    """The export's counters and ``batch_size`` distribution (committed values; attempted ones for
    ``ATTEMPTED_COUNTERS``) from a finished ``PipelineResult``; no resources (the runner reports those, if
    any)."""
    from apache_beam.metrics.metric import MetricsFilter

    metrics = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    counts: dict[str, int] = {}
    for counter in metrics["counters"]:
        name = counter.key.metric.name  # one entry per step: records_dead_lettered comes from three
        value = counter.attempted if name in ATTEMPTED_COUNTERS else counter.committed
        counts[name] = counts.get(name, 0) + (value or 0)
    batch_size = None
    for distribution in metrics["distributions"]:
        value = distribution.committed
        if distribution.key.metric.name == "batch_size" and value is not None and value.count:
            part = Distribution(value.count, value.sum, value.min, value.max)
            batch_size = part if batch_size is None else batch_size.merged(part)
    return ExportMetrics(Counters.from_names(counts), batch_size)


def failure_counters(error: BaseException) -> dict[str, int]:
    """The counters of ``ATTEMPTED_COUNTERS`` that a pipeline which failed with ``error`` counted, for a
    runner that keeps no metrics of a failed pipeline (Beam's local runner: ``run()`` raises; Dataflow
    reports them as attempted values): ``{"crm_key_refused": 1}`` when the CRM refused the key,
    ``{"crm_settings_refused": 1}`` when it refused a setting every request carries, else none."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, CrmRejectedCredentialsError):
            return {KEY_REFUSED: 1}
        if isinstance(cause, CrmRejectedSettingsError):
            return {SETTINGS_REFUSED: 1}
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return {}
