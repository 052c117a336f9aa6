"""The Tableau Metadata API of the stand-in: GraphQL at ``POST /api/metadata/graphql`` over its site.

Schema and execution with graphql-core, in the Metadata API's own type and field names (a subset:
the lineage of data sources, tables, columns, fields, sheets and workbooks). Facts followed, from the
Tableau Metadata API documentation (help.tableau.com/current/api/metadata_api/en-us/):

- "Get Started": the endpoint is ``/api/metadata/graphql``, queries are POSTed as JSON
  (``{"query": ..., "variables": ...}``) with the REST API's credential token in ``X-Tableau-Auth``;
  on Tableau Server the API is disabled until ``tsm maintenance metadata-services enable``.
- "Example Queries" (Pagination): ``...Connection`` fields page with ``first`` (at most 1,000) and
  ``after`` (a cursor: ``pageInfo { hasNextPage endCursor }``), ordered by ``orderBy: {field,
  direction}``; ``after`` and ``offset`` together are an ``INVALID_ARGUMENT``.
- "Common Errors": errors come in the query result, ``errors[].extensions.code`` among
  ``FEATURE_DISABLED`` (error), ``NODE_LIMIT_EXCEEDED`` (warning: "Showing partial results. The request
  exceeded the 'n' node limit. ..."), ``TIME_LIMIT_EXCEEDED`` (warning, partial), ``RATE_EXCEEDED``
  (error), ``INVALID_ARGUMENT`` (error).
- Tableau Server's ``metadata.query.limits.count`` (default 20,000 nodes per query): the node limit.

What a query returns is built from the REST content of the site (the same projects, data sources,
workbooks and views, by the same LUIDs) and the ``metadata_api`` section of the stand-in's config:
docs/metadata-lineage.md ("The Tableau stand-in's Metadata API").
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError, build_schema, graphql_sync

from devstack.tableau.config import Config, Connection, ContentSpec, instant_seconds
from devstack.tableau.state import TableauSite

#: Tableau Server's default ``metadata.query.limits.count``.
DEFAULT_NODE_LIMIT = 20_000
#: "The maximum page size using either method is 1,000 items" ("Example Queries", Pagination).
MAX_PAGE_SIZE = 1000
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "devstack:tableau:metadata")
#: The messages of "Common Errors" ('n' filled in).
MESSAGES = {
    "FEATURE_DISABLED": (
        "Can't run the query because the Metadata API has not been enabled yet. Run the 'tsm maintenance "
        "metadata-services enable' command to enable the Metadata API or contact your Tableau administrator."
    ),
    "NODE_LIMIT_EXCEEDED": (
        "Showing partial results. The request exceeded the '{limit}' node limit. Use pagination, additional "
        "filtering, or both in the query to adjust results."
    ),
    "TIME_LIMIT_EXCEEDED": (
        "Can't show all data because the timeout limit '{seconds}' has been exceeded. Use pagination, "
        "additional filtering, or both in the query, and try again."
    ),
    "RATE_EXCEEDED": "The rate of API requests exceeded what's allowed.",
}
_SEVERITY = {"FEATURE_DISABLED": "ERROR", "RATE_EXCEEDED": "ERROR", "INVALID_ARGUMENT": "ERROR"}

SDL = """
type Query {
  publishedDatasourcesConnection(filter: PublishedDatasource_Filter, first: Int, after: String, offset: Int, orderBy: SortOrder): PublishedDatasourcesConnection!
  embeddedDatasourcesConnection(filter: EmbeddedDatasource_Filter, first: Int, after: String, offset: Int, orderBy: SortOrder): EmbeddedDatasourcesConnection!
  customSQLTablesConnection(filter: CustomSQLTable_Filter, first: Int, after: String, offset: Int, orderBy: SortOrder): CustomSQLTablesConnection!
  databaseTablesConnection(filter: DatabaseTable_Filter, first: Int, after: String, offset: Int, orderBy: SortOrder): DatabaseTablesConnection!
  workbooksConnection(filter: Workbook_Filter, first: Int, after: String, offset: Int, orderBy: SortOrder): WorkbooksConnection!
  publishedDatasources(filter: PublishedDatasource_Filter): [PublishedDatasource!]!
  workbooks(filter: Workbook_Filter): [Workbook!]!
  databaseTables(filter: DatabaseTable_Filter): [DatabaseTable!]!
}
scalar DateTime
input DatabaseTable_Filter {
  id: ID, idWithin: [ID], luid: String, luidWithin: [String], name: String, nameWithin: [String],
  schema: String, schemaWithin: [String], fullName: String, fullNameWithin: [String],
  connectionType: String, connectionTypeWithin: [String], isEmbedded: Boolean, isEmbeddedWithin: [Boolean]
}
input PublishedDatasource_Filter {
  id: ID, idWithin: [ID], luid: String, luidWithin: [String], name: String, nameWithin: [String],
  projectName: String, projectNameWithin: [String], vizportalUrlId: String, vizportalUrlIdWithin: [String]
}
input EmbeddedDatasource_Filter { id: ID, idWithin: [ID], name: String, nameWithin: [String] }
input CustomSQLTable_Filter { id: ID, idWithin: [ID], name: String, nameWithin: [String] }
input Workbook_Filter {
  id: ID, idWithin: [ID], luid: String, luidWithin: [String], name: String, nameWithin: [String],
  projectName: String, projectNameWithin: [String], vizportalUrlId: String, vizportalUrlIdWithin: [String]
}
enum SortOrderField { ID NAME }
enum SortOrderDirection { ASC DESC }
input SortOrder { field: SortOrderField!, direction: SortOrderDirection }
type PageInfo { hasNextPage: Boolean!, hasPreviousPage: Boolean!, startCursor: String, endCursor: String }
type PublishedDatasourcesConnection { nodes: [PublishedDatasource!]!, pageInfo: PageInfo!, totalCount: Int! }
type EmbeddedDatasourcesConnection { nodes: [EmbeddedDatasource!]!, pageInfo: PageInfo!, totalCount: Int! }
type CustomSQLTablesConnection { nodes: [CustomSQLTable!]!, pageInfo: PageInfo!, totalCount: Int! }
type DatabaseTablesConnection { nodes: [DatabaseTable!]!, pageInfo: PageInfo!, totalCount: Int! }
type WorkbooksConnection { nodes: [Workbook!]!, pageInfo: PageInfo!, totalCount: Int! }

type TableauUser { id: ID!, luid: String!, name: String, username: String }

interface Datasource {
  id: ID!, name: String, hasExtracts: Boolean, extractLastRefreshTime: DateTime,
  extractLastIncrementalUpdateTime: DateTime, extractLastUpdateTime: DateTime, fields: [Field!]!,
  upstreamTables: [Table!]!, upstreamDatabases: [Database!]!
}
type PublishedDatasource implements Datasource {
  id: ID!, luid: String!, name: String, projectName: String, vizportalUrlId: String, hasExtracts: Boolean,
  extractLastRefreshTime: DateTime, extractLastIncrementalUpdateTime: DateTime, extractLastUpdateTime: DateTime,
  owner: TableauUser!, fields: [Field!]!, upstreamTables: [Table!]!, upstreamDatabases: [Database!]!,
  downstreamWorkbooks: [Workbook!]!
}
type EmbeddedDatasource implements Datasource {
  id: ID!, name: String, hasExtracts: Boolean, extractLastRefreshTime: DateTime,
  extractLastIncrementalUpdateTime: DateTime, extractLastUpdateTime: DateTime, workbook: Workbook,
  fields: [Field!]!, upstreamTables: [Table!]!, upstreamDatabases: [Database!]!,
  upstreamDatasources: [PublishedDatasource!]!
}

interface Database { id: ID!, name: String, connectionType: String }
type DatabaseServer implements Database { id: ID!, name: String, connectionType: String, hostName: String, port: Int, service: String }

interface Table { id: ID!, name: String, columns: [Column!]!, downstreamDatasources: [PublishedDatasource!]!, downstreamWorkbooks: [Workbook!]! }
type DatabaseTable implements Table {
  id: ID!, luid: String!, name: String, fullName: String, schema: String, connectionType: String, isEmbedded: Boolean,
  database: Database, columns: [Column!]!, downstreamDatasources: [PublishedDatasource!]!, downstreamWorkbooks: [Workbook!]!
}
type CustomSQLTable implements Table {
  id: ID!, name: String, query: String, connectionType: String, isUnsupportedCustomSql: Boolean, database: Database,
  tables: [DatabaseTable!]!, columns: [Column!]!, downstreamDatasources: [PublishedDatasource!]!, downstreamWorkbooks: [Workbook!]!
}
type Column { id: ID!, name: String, remoteType: String, table: Table, downstreamFields: [Field!]! }

interface Field { id: ID!, name: String, datasource: Datasource, upstreamColumns: [Column!]!, upstreamFields: [Field!]!, sheets: [Sheet!]! }
type ColumnField implements Field {
  id: ID!, name: String, dataType: String, datasource: Datasource, columns: [Column!]!, upstreamColumns: [Column!]!,
  upstreamFields: [Field!]!, sheets: [Sheet!]!
}
type CalculatedField implements Field {
  id: ID!, name: String, dataType: String, formula: String, datasource: Datasource, fields: [Field!]!,
  upstreamColumns: [Column!]!, upstreamFields: [Field!]!, sheets: [Sheet!]!
}
type DatasourceField implements Field {
  id: ID!, name: String, datasource: Datasource, remoteField: Field, upstreamColumns: [Column!]!,
  upstreamFields: [Field!]!, sheets: [Sheet!]!
}

type Sheet {
  id: ID!, luid: String!, name: String, path: String, workbook: Workbook, sheetFieldInstances: [Field!]!,
  upstreamFields: [Field!]!, upstreamColumns: [Column!]!, upstreamDatasources: [PublishedDatasource!]!
}
type Workbook {
  id: ID!, luid: String!, name: String, projectName: String, vizportalUrlId: String, owner: TableauUser!,
  updatedAt: String, sheets: [Sheet!]!, embeddedDatasources: [EmbeddedDatasource!]!,
  upstreamDatasources: [PublishedDatasource!]!, upstreamTables: [Table!]!
}
"""

_CONNECTIONS = {
    "publishedDatasourcesConnection": "published",
    "embeddedDatasourcesConnection": "embedded",
    "customSQLTablesConnection": "custom_sql",
    "databaseTablesConnection": "tables",
    "workbooksConnection": "workbooks",
}


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(parts)))


@dataclass
class MetadataApiConfig:
    """The ``metadata_api`` section of the stand-in's config (docs/tableau-standin.md, "Lineage").

    ``enabled``: false answers every query with FEATURE_DISABLED (a Tableau Server without metadata
    services). ``node_limit``: nodes per query (``metadata.query.limits.count``). ``faults``: codes the
    next queries answer with, in order (``TIME_LIMIT_EXCEEDED``, ``RATE_EXCEEDED``). ``datasources``:
    ``"<project>/<name>"`` of a published data source → ``{"tables": [TABLE, ...], "custom_sql":
    [{"name", "query", "tables": ["schema.table"], "columns"}], "calculated_fields": {"<name>":
    ["<field>", ...]}, "extract_last_refresh_time": ISO 8601 instant}``; ``workbooks``:
    ``"<project>/<name>"`` → ``{"datasources": ["<project>/<name>"], "embedded": {"<name>": {"tables":
    [TABLE, ...], "has_extracts": bool, "extract_last_refresh_time": ...}}, "sheets": {"<view name>":
    ["<field>", ...]}}``. A TABLE is ``{"connection_type", "database", "schema", "name", "columns"}``
    (an embedded data source's also ``host``, ``port``). Content without an entry gets the defaults of
    ``MetadataApi``. Unknown keys are errors.
    """

    enabled: bool = True
    node_limit: int = DEFAULT_NODE_LIMIT
    time_limit_seconds: int = 20
    faults: list[str] = field(default_factory=list)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    workbooks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MetadataApiConfig:
        data = dict(data or {})
        _check_keys("metadata_api", data, set(cls.__dataclass_fields__))
        config = cls(**data)
        bad = [f for f in config.faults if f not in ("TIME_LIMIT_EXCEEDED", "RATE_EXCEEDED")]
        if bad or config.node_limit < 1:
            raise ValueError(
                f"metadata_api: faults must be TIME_LIMIT_EXCEEDED or RATE_EXCEEDED, got {bad}; node_limit >= 1"
            )
        for key, entry in config.datasources.items():
            where = f"metadata_api.datasources.{key}"
            _check_keys(where, entry, _DATASOURCE_KEYS)
            for i, table in enumerate(entry.get("tables") or []):
                _check_keys(f"{where}.tables[{i}]", table, _TABLE_KEYS)
            _instant(where, entry.get("extract_last_refresh_time"))
        for key, entry in config.workbooks.items():
            where = f"metadata_api.workbooks.{key}"
            _check_keys(where, entry, _WORKBOOK_KEYS)
            for name, embedded in (entry.get("embedded") or {}).items():
                _check_keys(f"{where}.embedded.{name}", embedded, _EMBEDDED_KEYS)
                for i, table in enumerate(embedded.get("tables") or []):
                    _check_keys(f"{where}.embedded.{name}.tables[{i}]", table, _TABLE_KEYS | {"host", "port"})
                _instant(f"{where}.embedded.{name}", embedded.get("extract_last_refresh_time"))
        return config


_DATASOURCE_KEYS = {"tables", "custom_sql", "calculated_fields", "extract_last_refresh_time"}
_WORKBOOK_KEYS = {"datasources", "embedded", "sheets"}
_EMBEDDED_KEYS = {"tables", "has_extracts", "extract_last_refresh_time"}
_TABLE_KEYS = {"connection_type", "database", "schema", "name", "columns"}


def _check_keys(where: str, data: Any, known: set[str]) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {where} keys {sorted(unknown)}; known: {sorted(known)}")


def _instant(where: str, value: Any) -> float | None:
    """An ``extract_last_refresh_time`` seed value as unix seconds (None stays None)."""
    if value is None:
        return None
    instant = instant_seconds(value)
    if instant is None:
        raise ValueError(
            f"{where}.extract_last_refresh_time {value!r}: give an ISO 8601 instant with its offset, "
            "e.g. 2026-12-01T06:00:00Z"
        )
    return instant


def date_time(seconds: float | None) -> str | None:
    """A Metadata API ``DateTime`` (ISO 8601 in UTC, ``2026-12-07T06:00:00Z``) of unix seconds."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Graph:
    """The site's Metadata API objects as dicts (graphql-core's default resolver reads their keys).

    Data sources carry ``_refresh_key`` (the REST id of the content whose extract refresh jobs refresh
    them: the data source, or an embedded one's workbook) and ``_seed_refresh`` (the seed's
    ``extract_last_refresh_time``, unix seconds), which ``MetadataApi`` turns into the extract times.
    """

    def __init__(self, config: Config, metadata: MetadataApiConfig, owner_id: str) -> None:
        self.owner = {"id": _id("user", owner_id), "luid": owner_id, "name": "admin", "username": "admin"}
        self.databases: dict[tuple[str, str, int, str], dict[str, Any]] = {}
        self.tables: dict[tuple[str, ...], dict[str, Any]] = {}
        self.published: list[dict[str, Any]] = []
        self.embedded: list[dict[str, Any]] = []
        self.custom_sql: list[dict[str, Any]] = []
        self.workbooks: list[dict[str, Any]] = []
        # The first data source connection of each type: where an embedded data source's tables are.
        self.hosts: dict[str, tuple[str, int]] = {}
        for spec in config.datasources:
            for connection in spec.connections or ():
                self.hosts.setdefault(connection.type, (connection.server_address, connection.server_port))
        by_key: dict[str, dict[str, Any]] = {}
        for spec in config.datasources:
            ds = self._published(spec, metadata.datasources.get(f"{spec.project}/{spec.name}", {}))
            by_key[f"{spec.project}/{spec.name}"] = ds
        unknown = set(metadata.datasources) - set(by_key)
        if unknown:
            raise ValueError(f"metadata_api.datasources names data sources the site lacks: {sorted(unknown)}")
        workbooks = {f"{spec.project}/{spec.name}" for spec in config.workbooks}
        unknown = set(metadata.workbooks) - workbooks
        if unknown:
            raise ValueError(f"metadata_api.workbooks names workbooks the site lacks: {sorted(unknown)}")
        for spec in config.workbooks:
            self._workbook(spec, metadata.workbooks.get(f"{spec.project}/{spec.name}"), by_key)

    # -- databases and tables --------------------------------------------------------------------

    def _database(self, kind: str, host: str, port: int, name: str) -> dict[str, Any]:
        key = (kind, host, port, name)
        if key not in self.databases:
            self.databases[key] = {
                "__typename": "DatabaseServer",
                "id": _id("database", *map(str, key)),
                "name": name,
                "connectionType": kind,
                "hostName": host,
                "port": port,
                "service": None,
            }
        return self.databases[key]

    def _datasource_database(self, spec: ContentSpec, table: Mapping[str, Any]) -> dict[str, Any]:
        """The database of a published data source's table: on its connection of the table's
        ``connection_type`` (default: its first connection)."""
        kind = table.get("connection_type")
        connections = [c for c in spec.connections or () if kind is None or c.type == kind]
        if not connections and kind is not None:
            raise ValueError(
                f"data source {spec.project}/{spec.name}: table {table.get('name')!r} is on a {kind} "
                f"connection, but the data source's connections are {[c.type for c in spec.connections or ()]}; "
                "add a connection of that type to the data source"
            )
        connection = connections[0] if connections else None
        return self._database(
            connection.type if connection else "postgres",
            connection.server_address if connection else "localhost",
            connection.server_port if connection else 0,
            table.get("database", "analytics"),
        )

    def _embedded_database(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """The database of an embedded data source's table: ``host``/``port`` as given, else those of
        the site's first data source connection of its type (else the stand-in's default server)."""
        kind = table.get("connection_type", "postgres")
        default = Connection()
        host, port = self.hosts.get(kind, (default.server_address, default.server_port))
        return self._database(
            kind, table.get("host", host), int(table.get("port", port)), table.get("database", "analytics")
        )

    def _table(self, database: dict[str, Any], schema: str, name: str, columns: list[str]) -> dict[str, Any]:
        key = (database["id"], schema, name)
        if key not in self.tables:
            table: dict[str, Any] = {
                "__typename": "DatabaseTable",
                "id": _id("table", *key),
                "luid": _id("table-luid", *key),
                "name": name,
                "fullName": f"[{schema}].[{name}]",
                "schema": schema,
                "connectionType": database["connectionType"],
                "isEmbedded": False,
                "database": database,
                "columns": [],
                "downstreamDatasources": [],
                "downstreamWorkbooks": [],
            }
            self.tables[key] = table
        table = self.tables[key]
        known = {c["name"] for c in table["columns"]}
        for column in columns:
            if column not in known:
                table["columns"].append(self._column(table, column))
        return table

    @staticmethod
    def _column(table: dict[str, Any], name: str) -> dict[str, Any]:
        return {
            "id": _id("column", table["id"], name),
            "name": name,
            "remoteType": "VARCHAR",
            "table": table,
            "downstreamFields": [],
        }

    # -- data sources ------------------------------------------------------------------------------

    def _published(self, spec: ContentSpec, lineage: Mapping[str, Any]) -> dict[str, Any]:
        where = f"metadata_api.datasources.{spec.project}/{spec.name}"
        ds: dict[str, Any] = {
            "__typename": "PublishedDatasource",
            "id": _id("published", spec.id),
            "luid": spec.id,
            "name": spec.name,
            "projectName": spec.project,
            "vizportalUrlId": spec.content_url,
            "hasExtracts": bool(spec.has_extracts),
            "owner": self.owner,
            "fields": [],
            "upstreamTables": [],
            "upstreamDatabases": [],
            "downstreamWorkbooks": [],
            "_refresh_key": spec.id,
            "_seed_refresh": _instant(where, lineage.get("extract_last_refresh_time")),
            # Every database table it reads, directly or through custom SQL (the downstream lineage).
            "_lineage_tables": [],
        }
        self.published.append(ds)
        table_specs = lineage.get("tables")
        if table_specs is None and not lineage.get("custom_sql"):
            # Default: one table named after the data source, in schema "public".
            table_specs = [
                {
                    "database": "analytics",
                    "schema": "public",
                    "name": spec.content_url.lower(),
                    "columns": ["id", "name", "amount", "updated_at"],
                }
            ]
        for t in table_specs or []:
            database = self._datasource_database(spec, t)
            table = self._table(database, t.get("schema", "public"), t["name"], list(t.get("columns", [])))
            self._link_table(ds, table)
            for column in (c for c in table["columns"] if c["name"] in t.get("columns", [])):
                self._column_field(ds, column)
        for c in lineage.get("custom_sql", []):
            database = self._datasource_database(spec, {"database": c.get("database", "analytics")})
            custom = {
                "__typename": "CustomSQLTable",
                "id": _id("custom-sql", spec.id, c["name"]),
                "name": c["name"],
                "query": c["query"],
                "connectionType": database["connectionType"],
                "isUnsupportedCustomSql": False,
                "database": database,
                "tables": [],
                "columns": [],
                "downstreamDatasources": [],
                "downstreamWorkbooks": [],
            }
            for dotted in c.get("tables", []):
                schema, _, name = dotted.rpartition(".")
                custom["tables"].append(self._table(database, schema or "public", name, []))
            custom["columns"] = [self._column(custom, n) for n in c.get("columns", [])]
            self.custom_sql.append(custom)
            self._link_table(ds, custom)
            for table in custom["tables"]:
                # Downstream lineage runs through custom SQL: the tables it reads feed the data source.
                self._link_downstream(ds, table)
            for column in custom["columns"]:
                self._column_field(ds, column)
        for name, inputs in (lineage.get("calculated_fields") or {}).items():
            used = [f for f in ds["fields"] if f["name"] in inputs]
            missing = set(inputs) - {f["name"] for f in used}
            if missing:
                raise ValueError(
                    f"data source {spec.project}/{spec.name}: calculated field {name!r} uses unknown fields {sorted(missing)}"
                )
            ds["fields"].append(
                {
                    "__typename": "CalculatedField",
                    "id": _id("field", ds["id"], name),
                    "name": name,
                    "dataType": "REAL",
                    "formula": " + ".join(f"[{f['name']}]" for f in used),
                    "datasource": ds,
                    "fields": used,
                    "upstreamFields": used,
                    "upstreamColumns": [c for f in used for c in f["upstreamColumns"]],
                    "sheets": [],
                }
            )
        return ds

    def _link_table(self, ds: dict[str, Any], table: dict[str, Any]) -> None:
        ds["upstreamTables"].append(table)
        if table["database"] not in ds["upstreamDatabases"]:
            ds["upstreamDatabases"].append(table["database"])
        self._link_downstream(ds, table)

    @staticmethod
    def _link_downstream(ds: dict[str, Any], table: dict[str, Any]) -> None:
        if ds["__typename"] == "PublishedDatasource" and ds not in table["downstreamDatasources"]:
            table["downstreamDatasources"].append(ds)
        if table not in ds["_lineage_tables"]:
            ds["_lineage_tables"].append(table)

    def _column_field(self, ds: dict[str, Any], column: dict[str, Any]) -> None:
        name = column["name"]
        if any(f["name"] == name for f in ds["fields"]):
            name = f"{name} ({column['table']['name']})"  # Tableau names a clashing field after its table
        field_ = {
            "__typename": "ColumnField",
            "id": _id("field", ds["id"], name),
            "name": name,
            "dataType": "STRING",
            "datasource": ds,
            "columns": [column],
            "upstreamColumns": [column],
            "upstreamFields": [],
            "sheets": [],
        }
        column["downstreamFields"].append(field_)
        ds["fields"].append(field_)

    # -- workbooks ---------------------------------------------------------------------------------

    def _workbook(
        self, spec: ContentSpec, lineage: Mapping[str, Any] | None, published: dict[str, dict[str, Any]]
    ) -> None:
        where = f"metadata_api.workbooks.{spec.project}/{spec.name}"
        wb: dict[str, Any] = {
            "id": _id("workbook", spec.id),
            "luid": spec.id,
            "name": spec.name,
            "projectName": spec.project,
            "vizportalUrlId": spec.content_url,
            "owner": self.owner,
            "updatedAt": None,
            "sheets": [],
            "embeddedDatasources": [],
            "upstreamDatasources": [],
            "upstreamTables": [],
        }
        self.workbooks.append(wb)
        own: dict[str, Any] = {}
        if lineage is None:  # default: the published data sources of its project, two fields per view
            keys = [k for k, ds in published.items() if ds["projectName"] == spec.project]
            sheets = {view: None for view in spec.views or ()}
        else:
            keys = list(lineage.get("datasources", []))
            own = dict(lineage.get("embedded") or {})
            sheets = dict(lineage.get("sheets") or {})
            missing = [k for k in keys if k not in published]
            unknown_views = set(sheets) - set(spec.views or ())
            if missing or unknown_views:
                raise ValueError(
                    f"workbook {spec.project}/{spec.name}: unknown data sources {missing} or views {sorted(unknown_views)}"
                )

        def link(table: dict[str, Any]) -> None:
            if table not in wb["upstreamTables"]:
                wb["upstreamTables"].append(table)
            if wb not in table["downstreamWorkbooks"]:
                table["downstreamWorkbooks"].append(wb)

        fields_by_name: dict[str, dict[str, Any]] = {}
        for key in keys:
            source = published[key]
            # A connection to a published data source: the extract (if any) is the published one's.
            embedded: dict[str, Any] = {
                "__typename": "EmbeddedDatasource",
                "id": _id("embedded", spec.id, key),
                "name": source["name"],
                "hasExtracts": False,
                "workbook": wb,
                "fields": [],
                "upstreamTables": list(source["upstreamTables"]),
                "upstreamDatabases": list(source["upstreamDatabases"]),
                "upstreamDatasources": [source],
                "_refresh_key": spec.id,
                "_seed_refresh": None,
            }
            for remote in source["fields"]:
                local = {
                    "__typename": "DatasourceField",
                    "id": _id("field", embedded["id"], remote["name"]),
                    "name": remote["name"],
                    "datasource": embedded,
                    "remoteField": remote,
                    "upstreamFields": [remote],
                    "upstreamColumns": list(remote["upstreamColumns"]),
                    "sheets": [],
                }
                embedded["fields"].append(local)
                fields_by_name.setdefault(remote["name"], local)
            self.embedded.append(embedded)
            wb["embeddedDatasources"].append(embedded)
            wb["upstreamDatasources"].append(source)
            source["downstreamWorkbooks"].append(wb)
            for table in source["upstreamTables"]:
                if table not in wb["upstreamTables"]:
                    wb["upstreamTables"].append(table)
            for table in source["upstreamTables"] + source["_lineage_tables"]:
                if wb not in table["downstreamWorkbooks"]:
                    table["downstreamWorkbooks"].append(wb)
        for name, entry in own.items():
            # An embedded data source with its own connections (its extract is the workbook's).
            embedded = {
                "__typename": "EmbeddedDatasource",
                "id": _id("embedded-own", spec.id, name),
                "name": name,
                "hasExtracts": bool(entry.get("has_extracts", True)),
                "workbook": wb,
                "fields": [],
                "upstreamTables": [],
                "upstreamDatabases": [],
                "upstreamDatasources": [],
                "_refresh_key": spec.id,
                "_seed_refresh": _instant(f"{where}.embedded.{name}", entry.get("extract_last_refresh_time")),
                "_lineage_tables": [],
            }
            for t in entry.get("tables") or []:
                table = self._table(
                    self._embedded_database(t),
                    t.get("schema", "public"),
                    t["name"],
                    list(t.get("columns", [])),
                )
                self._link_table(embedded, table)
                link(table)
                for column in (c for c in table["columns"] if c["name"] in t.get("columns", [])):
                    self._column_field(embedded, column)
            for f in embedded["fields"]:
                fields_by_name.setdefault(f["name"], f)
            self.embedded.append(embedded)
            wb["embeddedDatasources"].append(embedded)
        for view in spec.views or ():
            if view not in sheets:
                continue
            names = sheets[view]
            used = (
                list(fields_by_name.values())[:2]
                if names is None
                else [fields_by_name[n] for n in names if n in fields_by_name]
            )
            if names is not None and len(used) != len(names):
                raise ValueError(
                    f"workbook {spec.project}/{spec.name}, sheet {view!r}: unknown fields in {names}"
                )
            sheet = {
                "id": _id("sheet", spec.id, view),
                "luid": spec.view_id(view),
                "name": view,
                "path": f"{spec.content_url}/{view}",
                "workbook": wb,
                "sheetFieldInstances": used,
                "upstreamFields": used,
                "upstreamColumns": [c for f in used for c in f["upstreamColumns"]],
                "upstreamDatasources": [f["remoteField"]["datasource"] for f in used if "remoteField" in f],
            }
            for f in used:
                f["sheets"].append(sheet)
                if "remoteField" in f:
                    f["remoteField"]["sheets"].append(sheet)
            wb["sheets"].append(sheet)


class MetadataApi:
    """``POST /api/metadata/graphql`` of one stand-in site: ``handle(token, body)`` → (HTTP status, JSON).

    Authentication is the REST API's (``TableauSite.authenticate``: 401002 for a bad token, raised as
    the REST ``ApiError`` the server turns into its XML error). ``queries`` counts the queries served.
    """

    def __init__(self, site: TableauSite) -> None:
        self.site = site
        self.config = MetadataApiConfig.from_dict(site.config.metadata_api)
        self.graph = _Graph(site.config, self.config, site.owner_id)
        self.schema = build_schema(SDL)
        for interface in ("Datasource", "Database", "Table", "Field"):
            self.schema.type_map[interface].resolve_type = lambda obj, *_: obj["__typename"]  # type: ignore[attr-defined]
        query_type = self.schema.query_type
        for name, collection in _CONNECTIONS.items():
            query_type.fields[name].resolve = self._connection(collection)
        query_type.fields["publishedDatasources"].resolve = self._list("published")
        query_type.fields["workbooks"].resolve = self._list("workbooks")
        query_type.fields["databaseTables"].resolve = self._list("tables")
        for type_name in ("PublishedDatasource", "EmbeddedDatasource"):
            fields = self.schema.type_map[type_name].fields  # type: ignore[attr-defined]
            for name, which in _EXTRACT_TIMES.items():
                fields[name].resolve = _extract_time(which)
        self._lock = threading.Lock()
        self._faults = list(self.config.faults)
        self.queries = 0

    def _items(self, collection: str, filter: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        items = (
            list(self.graph.tables.values()) if collection == "tables" else getattr(self.graph, collection)
        )
        if not filter:
            return list(items)
        wanted = {k: set(v) if k.endswith("Within") and v is not None else v for k, v in filter.items()}
        return [item for item in items if _matches(item, wanted)]

    def _list(self, collection: str) -> Callable[..., list[dict[str, Any]]]:
        def resolve(_: Any, info: Any, filter: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
            return self._items(collection, filter)

        return resolve

    def _connection(self, collection: str) -> Callable[..., dict[str, Any]]:
        def resolve(
            _: Any,
            info: Any,
            filter: Mapping[str, Any] | None = None,
            first: int | None = None,
            after: str | None = None,
            offset: int | None = None,
            orderBy: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
            items = self._items(collection, filter)
            order = orderBy or {"field": "ID", "direction": "ASC"}
            key = "name" if order["field"] == "NAME" else "id"
            items = sorted(
                items, key=lambda o: (o.get(key) or "", o["id"]), reverse=order.get("direction") == "DESC"
            )
            if after is not None and offset is not None:
                raise GraphQLError(
                    'Can\'t use "after" and "offset" pagination at the same time. Remove one of the arguments from the query.',
                    extensions={"severity": "ERROR", "code": "INVALID_ARGUMENT"},
                )
            start = offset or 0
            if after is not None:
                start = _cursor_position(after)
            size = MAX_PAGE_SIZE if first is None else max(0, min(first, MAX_PAGE_SIZE))
            page = items[start : start + size]
            end = start + len(page)
            return {
                "nodes": page,
                "totalCount": len(items),
                "pageInfo": {
                    "hasNextPage": end < len(items),
                    "hasPreviousPage": start > 0,
                    "startCursor": _cursor(start + 1) if page else None,
                    "endCursor": _cursor(end) if page else None,
                },
            }

        return resolve

    def handle(self, token: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer one request. (400, errors) for a body that is not ``{"query": ...}`` JSON."""
        self.site.authenticate(token)
        try:
            request = json.loads(body or b"{}")
            query, variables = request["query"], request.get("variables") or None
        except (ValueError, KeyError, TypeError):
            return 400, {
                "errors": [{"message": 'The request body must be JSON: {"query": ..., "variables": ...}'}]
            }
        with self._lock:
            self.queries += 1
            fault = self._faults.pop(0) if self._faults else None
        if not self.config.enabled:
            return 200, _error_result("FEATURE_DISABLED")
        if fault == "RATE_EXCEEDED":
            return 200, _error_result(fault)
        # The extract times as of this query (jobs that succeeded so far), read once for the query.
        context = {"refreshes": self.site.extract_refreshes()}
        result = graphql_sync(self.schema, query, variable_values=variables, context_value=context)
        document: dict[str, Any] = {"data": result.data}
        errors = [_error_json(e) for e in result.errors or []]
        if result.data is not None:
            limit = self.config.node_limit
            if fault == "TIME_LIMIT_EXCEEDED":
                document["data"] = _truncate(result.data, max(1, _count_nodes(result.data) // 2))
                errors.append(_warning(fault, seconds=self.config.time_limit_seconds))
            elif _count_nodes(result.data) > limit:
                document["data"] = _truncate(result.data, limit)
                errors.append(_warning("NODE_LIMIT_EXCEEDED", limit=limit))
        if errors:
            document["errors"] = errors
        return 200, document


#: Field → what it reports of a data source's extract (Datasource, Metadata API reference): the last
#: full refresh, the last incremental update, the last of either.
_EXTRACT_TIMES = {
    "extractLastRefreshTime": "full",
    "extractLastIncrementalUpdateTime": "incremental",
    "extractLastUpdateTime": "any",
}


def _extract_time(which: str) -> Callable[..., str | None]:
    """The resolver of one extract time of a data source: null without extracts; else the latest of
    the seed's ``extract_last_refresh_time`` (a full refresh) and the succeeded extract refresh jobs of
    the content that refreshes it (the data source, or an embedded one's workbook)."""

    def resolve(ds: Mapping[str, Any], info: Any) -> str | None:
        if not ds.get("hasExtracts"):
            return None
        full, incremental = info.context["refreshes"].get(ds["_refresh_key"], (None, None))
        times = {"full": [full, ds["_seed_refresh"]], "incremental": [incremental]}
        times["any"] = times["full"] + times["incremental"]
        known = [t for t in times[which] if t is not None]
        return date_time(max(known)) if known else None

    return resolve


def _matches(item: Mapping[str, Any], filter: Mapping[str, Any]) -> bool:
    """Whether ``item`` passes a ``..._Filter``: every field given (not null) must hold — ``x`` equal,
    ``xWithin`` one of the list — exactly and case-sensitively (the stricter reading: the reference
    says only "Filter by GraphQL field and given value")."""
    for key, wanted in filter.items():
        if wanted is None:
            continue
        if key.endswith("Within"):
            if item.get(key.removesuffix("Within")) not in wanted:
                return False
        elif item.get(key) != wanted:
            return False
    return True


def _cursor(position: int) -> str:
    return base64.b64encode(f"cursor:{position}".encode()).decode()


def _cursor_position(cursor: str) -> int:
    try:
        return int(base64.b64decode(cursor).decode().removeprefix("cursor:"))
    except ValueError:
        raise GraphQLError(
            "The query contains an invalid cursor. Make sure to use cursors of the same type.",
            extensions={"severity": "ERROR", "code": "INVALID_ARGUMENT"},
        ) from None


def _error_json(error: GraphQLError) -> dict[str, Any]:
    formatted = error.formatted
    formatted.setdefault("extensions", {"severity": "ERROR", "code": "INVALID_ARGUMENT"})
    return formatted


def _warning(code: str, **values: Any) -> dict[str, Any]:
    return {"message": MESSAGES[code].format(**values), "extensions": {"severity": "WARNING", "code": code}}


def _error_result(code: str) -> dict[str, Any]:
    return {
        "data": None,
        "errors": [{"message": MESSAGES[code], "extensions": {"severity": _SEVERITY[code], "code": code}}],
    }


def _count_nodes(value: Any) -> int:
    """Objects in a result: every JSON object counts as one node."""
    if isinstance(value, dict):
        return 1 + sum(_count_nodes(v) for v in value.values())
    if isinstance(value, list):
        return sum(_count_nodes(v) for v in value)
    return 0


def _truncate(value: Any, budget: int) -> Any:
    """``value`` with list items dropped from the end until it holds at most ``budget`` nodes ("Showing
    partial results"); ``pageInfo`` stays as it was, so a client that ignores the warning skips nodes."""

    def walk(node: Any, remaining: list[int]) -> Any:
        if isinstance(node, dict):
            remaining[0] -= 1
            return {k: walk(v, remaining) for k, v in node.items()}
        if isinstance(node, list):
            kept = []
            for item in node:
                if remaining[0] - _count_nodes(item) < 0:
                    break
                kept.append(walk(item, remaining))
            return kept
        return node

    return walk(value, [budget])
