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
import json
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import GraphQLError, build_schema, graphql_sync

from devstack.tableau.config import Config, ContentSpec
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
  publishedDatasourcesConnection(first: Int, after: String, offset: Int, orderBy: SortOrder): PublishedDatasourcesConnection!
  embeddedDatasourcesConnection(first: Int, after: String, offset: Int, orderBy: SortOrder): EmbeddedDatasourcesConnection!
  customSQLTablesConnection(first: Int, after: String, offset: Int, orderBy: SortOrder): CustomSQLTablesConnection!
  databaseTablesConnection(first: Int, after: String, offset: Int, orderBy: SortOrder): DatabaseTablesConnection!
  workbooksConnection(first: Int, after: String, offset: Int, orderBy: SortOrder): WorkbooksConnection!
  publishedDatasources: [PublishedDatasource!]!
  workbooks: [Workbook!]!
  databaseTables: [DatabaseTable!]!
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

interface Datasource { id: ID!, name: String, fields: [Field!]!, upstreamTables: [Table!]!, upstreamDatabases: [Database!]! }
type PublishedDatasource implements Datasource {
  id: ID!, luid: String!, name: String, projectName: String, vizportalUrlId: String, hasExtracts: Boolean,
  owner: TableauUser!, fields: [Field!]!, upstreamTables: [Table!]!, upstreamDatabases: [Database!]!,
  downstreamWorkbooks: [Workbook!]!
}
type EmbeddedDatasource implements Datasource {
  id: ID!, name: String, workbook: Workbook, fields: [Field!]!, upstreamTables: [Table!]!,
  upstreamDatabases: [Database!]!, upstreamDatasources: [PublishedDatasource!]!
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
    """The ``metadata_api`` section of the stand-in's config.

    ``enabled``: false answers every query with FEATURE_DISABLED (a Tableau Server without metadata
    services). ``node_limit``: nodes per query (``metadata.query.limits.count``). ``faults``: codes the
    next queries answer with, in order (``TIME_LIMIT_EXCEEDED``, ``RATE_EXCEEDED``). ``datasources``:
    ``"<project>/<name>"`` of a published data source → ``{"tables": [{"database", "schema", "name",
    "columns"}], "custom_sql": [{"name", "query", "tables": ["schema.table"], "columns"}],
    "calculated_fields": {"<name>": ["<field>", ...]}}``; ``workbooks``: ``"<project>/<name>"`` →
    ``{"datasources": ["<project>/<name>"], "sheets": {"<view name>": ["<field>", ...]}}``. Content
    without an entry gets the defaults of ``MetadataApi``.
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
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown metadata_api keys {sorted(unknown)}; known: {sorted(known)}")
        config = cls(**data)
        bad = [f for f in config.faults if f not in ("TIME_LIMIT_EXCEEDED", "RATE_EXCEEDED")]
        if bad or config.node_limit < 1:
            raise ValueError(
                f"metadata_api: faults must be TIME_LIMIT_EXCEEDED or RATE_EXCEEDED, got {bad}; node_limit >= 1"
            )
        return config


class _Graph:
    """The site's Metadata API objects as dicts (graphql-core's default resolver reads their keys)."""

    def __init__(self, config: Config, metadata: MetadataApiConfig, owner_id: str) -> None:
        self.owner = {"id": _id("user", owner_id), "luid": owner_id, "name": "admin", "username": "admin"}
        self.databases: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.tables: dict[tuple[str, ...], dict[str, Any]] = {}
        self.published: list[dict[str, Any]] = []
        self.embedded: list[dict[str, Any]] = []
        self.custom_sql: list[dict[str, Any]] = []
        self.workbooks: list[dict[str, Any]] = []
        by_key: dict[str, dict[str, Any]] = {}
        for spec in config.datasources:
            ds = self._published(spec, metadata.datasources.get(f"{spec.project}/{spec.name}", {}))
            by_key[f"{spec.project}/{spec.name}"] = ds
        unknown = set(metadata.datasources) - set(by_key)
        if unknown:
            raise ValueError(f"metadata_api.datasources names data sources the site lacks: {sorted(unknown)}")
        for spec in config.workbooks:
            self._workbook(spec, metadata.workbooks.get(f"{spec.project}/{spec.name}"), by_key)

    # -- databases and tables --------------------------------------------------------------------

    def _database(self, spec: ContentSpec, name: str) -> dict[str, Any]:
        connection = spec.connections[0] if spec.connections else None
        kind = connection.type if connection else "postgres"
        host = connection.server_address if connection else "localhost"
        port = connection.server_port if connection else 0
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
        ds: dict[str, Any] = {
            "__typename": "PublishedDatasource",
            "id": _id("published", spec.id),
            "luid": spec.id,
            "name": spec.name,
            "projectName": spec.project,
            "vizportalUrlId": spec.content_url,
            "hasExtracts": True,
            "owner": self.owner,
            "fields": [],
            "upstreamTables": [],
            "upstreamDatabases": [],
            "downstreamWorkbooks": [],
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
            database = self._database(spec, t.get("database", "analytics"))
            table = self._table(database, t.get("schema", "public"), t["name"], list(t.get("columns", [])))
            self._link_table(ds, table)
            for column in (c for c in table["columns"] if c["name"] in t.get("columns", [])):
                self._column_field(ds, column)
        for c in lineage.get("custom_sql", []):
            database = self._database(spec, c.get("database", "analytics"))
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
        table["downstreamDatasources"].append(ds)

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
        if lineage is None:  # default: the published data sources of its project, two fields per view
            keys = [k for k, ds in published.items() if ds["projectName"] == spec.project]
            sheets = {view: None for view in spec.views or ()}
        else:
            keys = list(lineage.get("datasources", []))
            sheets = dict(lineage.get("sheets") or {})
            missing = [k for k in keys if k not in published]
            unknown_views = set(sheets) - set(spec.views or ())
            if missing or unknown_views:
                raise ValueError(
                    f"workbook {spec.project}/{spec.name}: unknown data sources {missing} or views {sorted(unknown_views)}"
                )
        fields_by_name: dict[str, dict[str, Any]] = {}
        for key in keys:
            source = published[key]
            embedded: dict[str, Any] = {
                "__typename": "EmbeddedDatasource",
                "id": _id("embedded", spec.id, key),
                "name": source["name"],
                "workbook": wb,
                "fields": [],
                "upstreamTables": list(source["upstreamTables"]),
                "upstreamDatabases": list(source["upstreamDatabases"]),
                "upstreamDatasources": [source],
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
                    table["downstreamWorkbooks"].append(wb)
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
                "upstreamDatasources": [f["remoteField"]["datasource"] for f in used],
            }
            for f in used:
                f["sheets"].append(sheet)
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
        query_type.fields["publishedDatasources"].resolve = lambda *_: self.graph.published
        query_type.fields["workbooks"].resolve = lambda *_: self.graph.workbooks
        query_type.fields["databaseTables"].resolve = lambda *_: list(self.graph.tables.values())
        self._lock = threading.Lock()
        self._faults = list(self.config.faults)
        self.queries = 0

    def _connection(self, collection: str) -> Callable[..., dict[str, Any]]:
        def resolve(
            _: Any,
            info: Any,
            first: int | None = None,
            after: str | None = None,
            offset: int | None = None,
            orderBy: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
            items = (
                list(self.graph.tables.values())
                if collection == "tables"
                else getattr(self.graph, collection)
            )
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
        result = graphql_sync(self.schema, query, variable_values=variables)
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
