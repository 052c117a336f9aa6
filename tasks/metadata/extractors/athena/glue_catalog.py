"""The data catalogs of an Athena source, and the databases, tables, views and columns of its Glue catalogs."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks.common import to_utc
from tasks.metadata.extractors.athena.client import AthenaExtractionError

logger = logging.getLogger(__name__)

AWS_DATA_CATALOG = "AwsDataCatalog"

DATA_CATALOG_COLUMNS = ("catalog_name", "catalog_type", "metadata_source")
DATABASE_COLUMNS = ("catalog_name", "database_name", "description", "location_uri", "create_time")
TABLE_COLUMNS = (
    "catalog_name",
    "database_name",
    "table_name",
    "table_type",
    "description",
    "owner",
    "location",
    "input_format",
    "serde_library",
    "classification",
    "partition_keys",
    "create_time",
    "update_time",
)
VIEW_COLUMNS = ("catalog_name", "database_name", "view_name", "view_dialect", "view_sql")
COLUMN_COLUMNS = (
    "catalog_name",
    "database_name",
    "table_name",
    "column_name",
    "ordinal_position",
    "data_type",
    "is_partition_key",
    "comment",
)

# Athena views in Glue: Trino's Hive connector format (trino-hive ViewReaderUtil, PRESTO_VIEW_PREFIX).
_PRESTO_VIEW = re.compile(r"/\* Presto View: (?P<payload>[A-Za-z0-9+/=\s]+?) \*/", re.DOTALL)


@dataclass(frozen=True)
class Catalog:
    """A data catalog to extract. ``glue_catalog_id``: Glue's ``CatalogId`` (None: the caller's account)."""

    name: str
    type: str
    glue_catalog_id: str | None = None

    @property
    def is_glue(self) -> bool:
        return self.type == "GLUE"

    @property
    def metadata_source(self) -> str:
        """Where its metadata is read: ``glue`` or ``information_schema``."""
        return "glue" if self.is_glue else "information_schema"

    def glue_kwargs(self) -> dict[str, str]:
        return {"CatalogId": self.glue_catalog_id} if self.glue_catalog_id else {}


def blank(value: Any) -> Any:
    """``""`` → None: sources differ in how they say "no value"."""
    return None if value == "" else value


def view_sql(original_text: str | None) -> tuple[str, str | None]:
    """``(dialect, sql)`` of a Glue view's ``ViewOriginalText``.

    Athena stores ``/* Presto View: <base64 JSON> */`` whose ``originalSql`` is the view's SQL
    (dialect ``athena``); Hive and Spark store the SQL text itself (``hive``). A blob that does not decode
    is returned as it is, dialect ``athena``.
    """
    if not original_text:
        return "hive", None
    match = _PRESTO_VIEW.fullmatch(original_text.strip())
    if match is None:
        return "hive", original_text
    try:
        definition = json.loads(base64.b64decode(match["payload"]))
        return "athena", definition["originalSql"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return "athena", original_text


def list_catalogs(athena: Any, source: str, region: str, wanted: list[str] | None) -> list[Catalog]:
    """The catalogs to extract: ``ListDataCatalogs`` (``AwsDataCatalog`` among them; failed and deleting
    ones skipped with a WARNING), only ``wanted`` (case-insensitive) unless None; a Glue catalog of another
    account gets its ``catalog-id`` from ``GetDataCatalog``. ``AthenaExtractionError`` names a wanted
    catalog that is not listed."""
    summaries = [
        summary
        for page in athena.get_paginator("list_data_catalogs").paginate()
        for summary in page.get("DataCatalogsSummary", [])
    ]
    usable = []
    for summary in summaries:
        status = summary.get("Status")
        if status and (status.endswith("FAILED") or status.startswith("DELETE")):
            logger.warning(
                "Athena source %r: data catalog %r is %s: skipped", source, summary["CatalogName"], status
            )
        else:
            usable.append(summary)
    if wanted is not None:
        by_name = {s["CatalogName"].lower(): s for s in usable}
        missing = [name for name in wanted if name.lower() not in by_name]
        if missing:
            raise AthenaExtractionError(
                f"Athena source {source!r}: data catalog(s) {missing} not found in {region} "
                f"(athena:ListDataCatalogs lists {sorted(s['CatalogName'] for s in usable)}): fix catalogs"
            )
        usable = [by_name[name.lower()] for name in dict.fromkeys(wanted)]
    catalogs = []
    for summary in usable:
        name, kind = summary["CatalogName"], summary.get("Type", "GLUE")
        catalog_id = None
        if kind == "GLUE" and name != AWS_DATA_CATALOG:
            parameters = athena.get_data_catalog(Name=name)["DataCatalog"].get("Parameters") or {}
            catalog_id = parameters.get("catalog-id")
        catalogs.append(Catalog(name, kind, catalog_id))
    return catalogs


def glue_databases(glue: Any, catalog: Catalog) -> Iterator[dict[str, Any]]:
    """Glue ``GetDatabases`` of ``catalog``, page by page."""
    pages = glue.get_paginator("get_databases").paginate(**catalog.glue_kwargs())
    for page in pages:
        yield from page.get("DatabaseList", [])


def glue_tables(glue: Any, catalog: Catalog) -> Iterator[dict[str, Any]]:
    """Glue ``GetTables`` of every database of ``catalog``, page by page (views included)."""
    paginator = glue.get_paginator("get_tables")
    for database in glue_databases(glue, catalog):
        for page in paginator.paginate(DatabaseName=database["Name"], **catalog.glue_kwargs()):
            yield from page.get("TableList", [])


def database_rows(glue: Any, catalog: Catalog) -> Iterator[tuple[Any, ...]]:
    """``DATABASE_COLUMNS`` rows of a Glue catalog."""
    for db in glue_databases(glue, catalog):
        yield (
            catalog.name,
            db["Name"],
            blank(db.get("Description")),
            blank(db.get("LocationUri")),
            to_utc(db.get("CreateTime")),
        )


def table_rows(glue: Any, catalog: Catalog, seen: set[tuple[str, str]]) -> Iterator[tuple[Any, ...]]:
    """``TABLE_COLUMNS`` rows of a Glue catalog (views included; ``partition_keys`` a list of names,
    written as JSON); adds each ``(database, table)``, lower case, to ``seen`` (for the
    information_schema cross-check)."""
    for table in glue_tables(glue, catalog):
        seen.add((table["DatabaseName"].lower(), table["Name"].lower()))
        storage = table.get("StorageDescriptor") or {}
        parameters = table.get("Parameters") or {}
        yield (
            catalog.name,
            table["DatabaseName"],
            table["Name"],
            table.get("TableType"),
            blank(table.get("Description")),
            blank(table.get("Owner")),
            blank(storage.get("Location")),
            blank(storage.get("InputFormat")),
            blank((storage.get("SerdeInfo") or {}).get("SerializationLibrary")),
            parameters.get("classification") or parameters.get("table_type"),
            [key["Name"] for key in table.get("PartitionKeys") or []],
            to_utc(table.get("CreateTime")),
            to_utc(table.get("UpdateTime")),
        )


def view_rows(glue: Any, catalog: Catalog) -> Iterator[tuple[Any, ...]]:
    """``VIEW_COLUMNS`` rows of a Glue catalog: its ``VIRTUAL_VIEW`` tables."""
    for table in glue_tables(glue, catalog):
        if table.get("TableType") == "VIRTUAL_VIEW":
            dialect, sql = view_sql(table.get("ViewOriginalText"))
            yield (catalog.name, table["DatabaseName"], table["Name"], dialect, sql)


def column_rows(glue: Any, catalog: Catalog) -> Iterator[tuple[Any, ...]]:
    """``COLUMN_COLUMNS`` rows of a Glue catalog: each table's columns, then its partition keys."""
    for table in glue_tables(glue, catalog):
        columns = (table.get("StorageDescriptor") or {}).get("Columns") or []
        keys = table.get("PartitionKeys") or []
        for position, (column, is_key) in enumerate(
            itertools.chain(((c, False) for c in columns), ((k, True) for k in keys)), start=1
        ):
            yield (
                catalog.name,
                table["DatabaseName"],
                table["Name"],
                column["Name"],
                position,
                column.get("Type"),
                is_key,
                blank(column.get("Comment")),
            )
