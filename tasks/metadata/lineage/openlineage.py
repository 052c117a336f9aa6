"""OpenLineage events of the collectors, built with the ``openlineage-python`` models, as JSON-ready dicts.

Dataset names follow OpenLineage's naming conventions (openlineage.io/docs/spec/naming, "Dataset
Naming"), through ``openlineage.client.naming.dataset`` where it has the platform; job namespaces name
the scheduler of the jobs ("Job Naming"). What each event holds: docs/metadata-lineage.md ("OpenLineage").
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import (
    column_lineage_dataset,
    job_type_job,
    schema_dataset,
    sql_job,
    symlinks_dataset,
)
from openlineage.client.naming import dataset as naming
from openlineage.client.serde import Serde

#: The ``producer`` of every event and facet (a URI naming this collector; the spec requires one).
PRODUCER = "urn:analytics-flows:collect-metadata"
#: The columns of the ``openlineage`` extract: one JSON object (an event) per row.
OPENLINEAGE_COLUMNS = ("event",)
#: Where a RunEvent holds its SQL (masked by the collection like any SQL text).
SQL_FACET_PATH = ("job", "facets", "sql")
_RUN_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "analytics-flows:openlineage-run")

DatasetId = tuple[str, str]
"""``(namespace, name)`` of an OpenLineage dataset."""
ColumnInputs = Mapping[str, Sequence[tuple[DatasetId, str, str]]]
"""Target field → its DIRECT inputs ``((namespace, name), source field, subtype)``; subtype ``IDENTITY``,
``TRANSFORMATION`` or ``AGGREGATION``."""
IndirectInputs = Iterable[tuple[DatasetId, str, str, str | None]]
"""INDIRECT inputs ``((namespace, name), source field, subtype, target field)``: subtype ``JOIN``,
``FILTER``, ``GROUP_BY``, ``SORT``, ``WINDOW`` or ``CONDITIONAL``; target None when the input affects the
whole output dataset (ColumnLineageDatasetFacet 1-2-0 ``dataset``), else the one field it affects."""
Symlinks = Mapping[DatasetId, Sequence[DatasetId]]
"""A dataset → the other identities of the same table (SymlinksDatasetFacet ``identifiers``)."""


class Output(NamedTuple):
    """An output dataset of a run: its column lineage (DIRECT inputs per field, INDIRECT inputs) and,
    when known, its schema (field names and types)."""

    dataset: DatasetId
    columns: ColumnInputs
    indirect: IndirectInputs = ()
    schema: Sequence[tuple[str, str | None]] | None = None


# --- dataset names ----------------------------------------------------------------------------------


def athena_dataset(region: str, catalog: str, database: str, table: str) -> DatasetId:
    """An Athena table: ``awsathena://athena.{region}.amazonaws.com``, ``{catalog}.{database}.{table}``."""
    athena = naming.Athena(region_name=region, catalog=catalog, database=database, table=table)
    return athena.get_namespace(), athena.get_name()


def glue_table(region: str, account_id: str, database: str, table: str) -> DatasetId:
    """A table of the AWS Glue Data Catalog: ``arn:aws:glue:{region}:{account id}``,
    ``table/{database}/{table}`` (the naming spec's "AWS Glue" row). ``ValueError`` on an empty part."""
    glue = naming.AWSGlue(region_name=region, account_id=account_id, database_name=database, table_name=table)
    return glue.get_namespace(), glue.get_name()


def glue_symlinks(
    region: str,
    catalog_accounts: Mapping[str, str],
    tables: Iterable[tuple[str, str, str]],
    dataset_of: Callable[[tuple[str, str, str]], DatasetId],
) -> dict[DatasetId, list[DatasetId]]:
    """Each Athena table of a Glue catalog → its Glue identity (``glue_table``), for the symlinks facet.

    ``catalog_accounts``: lower-case Athena catalog name → the AWS account id of its Glue Data Catalog
    (a table of a catalog not in it — a Lambda or Hive catalog, or an unknown account — gets none).
    ``tables``: ``(catalog, database, table)``; ``dataset_of`` names each as the events do.
    """
    return {
        dataset_of(table): [glue_table(region, catalog_accounts[table[0].lower()], table[1], table[2])]
        for table in tables
        if catalog_accounts.get(table[0].lower())
    }


#: Tableau ``connectionType`` → (namespace scheme, name parts) where no naming helper applies, or a part
#: the helper needs (a port) is unknown: OpenLineage's conventions, formatted here.
_DATABASE_NAMING: dict[str, tuple[str, tuple[str, ...]]] = {
    "postgres": ("postgres", ("database", "schema", "table")),
    "mysql": ("mysql", ("database", "table")),
    "sqlserver": ("mssql", ("database", "schema", "table")),
    "oracle": ("oracle", ("database", "schema", "table")),
    "teradata": ("teradata", ("database", "table")),
    "hive": ("hive", ("database", "table")),
    "presto": ("trino", ("database", "schema", "table")),
}
_Parts = tuple[str, str, str, str, str]  # host, port, database, schema, table
#: Tableau ``connectionType`` → the ``openlineage.client.naming.dataset`` helper of its platform.
_NAMING_HELPERS: dict[str, Callable[[_Parts], naming.DatasetNaming]] = {
    "postgres": lambda p: naming.Postgres(host=p[0], port=p[1], database=p[2], schema=p[3], table=p[4]),
    "mysql": lambda p: naming.MySQL(host=p[0], port=p[1], database=p[2], table=p[4]),
    "oracle": lambda p: naming.Oracle(host=p[0], port=p[1], service_name=p[2], schema=p[3], table=p[4]),
    "teradata": lambda p: naming.Teradata(host=p[0], port=p[1], database=p[2], table=p[4]),
    "hive": lambda p: naming.Hive(host=p[0], port=p[1], database=p[2], table=p[4]),
    "presto": lambda p: naming.Trino(host=p[0], port=p[1], catalog=p[2], schema=p[3], table=p[4]),
    "bigquery": lambda p: naming.BigQuery(project_id=p[2], dataset_name=p[3], table_name=p[4]),
    "googlebigquery": lambda p: naming.BigQuery(project_id=p[2], dataset_name=p[3], table_name=p[4]),
}
#: A Redshift endpoint: ``{cluster}.{id}.{region}.redshift.amazonaws.com`` (provisioned) or
#: ``{workgroup}.{account}.{region}.redshift-serverless.amazonaws.com`` (Serverless); ``.com.cn`` in China.
_REDSHIFT_HOST = re.compile(
    r"(?P<cluster>[^.]+)\.[^.]+\.(?P<region>[a-z0-9-]+)\.redshift(?:-serverless)?\.amazonaws\.com(?:\.cn)?",
    re.IGNORECASE,
)
#: Redshift's default port: the naming spec's "Port (defaults to 5439)".
REDSHIFT_DEFAULT_PORT = 5439
_SNOWFLAKE_DOMAIN = re.compile(r"(?:\.privatelink)?\.snowflakecomputing\.(?:com|cn)$", re.IGNORECASE)


def _helper_name(helper: Callable[[], naming.DatasetNaming]) -> DatasetId | None:
    """The helper's ``(namespace, name)``, or None when it refuses a missing part (its ``ValueError``)."""
    try:
        dataset = helper()
    except ValueError:
        return None
    return dataset.get_namespace(), dataset.get_name()


def redshift_dataset(
    host: str | None, port: int | None, database: str | None, schema: str | None, table: str
) -> DatasetId:
    """A Redshift table: ``redshift://{cluster_identifier}.{region_name}:{port}``, ``{database}.{schema}.{table}``
    (naming spec, "Redshift"; ``openlineage.client.naming.dataset.Redshift``).

    The cluster identifier (a Serverless workgroup's name) and the region are read from the endpoint
    ``host``; the port defaults to 5439. A host that is no Redshift endpoint (an IP address, a DNS alias,
    a VPC endpoint) is kept whole, ``redshift://{host}:{port}``, as OpenLineage's Redshift extractors do.
    """
    port_text = str(port or REDSHIFT_DEFAULT_PORT)
    match = _REDSHIFT_HOST.fullmatch(host or "")
    if match is not None:
        found = _helper_name(
            lambda: naming.Redshift(
                cluster_identifier=match["cluster"].lower(),
                region=match["region"].lower(),
                port=port_text,
                database=database or "",
                schema=schema or "",
                table=table,
            )
        )
        if found is not None:
            return found
        namespace = f"redshift://{match['cluster'].lower()}.{match['region'].lower()}:{port_text}"
    else:
        namespace = f"redshift://{(host or '').lower()}:{port_text}"
    return namespace, ".".join(p for p in (database, schema, table) if p)


def snowflake_dataset(host: str | None, database: str | None, schema: str | None, table: str) -> DatasetId:
    """A Snowflake table: ``snowflake://{organization name}-{account name}``, ``{database}.{schema}.{table}``
    (naming spec, "Snowflake"; ``openlineage.client.naming.dataset.Snowflake``).

    The account identifier is the host without ``[.privatelink].snowflakecomputing.com``, lower case:
    ``{org}-{account}`` (no dot; an organization name has no hyphen) goes through the helper; an account
    locator (``xy12345``, ``xy12345.eu-west-1``, ``xy12345.us-east-2.aws``) is kept as it is, the spec's
    legacy form ``snowflake://{account-locator}(.{cloud_region_id})(.{cloud})``: its datasets do not match
    those named by ``{org}-{account}`` — connect Tableau with the organization's account URL to join them.
    """
    account = _SNOWFLAKE_DOMAIN.sub("", (host or "").lower())
    if "." not in account and "-" in account:
        organization, account_name = account.split("-", 1)
        found = _helper_name(
            lambda: naming.Snowflake(
                organization_name=organization,
                account_name=account_name,
                database=database or "",
                schema=schema or "",
                table=table,
            )
        )
        if found is not None:
            return found
    return f"snowflake://{account}", ".".join(p for p in (database, schema, table) if p)


def database_dataset(
    connection_type: str | None,
    host: str | None,
    port: int | None,
    database: str | None,
    schema: str | None,
    table: str,
) -> DatasetId:
    """A database table a Tableau data source reads, named as OpenLineage names that database's tables.

    Redshift (``redshift_dataset``), Snowflake (``snowflake_dataset``), Athena (``awsathena://{host}``,
    ``{catalog}.{schema}.{table}``: Tableau's database of an Athena connection is the data catalog);
    ``_NAMING_HELPERS``' platforms through openlineage-python's helper (BigQuery ``bigquery``, Postgres
    ``postgres://{host}:{port}``, ...), or, when a part it needs is unknown (a port), ``_DATABASE_NAMING``'s
    ``{scheme}://{host}[:{port}]``; any other connection type ``{connection type}://{host}[:{port}]`` with
    ``{database}.{schema}.{table}`` (not in the spec).
    """
    kind = (connection_type or "unknown").lower()
    if kind == "redshift":
        return redshift_dataset(host, port, database, schema, table)
    if kind == "snowflake":
        return snowflake_dataset(host, database, schema, table)
    if kind == "athena":
        return f"awsathena://{host}", ".".join(p for p in (database, schema, table) if p)
    helper = _NAMING_HELPERS.get(kind)
    if helper is not None:
        parts = (host or "", str(port or ""), database or "", schema or "", table)
        found = _helper_name(lambda: helper(parts))
        if found is not None:
            return found
    if kind in ("bigquery", "googlebigquery"):
        return "bigquery", ".".join(p for p in (database, schema, table) if p)
    scheme, name_parts = _DATABASE_NAMING.get(kind, (kind, ("database", "schema", "table")))
    named = {"database": database, "schema": schema, "table": table}
    address = f"{host}:{port}" if port else f"{host}"
    return f"{scheme}://{address}", ".".join(p for p in (named[k] for k in name_parts) if p)


def tableau_namespace(server_url: str) -> str:
    """``tableau://{host}`` of a Tableau server (OpenLineage's conventions have no Tableau entry)."""
    return f"tableau://{urlsplit(server_url).netloc}"


def run_id(key: str) -> str:
    """A deterministic run id (a UUID): the same query execution always gets the same one."""
    return str(uuid.uuid5(_RUN_NAMESPACE, key))


# --- facets -----------------------------------------------------------------------------------------


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _schema_facet(columns: Iterable[tuple[str, str | None]]) -> schema_dataset.SchemaDatasetFacet:
    return schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in columns],
        producer=PRODUCER,
    )


def _symlinks_facet(identities: Sequence[DatasetId]) -> symlinks_dataset.SymlinksDatasetFacet:
    return symlinks_dataset.SymlinksDatasetFacet(
        identifiers=[
            symlinks_dataset.Identifier(namespace=ns, name=name, type="TABLE") for ns, name in identities
        ],
        producer=PRODUCER,
    )


_InputKey = tuple[str, str, str]  # namespace, name, field


def _input_fields(
    transformations: Mapping[_InputKey, set[tuple[str, str]]],
) -> list[column_lineage_dataset.InputField]:
    return [
        column_lineage_dataset.InputField(
            namespace=namespace,
            name=name,
            field=column,
            transformations=[
                column_lineage_dataset.Transformation(type=kind, subtype=subtype)
                for kind, subtype in sorted(transformations[(namespace, name, column)])
            ],
        )
        for namespace, name, column in sorted(transformations)
    ]


def _column_lineage_facet(
    columns: ColumnInputs, indirect: IndirectInputs = ()
) -> column_lineage_dataset.ColumnLineageDatasetFacet:
    """ColumnLineageDatasetFacet 1-2-0: per field, its DIRECT inputs and the INDIRECT inputs that affect
    that field alone (a CASE condition); in ``dataset``, the INDIRECT inputs that affect the whole dataset
    (joins, filters, grouping, sorting, windows). An input field that is both gets both transformations."""
    per_field: dict[str, dict[_InputKey, set[tuple[str, str]]]] = {}
    for target, inputs in columns.items():
        for (namespace, name), column, subtype in inputs:
            per_field.setdefault(target, {}).setdefault((namespace, name, column), set()).add(
                ("DIRECT", subtype)
            )
    whole: dict[_InputKey, set[tuple[str, str]]] = {}
    for (namespace, name), column, subtype, target in indirect:
        into = whole if target is None else per_field.setdefault(target, {})
        into.setdefault((namespace, name, column), set()).add(("INDIRECT", subtype))
    return column_lineage_dataset.ColumnLineageDatasetFacet(
        fields={
            target: column_lineage_dataset.Fields(inputFields=_input_fields(inputs))
            for target, inputs in sorted(per_field.items())
        },
        dataset=_input_fields(whole),
        producer=PRODUCER,
    )


# --- events -----------------------------------------------------------------------------------------


def dataset_event(
    dataset: DatasetId,
    at: dt.datetime,
    schema: Iterable[tuple[str, str | None]] | None = None,
    columns: ColumnInputs | None = None,
    indirect: IndirectInputs = (),
    symlinks: Sequence[DatasetId] = (),
) -> dict[str, Any]:
    """A DatasetEvent: ``dataset``'s schema facet (column names and types), for a derived dataset (a
    view, a Tableau data source or sheet) its column-lineage facet, and its other identities (the
    symlinks facet: an Athena table's Glue table)."""
    facets: dict[str, Any] = {}
    if schema is not None:
        facets["schema"] = _schema_facet(schema)
    if columns is not None:
        facets["columnLineage"] = _column_lineage_facet(columns, indirect)
    if symlinks:
        facets["symlinks"] = _symlinks_facet(symlinks)
    event = DatasetEvent(
        eventTime=_time(at),
        producer=PRODUCER,
        dataset=StaticDataset(namespace=dataset[0], name=dataset[1], facets=facets),
    )
    return Serde.to_dict(event)


def run_events(
    *,
    job_namespace: str,
    job_name: str,
    run_key: str,
    started: dt.datetime,
    completed: dt.datetime,
    job_facets: Mapping[str, Any],
    inputs: Iterable[DatasetId],
    outputs: Iterable[Output],
    symlinks: Symlinks | None = None,
    start_job_facets: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """START and COMPLETE RunEvents of one run ("It is required to issue 1 START event and 1 of [COMPLETE,
    ABORT, FAIL] event per run", OpenLineage.json ``RunEvent.eventType``), with a deterministic run id
    (``run_id(run_key)``).

    START carries the job and ``start_job_facets`` (default ``job_facets``); COMPLETE the job with
    ``job_facets``, the inputs (sorted, once each) and the outputs, each with its ``columnLineage``
    facet (and ``schema`` when given); every dataset in ``symlinks`` also carries its symlinks facet.
    ``job_namespace`` names the scheduler of the job (naming spec, "Job Naming"), never a dataset's.
    """
    links = symlinks or {}
    run = Run(runId=run_id(run_key))

    def facets(dataset: DatasetId) -> dict[str, Any]:
        return {"symlinks": _symlinks_facet(links[dataset])} if links.get(dataset) else {}

    start = RunEvent(
        eventType=RunState.START,
        eventTime=_time(started),
        producer=PRODUCER,
        run=run,
        job=Job(namespace=job_namespace, name=job_name, facets=dict(start_job_facets or job_facets)),
    )
    written = []
    for output in outputs:
        output_facets: dict[str, Any] = {
            **facets(output.dataset),
            "columnLineage": _column_lineage_facet(output.columns, output.indirect),
        }
        if output.schema is not None:
            output_facets["schema"] = _schema_facet(output.schema)
        written.append(
            OutputDataset(namespace=output.dataset[0], name=output.dataset[1], facets=output_facets)
        )
    complete = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=_time(completed),
        producer=PRODUCER,
        run=run,
        job=Job(namespace=job_namespace, name=job_name, facets=dict(job_facets)),
        inputs=[
            InputDataset(namespace=ns, name=name, facets=facets((ns, name)))
            for ns, name in sorted(set(inputs))
        ],
        outputs=written,
    )
    return [Serde.to_dict(start), Serde.to_dict(complete)]


def query_run_events(
    *,
    job_namespace: str,
    job_name: str,
    run_key: str,
    submitted: dt.datetime,
    completed: dt.datetime,
    sql: str,
    dialect: str,
    inputs: Iterable[DatasetId],
    output: DatasetId | None,
    columns: ColumnInputs,
    indirect: IndirectInputs = (),
    symlinks: Symlinks | None = None,
) -> list[dict[str, Any]]:
    """``run_events`` of one query execution (``jobType`` QUERY of integration ATHENA): START at its
    submission, COMPLETE at its completion with the inputs, the output with its column lineage (DIRECT
    ``columns``, ``indirect`` inputs), and the SQL (SQLJobFacet, masked later)."""
    job_type = job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="ATHENA", jobType="QUERY", producer=PRODUCER
    )
    return run_events(
        job_namespace=job_namespace,
        job_name=job_name,
        run_key=run_key,
        started=submitted,
        completed=completed,
        start_job_facets={"jobType": job_type},
        job_facets={
            "jobType": job_type,
            "sql": sql_job.SQLJobFacet(query=sql, dialect=dialect, producer=PRODUCER),
        },
        inputs=inputs,
        outputs=[Output(output, columns, indirect)] if output is not None else [],
        symlinks=symlinks,
    )


def tableau_run_events(
    *,
    job_namespace: str,
    job_name: str,
    job_type: str,
    run_key: str,
    at: dt.datetime,
    inputs: Iterable[DatasetId],
    outputs: Iterable[Output],
) -> list[dict[str, Any]]:
    """``run_events`` of a Tableau content (``jobType`` ``job_type`` — ``DATASOURCE`` or ``WORKBOOK`` — of
    integration TABLEAU), both at ``at``: what the Metadata API says the content reads and derives, for
    consumers that take run events only."""
    job_type_facet = job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="TABLEAU", jobType=job_type, producer=PRODUCER
    )
    return run_events(
        job_namespace=job_namespace,
        job_name=job_name,
        run_key=run_key,
        started=at,
        completed=at,
        job_facets={"jobType": job_type_facet},
        inputs=inputs,
        outputs=outputs,
    )
