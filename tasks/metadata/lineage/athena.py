"""Lineage and usage of an Athena source: from its views' SQL and the query history of the window.

``AthenaLineage`` sees the extractor's ``columns``, ``views`` and ``query_history`` rows as they stream to
their files, then yields the lineage, usage and OpenLineage extracts; it is used in a ``with`` block, whose
end drops the temporary file it spools the queries' OpenLineage events to. The columns of each file:
docs/metadata-extracts.md ("Lineage and usage"); how statements are analysed: docs/metadata-lineage.md.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import pickle
import sys
import tempfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import IO, Any, TypeVar

from tasks.metadata.extracts import Extract
from tasks.metadata.lineage import openlineage as ol
from tasks.metadata.lineage.sql import (
    ColumnName,
    LineageSchema,
    SqlLineage,
    StatementLineage,
    Status,
    TableName,
)
from tasks.metadata.lineage.statements import SharedAnalysis, release_parsed_trees

logger = logging.getLogger(__name__)

STATEMENT_COLUMNS = (
    "object_type",
    "object_name",
    "workgroup",
    "completion_time",
    "statement_type",
    "lineage_status",
    "detail",
    "tables_read",
    "tables_written",
    "column_edges",
)
TABLE_LINEAGE_COLUMNS = (
    "upstream_catalog",
    "upstream_database",
    "upstream_table",
    "downstream_catalog",
    "downstream_database",
    "downstream_table",
    "origin",
    "statement_types",
    "query_count",
    "last_query_id",
    "last_query_time",
)
COLUMN_LINEAGE_COLUMNS = (
    "upstream_catalog",
    "upstream_database",
    "upstream_table",
    "upstream_column",
    "downstream_catalog",
    "downstream_database",
    "downstream_table",
    "downstream_column",
    "origin",
    "transformation",
    "query_count",
    "last_query_id",
    "last_query_time",
)
TABLE_USAGE_COLUMNS = (
    "catalog_name",
    "database_name",
    "table_name",
    "query_count",
    "user_count",
    "users",
    "last_used",
)
COLUMN_USAGE_COLUMNS = (
    "catalog_name",
    "database_name",
    "table_name",
    "column_name",
    "query_count",
    "user_count",
    "users",
    "last_used",
)

# Positions in the extractor's rows (glue_catalog.VIEW_COLUMNS, COLUMN_COLUMNS; query_history.QUERY_HISTORY_COLUMNS).
_COLUMN = {"catalog": 0, "database": 1, "table": 2, "column": 3, "type": 5}
_QUERY = {"id": 0, "workgroup": 1, "user": 2, "state": 3, "catalog": 6, "database": 7, "text": 8}
_SUBMITTED, _COMPLETED = 9, 10
_EVENT_BATCH = 64  # queries per batch of RunEvents built by a pool process
_EVENT_BATCHES_IN_FLIGHT = 16  # then the oldest is waited for
_SPOOL_CHUNK = 1_000  # statement rows per pickle in their temporary file
_File = TypeVar("_File", IO[str], IO[bytes])


class _Bits:
    """Small sets of names (users, statement kinds) as the bits of an int: a name's bit is its index."""

    def __init__(self) -> None:
        self._bit: dict[str, int] = {}
        self._names: list[str] = []
        self._sets: dict[int, list[str]] = {}  # bits → names, as rows name them (one list per set)

    def bit(self, name: str) -> int:
        bit = self._bit.get(name)
        if bit is None:
            bit = self._bit[name] = 1 << len(self._names)
            self._names.append(name)
        return bit

    def names(self, bits: int) -> list[str]:
        """The names of ``bits``, sorted (one list for each set: not to be changed)."""
        names = self._sets.get(bits)
        if names is None:
            names = self._sets[bits] = sorted(name for i, name in enumerate(self._names) if bits >> i & 1)
        return names


class _Use:
    """Usage of one table or column in the window: queries, users (``_Bits``), the last use."""

    __slots__ = ("queries", "users", "last_used")

    def __init__(self) -> None:
        self.queries = 0
        self.users = 0
        self.last_used: dt.datetime | None = None

    def add(self, user: int, at: dt.datetime | None) -> None:
        self.queries += 1
        self.users |= user
        if at is not None and (self.last_used is None or at > self.last_used):
            self.last_used = at


class _EdgeSeen:
    """A lineage edge: by which statement kinds (``_Bits``), how many queries in the window, the
    latest one."""

    __slots__ = ("kinds", "queries", "last_query_id", "last_time")

    def __init__(self) -> None:
        self.kinds = 0
        self.queries = 0
        self.last_query_id: str | None = None
        self.last_time: dt.datetime | None = None

    def add(self, kind: int, query_id: str | None, at: dt.datetime | None) -> None:
        self.kinds |= kind
        if query_id is None:
            return
        self.queries += 1
        if self.last_time is None or (at is not None and at >= self.last_time):
            self.last_query_id, self.last_time = query_id, at


class _Names:
    """One copy of each table and column name the aggregates keep (each lineage brings its own)."""

    def __init__(self) -> None:
        self._tables: dict[TableName, TableName] = {}
        self._columns: dict[ColumnName, ColumnName] = {}

    def table(self, name: TableName) -> TableName:
        kept = self._tables.get(name)
        if kept is None:
            kept = tuple(sys.intern(part) for part in name)  # type: ignore[assignment]
            self._tables[kept] = kept  # keyed by the copy: ``name`` and its strings are not held
        return kept

    def column(self, name: ColumnName) -> ColumnName:
        kept = self._columns.get(name)
        if kept is None:
            kept = (*self.table(name[:3]), sys.intern(name[3]))  # type: ignore[assignment]
            self._columns[kept] = kept
        return kept


class _ColumnTypes:
    """The catalog's type of each column, ``get((catalog, database, table, column))`` (lower case) →
    the type as Glue gives it, or None; kept per table (a flat map of 4-tuples takes 3× the memory)."""

    def __init__(self) -> None:
        self._tables: dict[TableName, dict[str, str | None]] = {}

    def add(self, table: TableName, column: str, data_type: str | None) -> None:
        self._tables.setdefault(table, {})[column] = data_type

    def get(self, column: ColumnName) -> str | None:
        return self._tables.get(column[:3], {}).get(column[3])


class AthenaLineage:
    """Lineage and usage of one Athena source, collected while its rows stream to their files.

    Args:
        source: the source's name, for messages.
        region: the AWS region (OpenLineage namespaces ``awsathena://athena.{region}.amazonaws.com``).
        event_time: the time of the DatasetEvents (the window's end).
        job_namespace: the OpenLineage job namespace of the queries' runs (None: ``source``).
        glue_catalog_ids: lower-case catalog name → the AWS account id of its Glue Data Catalog: its
            tables' symlinks facet (``arn:aws:glue:{region}:{account}``, ``table/{database}/{table}``).
        processes: worker processes analysing the statements not seen yet (``SharedAnalysis``;
            default: one per CPU, none on one CPU); 0 analyses them in this process.
        cache_size: normalized statements whose lineage is kept for the statements that repeat them.
        pool_after: statements analysed in this process before the pool starts (a small history is
            not worth starting processes for).

    Use it in a ``with`` block (or the ``ExitStack`` of what owns it), which opens the temporary files
    the queries' statement rows and RunEvents are spooled to and, at its end, drops them and shuts the
    analysis' processes down — a run that failed midway included. Within it, use ``columns(rows)``,
    ``views(rows)`` and ``query_history(rows)`` as pass-through generators of the extractor's
    entities, then ``extracts()``, whose rows can be produced once columns and query history have been
    read (they are written in that order, so queries are analysed as they stream), before the block
    ends. ``counts`` (after the extracts were written): statements by status, edges, columns covered.
    """

    def __init__(
        self,
        source: str,
        region: str,
        event_time: dt.datetime,
        *,
        job_namespace: str | None = None,
        glue_catalog_ids: Mapping[str, str] | None = None,
        processes: int | None = None,
        cache_size: int = 10_000,
        pool_after: int = 2_000,
    ) -> None:
        self.source = source
        self.region = region
        self.event_time = event_time
        self.job_namespace = job_namespace or source
        self.glue_catalog_ids = dict(glue_catalog_ids or {})
        self.schema = LineageSchema()
        self.analyzer = SqlLineage(self.schema)
        self.analysis: SharedAnalysis[tuple[Any, ...]] = SharedAnalysis(
            self.analyzer,
            compact=self._compact,
            processes=processes,
            cache_size=cache_size,
            pool_after=pool_after,
        )
        self._catalog_names: dict[str, str] = {}
        self._types = _ColumnTypes()
        self._views: list[tuple[str, str, str, str, str | None]] = []
        self._early: IO[bytes] | None = None  # query history read before the columns, pickled
        self._schema_complete = False
        self._history_read = False
        self._finished = False
        self._statements: IO[bytes] | None = None  # the statement rows, pickled: opened by ``__enter__``
        self._statement_chunk: list[tuple[Any, ...]] = []  # the rows not spooled yet
        self._users = _Bits()
        self._kinds = _Bits()
        self._names = _Names()
        self._event_rows: list[tuple[tuple[Any, ...], StatementLineage]] = []  # RunEvents to build
        self._event_batches: deque[tuple[Future[str], list[tuple[tuple[Any, ...], StatementLineage]]]] = (
            deque()
        )
        self._table_edges: dict[tuple[TableName, TableName, str], _EdgeSeen] = {}
        self._column_edges: dict[tuple[ColumnName, ColumnName, str, str], _EdgeSeen] = {}
        self._table_use: dict[TableName, _Use] = {}
        self._column_use: dict[ColumnName, _Use] = {}
        self._view_events: list[dict[str, Any]] = []
        self._spool: IO[str] | None = None  # the queries' RunEvents, one per line: opened by ``__enter__``
        self.status_counts: Counter[str] = Counter()

    def __enter__(self) -> AthenaLineage:
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")
        self._statements = tempfile.TemporaryFile("w+b")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- feeds ----------------------------------------------------------------------------------

    def columns(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """``COLUMN_COLUMNS`` rows, unchanged; each column is added to the schema."""
        for row in rows:
            catalog = row[_COLUMN["catalog"]]
            self._catalog_names.setdefault(catalog.lower(), catalog)
            self.schema.add(catalog, row[1], row[2], row[3], row[_COLUMN["type"]])
            table = (catalog.lower(), row[1].lower(), row[2].lower())
            self._types.add(table, row[3].lower(), row[_COLUMN["type"]])
            yield row
        self._schema_complete = True
        self.analysis.context = self._pool_context()

    def views(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """``VIEW_COLUMNS`` rows, unchanged; analysed once the schema is complete."""
        for row in rows:
            self._views.append(tuple(row))  # type: ignore[arg-type]
            yield row

    def query_history(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """``QUERY_HISTORY_COLUMNS`` rows, unchanged. Each query is analysed as it passes once the columns
        were read (the writer's order; its lineage is applied in the history's order, a few thousand
        rows behind at most while the pool analyses them); before that, it is spooled and analysed with
        the views."""
        for row in rows:
            if self._schema_complete:
                self._query(row)
                for done, lineage in self.analysis.ready():
                    self._apply(done, lineage)
            else:
                if self._early is None:
                    self._early = tempfile.TemporaryFile("w+b")
                self._early.write(pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL))
            yield row
        for done, lineage in self.analysis.drain():
            self._apply(done, lineage)
        self._flush_events()
        self._history_read = True

    # --- analysis -------------------------------------------------------------------------------

    def _query(self, row: tuple[Any, ...]) -> None:
        """Give the query to the analysis (its lineage comes back to ``_apply`` in order)."""
        text = row[_QUERY["text"]]
        if row[_QUERY["state"]] != "SUCCEEDED" or not isinstance(text, str):
            self.analysis.put(row, None)
        else:
            self.analysis.submit(row, text, "athena", row[_QUERY["catalog"]], row[_QUERY["database"]])

    def _apply(self, row: tuple[Any, ...], lineage: StatementLineage | None) -> None:
        """A query's statement row, usage, edges and RunEvents: its own id, user and times, whichever
        query's analysis ``lineage`` came from."""
        query_id, workgroup = row[_QUERY["id"]], row[_QUERY["workgroup"]]
        completed = row[_COMPLETED]
        if lineage is None:
            self._statement("query", query_id, workgroup, completed, None, f"query {row[_QUERY['state']]}")
            return
        self._statement("query", query_id, workgroup, completed, lineage)
        if lineage.status not in (Status.RESOLVED, Status.PARTIAL):
            return
        user = self._users.bit(row[_QUERY["user"]])
        for table in lineage.reads:
            use = self._table_use.get(table)
            if use is None:
                use = self._table_use[self._names.table(table)] = _Use()
            use.add(user, completed)
        for column in lineage.columns_read:
            use = self._column_use.get(column)
            if use is None:
                use = self._column_use[self._names.column(column)] = _Use()
            use.add(user, completed)
        self._edges(lineage, "query", query_id, completed)
        if lineage.reads or lineage.writes:
            self._events(row, lineage)

    def _events(self, row: tuple[Any, ...], lineage: StatementLineage) -> None:
        """The query's RunEvents into the spool: built here, or, while the analysis' pool runs, in batches
        by its processes (``_event_lines``; a copy of this object's state each), spooled in order."""
        if not self._event_batches and not self._event_rows and not self.analysis.pooled:
            self._run_events(row, lineage)
            return
        self._event_rows.append((row, lineage))
        if len(self._event_rows) >= _EVENT_BATCH:
            self._send_events()
        self._write_events(keep=_EVENT_BATCHES_IN_FLIGHT)

    def _send_events(self) -> None:
        if self._event_rows:
            pairs, self._event_rows = self._event_rows, []
            self._event_batches.append((self.analysis.run(_event_lines, pairs), pairs))

    def _write_events(self, keep: int = 0) -> None:
        """Spool the event batches done, in order, waiting for the oldest while more than ``keep`` are
        in flight."""
        while self._event_batches and (len(self._event_batches) > keep or self._event_batches[0][0].done()):
            future, pairs = self._event_batches.popleft()
            self._events_spool().write(self.analysis.result(future, _event_lines, pairs))

    def _flush_events(self) -> None:
        self._send_events()
        self._write_events()

    def _statement(
        self,
        object_type: str,
        name: str,
        workgroup: str | None,
        completed: dt.datetime | None,
        lineage: StatementLineage | None,
        skipped: str = "",
    ) -> None:
        if lineage is None:
            status, row = (
                "skipped",
                (object_type, name, workgroup, completed, None, "skipped", skipped, [], [], 0),
            )
        else:
            status = lineage.status.value
            row = (
                object_type,
                name,
                workgroup,
                completed,
                lineage.kind,
                status,
                lineage.detail or None,
                [self._dotted(t) for t in lineage.reads],
                [self._dotted(t) for t in lineage.writes],
                len(lineage.edges),
            )
        self.status_counts[f"{object_type}:{status}"] += 1
        self._statement_chunk.append(row)
        if len(self._statement_chunk) >= _SPOOL_CHUNK:
            self._spool_statements()

    def _spool_statements(self) -> None:
        """The statement rows kept so far into their file, as one pickled list (a pickle per row costs 3×)."""
        if self._statement_chunk:
            chunk, self._statement_chunk = self._statement_chunk, []
            self._spooled(self._statements).write(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))

    def _edges(
        self, lineage: StatementLineage, origin: str, query_id: str | None, at: dt.datetime | None
    ) -> None:
        kind = self._kinds.bit(lineage.kind)
        for target in lineage.writes:
            for source in lineage.reads:
                table_key = (source, target, origin)
                seen = self._table_edges.get(table_key)
                if seen is None:
                    table_key = (self._names.table(source), self._names.table(target), origin)
                    seen = self._table_edges[table_key] = _EdgeSeen()
                seen.add(kind, query_id, at)
        for edge in lineage.edges:
            column_key = (edge.source, edge.target, origin, edge.transformation.value)
            seen = self._column_edges.get(column_key)
            if seen is None:
                column_key = (
                    self._names.column(edge.source),
                    self._names.column(edge.target),
                    *column_key[2:],
                )
                seen = self._column_edges[column_key] = _EdgeSeen()
            seen.add(kind, query_id, at)

    def _finish(self) -> None:
        """Analyse the views (the schema is complete by now); once."""
        if self._finished:
            return
        if not (self._history_read and self._schema_complete):
            raise RuntimeError(
                "AthenaLineage: columns and query history must be read before the lineage extracts"
            )
        if self._early is not None:
            for row in _unpickled(self._early):
                self._query(row)
            for done, lineage in self.analysis.drain():
                self._apply(done, lineage)
            self._flush_events()
            self._early.close()
            self._early = None
        for catalog, database, name, dialect, sql in self._views:
            view = (catalog.lower(), database.lower(), name.lower())
            if not sql:
                self._statement("view", self._dotted(view), None, None, None, "no SQL in the catalog")
                continue
            lineage = self.analyzer.analyze(
                sql, dialect=dialect or "athena", catalog=catalog, database=database, view=view
            )
            self._statement("view", self._dotted(view), None, None, lineage)
            if lineage.status in (Status.RESOLVED, Status.PARTIAL):
                self._edges(lineage, "view", None, None)
                self._view_events.append(self._view_event(view, lineage))
        release_parsed_trees(self.analyzer)
        self.analysis.close()  # its processes are no longer needed
        self._finished = True
        logger.info(
            "Athena source %r: lineage of %s",
            self.source,
            ", ".join(f"{n} {k}" for k, n in sorted(self.status_counts.items())),
        )

    # --- names ----------------------------------------------------------------------------------

    def _name(self, table: TableName) -> tuple[str, str, str]:
        """``table`` with its catalog spelled as the inventory spells it (e.g. ``AwsDataCatalog``)."""
        return (self._catalog_names.get(table[0], table[0]), table[1], table[2])

    def _dotted(self, table: TableName) -> str:
        return ".".join(self._name(table))

    def _dataset(self, table: TableName) -> ol.DatasetId:
        return ol.athena_dataset(self.region, *self._name(table))

    def _column_inputs(
        self, lineage: StatementLineage
    ) -> tuple[
        dict[str, list[tuple[ol.DatasetId, str, str]]], list[tuple[ol.DatasetId, str, str, str | None]]
    ]:
        """The statement's column lineage as ``ol`` takes it: DIRECT inputs per target column
        (``ol.ColumnInputs``), and INDIRECT inputs (``ol.IndirectInputs``: joins, filters, ...)."""
        inputs: dict[str, list[tuple[ol.DatasetId, str, str]]] = {}
        for edge in lineage.edges:
            inputs.setdefault(edge.target[3], []).append(
                (self._dataset(edge.source[:3]), edge.source[3], edge.transformation.value)
            )
        indirect = [
            (self._dataset(e.source[:3]), e.source[3], str(e.subtype), e.target[3] if e.target else None)
            for e in lineage.indirect
        ]
        return inputs, indirect

    # --- OpenLineage ----------------------------------------------------------------------------

    def _run_events(self, row: tuple[Any, ...], lineage: StatementLineage) -> None:
        workgroup = row[_QUERY["workgroup"]]
        target = lineage.writes[0] if lineage.writes else None
        if target is not None:
            job = f"{workgroup}.{lineage.kind.lower()}.{self._dotted(target)}"
        else:
            digest = hashlib.sha256(repr(lineage.reads).encode()).hexdigest()[:16]
            job = f"{workgroup}.{lineage.kind.lower()}.{digest}"
        columns, indirect = self._column_inputs(lineage)
        events = ol.query_run_events(
            # the scheduler's namespace (docs/metadata-lineage.md, "OpenLineage"): configured, else the source
            job_namespace=self.job_namespace,
            job_name=job,
            run_key=f"athena:{self.region}:{row[_QUERY['id']]}",
            submitted=row[_SUBMITTED] or row[_COMPLETED],
            completed=row[_COMPLETED],
            sql=row[_QUERY["text"]],
            dialect="athena",
            inputs=[self._dataset(t) for t in lineage.reads],
            output=self._dataset(target) if target else None,
            columns=columns,
            indirect=indirect,
            symlinks=ol.glue_symlinks(
                self.region,
                self.glue_catalog_ids,
                [*lineage.reads, *lineage.writes],
                self._dataset,
            ),
        )
        spool = self._events_spool()
        for event in events:
            spool.write(json.dumps(event, separators=(",", ":")) + "\n")

    def _view_event(self, view: TableName, lineage: StatementLineage) -> dict[str, Any]:
        fields = self.schema.columns(view) or []
        columns, indirect = self._column_inputs(lineage)
        glue = ol.glue_symlinks(self.region, self.glue_catalog_ids, [view], self._dataset)
        return ol.dataset_event(
            self._dataset(view),
            self.event_time,
            schema=[(c, self._types.get((*view, c))) for c in fields],
            columns=columns,
            indirect=indirect,
            symlinks=glue.get(self._dataset(view), ()),
        )

    def _openlineage_rows(self) -> Iterator[tuple[dict[str, Any]]]:
        self._finish()
        for event in self._view_events:
            yield (event,)
        views = {(c.lower(), d.lower(), n.lower()) for c, d, n, *_ in self._views}
        tables = sorted({t for (up, down, _) in self._table_edges for t in (up, down)} - views)
        glue = ol.glue_symlinks(self.region, self.glue_catalog_ids, tables, self._dataset)
        for table in tables:
            columns = self.schema.columns(table)
            if columns is not None:
                schema = [(c, self._types.get((*table, c))) for c in columns]
                dataset = self._dataset(table)
                yield (
                    ol.dataset_event(dataset, self.event_time, schema=schema, symlinks=glue.get(dataset, ())),
                )
        spool = self._events_spool()
        spool.flush()
        spool.seek(0)
        for line in spool:
            yield (json.loads(line),)
        spool.close()

    def _events_spool(self) -> IO[str]:
        return self._spooled(self._spool)

    # --- extracts -------------------------------------------------------------------------------

    def extracts(self) -> list[Extract]:
        """``lineage_statements``, ``table_lineage``, ``column_lineage``, ``table_usage``, ``column_usage``
        and ``openlineage`` (JSON lines; its SQL facets masked by the collection like query text)."""
        return [
            Extract("lineage_statements", STATEMENT_COLUMNS, self._rows(self._statement_rows)),
            Extract("table_lineage", TABLE_LINEAGE_COLUMNS, self._rows(self._table_lineage_rows)),
            Extract("column_lineage", COLUMN_LINEAGE_COLUMNS, self._rows(self._column_lineage_rows)),
            Extract("table_usage", TABLE_USAGE_COLUMNS, self._rows(self._table_usage_rows)),
            Extract("column_usage", COLUMN_USAGE_COLUMNS, self._rows(self._column_usage_rows)),
            Extract(
                "openlineage",
                ol.OPENLINEAGE_COLUMNS,
                self._openlineage_rows(),
                format="jsonl",
                sql_facet_paths=(ol.SQL_FACET_PATH,),
            ),
        ]

    def _rows(self, produce: Any) -> Iterator[tuple[Any, ...]]:
        self._finish()
        yield from produce()

    def _statement_rows(self) -> Iterator[tuple[Any, ...]]:
        self._spool_statements()
        for chunk in _unpickled(self._spooled(self._statements)):
            yield from chunk

    def _table_lineage_rows(self) -> Iterator[tuple[Any, ...]]:
        for (up, down, origin), seen in sorted(self._table_edges.items(), key=lambda i: i[0]):
            yield (
                *self._name(up),
                *self._name(down),
                origin,
                self._kinds.names(seen.kinds),
                seen.queries if origin == "query" else None,
                seen.last_query_id,
                seen.last_time,
            )

    def _column_lineage_rows(self) -> Iterator[tuple[Any, ...]]:
        for (up, down, origin, how), seen in sorted(self._column_edges.items(), key=lambda i: i[0]):
            yield (
                *self._name(up[:3]),
                up[3],
                *self._name(down[:3]),
                down[3],
                origin,
                how,
                seen.queries if origin == "query" else None,
                seen.last_query_id,
                seen.last_time,
            )

    def _table_usage_rows(self) -> Iterator[tuple[Any, ...]]:
        for table, use in sorted(self._table_use.items()):
            users = self._users.names(use.users)
            yield (*self._name(table), use.queries, len(users), users, use.last_used)

    def _column_usage_rows(self) -> Iterator[tuple[Any, ...]]:
        for column, use in sorted(self._column_use.items()):
            users = self._users.names(use.users)
            yield (*self._name(column[:3]), column[3], use.queries, len(users), users, use.last_used)

    # --- figures --------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Edges (table-level, column-level), columns covered (distinct columns in a column-level edge),
        statements by status (``query:unparsed``, ``view:resolved``, ...)."""
        covered = {edge[0] for edge in self._column_edges} | {edge[1] for edge in self._column_edges}
        return {
            "table_edges": len(self._table_edges),
            "column_edges": len(self._column_edges),
            "columns_covered": len(covered),
            **dict(self.status_counts),
        }

    def close(self) -> None:
        """Drop the spooled statement rows and events and shut the analysis' processes down: the end of the
        ``with`` block (once the extracts were written, or when the run failed before)."""
        self.analysis.close()
        for spooled in (self._spool, self._statements, self._early):
            if spooled is not None and not spooled.closed:
                spooled.close()

    def _compact(self, lineage: StatementLineage) -> StatementLineage:
        """``lineage`` naming its tables and columns with the aggregates' copies (for the cache)."""
        names = self._names
        return dataclasses.replace(
            lineage,
            reads=tuple(names.table(t) for t in lineage.reads),
            writes=tuple(names.table(t) for t in lineage.writes),
            columns_read=tuple(names.column(c) for c in lineage.columns_read),
            edges=tuple(
                dataclasses.replace(e, source=names.column(e.source), target=names.column(e.target))
                for e in lineage.edges
            ),
        )

    def _pool_context(self) -> AthenaLineage:
        """What a pool process needs to build RunEvents (``_event_lines``): this object without its files,
        analysis and aggregates."""
        context = copy.copy(self)
        context.analysis = None  # type: ignore[assignment]
        context._spool = context._statements = context._early = None
        context._table_edges, context._column_edges, context._table_use, context._column_use = {}, {}, {}, {}
        context._views, context._view_events, context._event_rows = [], [], []
        context._names, context._types = _Names(), _ColumnTypes()  # the types are for DatasetEvents
        context._event_batches = deque()
        return context

    def _spooled(self, spooled: _File | None) -> _File:
        """``spooled``, one of the temporary files ``__enter__`` opens; ``RuntimeError`` outside the block."""
        if spooled is None:
            raise RuntimeError(
                f"AthenaLineage of source {self.source!r} is used outside a `with` block: the block opens the "
                "temporary files its statement rows and events are spooled to"
            )
        return spooled


def _event_lines(lineage: AthenaLineage, pairs: list[tuple[tuple[Any, ...], StatementLineage]]) -> str:
    """The RunEvents of ``(query history row, its lineage)`` pairs, JSON lines: ``_run_events`` spooling
    to a buffer. A ``SharedAnalysis`` job, run by a pool process on its copy of the lineage's state."""
    spool, lineage._spool = lineage._spool, io.StringIO()
    try:
        for row, statement in pairs:
            lineage._run_events(row, statement)
        return lineage._spool.getvalue()
    finally:
        lineage._spool = spool


def _unpickled(spooled: IO[bytes]) -> Iterator[Any]:
    """The objects pickled one after the other into ``spooled``, from its start."""
    spooled.flush()
    spooled.seek(0)
    while True:
        try:
            yield pickle.load(spooled)
        except EOFError:
            return
