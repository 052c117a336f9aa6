"""Lineage and usage of an Athena source: from its views' SQL and the query history of the window.

``AthenaLineage`` sees the extractor's ``columns``, ``views`` and ``query_history`` rows as they stream to
their files, then yields the lineage, usage and OpenLineage extracts; it is used in a ``with`` block, whose
end drops the temporary file it spools the queries' OpenLineage events to. The columns of each file:
docs/metadata-extracts.md ("Lineage and usage"); how statements are analysed: docs/metadata-lineage.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from tasks.metadata.extracts import Extract
from tasks.metadata.lineage import openlineage as ol
from tasks.metadata.lineage.sql import (
    ColumnEdge,
    ColumnName,
    LineageSchema,
    SqlLineage,
    StatementLineage,
    Status,
    TableName,
)

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


@dataclass
class _Use:
    """Usage of one table or column in the window."""

    queries: int = 0
    users: set[str] = field(default_factory=set)
    last_used: dt.datetime | None = None

    def add(self, user: str, at: dt.datetime | None) -> None:
        self.queries += 1
        self.users.add(user)
        if at is not None and (self.last_used is None or at > self.last_used):
            self.last_used = at


@dataclass
class _EdgeSeen:
    """A lineage edge: by which statement kinds, how many queries in the window, the latest one."""

    kinds: set[str] = field(default_factory=set)
    queries: int = 0
    last_query_id: str | None = None
    last_time: dt.datetime | None = None

    def add(self, kind: str, query_id: str | None, at: dt.datetime | None) -> None:
        self.kinds.add(kind)
        if query_id is None:
            return
        self.queries += 1
        if self.last_time is None or (at is not None and at >= self.last_time):
            self.last_query_id, self.last_time = query_id, at


class AthenaLineage:
    """Lineage and usage of one Athena source, collected while its rows stream to their files.

    Args:
        source: the source's name, for messages.
        region: the AWS region (OpenLineage namespaces ``awsathena://athena.{region}.amazonaws.com``).
        event_time: the time of the DatasetEvents (the window's end).

    Use it in a ``with`` block (or the ``ExitStack`` of what owns it), which opens the temporary file
    the queries' RunEvents are spooled to and, at its end, drops it — a run that failed midway
    included. Within it, use ``columns(rows)``, ``views(rows)`` and ``query_history(rows)`` as
    pass-through generators of the extractor's entities, then ``extracts()``, whose rows can be produced
    once columns and query history have been read (they are written in that order, so queries are
    analysed as they stream), before the block ends. ``counts`` (after the extracts were written):
    statements by status, edges, columns covered.
    """

    def __init__(self, source: str, region: str, event_time: dt.datetime) -> None:
        self.source = source
        self.region = region
        self.event_time = event_time
        self.schema = LineageSchema()
        self.analyzer = SqlLineage(self.schema)
        self._catalog_names: dict[str, str] = {}
        self._types: dict[ColumnName, str | None] = {}
        self._views: list[tuple[str, str, str, str, str | None]] = []
        self._early: list[tuple[Any, ...]] = []  # query history read before the columns
        self._schema_complete = False
        self._history_read = False
        self._finished = False
        self._statements: list[tuple[Any, ...]] = []
        self._table_edges: dict[tuple[TableName, TableName, str], _EdgeSeen] = {}
        self._column_edges: dict[tuple[ColumnName, ColumnName, str, str], _EdgeSeen] = {}
        self._table_use: dict[TableName, _Use] = {}
        self._column_use: dict[ColumnName, _Use] = {}
        self._view_events: list[dict[str, Any]] = []
        self._spool: IO[str] | None = None  # the queries' RunEvents, one per line: opened by ``__enter__``
        self.status_counts: Counter[str] = Counter()

    def __enter__(self) -> AthenaLineage:
        self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")
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
            self._types[(catalog.lower(), row[1].lower(), row[2].lower(), row[3].lower())] = row[
                _COLUMN["type"]
            ]
            yield row
        self._schema_complete = True

    def views(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """``VIEW_COLUMNS`` rows, unchanged; analysed once the schema is complete."""
        for row in rows:
            self._views.append(tuple(row))  # type: ignore[arg-type]
            yield row

    def query_history(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """``QUERY_HISTORY_COLUMNS`` rows, unchanged. Each query is analysed as it passes once the columns
        were read (the writer's order); before that, it is kept and analysed with the views."""
        for row in rows:
            if self._schema_complete:
                self._query(row)
            else:
                self._early.append(row)
            yield row
        self._history_read = True

    # --- analysis -------------------------------------------------------------------------------

    def _query(self, row: tuple[Any, ...]) -> None:
        query_id, workgroup, user = row[_QUERY["id"]], row[_QUERY["workgroup"]], row[_QUERY["user"]]
        completed = row[_COMPLETED]
        text = row[_QUERY["text"]]
        if row[_QUERY["state"]] != "SUCCEEDED" or not isinstance(text, str):
            self._statement("query", query_id, workgroup, completed, None, f"query {row[_QUERY['state']]}")
            return
        lineage = self.analyzer.analyze(
            text, dialect="athena", catalog=row[_QUERY["catalog"]], database=row[_QUERY["database"]]
        )
        self._statement("query", query_id, workgroup, completed, lineage)
        if lineage.status not in (Status.RESOLVED, Status.PARTIAL):
            return
        for table in lineage.reads:
            self._table_use.setdefault(table, _Use()).add(user, completed)
        for column in lineage.columns_read:
            self._column_use.setdefault(column, _Use()).add(user, completed)
        self._edges(lineage, "query", query_id, completed)
        if lineage.reads or lineage.writes:
            self._run_events(row, lineage)

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
        self._statements.append(row)

    def _edges(
        self, lineage: StatementLineage, origin: str, query_id: str | None, at: dt.datetime | None
    ) -> None:
        for target in lineage.writes:
            for source in lineage.reads:
                self._table_edges.setdefault((source, target, origin), _EdgeSeen()).add(
                    lineage.kind, query_id, at
                )
        for edge in lineage.edges:
            key = (edge.source, edge.target, origin, edge.transformation.value)
            self._column_edges.setdefault(key, _EdgeSeen()).add(lineage.kind, query_id, at)

    def _finish(self) -> None:
        """Analyse the views (the schema is complete by now); once."""
        if self._finished:
            return
        if not (self._history_read and self._schema_complete):
            raise RuntimeError(
                "AthenaLineage: columns and query history must be read before the lineage extracts"
            )
        for row in self._early:
            self._query(row)
        self._early.clear()
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

    def _column_inputs(self, edges: Iterable[ColumnEdge]) -> dict[str, list[tuple[ol.DatasetId, str, str]]]:
        inputs: dict[str, list[tuple[ol.DatasetId, str, str]]] = {}
        for edge in edges:
            inputs.setdefault(edge.target[3], []).append(
                (self._dataset(edge.source[:3]), edge.source[3], edge.transformation.value)
            )
        return inputs

    # --- OpenLineage ----------------------------------------------------------------------------

    def _run_events(self, row: tuple[Any, ...], lineage: StatementLineage) -> None:
        workgroup = row[_QUERY["workgroup"]]
        target = lineage.writes[0] if lineage.writes else None
        if target is not None:
            job = f"{workgroup}.{lineage.kind.lower()}.{self._dotted(target)}"
        else:
            digest = hashlib.sha256(repr(lineage.reads).encode()).hexdigest()[:16]
            job = f"{workgroup}.{lineage.kind.lower()}.{digest}"
        events = ol.query_run_events(
            job_namespace=f"awsathena://athena.{self.region}.amazonaws.com",
            job_name=job,
            run_key=f"athena:{self.region}:{row[_QUERY['id']]}",
            submitted=row[_SUBMITTED] or row[_COMPLETED],
            completed=row[_COMPLETED],
            sql=row[_QUERY["text"]],
            dialect="athena",
            inputs=[self._dataset(t) for t in lineage.reads],
            output=self._dataset(target) if target else None,
            columns=self._column_inputs(lineage.edges),
        )
        spool = self._events_spool()
        for event in events:
            spool.write(json.dumps(event, separators=(",", ":")) + "\n")

    def _view_event(self, view: TableName, lineage: StatementLineage) -> dict[str, Any]:
        columns = self.schema.columns(view) or []
        return ol.dataset_event(
            self._dataset(view),
            self.event_time,
            schema=[(c, self._types.get((*view, c))) for c in columns],
            columns=self._column_inputs(lineage.edges),
            dataset_inputs=[self._dataset(t) for t in lineage.reads],
        )

    def _openlineage_rows(self) -> Iterator[tuple[dict[str, Any]]]:
        self._finish()
        for event in self._view_events:
            yield (event,)
        views = {(c.lower(), d.lower(), n.lower()) for c, d, n, *_ in self._views}
        tables = sorted({t for (up, down, _) in self._table_edges for t in (up, down)} - views)
        for table in tables:
            columns = self.schema.columns(table)
            if columns is not None:
                schema = [(c, self._types.get((*table, c))) for c in columns]
                yield (ol.dataset_event(self._dataset(table), self.event_time, schema=schema),)
        spool = self._events_spool()
        spool.flush()
        spool.seek(0)
        for line in spool:
            yield (json.loads(line),)
        spool.close()

    def _events_spool(self) -> IO[str]:
        if self._spool is None:
            raise RuntimeError(
                f"AthenaLineage of source {self.source!r} is used outside a `with` block: the block opens the "
                "temporary file its events are spooled to"
            )
        return self._spool

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
        yield from self._statements

    def _table_lineage_rows(self) -> Iterator[tuple[Any, ...]]:
        for (up, down, origin), seen in sorted(self._table_edges.items(), key=lambda i: i[0]):
            yield (
                *self._name(up),
                *self._name(down),
                origin,
                sorted(seen.kinds),
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
            yield (*self._name(table), use.queries, len(use.users), sorted(use.users), use.last_used)

    def _column_usage_rows(self) -> Iterator[tuple[Any, ...]]:
        for column, use in sorted(self._column_use.items()):
            yield (
                *self._name(column[:3]),
                column[3],
                use.queries,
                len(use.users),
                sorted(use.users),
                use.last_used,
            )

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
        """Drop the spooled events: the end of the ``with`` block (once the extracts were written, or when
        the run failed before)."""
        if self._spool is not None and not self._spool.closed:
            self._spool.close()
