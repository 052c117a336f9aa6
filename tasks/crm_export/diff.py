"""Diff sync: export only the rows that changed since the last export that reached DONE, the new ones
and the ones dead-lettered then (docs/crm-export.md, "Diff sync").

- ``ExportState``: what the diff needs of the last DONE export (its shard, input, dead letters, settings
  fingerprint), in the Prefect Variable ``crm_export_<pipeline>``, which a team sees in the UI.
- ``plan_export``: the plan of one export (full or diff), made just before its job is submitted: on
  BigQuery a query computed in BigQuery writes the rows to send to a table (``diff_query``); locally
  the same semantics run over the files (``plan_local_diff``).
- ``check_shard_fields``: the field map and the key against the shard's columns, before anything is sent.

A row is sent when its key is null, its key was dead-lettered last time, or no row of the last exported
shard has its key with the same content (a stable hash of the fields the export sends). Deletions are
not sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from prefect.variables import Variable
from pydantic import BaseModel
from sqlglot import exp

from pipelines.crm_export.settings import PipelineSettings

#: Prefix of the Prefect Variable holding a pipeline's ``ExportState``.
STATE_VARIABLE_PREFIX = "crm_export_"
#: Days the BigQuery table of the rows to send is kept.
CHANGED_TABLE_EXPIRATION_DAYS = 30
#: The dead-letter files' schema, as the diff query reads them (``pipelines.crm_export.accounting.dead_letter``).
DEAD_LETTER_SCHEMA = (
    ("key", "STRING"),
    ("reason", "STRING"),
    ("status", "INT64"),
    ("attempts", "INT64"),
    ("stage", "STRING"),
)


class ShardFieldError(ValueError):
    """The field map or the key names a field the shard does not have."""


class ExportState(BaseModel):
    """The last export of a pipeline that reached DONE: what the next diff compares against.

    ``source``: the shard it read (``project:dataset.table`` or a file path), ``dead_letter_prefix``: its
    dead letters are ``<prefix>-*.jsonl``, ``fingerprint``: of the settings that decide what is sent
    (``export_fingerprint``): another fingerprint means a full export.
    """

    shard_date: dt.date
    job_name: str
    job_id: str
    source: str
    dead_letter_prefix: str
    fingerprint: str
    exported_at: dt.datetime


def state_variable_name(pipeline_name: str) -> str:
    """``crm_export_<pipeline>``, lowercase letters, digits and ``_`` (a Prefect Variable name)."""
    return STATE_VARIABLE_PREFIX + re.sub(r"[^a-z0-9]+", "_", pipeline_name.lower()).strip("_")


def read_state(pipeline_name: str) -> ExportState | None:
    """The pipeline's ``ExportState`` from its Prefect Variable; None before its first DONE export."""
    value = Variable.get(state_variable_name(pipeline_name), default=None, _sync=True)
    return None if value is None else ExportState.model_validate(value)


def write_state(pipeline_name: str, state: ExportState) -> None:
    """Create or overwrite the pipeline's Prefect Variable with ``state``."""
    Variable.set(
        state_variable_name(pipeline_name),
        state.model_dump(mode="json"),
        tags=["crm-export"],
        overwrite=True,
        _sync=True,
    )


def export_fingerprint(settings: PipelineSettings) -> str:
    """A hash of the settings that decide what a CRM receives for a row (destination, endpoint, key,
    field map, null handling, column naming): rows exported under other settings must be sent again."""
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
    return hashlib.sha256(orjson.dumps(decisive, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def hashed_fields(settings: PipelineSettings) -> list[str] | None:
    """The fields whose content decides whether a row changed: the key and the mapped fields, or None
    (every column) when the whole record is sent."""
    if not settings.field_map:
        return None
    return sorted({settings.key_field, *settings.field_map})


# -- the shard's fields ------------------------------------------------------------------------------


def check_shard_fields(settings: PipelineSettings, columns: Iterable[str], where: str, block: str) -> None:
    """Raise ``ShardFieldError`` naming each field of ``settings.field_map`` (the field map of the CRM block
    ``block``) and the key that none of the shard's ``columns`` (flattened names, parts joined by
    ``flat_separator``) is or holds."""
    columns = set(columns)
    sep = settings.flat_separator

    def known(name: str) -> bool:
        return name in columns or any(c.startswith(name + sep) for c in columns)

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


def json_objects(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a newline-delimited JSON file that are JSON objects (other lines are skipped)."""
    with path.open("rb") as rows:
        for line in rows:
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row


def file_columns(path: Path) -> list[str]:
    """The columns of a newline-delimited JSON shard: the keys of its first row that is a JSON object."""
    return next((list(row) for row in json_objects(path)), [])


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


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportPlan:
    """What one export sends: ``mode`` full (every row) or diff; ``reason``; ``rows_in_shard``;
    ``rows_to_send``; ``input_args`` (``--input_file``/``--input_table`` of the rows to send)."""

    mode: Literal["full", "diff"]
    reason: str
    rows_in_shard: int
    rows_to_send: int
    input_args: list[str]
    base: ExportState | None = None

    def pipeline_args(self) -> list[str]:
        unchanged = self.rows_in_shard - self.rows_to_send
        return [*self.input_args, f"--rows_in_shard={self.rows_in_shard}", f"--records_unchanged={unchanged}"]

    def job_labels(self) -> dict[str, str]:
        """``sync``: full or diff; ``sync-base``: the shard diffed against (Dataflow label rules)."""
        labels = {"sync": self.mode}
        if self.base is not None and self.mode == "diff":
            labels["sync-base"] = f"{self.base.shard_date:%Y-%m-%d}"
        return labels


def full_export_reason(
    state: ExportState | None, shard: dt.date, fingerprint: str, full_resync: bool
) -> str | None:
    """Why this export must send every row, or None when a diff is possible."""
    if full_resync:
        return "full_resync=True"
    if state is None:
        return "the first export of this pipeline"
    if state.fingerprint != fingerprint:
        return f"the export settings changed since the last export ({state.job_name})"
    if state.shard_date >= shard:
        return f"the last export ({state.job_name}) is of this shard or a newer one"
    return None


def row_hasher(fields: Sequence[str] | None, separator: str) -> Callable[[dict[str, Any]], bytes]:
    """A stable hash (8 bytes) of a row's content: of the columns that are or are under ``fields``
    (every column when None), key order ignored."""
    selected: dict[str, bool] = {}
    prefixes = tuple(f + separator for f in fields or ())
    wanted = set(fields or ())

    def pick(name: str) -> bool:
        keep = selected.get(name)
        if keep is None:
            keep = selected[name] = fields is None or name in wanted or name.startswith(prefixes)
        return keep

    def digest(row: dict[str, Any]) -> bytes:
        content = row if fields is None else {k: v for k, v in row.items() if pick(k)}
        return hashlib.blake2b(orjson.dumps(content, option=orjson.OPT_SORT_KEYS), digest_size=8).digest()

    return digest


def dead_letter_keys(paths: Iterable[Path]) -> set[str]:
    """The record keys in dead-letter files (entries without a key are skipped)."""
    keys = set()
    for path in paths:
        with path.open("rb") as lines:
            for line in lines:
                if line.strip() and isinstance(key := orjson.loads(line).get("key"), str):
                    keys.add(key)
    return keys


def plan_local_diff(
    shard_path: Path,
    base_path: Path,
    dead_letter_paths: Iterable[Path],
    out_path: Path,
    key_field: str,
    hash_row: Callable[[dict[str, Any]], bytes],
) -> tuple[int, int]:
    """Write the rows of ``shard_path`` to send to ``out_path``; returns (rows in shard, rows to send).

    A line is sent when it is not a JSON object (the pipeline dead-letters it again), has no string
    key, has a key in the dead letters, or no row of ``base_path`` has its key and hash.
    """
    base = {
        (key, hash_row(row)) for row in json_objects(base_path) if isinstance(key := row.get(key_field), str)
    }
    dead = dead_letter_keys(dead_letter_paths)
    rows_in_shard = sent = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with shard_path.open("rb") as rows, out_path.open("wb") as out:
        for line in rows:
            rows_in_shard += 1
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                row = None
            key = row.get(key_field) if isinstance(row, dict) else None
            if not isinstance(key, str) or key in dead or (key, hash_row(row)) not in base:
                out.write(line if line.endswith(b"\n") else line + b"\n")
                sent += 1
    return rows_in_shard, sent


def count_lines(path: Path) -> int:
    """Lines of a file as Beam's ``ReadFromText`` reads them (a last line without newline counts)."""
    with path.open("rb") as rows:
        return sum(1 for _ in rows)


# -- BigQuery --------------------------------------------------------------------------------------


def _table(name: str, alias: str) -> exp.Table:
    """``project:dataset.table`` or ``project.dataset.table`` → a quoted table with ``alias``."""
    project, dataset, table = re.split(r"[:.]", name, maxsplit=2)
    return exp.table_(table, db=dataset, catalog=project, quoted=True, alias=alias)


def _content(alias: str, fields: Sequence[str] | None) -> exp.Expression:
    """``FARM_FINGERPRINT(TO_JSON_STRING(<alias>))``, or of ``STRUCT(<alias>.a.b AS f0, …)`` for ``fields``."""
    if fields is None:
        value: exp.Expression = exp.column(alias)
    else:
        value = exp.Struct(
            expressions=[exp.alias_(_path(alias, name), f"f{i}") for i, name in enumerate(fields)]
        )
    return exp.func(
        "FARM_FINGERPRINT", exp.func("TO_JSON_STRING", value, dialect="bigquery"), dialect="bigquery"
    )


def _path(alias: str, name: str) -> exp.Expression:
    """``<alias>.`a`.`b``` for the dotted field ``a.b`` (a RECORD's field)."""
    node: exp.Expression = exp.column(name.split(".")[0], table=alias, quoted=True)
    for part in name.split(".")[1:]:
        node = exp.Dot(this=node, expression=exp.to_identifier(part, quoted=True))
    return node


def diff_query(
    shard_table: str,
    base_table: str,
    changed_table: str,
    key_field: str,
    fields: Sequence[str] | None,
    expires: dt.datetime,
    dead_letters: str = "dead_letters",
) -> str:
    """The BigQuery statement that writes the rows of ``shard_table`` to send into ``changed_table``:

        CREATE OR REPLACE TABLE changed OPTIONS (expiration_timestamp = …) AS
        SELECT cur.* FROM shard AS cur
        WHERE cur.key IS NULL
           OR cur.key IN (SELECT key FROM dead_letters WHERE key IS NOT NULL)
           OR NOT EXISTS (SELECT 1 FROM base AS prev
                          WHERE prev.key = cur.key AND <hash of prev> = <hash of cur>)

    ``dead_letters``: the name of the external table over the last dead-letter files (a table
    definition of the query job). ``expires``: when BigQuery deletes ``changed_table``. Built with sqlglot,
    generated in BigQuery's dialect.
    """
    key = lambda alias: exp.column(key_field, table=alias, quoted=True)  # noqa: E731
    unchanged = (
        exp.select(exp.Literal.number(1))
        .from_(_table(base_table, "prev"))
        .where(exp.EQ(this=key("prev"), expression=key("cur")))
        .where(exp.EQ(this=_content("prev", fields), expression=_content("cur", fields)))
    )
    dead = (
        exp.select(exp.column("key", quoted=True))
        .from_(exp.to_identifier(dead_letters))
        .where(exp.Not(this=exp.Is(this=exp.column("key", quoted=True), expression=exp.Null())))
    )
    select = (
        exp.select(exp.column(exp.Star(), table="cur"))
        .from_(_table(shard_table, "cur"))
        .where(
            exp.or_(
                exp.Is(this=key("cur"), expression=exp.Null()),
                exp.In(this=key("cur"), query=exp.Subquery(this=dead)),
                exp.Not(this=exp.Exists(this=unchanged)),
            )
        )
    )
    project, dataset, table = re.split(r"[:.]", changed_table, maxsplit=2)
    expiration = exp.func(
        "TIMESTAMP", exp.Literal.string(f"{expires.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S+00}")
    )
    create = exp.Create(
        this=exp.table_(table, db=dataset, catalog=project, quoted=True),
        kind="TABLE",
        replace=True,
        expression=select,
        properties=exp.Properties(
            expressions=[
                exp.Property(this=exp.to_identifier("expiration_timestamp"), value=expiration),
            ]
        ),
    )
    return create.sql(dialect="bigquery")


def plan_export(
    source: Any,
    shard: dt.date,
    settings: PipelineSettings,
    state: ExportState | None,
    full_resync: bool,
    work_prefix: str,
    labels: dict[str, str],
) -> ExportPlan:
    """Plan the export of ``shard`` of ``source`` (a ``BigQuerySource`` or ``LocalSource``): full, or a diff
    against ``state``'s export, written where the job reads it: the BigQuery table
    ``<diff dataset>.<prefix>_changed_<YYYYMMDD>`` (expiring after 30 days), or the file
    ``<work_prefix>-rows-to-send.jsonl``. ``labels``: of the BigQuery query job."""
    reason = full_export_reason(state, shard, export_fingerprint(settings), full_resync)
    if source.kind == "local":
        return _plan_local(source, shard, settings, state, reason, Path(work_prefix + "-rows-to-send.jsonl"))
    return _plan_bigquery(source, shard, settings, state, reason, labels)


def _plan_local(
    source: Any,
    shard: dt.date,
    settings: PipelineSettings,
    state: ExportState | None,
    reason: str | None,
    out: Path,
) -> ExportPlan:
    path = source.path(shard)
    if reason is None and not Path(state.source).exists():
        reason = f"the last exported shard {state.source} is gone"
    if reason is not None:
        rows = count_lines(path)
        return ExportPlan("full", reason, rows, rows, [f"--input_file={path.resolve()}"])
    prefix = Path(state.dead_letter_prefix)
    rows, send = plan_local_diff(
        path,
        Path(state.source),
        sorted(prefix.parent.glob(prefix.name + "-*.jsonl")),
        out,
        settings.key_field,
        row_hasher(hashed_fields(settings), settings.flat_separator),
    )
    why = f"diff against shard {state.shard_date} (job {state.job_name}) and its dead letters"
    return ExportPlan("diff", why, rows, send, [f"--input_file={out.resolve()}"], state)


def _plan_bigquery(
    source: Any,
    shard: dt.date,
    settings: PipelineSettings,
    state: ExportState | None,
    reason: str | None,
    labels: dict[str, str],
) -> ExportPlan:
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    client = source._client()
    table = source.table(shard)
    rows = client.get_table(table.replace(":", ".")).num_rows
    if reason is None:
        try:
            client.get_table(state.source.replace(":", "."))
        except NotFound:
            reason = f"the last exported shard {state.source} is gone"
    if reason is not None:
        return ExportPlan("full", reason, rows, rows, [f"--input_table={table}"])
    changed = f"{source.project}.{source.diff_dataset or source.dataset}.{source.table_prefix}_changed_{shard:%Y%m%d}"
    dead_letters = bigquery.ExternalConfig("NEWLINE_DELIMITED_JSON")
    dead_letters.source_uris = [state.dead_letter_prefix + "-*.jsonl"]
    dead_letters.schema = [bigquery.SchemaField(name, kind) for name, kind in DEAD_LETTER_SCHEMA]
    dead_letters.ignore_unknown_values = True
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=CHANGED_TABLE_EXPIRATION_DAYS)
    query = diff_query(table, state.source, changed, settings.key_field, hashed_fields(settings), expires)
    job_config = bigquery.QueryJobConfig(table_definitions={"dead_letters": dead_letters}, labels=labels)
    client.query(query, job_config=job_config).result()
    send = client.get_table(changed).num_rows
    why = f"diff against shard {state.shard_date} (job {state.job_name}) and its dead letters, in BigQuery"
    return ExportPlan("diff", why, rows, send, [f"--input_table={changed.replace('.', ':', 1)}"], state)
