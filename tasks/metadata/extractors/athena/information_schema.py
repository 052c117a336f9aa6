"""Athena's own view of the catalogs: ``information_schema`` queries (the only source of non-Glue catalogs,
and the cross-check of Glue's tables) and ``ListDatabases``."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tasks.metadata.extractors.athena.client import AthenaExtractionError
from tasks.metadata.extractors.athena.glue_catalog import Catalog, blank

logger = logging.getLogger(__name__)

#: GetQueryResults ``MaxResults`` maximum (1-1000).
RESULTS_PAGE_SIZE = 1000

# The Glue cross-check: the tables Athena can see in a catalog.
TABLES_SQL = (
    "SELECT table_schema, table_name, table_type FROM information_schema.tables "
    "WHERE table_schema <> 'information_schema'"
)
# Non-Glue catalogs: everything in one query. ``extra_info`` is 'partition key' for partition columns;
# the view's SQL rides on its first column's row only.
CATALOG_SQL = """\
SELECT c.table_schema, c.table_name, t.table_type, c.column_name, c.ordinal_position, c.data_type,
       c.comment, c.extra_info,
       CASE WHEN c.ordinal_position = 1 THEN v.view_definition END AS view_definition
FROM information_schema.columns AS c
JOIN information_schema.tables AS t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
LEFT JOIN information_schema.views AS v ON v.table_schema = c.table_schema AND v.table_name = c.table_name
WHERE c.table_schema <> 'information_schema'
ORDER BY c.table_schema, c.table_name, c.ordinal_position"""


def database_rows(athena: Any, catalog: Catalog) -> Iterator[tuple[Any, ...]]:
    """``DATABASE_COLUMNS`` rows of a non-Glue catalog, from Athena's ``ListDatabases`` (no location or
    creation time)."""
    pages = athena.get_paginator("list_databases").paginate(CatalogName=catalog.name)
    for page in pages:
        for db in page.get("DatabaseList", []):
            yield (catalog.name, db["Name"], blank(db.get("Description")), None, None)


class InformationSchema:
    """The information_schema queries of one extractor run, in one workgroup.

    Args:
        athena: the source's boto3 Athena client.
        source: the source's name, for messages.
        workgroup: the workgroup the queries run in.
        output_location: ``ResultConfiguration.OutputLocation`` of the queries (a workgroup that enforces
            its own location overrides it).
        poll_seconds, poll_max_seconds, timeout_seconds: waiting for a query: the first poll interval,
            the cap it doubles to, the give-up time (seconds).

    ``CATALOG_SQL`` runs at most once per catalog; tables, views and columns page its results again.
    """

    def __init__(
        self,
        athena: Any,
        source: str,
        workgroup: str,
        output_location: str,
        *,
        poll_seconds: float,
        poll_max_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self.athena = athena
        self.source = source
        self.workgroup = workgroup
        self.output_location = output_location
        self.poll_seconds = poll_seconds
        self.poll_max_seconds = poll_max_seconds
        self.timeout_seconds = timeout_seconds
        #: catalog name → execution id of its ``CATALOG_SQL`` query.
        self.catalog_queries: dict[str, str] = {}

    def run_query(self, catalog: str, sql: str) -> str:
        """Start ``sql`` in ``catalog`` and wait (backing off) until it SUCCEEDED; its execution id.

        ``AthenaExtractionError`` if it FAILED, was CANCELLED or outlived ``timeout_seconds`` (then it
        is stopped).
        """
        athena = self.athena
        execution_id = athena.start_query_execution(
            QueryString=sql,
            QueryExecutionContext={"Catalog": catalog},
            ResultConfiguration={"OutputLocation": self.output_location},
            WorkGroup=self.workgroup,
        )["QueryExecutionId"]
        deadline = time.monotonic() + self.timeout_seconds
        delay = self.poll_seconds
        while True:
            status = athena.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"]["Status"]
            state = status["State"]
            if state == "SUCCEEDED":
                return execution_id
            if state in ("FAILED", "CANCELLED"):
                reason = status.get("StateChangeReason") or (status.get("AthenaError") or {}).get(
                    "ErrorMessage"
                )
                raise AthenaExtractionError(
                    f"Athena source {self.source!r}: information_schema query {execution_id} on catalog "
                    f"{catalog!r} (workgroup {self.workgroup!r}) {state}: {reason}"
                )
            if time.monotonic() >= deadline:
                try:
                    athena.stop_query_execution(QueryExecutionId=execution_id)
                except ClientError:
                    logger.warning("Athena source %r: could not stop query %s", self.source, execution_id)
                raise AthenaExtractionError(
                    f"Athena source {self.source!r}: information_schema query {execution_id} on catalog "
                    f"{catalog!r} still {state} after {self.timeout_seconds:.0f} s: stopped"
                )
            time.sleep(delay)
            delay = min(delay * 2, self.poll_max_seconds)

    def result_rows(self, execution_id: str) -> Iterator[dict[str, str | None]]:
        """Rows of a finished query as ``{column: value}`` (strings; None = NULL), via the paginator.

        The first row of a SELECT's first page holds the column names (GetQueryResults reference): skipped.
        """
        pages = self.athena.get_paginator("get_query_results").paginate(
            QueryExecutionId=execution_id, PaginationConfig={"PageSize": RESULTS_PAGE_SIZE}
        )
        names: list[str] | None = None
        for page_number, page in enumerate(pages):
            result = page["ResultSet"]
            if names is None:
                names = [c["Name"] for c in result["ResultSetMetadata"]["ColumnInfo"]]
            for row_number, row in enumerate(result.get("Rows", [])):
                values = [datum.get("VarCharValue") for datum in row["Data"]]
                if page_number == 0 and row_number == 0 and values == names:
                    continue
                yield dict(zip(names, values, strict=True))

    def cross_check(self, catalog: Catalog, glue_tables: set[tuple[str, str]]) -> None:
        """Compare Glue's tables (``(database, table)``, lower case) with what Athena's information_schema
        shows; differences are WARNINGs, and so is a failure of the query: the rows never change."""
        try:
            execution_id = self.run_query(catalog.name, TABLES_SQL)
            athena_tables = {
                (row["table_schema"].lower(), row["table_name"].lower())
                for row in self.result_rows(execution_id)
            }
        except (AthenaExtractionError, ClientError, BotoCoreError) as exc:
            logger.warning(
                "Athena source %r: information_schema cross-check of catalog %r skipped: %s",
                self.source,
                catalog.name,
                exc,
            )
            return
        for missing, where, other in (
            (glue_tables - athena_tables, "Glue lists", "Athena's information_schema does not show"),
            (athena_tables - glue_tables, "Athena's information_schema shows", "Glue did not list"),
        ):
            if missing:
                names = sorted(f"{db}.{table}" for db, table in missing)
                logger.warning(
                    "Athena source %r, catalog %r: %s %d table(s) that %s (Lake Formation permissions, "
                    "unsupported formats, or a change during the run?): %s%s",
                    self.source,
                    catalog.name,
                    where,
                    len(names),
                    other,
                    ", ".join(names[:20]),
                    " …" if len(names) > 20 else "",
                )

    def _catalog_rows(self, catalog: Catalog) -> Iterator[dict[str, str | None]]:
        """``CATALOG_SQL``'s rows for a non-Glue catalog; the query runs once."""
        if catalog.name not in self.catalog_queries:
            self.catalog_queries[catalog.name] = self.run_query(catalog.name, CATALOG_SQL)
        return self.result_rows(self.catalog_queries[catalog.name])

    def _table_groups(self, catalog: Catalog) -> Iterator[list[dict[str, str | None]]]:
        for _, rows in itertools.groupby(
            self._catalog_rows(catalog), lambda r: (r["table_schema"], r["table_name"])
        ):
            yield list(rows)

    def table_rows(self, catalog: Catalog) -> Iterator[tuple[Any, ...]]:
        """``TABLE_COLUMNS`` rows of a non-Glue catalog (views included): no owner, location or formats;
        ``partition_keys`` a list of names."""
        for rows in self._table_groups(catalog):
            first = rows[0]
            yield (
                catalog.name,
                first["table_schema"],
                first["table_name"],
                first["table_type"],
                *(None,) * 6,
                [r["column_name"] for r in rows if r["extra_info"] == "partition key" and r["column_name"]],
                None,
                None,
            )

    def view_rows(self, catalog: Catalog) -> Iterator[tuple[Any, ...]]:
        """``VIEW_COLUMNS`` rows of a non-Glue catalog (dialect ``athena``)."""
        for rows in self._table_groups(catalog):
            first = rows[0]
            if first["table_type"] == "VIEW":
                sql = next((r["view_definition"] for r in rows if r["view_definition"]), None)
                yield (catalog.name, first["table_schema"], first["table_name"], "athena", sql)

    def column_rows(self, catalog: Catalog) -> Iterator[tuple[Any, ...]]:
        """``COLUMN_COLUMNS`` rows of a non-Glue catalog."""
        for row in self._catalog_rows(catalog):
            position = row["ordinal_position"]
            yield (
                catalog.name,
                row["table_schema"],
                row["table_name"],
                row["column_name"],
                int(position) if position is not None else None,
                row["data_type"],
                row["extra_info"] == "partition key",
                blank(row["comment"]),
            )
