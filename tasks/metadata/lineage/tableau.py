"""Lineage and usage of a Tableau site from its Metadata API: database tables and custom SQL → published
and embedded data sources → sheets, at table and column (field) level, and their OpenLineage events
(DatasetEvents, and a run per published data source and per workbook).

The files: docs/metadata-extracts.md ("Lineage and usage"); the queries and how they page:
docs/metadata-lineage.md ("Tableau: the Metadata API").
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from openlineage.client.constants import DEFAULT_NAMESPACE_NAME
from sqlglot import exp
from sqlglot.errors import SqlglotError

from tasks.metadata.extracts import Extract
from tasks.metadata.lineage import openlineage as ol
from tasks.metadata.lineage.metadata_api import MetadataApiClient
from tasks.metadata.masking import sqlglot_quiet

_DATABASE = "database { name connectionType ... on DatabaseServer { hostName port } }"
_FIELDS = (
    "fields { __typename id name upstreamColumns { id name table { id } } "
    "... on DatasourceField { remoteField { id } } }"
)
#: Connection field → the fields read of each node (Metadata API type and field names).
QUERIES = {
    "databaseTablesConnection": f"id luid name schema fullName connectionType {_DATABASE} columns {{ id name remoteType }}",
    "customSQLTablesConnection": (
        f"id name query connectionType isUnsupportedCustomSql {_DATABASE} tables {{ id }} columns {{ id name }}"
    ),
    "publishedDatasourcesConnection": f"id luid name projectName owner {{ username }} upstreamTables {{ id }} {_FIELDS}",
    "embeddedDatasourcesConnection": (
        "id name workbook { id luid name projectName owner { username } } upstreamDatasources { id } "
        f"upstreamTables {{ id }} {_FIELDS}"
    ),
    "workbooksConnection": (
        "id luid name projectName owner { username } "
        "sheets { id luid name sheetFieldInstances { id name datasource { id } } }"
    ),
}

ASSET_COLUMNS = (
    "asset_type",
    "asset_id",
    "luid",
    "name",
    "project_name",
    "workbook_name",
    "connection_type",
    "host",
    "port",
    "database_name",
    "schema_name",
    "openlineage_namespace",
    "openlineage_name",
)
TABLE_LINEAGE_COLUMNS = ("upstream_type", "upstream_id", "downstream_type", "downstream_id")
COLUMN_LINEAGE_COLUMNS = (
    "upstream_type",
    "upstream_id",
    "upstream_column",
    "downstream_type",
    "downstream_id",
    "downstream_column",
    "transformation",
)
CUSTOM_SQL_COLUMNS = (
    "custom_sql_id",
    "name",
    "connection_type",
    "query_dialect",
    "query",
    "unsupported_by_tableau",
    "tables_by_tableau",
    "tables_by_sqlglot",
    "sql_status",
    "detail",
)
TABLE_USAGE_COLUMNS = (
    "table_id",
    "database_name",
    "schema_name",
    "table_name",
    "datasource_count",
    "workbook_count",
    "sheet_count",
    "user_count",
    "users",
)
COLUMN_USAGE_COLUMNS = (
    "table_id",
    "database_name",
    "schema_name",
    "table_name",
    "column_name",
    "field_count",
    "workbook_count",
    "sheet_count",
    "user_count",
    "users",
)

#: Tableau ``connectionType`` → sqlglot dialect of its custom SQL (Metadata API, "Connection Types").
SQL_DIALECTS = {
    "athena": "athena",
    "bigquery": "bigquery",
    "googlebigquery": "bigquery",
    "databricks": "databricks",
    "hive": "hive",
    "hadoophive": "hive",
    "mysql": "mysql",
    "mariadb": "mysql",
    "oracle": "oracle",
    "postgres": "postgres",
    "presto": "presto",
    "redshift": "redshift",
    "snowflake": "snowflake",
    "spark": "spark",
    "sqlserver": "tsql",
    "azure_sql_dw": "tsql",
    "teradata": "teradata",
}

Node = tuple[str, str]  # (asset type, id)
ColumnNode = tuple[str, str, str]  # (asset type, id, column or field name)


@dataclass
class TableauLineage:
    """What ``collect`` read and derived: the extracts, the problems (partial reads) and figures."""

    extracts: list[Extract]
    problems: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def _tables_in_sql(query: str, dialect: str | None) -> tuple[list[str], str, str]:
    """The tables sqlglot finds in a custom SQL query: (sorted ``schema.table`` names, status, detail)."""
    with sqlglot_quiet():
        try:
            trees = [t for t in sqlglot.parse(query, read=dialect or None, error_message_context=0) if t]
        except SqlglotError as error:
            return [], "unparsed", f"sqlglot could not parse it ({type(error).__name__})"
    if len(trees) != 1 or isinstance(trees[0], exp.Command):
        return [], "unparsed", "not one statement sqlglot understands"
    ctes = {cte.alias_or_name.lower() for cte in trees[0].find_all(exp.CTE)}
    names = {
        ".".join(p for p in (t.catalog, t.db, t.name) if p)
        for t in trees[0].find_all(exp.Table)
        if t.name and not (not t.db and t.name.lower() in ctes)
    }
    return sorted(names), "resolved", ""


def collect(
    client: MetadataApiClient,
    server_url: str,
    site: str,
    event_time: dt.datetime,
    job_namespace: str | None = None,
) -> TableauLineage:
    """Read the site's lineage through ``client`` and build the lineage, usage and OpenLineage extracts.

    ``job_namespace``: the OpenLineage namespace of the runs' jobs, the scheduler's (the collector passes
    its source's ``openlineage_job_namespace``, else the source's name; docs/metadata-lineage.md,
    "OpenLineage"); None: OpenLineage's ``default``, as its integrations name an unconfigured namespace.
    Raises ``MetadataApiError`` when the API refuses (disabled, access denied). A connection that could
    not be read whole is named in ``problems`` (the run then lands nothing).
    """
    results = {name: client.connection(name, selection) for name, selection in QUERIES.items()}
    problems = [p for r in results.values() for p in r.problems]
    nodes = {name: r.nodes for name, r in results.items()}
    return _build(nodes, problems, server_url, site, event_time, job_namespace or DEFAULT_NAMESPACE_NAME)


def _build(
    nodes: dict[str, list[dict[str, Any]]],
    problems: list[str],
    server_url: str,
    site: str,
    event_time: dt.datetime,
    job_namespace: str = DEFAULT_NAMESPACE_NAME,
) -> TableauLineage:
    graph = _Graph(ol.tableau_namespace(server_url), site, job_namespace)
    graph.add_database_tables(nodes["databaseTablesConnection"])
    graph.add_custom_sql_tables(nodes["customSQLTablesConnection"])
    graph.index_fields("published_datasource", nodes["publishedDatasourcesConnection"])
    graph.index_fields("embedded_datasource", nodes["embeddedDatasourcesConnection"])
    graph.add_published_datasources(nodes["publishedDatasourcesConnection"])
    graph.add_embedded_datasources(nodes["embeddedDatasourcesConnection"])
    graph.add_sheets(nodes["workbooksConnection"])
    return TableauLineage(graph.extracts(event_time), problems, graph.counts())


def _database(node: dict[str, Any]) -> dict[str, Any]:
    return node.get("database") or {}


@dataclass
class _Graph:
    """The site's lineage as ``_build`` assembles it, connection by connection: the assets (rows of
    ``lineage_assets``) and their OpenLineage datasets, the table- and column-level edges, the owners,
    and the lookups that link a field or column id to its owner."""

    namespace: str
    site: str
    job_namespace: str = DEFAULT_NAMESPACE_NAME
    assets: dict[Node, tuple[Any, ...]] = field(default_factory=dict)
    datasets: dict[Node, ol.DatasetId] = field(default_factory=dict)
    table_edges: set[tuple[Node, Node]] = field(default_factory=set)
    column_edges: set[tuple[ColumnNode, ColumnNode, str]] = field(default_factory=set)
    owners: dict[Node, str] = field(default_factory=dict)
    field_owner: dict[str, ColumnNode] = field(
        default_factory=dict
    )  # field id → (type, data source id, name)
    column_owner: dict[str, ColumnNode] = field(default_factory=dict)  # column id → (type, table id, name)
    table_types: dict[str, str] = field(default_factory=dict)
    custom_rows: list[tuple[Any, ...]] = field(default_factory=list)
    sql_status: Counter[str] = field(default_factory=Counter)
    # OpenLineage job name → (job type, the data sources it derives): a published data source, a workbook
    jobs: dict[str, tuple[str, list[Node]]] = field(default_factory=dict)

    def add_database_tables(self, tables: list[dict[str, Any]]) -> None:
        for table in tables:
            db = _database(table)
            dataset = ol.database_dataset(
                db.get("connectionType") or table.get("connectionType"),
                db.get("hostName"),
                db.get("port"),
                db.get("name"),
                table.get("schema"),
                table["name"],
            )
            key = ("database_table", table["id"])
            self.table_types[table["id"]] = "database_table"
            self.datasets[key] = dataset
            self.assets[key] = (
                "database_table", table["id"], table.get("luid"), table["name"], None, None,
                db.get("connectionType") or table.get("connectionType"), db.get("hostName"), db.get("port"),
                db.get("name"), table.get("schema"), *dataset,
            )  # fmt: skip
            for column in table.get("columns") or []:
                self.column_owner[column["id"]] = ("database_table", table["id"], column["name"])

    def add_custom_sql_tables(self, customs: list[dict[str, Any]]) -> None:
        """Each custom SQL table, its row of ``custom_sql`` (the tables Tableau and sqlglot find in its
        query) and its edges from the database tables Tableau names; after the database tables."""
        for custom in customs:
            db = _database(custom)
            kind = db.get("connectionType") or custom.get("connectionType")
            key = ("custom_sql_table", custom["id"])
            self.table_types[custom["id"]] = "custom_sql_table"
            self.assets[key] = (
                "custom_sql_table", custom["id"], None, custom["name"], None, None, kind, db.get("hostName"),
                db.get("port"), db.get("name"), None, None, None,
            )  # fmt: skip
            dialect = SQL_DIALECTS.get((kind or "").lower())
            found, status, detail = _tables_in_sql(custom.get("query") or "", dialect)
            self.sql_status[status] += 1
            by_tableau = []
            for upstream in custom.get("tables") or []:
                self.table_edges.add((("database_table", upstream["id"]), key))
                if ("database_table", upstream["id"]) in self.assets:
                    by_tableau.append(_dotted_table(self.assets[("database_table", upstream["id"])]))
            self.custom_rows.append(
                (
                    custom["id"], custom["name"], kind, dialect, custom.get("query"),
                    bool(custom.get("isUnsupportedCustomSql")), sorted(by_tableau), found, status, detail or None,
                )
            )  # fmt: skip
            for column in custom.get("columns") or []:
                self.column_owner[column["id"]] = ("custom_sql_table", custom["id"], column["name"])

    def index_fields(self, ds_type: str, sources: list[dict[str, Any]]) -> None:
        """Know each field of the data sources by its id: before any field is linked (an embedded data
        source's field may stand for a published one's)."""
        for ds in sources:
            for f in ds.get("fields") or []:
                self.field_owner[f["id"]] = (ds_type, ds["id"], f["name"])

    def add_published_datasources(self, sources: list[dict[str, Any]]) -> None:
        for ds in sources:
            key = ("published_datasource", ds["id"])
            self.owners[key] = (ds.get("owner") or {}).get("username")
            self.datasets[key] = (
                self.namespace,
                f"{self.site}/datasources/{ds.get('projectName')}/{ds['name']}",
            )
            self.assets[key] = ("published_datasource", ds["id"], ds.get("luid"), ds["name"], ds.get("projectName"),
                                None, None, None, None, None, None, *self.datasets[key])  # fmt: skip
            self.jobs[self.datasets[key][1]] = ("DATASOURCE", [key])
            for upstream in ds.get("upstreamTables") or []:
                self.table_edges.add(
                    ((self.table_types.get(upstream["id"], "database_table"), upstream["id"]), key)
                )
            self.link_fields("published_datasource", ds)

    def add_embedded_datasources(self, sources: list[dict[str, Any]]) -> None:
        """Each embedded data source, fed by the published data sources it names, else by its tables."""
        for ds in sources:
            key = ("embedded_datasource", ds["id"])
            workbook = ds.get("workbook") or {}
            self.owners[key] = (workbook.get("owner") or {}).get("username")
            self.datasets[key] = (
                self.namespace,
                f"{self.site}/workbooks/{workbook.get('projectName')}/{workbook.get('name')}/datasources/{ds['name']}",
            )
            self.assets[key] = ("embedded_datasource", ds["id"], None, ds["name"], workbook.get("projectName"),
                                workbook.get("name"), None, None, None, None, None, *self.datasets[key])  # fmt: skip
            job = f"{self.site}/workbooks/{workbook.get('projectName')}/{workbook.get('name')}"
            self.jobs.setdefault(job, ("WORKBOOK", []))[1].append(key)
            for upstream in ds.get("upstreamDatasources") or []:
                self.table_edges.add((("published_datasource", upstream["id"]), key))
            if not ds.get("upstreamDatasources"):
                for upstream in ds.get("upstreamTables") or []:
                    self.table_edges.add(
                        ((self.table_types.get(upstream["id"], "database_table"), upstream["id"]), key)
                    )
            self.link_fields("embedded_datasource", ds)

    def link_fields(self, ds_type: str, ds: dict[str, Any]) -> None:
        """The column edges into a data source's fields: from the remote field it stands for, else from
        the upstream columns it reads (IDENTITY for a plain column field, TRANSFORMATION for a calculation)."""
        for f in ds.get("fields") or []:
            target = (ds_type, ds["id"], f["name"])
            remote = (f.get("remoteField") or {}).get("id")
            if remote and remote in self.field_owner:
                self.column_edges.add((self.field_owner[remote], target, "IDENTITY"))
                continue
            how = "IDENTITY" if f.get("__typename") == "ColumnField" else "TRANSFORMATION"
            for column in f.get("upstreamColumns") or []:
                owner = self.column_owner.get(column["id"])
                if owner is None:
                    table_id = (column.get("table") or {}).get("id")
                    owner = (self.table_types.get(table_id, "database_table"), table_id, column["name"])
                self.column_edges.add((owner, target, how))

    def add_sheets(self, workbooks: list[dict[str, Any]]) -> None:
        """Each workbook's sheets and the data source fields each sheet uses."""
        for wb in workbooks:
            for sheet in wb.get("sheets") or []:
                key = ("sheet", sheet["id"])
                self.owners[key] = (wb.get("owner") or {}).get("username")
                self.datasets[key] = (
                    self.namespace,
                    f"{self.site}/workbooks/{wb.get('projectName')}/{wb['name']}/sheets/{sheet['name']}",
                )
                self.assets[key] = ("sheet", sheet["id"], sheet.get("luid"), sheet["name"], wb.get("projectName"),
                                    wb["name"], None, None, None, None, None, *self.datasets[key])  # fmt: skip
                for f in sheet.get("sheetFieldInstances") or []:
                    source = self.field_owner.get(f["id"])
                    if source is None:
                        ds_id = (f.get("datasource") or {}).get("id")
                        source = ("embedded_datasource", ds_id, f["name"])
                    self.table_edges.add((source[:2], key))
                    self.column_edges.add((source, (*key, f["name"]), "IDENTITY"))

    def counts(self) -> dict[str, int]:
        covered = {c for edge in self.column_edges for c in edge[:2]}
        return {
            "table_edges": len(self.table_edges),
            "column_edges": len(self.column_edges),
            "columns_covered": len(covered),
            "custom_sql:resolved": self.sql_status["resolved"],
            "custom_sql:unparsed": self.sql_status["unparsed"],
        }

    def extracts(self, event_time: dt.datetime) -> list[Extract]:
        """The lineage, usage and OpenLineage extracts of the graph."""
        usage_tables, usage_columns = _usage(self.assets, self.table_edges, self.column_edges, self.owners)
        events = _events(self, event_time)
        return [
            Extract(
                "lineage_assets",
                ASSET_COLUMNS,
                sorted(self.assets.values(), key=lambda r: (r[0], r[3] or "", r[1])),
            ),
            Extract("table_lineage", TABLE_LINEAGE_COLUMNS, sorted((*u, *d) for u, d in self.table_edges)),
            Extract(
                "column_lineage",
                COLUMN_LINEAGE_COLUMNS,
                sorted((*u, *d, how) for u, d, how in self.column_edges),
            ),
            Extract(
                "custom_sql",
                CUSTOM_SQL_COLUMNS,
                sorted(self.custom_rows),
                sql_columns=("query",),
                sql_dialect_column="query_dialect",
            ),
            Extract("table_usage", TABLE_USAGE_COLUMNS, usage_tables),
            Extract("column_usage", COLUMN_USAGE_COLUMNS, usage_columns),
            Extract("openlineage", ol.OPENLINEAGE_COLUMNS, [(e,) for e in events], format="jsonl"),
        ]


def _dotted_table(asset: tuple[Any, ...]) -> str:
    return ".".join(p for p in (asset[9], asset[10], asset[3]) if p)


def _downstream(start: Any, edges: dict[Any, set[Any]]) -> set[Any]:
    seen, queue = set(), deque([start])
    while queue:
        for nxt in edges.get(queue.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def _usage(
    assets: dict[Node, tuple[Any, ...]],
    table_edges: set[tuple[Node, Node]],
    column_edges: set[tuple[ColumnNode, ColumnNode, str]],
    owners: dict[Node, str],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Per database table and column: the data sources, workbooks and sheets downstream, and their
    owners (the users who use it)."""
    down: dict[Any, set[Any]] = {}
    for up, dn in table_edges:
        down.setdefault(up, set()).add(dn)
    column_down: dict[Any, set[Any]] = {}
    for up, dn, _ in column_edges:
        column_down.setdefault(up, set()).add(dn)

    def summary(reached: Iterable[Node]) -> tuple[int, int, int, int, list[str]]:
        reached = set(reached)
        sources = [n for n in reached if n[0].endswith("_datasource")]
        sheets = [n for n in reached if n[0] == "sheet"]
        workbooks = {
            assets[n][5] and (assets[n][4], assets[n][5])
            for n in reached
            if n in assets and n[0] in ("sheet", "embedded_datasource")
        }
        users = sorted({owners[n] for n in reached if owners.get(n)})
        return len(sources), len({w for w in workbooks if w}), len(sheets), len(users), users

    tables, columns = [], []
    for key, asset in sorted(assets.items(), key=lambda i: (i[1][9] or "", i[1][10] or "", i[1][3])):
        if key[0] != "database_table":
            continue
        ds_count, wb_count, sheet_count, user_count, users = summary(_downstream(key, down))
        tables.append(
            (key[1], asset[9], asset[10], asset[3], ds_count, wb_count, sheet_count, user_count, users)
        )
    for column in sorted({c for c in column_down if c[0] == "database_table"}):
        asset = assets.get(column[:2])
        if asset is None:
            continue
        reached = _downstream(column, column_down)
        fields = [c for c in reached if c[0].endswith("_datasource")]
        _, wb_count, sheet_count, user_count, users = summary({c[:2] for c in reached})
        columns.append(
            (
                column[1],
                asset[9],
                asset[10],
                asset[3],
                column[2],
                len(fields),
                wb_count,
                sheet_count,
                user_count,
                users,
            )
        )
    return tables, columns


def _events(graph: _Graph, at: dt.datetime) -> list[dict[str, Any]]:
    """A DatasetEvent per data source and sheet: its fields (schema) and what each derives from (column
    lineage); then a run (START, COMPLETE at ``at``) per published data source and per workbook: its
    inputs (the tables, custom SQL's tables or published data sources it reads) and its data sources."""
    datasets = graph.datasets
    inputs: dict[Node, dict[str, list[tuple[ol.DatasetId, str, str]]]] = {}
    for up, dn, how in graph.column_edges:
        upstream = datasets.get(up[:2])
        if upstream is not None:
            inputs.setdefault(dn[:2], {}).setdefault(dn[2], []).append((upstream, up[2], how))
    # a custom SQL table is no dataset of its own: what it reads stands in for it
    through_custom: dict[Node, set[ol.DatasetId]] = {}
    for up, dn in graph.table_edges:
        if dn[0] == "custom_sql_table" and up in datasets:
            through_custom.setdefault(dn, set()).add(datasets[up])
    dataset_inputs: dict[Node, set[ol.DatasetId]] = {}
    for up, dn in graph.table_edges:
        if up in datasets:
            dataset_inputs.setdefault(dn, set()).add(datasets[up])
        dataset_inputs.setdefault(dn, set()).update(through_custom.get(up, ()))
    fields_of: dict[Node, set[str]] = {}
    for _, dn, _ in graph.column_edges:
        fields_of.setdefault(dn[:2], set()).add(dn[2])

    def columns(key: Node) -> dict[str, list[tuple[ol.DatasetId, str, str]]]:
        return {k: sorted(v) for k, v in inputs.get(key, {}).items()}

    def schema(key: Node) -> list[tuple[str, str | None]]:
        return [(f, None) for f in sorted(fields_of.get(key, ()))]

    events = [
        ol.dataset_event(datasets[key], at, schema=schema(key), columns=columns(key))
        for key in sorted(k for k in datasets if k[0] != "database_table")
    ]
    for job, (job_type, derived) in sorted(graph.jobs.items()):
        events += ol.tableau_run_events(
            job_namespace=graph.job_namespace,
            job_name=job,
            job_type=job_type,
            run_key=f"tableau:{graph.namespace}:{job}:{at.isoformat()}",
            at=at,
            inputs=[d for key in derived for d in dataset_inputs.get(key, ())],
            outputs=[ol.Output(datasets[key], columns(key), schema=schema(key)) for key in sorted(derived)],
        )
    return events
