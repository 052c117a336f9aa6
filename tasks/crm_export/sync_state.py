"""Diff sync against the sync state: for every record the CRM accepted, its key and the fingerprint of what
was sent for it, in a BigQuery table; the plan that diffs a shard against it and the recording of what
a job's CRM accepted (docs/crm-export.md, "Sync state").

- ``check_shard``: before anything is launched, the shard's key column (STRING or INT64, no NULL or
  empty key), its row count (not empty) and the field map against its columns.
- ``plan_export``: the rows to send, computed in BigQuery into a plan table the job reads — changed,
  new, or not in the state (dead-lettered last time, or sent by a run that failed) — with each row's
  fingerprint; duplicate keys marked. ``invalidate``: the keys about to be sent leave the state first.
- ``record_export``: the job's accepted ``(key, fingerprint)`` files merged into the state, then the
  state checked against the shard.
- ``SyncState``: the pipeline's Prefect Variable ``crm_export_<pipeline>``: the table, the export
  waiting to be recorded, the last recorded one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from prefect.variables import Variable
from pydantic import BaseModel
from sqlglot import exp

from pipelines.crm_export.settings import (
    DUPLICATE_OF_COLUMN,
    FINGERPRINT_COLUMN,
    PLAN_COLUMN_PREFIX,
    SHAPING_VERSION,
    PipelineSettings,
)

#: Prefix of the Prefect Variable holding a pipeline's ``SyncState``.
STATE_VARIABLE_PREFIX = "crm_export_"
#: Days a plan table (the rows one job sends) and the accepted records' staging table are kept.
PLAN_TABLE_EXPIRATION_DAYS = 30
#: Key column types the export takes (an INT64 key is sent as its decimal string).
KEY_TYPES = ("STRING", "INT64", "INTEGER")
#: The plan's normalized key column (the key as the CRM matches it): never sent.
KEY_COLUMN = PLAN_COLUMN_PREFIX + "key"
#: The job label naming the plan a job was submitted with (``SyncState.pending.plan_id``).
PLAN_LABEL = "sync-plan"
#: Schema of the accepted-records files a job writes (``pipelines.crm_export.pipeline.WriteAccepted``).
ACCEPTED_SCHEMA = (("key", "STRING"), ("fingerprint", "STRING"))


class ShardFieldError(ValueError):
    """The field map or the key names a field the shard does not have."""


class ShardEmptyError(ValueError):
    """The shard has no rows: nothing is launched."""


class ShardKeyError(ValueError):
    """The key column has a type the CRM cannot take as a key, or rows without a key."""


class ExportInProgressError(RuntimeError):
    """Another export of the pipeline is still running: a second one would race it for the same users."""


class SyncStateError(RuntimeError):
    """The plan or the recorded state does not add up (rows lost by the plan, or the state not holding
    what the CRM accepted)."""


# -- the state's bookkeeping (a Prefect Variable) -------------------------------------------------------


class PendingExport(BaseModel):
    """An export planned and submitted, whose accepted records are not recorded yet: the keys it sends
    left the state when it was planned. ``plan_id``: the job's ``sync-plan`` label. ``accepted_prefix``:
    its accepted records are ``<prefix>-*.jsonl``."""

    plan_id: str
    job_name: str
    shard_date: dt.date
    accepted_prefix: str
    planned_at: dt.datetime


class RecordedExport(BaseModel):
    """The last export whose accepted records are in the state."""

    job_name: str
    job_id: str
    shard_date: dt.date
    records_recorded: int
    recorded_at: dt.datetime


class SyncState(BaseModel):
    """A pipeline's sync state bookkeeping, the Prefect Variable ``crm_export_<pipeline>`` (visible in the
    UI under Variables). ``table``: the sync state, ``project.dataset.table``. ``settings_fingerprint``:
    ``export_fingerprint`` of the last plan's settings. ``pending``: the export waiting to be recorded."""

    table: str
    settings_fingerprint: str
    pending: PendingExport | None = None
    last_export: RecordedExport | None = None


def state_variable_name(pipeline_name: str) -> str:
    """``crm_export_<pipeline>``, lowercase letters, digits and ``_`` (a Prefect Variable name)."""
    return STATE_VARIABLE_PREFIX + re.sub(r"[^a-z0-9]+", "_", pipeline_name.lower()).strip("_")


def read_state(pipeline_name: str, log: Any) -> SyncState | None:
    """The pipeline's ``SyncState``; None before its first export, or when the Variable holds the export
    state of an earlier version of the project (no sync state yet: ``log`` says that this export sends
    every row and builds the sync state)."""
    value = Variable.get(state_variable_name(pipeline_name), default=None, _sync=True)
    if value is None:
        return None
    if isinstance(value, dict) and "table" not in value and "dead_letter_prefix" in value:
        log.warning(
            "Variable %s holds the export state of a version without a sync state (last export: job %s of "
            "shard %s): this export sends every row and builds the sync state",
            state_variable_name(pipeline_name),
            value.get("job_name"),
            value.get("shard_date"),
        )
        return None
    return SyncState.model_validate(value)


def write_state(pipeline_name: str, state: SyncState) -> None:
    """Create or overwrite the pipeline's Prefect Variable with ``state``."""
    Variable.set(
        state_variable_name(pipeline_name),
        state.model_dump(mode="json"),
        tags=["crm-export"],
        overwrite=True,
        _sync=True,
    )


def export_fingerprint(settings: PipelineSettings) -> str:
    """A hash of what decides the body a CRM receives for a row besides the row itself: the destination,
    endpoint, key, field map, null handling, column naming and ``SHAPING_VERSION``. It is part of every
    row's fingerprint: under other settings every row is sent again."""
    decisive = settings.model_dump(
        include={
            "destination",
            "url",
            "key_field",
            "field_map",
            "id_property",
            "keep_null",
            "send_nulls",
            "union_fields",
            "flat_separator",
        }
    )
    decisive["shaping_version"] = SHAPING_VERSION
    return hashlib.sha256(orjson.dumps(decisive, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def sent_fields(settings: PipelineSettings) -> list[str] | None:
    """The source fields what is sent for a row is made of: the key and the field map's fields, sorted;
    None (every column) when the whole record is sent."""
    if not settings.field_map:
        return None
    return sorted({settings.key_field, *settings.field_map})


# -- the shard -------------------------------------------------------------------------------------


def schema_columns(schema: Sequence[Any], prefix: str = "") -> list[str]:
    """Dotted leaf names of a BigQuery schema (``SchemaField``s; a RECORD's fields under its name)."""
    names = []
    for column in schema:
        name = f"{prefix}{column.name}"
        if column.field_type in ("RECORD", "STRUCT") and column.fields:
            names += schema_columns(column.fields, name + ".")
        else:
            names.append(name)
    return names


def check_shard_fields(settings: PipelineSettings, columns: Iterable[str], where: str, block: str) -> None:
    """Raise ``ShardFieldError`` naming each field of ``settings.field_map`` (the field map of the CRM block
    ``block``) and the key that none of the shard's ``columns`` (dotted names) is or holds."""
    columns = set(columns)

    def known(name: str) -> bool:
        return name in columns or any(c.startswith(name + ".") for c in columns)

    problems = []
    if settings.key_field not in columns:
        problems.append(f"the key column {settings.key_field!r} (crm.key_field) is missing")
    unknown = [name for name in settings.field_map if not known(name)]
    if unknown:
        problems.append(f"the field_map of CRM block {block!r} names unknown fields {unknown}")
    if problems:
        raise ShardFieldError(
            f"{'; '.join(problems)} in {where}; its columns are {sorted(columns)[:40]}: fix the block's "
            "field_map or crm.key_field (nothing was sent)"
        )


@dataclass(frozen=True)
class ShardInfo:
    """What the plan needs of a checked shard: its ``rows`` and the key column's ``key_type``."""

    rows: int
    key_type: str


def check_shard(
    client: Any, table: str, settings: PipelineSettings, block: str, reserved_prefix: str = PLAN_COLUMN_PREFIX
) -> ShardInfo:
    """Check the shard ``table`` (``project.dataset.table``) before anything is launched: its columns hold
    the key and every field of the CRM block ``block``'s field map (``ShardFieldError``), the key column
    is STRING or INT64 and no row lacks a key (``ShardKeyError``: NULL or empty, with their count), and
    it has rows (``ShardEmptyError``). One ``tables.get`` and one query (``COUNT(*)`` and the key column).
    """
    schema = client.get_table(table).schema
    where = f"shard {table}"
    check_shard_fields(settings, schema_columns(schema), where, block)
    reserved = [column.name for column in schema if column.name.startswith(reserved_prefix)]
    if reserved:
        raise ShardFieldError(
            f"{where} has columns {reserved}, whose prefix {reserved_prefix!r} the export's plan reserves: "
            "rename them in the query that writes the shard"
        )
    key = next(column for column in schema if column.name == settings.key_field)
    if key.field_type not in KEY_TYPES or key.mode == "REPEATED":
        raise ShardKeyError(
            f"the key column {settings.key_field!r} (crm.key_field) of {where} is {key.mode} {key.field_type}: "
            "the CRM's record key must be a STRING or INT64 column; cast it in the query that writes the shard"
        )
    column = _identifier(settings.key_field)
    text_key = f"CAST({column} AS STRING)" if key.field_type != "STRING" else column
    (counted,) = client.query(
        f"SELECT COUNT(*) AS rows_in_shard, COUNT(CASE WHEN {text_key} IS NULL OR {text_key} = '' THEN 1 END) "
        "AS missing_keys "
        f"FROM {_table(table)}"
    ).result()
    if counted["rows_in_shard"] == 0:
        raise ShardEmptyError(
            f"{where} has 0 rows: nothing to export (check the pipeline that writes it; nothing was launched)"
        )
    if counted["missing_keys"]:
        raise ShardKeyError(
            f"{counted['missing_keys']:,} of the {counted['rows_in_shard']:,} rows of {where} have a NULL or "
            f"empty key column {settings.key_field!r} (crm.key_field): the CRM cannot match them to a record; "
            "fix the query that writes the shard (nothing was launched)"
        )
    return ShardInfo(
        rows=counted["rows_in_shard"], key_type="STRING" if key.field_type == "STRING" else "INT64"
    )


# -- SQL ---------------------------------------------------------------------------------------------


def _identifier(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect="bigquery")


def _table(table: str) -> str:
    """``project.dataset.table`` (or ``project:dataset.table``) → its quoted BigQuery name."""
    project, dataset, name = re.split(r"[:.]", table, maxsplit=2)
    return exp.table_(name, db=dataset, catalog=project, quoted=True).sql(dialect="bigquery")


def _string(value: str) -> str:
    return exp.Literal.string(value).sql(dialect="bigquery")


def _path(alias: str, dotted: str) -> str:
    """``alias.`a`.`b``` for the dotted field ``a.b`` (a RECORD's field)."""
    return ".".join([alias, *(_identifier(part) for part in dotted.split("."))])


@dataclass(frozen=True)
class DiffSql:
    """The statements of diff sync for one shard, pipeline and settings (BigQuery's dialect).

    ``shard``, ``state``: tables ``project.dataset.table``. ``key_field``/``key_type``: the key column
    (an INT64 key is sent as a string). ``fields``: what is sent is made of (``sent_fields``). ``settings``:
    ``export_fingerprint``. ``order_by``: a column whose greatest value wins among a key's rows.
    ``casefold``: the CRM matches keys case-insensitively (HubSpot's email): the state's key is lowercase.
    ``empty_state``: read the state as empty instead of its table, which does not exist (a dry run's plan,
    which never creates it); only the statements that read the state (``counts``, ``plan``) take it.
    """

    shard: str
    state: str
    key_field: str
    key_type: str
    fields: Sequence[str] | None
    settings: str
    order_by: str | None = None
    casefold: bool = False
    empty_state: bool = False

    def state_relation(self) -> str:
        """What the statements read the state from: its table, or an empty relation of its columns."""
        if self.empty_state:
            return "(SELECT * FROM UNNEST(ARRAY<STRUCT<key STRING, fingerprint STRING, shard_date DATE>>[]))"
        return _table(self.state)

    def normalized_key(self, expression: str) -> str:
        """The key as the CRM matches it (the state's key)."""
        return f"LOWER({expression})" if self.casefold else expression

    def ranked(self) -> str:
        """The CTEs ``shard`` (the rows, an INT64 key cast to STRING), ``fingerprinted`` (each row's
        normalized key and fingerprint) and ``ranked`` (each key's rows ranked, the first exported).

        The fingerprint is ``TO_HEX(MD5(TO_JSON_STRING(STRUCT(<settings>, <the fields sent>))))``: the
        source values of what is sent and the settings that shape them."""
        key = _identifier(self.key_field)
        replace = f" REPLACE (CAST(cur.{key} AS STRING) AS {key})" if self.key_type != "STRING" else ""
        if self.fields is None:
            content = f"STRUCT({_string(self.settings)} AS settings, shard AS fields)"
        else:
            parts = ", ".join(f"{_path('shard', name)} AS f{i}" for i, name in enumerate(self.fields))
            content = f"STRUCT({_string(self.settings)} AS settings, {parts})"
        order = f"fingerprinted.{_identifier(self.order_by)} DESC, " if self.order_by else ""
        return f"""WITH shard AS (
  SELECT cur.*{replace} FROM {_table(self.shard)} AS cur
),
fingerprinted AS (
  SELECT shard.*,
    {self.normalized_key(f"shard.{key}")} AS {KEY_COLUMN},
    TO_HEX(MD5(TO_JSON_STRING({content}))) AS {FINGERPRINT_COLUMN}
  FROM shard
),
ranked AS (
  SELECT fingerprinted.*,
    ROW_NUMBER() OVER latest AS _rank,
    FIRST_VALUE(fingerprinted.{key}) OVER latest AS _first
  FROM fingerprinted
  WINDOW latest AS (PARTITION BY {KEY_COLUMN} ORDER BY {order}{FINGERPRINT_COLUMN} DESC)
)"""

    def create_state(self) -> str:
        """The state table, if it does not exist: one row per key the CRM holds as the export sent it."""
        return f"""CREATE TABLE IF NOT EXISTS {_table(self.state)} (
  key STRING NOT NULL OPTIONS (description = 'the record key, as the CRM matches it'),
  fingerprint STRING NOT NULL OPTIONS (description = 'hex MD5 of what the CRM accepted for the key'),
  shard_date DATE OPTIONS (description = 'the shard of the export that sent it')
)
CLUSTER BY key
OPTIONS (description = 'analytics-flows CRM export: what the CRM accepted (docs/crm-export.md, Sync state)')"""

    def counts(self) -> str:
        """Rows of the shard, duplicates, rows the CRM holds as they are (unchanged), and keys of the state
        no longer in the shard (removed from the source), from the shard and the state."""
        return f"""{self.ranked()}
SELECT
  COUNT(*) AS rows_in_shard,
  COUNT(CASE WHEN ranked._rank > 1 THEN 1 END) AS duplicates,
  COUNT(CASE WHEN ranked._rank = 1 AND state.fingerprint = ranked.{FINGERPRINT_COLUMN} THEN 1 END) AS unchanged,
  (SELECT COUNT(*) FROM {self.state_relation()} AS kept
   WHERE NOT EXISTS (SELECT 1 FROM fingerprinted WHERE fingerprinted.{KEY_COLUMN} = kept.key)) AS removed
FROM ranked LEFT JOIN {self.state_relation()} AS state ON state.key = ranked.{KEY_COLUMN}"""

    def plan(self, plan_table: str, expires: dt.datetime, full: bool) -> str:
        """Write the rows to send into ``plan_table``: every row when ``full``, else each key's first row
        whose fingerprint the state does not hold; and every duplicate, marked with the key of the row
        exported (``DUPLICATE_OF_COLUMN``) to be dead-lettered. Expires at ``expires``."""
        changed = (
            "TRUE"
            if full
            else f"state.fingerprint IS NULL OR state.fingerprint != ranked.{FINGERPRINT_COLUMN}"
        )
        expiration = f"TIMESTAMP {_string(f'{expires.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S+00}')}"
        return f"""CREATE OR REPLACE TABLE {_table(plan_table)}
OPTIONS (expiration_timestamp = {expiration})
AS {self.ranked()}
SELECT ranked.* EXCEPT (_rank, _first), IF(ranked._rank = 1, NULL, ranked._first) AS {DUPLICATE_OF_COLUMN}
FROM ranked LEFT JOIN {self.state_relation()} AS state ON state.key = ranked.{KEY_COLUMN}
WHERE ranked._rank > 1 OR {changed}"""

    def invalidate(self, plan_table: str) -> str:
        """Take the keys ``plan_table`` sends out of the state, before they are sent: until the CRM's
        answer is recorded, the state does not know what the CRM holds for them."""
        return (
            f"DELETE FROM {_table(self.state)} WHERE key IN "
            f"(SELECT {KEY_COLUMN} FROM {_table(plan_table)} WHERE {DUPLICATE_OF_COLUMN} IS NULL)"
        )

    def record(self, accepted_table: str, shard_date: dt.date) -> str:
        """Merge the accepted records of ``accepted_table`` into the state (a key's fingerprint replaced)."""
        return f"""MERGE {_table(self.state)} AS state
USING (
  SELECT {self.normalized_key("key")} AS key, ANY_VALUE(fingerprint) AS fingerprint
  FROM {_table(accepted_table)} WHERE key IS NOT NULL AND fingerprint IS NOT NULL GROUP BY 1
) AS accepted
ON state.key = accepted.key
WHEN MATCHED THEN UPDATE SET fingerprint = accepted.fingerprint, shard_date = DATE {_string(f"{shard_date}")}
WHEN NOT MATCHED THEN INSERT (key, fingerprint, shard_date)
  VALUES (accepted.key, accepted.fingerprint, DATE {_string(f"{shard_date}")})"""

    def out_of_sync(self) -> str:
        """Keys of the shard (each key's first row) whose fingerprint the state does not hold: the rows the
        CRM does not have as they are now."""
        return f"""{self.ranked()}
SELECT COUNT(*) AS out_of_sync
FROM ranked LEFT JOIN {_table(self.state)} AS state ON state.key = ranked.{KEY_COLUMN}
WHERE ranked._rank = 1 AND (state.fingerprint IS NULL OR state.fingerprint != ranked.{FINGERPRINT_COLUMN})"""


# -- the plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportPlan:
    """What one export sends. ``mode``: full (every row) or diff; ``reason``; ``rows_in_shard``;
    ``unchanged`` (rows the CRM holds as they are); ``rows_to_send`` (the plan table's rows, duplicates
    included); ``duplicates``; ``removed_from_source`` (keys of the state not in the shard: never deleted
    in the CRM); ``plan_table`` (``project.dataset.table``, what the job reads); ``plan_id``."""

    mode: Literal["full", "diff"]
    reason: str
    rows_in_shard: int
    unchanged: int
    rows_to_send: int
    duplicates: int
    removed_from_source: int
    plan_table: str
    plan_id: str

    def pipeline_args(self) -> list[str]:
        return [
            f"--input_table={self.plan_table}",
            f"--rows_in_shard={self.rows_in_shard}",
            f"--records_unchanged={self.unchanged}",
            f"--records_removed_from_source={self.removed_from_source}",
        ]

    def job_labels(self) -> dict[str, str]:
        """``sync``: full or diff; ``sync-plan``: the plan's id (the state's ``pending.plan_id``)."""
        return {"sync": self.mode, PLAN_LABEL: self.plan_id}


def plan_export(
    client: Any,
    sql: DiffSql,
    plan_table: str,
    state: SyncState | None,
    full_resync: bool,
    labels: dict[str, str],
    create_state: bool = True,
) -> ExportPlan:
    """Plan an export: create the state table if needed, count, write the rows to send into ``plan_table``
    (expiring after ``PLAN_TABLE_EXPIRATION_DAYS``) and check that the plan adds up. ``labels``: of the
    query jobs. ``create_state=False`` (a dry run): the state table is never created; a missing one is
    read as empty (``DiffSql.empty_state``), and only ``plan_table`` is written.
    Raises ``SyncStateError`` if rows in shard != unchanged + rows to send − duplicates."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    config = bigquery.QueryJobConfig(labels=labels)
    if create_state:
        client.query(sql.create_state(), job_config=config).result()
    else:
        try:
            client.get_table(sql.state)
        except NotFound:
            sql = dataclasses.replace(sql, empty_state=True)
    if full_resync:
        reason = "full_resync=True"
    elif state is None:
        reason = "the first export of this pipeline: the sync state is new"
    elif state.settings_fingerprint != sql.settings:
        reason = (
            "the settings that decide what is sent (or SHAPING_VERSION) changed since the last export: every "
            "row's fingerprint differs"
        )
    else:
        reason = ""
    (counts,) = client.query(sql.counts(), job_config=config).result()
    unchanged = 0 if full_resync else counts["unchanged"]
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=PLAN_TABLE_EXPIRATION_DAYS)
    client.query(sql.plan(plan_table, expires, full=full_resync), job_config=config).result()
    (planned,) = client.query(f"SELECT COUNT(*) AS n FROM {_table(plan_table)}", job_config=config).result()
    rows, to_send, duplicates = counts["rows_in_shard"], planned["n"], counts["duplicates"]
    if rows != unchanged + to_send:
        raise SyncStateError(
            f"the plan of {sql.shard} does not add up: {rows:,} rows in the shard, {unchanged:,} unchanged, "
            f"{to_send:,} to send ({duplicates:,} duplicates) in {plan_table}"
        )
    return ExportPlan(
        mode="full" if reason else "diff",
        reason=reason or f"diff against the sync state {sql.state}",
        rows_in_shard=rows,
        unchanged=unchanged,
        rows_to_send=to_send,
        duplicates=duplicates,
        removed_from_source=counts["removed"],
        plan_table=plan_table,
        plan_id=uuid.uuid4().hex[:12],
    )


def invalidate(client: Any, sql: DiffSql, plan: ExportPlan) -> None:
    """Take the keys the plan sends out of the state (``DiffSql.invalidate``), before the job is submitted."""
    client.query(sql.invalidate(plan.plan_table)).result()


# -- recording --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordResult:
    """``recorded``: accepted records merged into the state; ``out_of_sync``: keys of the shard whose
    current fingerprint the state does not hold after it (the CRM does not have them as they are)."""

    recorded: int
    out_of_sync: int


def load_accepted(client: Any, accepted_prefix: str, table: str) -> int:
    """Load the accepted-records files ``<accepted_prefix>-*.jsonl`` (a ``gs://`` prefix, or a local
    path's on this host) into ``table``, replacing it; returns the rows loaded."""
    from google.cloud import bigquery

    schema = [bigquery.SchemaField(name, kind) for name, kind in ACCEPTED_SCHEMA]

    def config(disposition: str) -> Any:
        return bigquery.LoadJobConfig(
            schema=schema, source_format="NEWLINE_DELIMITED_JSON", write_disposition=disposition
        )

    if accepted_prefix.startswith("gs://"):
        client.load_table_from_uri(
            f"{accepted_prefix}-*.jsonl", table, job_config=config("WRITE_TRUNCATE")
        ).result()
    else:
        prefix = Path(accepted_prefix)
        files = sorted(prefix.parent.glob(prefix.name + "-*.jsonl"))
        columns = ", ".join(f"{name} {kind}" for name, kind in ACCEPTED_SCHEMA)
        client.query(f"CREATE OR REPLACE TABLE {_table(table)} ({columns})").result()
        for path in files:
            if not path.stat().st_size:  # a job's shard that accepted nothing
                continue
            with path.open("rb") as data:
                client.load_table_from_file(data, table, job_config=config("WRITE_APPEND")).result()
    loaded = client.get_table(table)
    loaded.expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=PLAN_TABLE_EXPIRATION_DAYS)
    client.update_table(loaded, ["expires"])
    (counted,) = client.query(f"SELECT COUNT(*) AS n FROM {_table(table)}").result()
    return counted["n"]


def record_accepted(client: Any, sql: DiffSql, accepted_prefix: str, shard_date: dt.date) -> int:
    """Merge the accepted records of a DONE job (``<accepted_prefix>-*.jsonl``) of the shard of
    ``shard_date`` into the state (``DiffSql.record``); returns how many were loaded. Idempotent."""
    staging = f"{sql.state}_accepted"
    recorded = load_accepted(client, accepted_prefix, staging)
    client.query(sql.record(staging, shard_date)).result()
    return recorded


def record_export(client: Any, sql: DiffSql, accepted_prefix: str, shard_date: dt.date) -> RecordResult:
    """``record_accepted``, then count the keys of the shard the state does not hold as they are
    (``DiffSql.out_of_sync``)."""
    recorded = record_accepted(client, sql, accepted_prefix, shard_date)
    (counted,) = client.query(sql.out_of_sync()).result()
    return RecordResult(recorded=recorded, out_of_sync=counted["out_of_sync"])
