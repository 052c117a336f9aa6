"""OpenLineage events of the collectors, built with the ``openlineage-python`` models, as JSON-ready dicts.

Dataset names follow OpenLineage's naming conventions (openlineage.io/docs/spec/naming, "Dataset
Naming"); what each event holds: docs/metadata-lineage.md ("OpenLineage").
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
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
from openlineage.client.facet_v2 import column_lineage_dataset, job_type_job, schema_dataset, sql_job
from openlineage.client.naming.dataset import Athena
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
"""Target column → its inputs ``((namespace, name), source column, transformation subtype)``."""


def athena_dataset(region: str, catalog: str, database: str, table: str) -> DatasetId:
    """An Athena table: ``awsathena://athena.{region}.amazonaws.com``, ``{catalog}.{database}.{table}``."""
    naming = Athena(region_name=region, catalog=catalog, database=database, table=table)
    return naming.get_namespace(), naming.get_name()


#: Tableau ``connectionType`` → (namespace scheme, name parts) per OpenLineage's naming conventions.
_DATABASE_NAMING: dict[str, tuple[str, tuple[str, ...]]] = {
    "postgres": ("postgres", ("database", "schema", "table")),
    "redshift": ("redshift", ("database", "schema", "table")),
    "mysql": ("mysql", ("database", "table")),
    "sqlserver": ("mssql", ("database", "schema", "table")),
    "oracle": ("oracle", ("database", "schema", "table")),
    "teradata": ("teradata", ("database", "table")),
    "hive": ("hive", ("database", "table")),
    "presto": ("trino", ("database", "schema", "table")),
}


def database_dataset(
    connection_type: str | None,
    host: str | None,
    port: int | None,
    database: str | None,
    schema: str | None,
    table: str,
) -> DatasetId:
    """A database table a Tableau data source reads, named as OpenLineage names that database's tables.

    Athena (``awsathena://{host}``, ``{catalog}.{schema}.{table}``: Tableau's database of an Athena
    connection is the data catalog), Snowflake (``snowflake://{account}``), BigQuery (``bigquery``),
    and ``_DATABASE_NAMING``'s (``{scheme}://{host}:{port}``); any other connection type
    ``{connection type}://{host}[:{port}]`` with ``{database}.{schema}.{table}`` (not in the spec).
    """
    kind = (connection_type or "unknown").lower()
    parts = {"database": database, "schema": schema, "table": table}
    if kind == "athena":
        return f"awsathena://{host}", ".".join(p for p in (database, schema, table) if p)
    if kind == "snowflake":
        account = (host or "").removesuffix(".snowflakecomputing.com")
        return f"snowflake://{account}", ".".join(p for p in (database, schema, table) if p)
    if kind in ("bigquery", "googlebigquery"):
        return "bigquery", ".".join(p for p in (database, schema, table) if p)
    scheme, name_parts = _DATABASE_NAMING.get(kind, (kind, ("database", "schema", "table")))
    address = f"{host}:{port}" if port else f"{host}"
    return f"{scheme}://{address}", ".".join(p for p in (parts[k] for k in name_parts) if p)


def tableau_namespace(server_url: str) -> str:
    """``tableau://{host}`` of a Tableau server (OpenLineage's conventions have no Tableau entry)."""
    return f"tableau://{urlsplit(server_url).netloc}"


def run_id(key: str) -> str:
    """A deterministic run id (a UUID): the same query execution always gets the same one."""
    return str(uuid.uuid5(_RUN_NAMESPACE, key))


def _time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _schema_facet(columns: Iterable[tuple[str, str | None]]) -> schema_dataset.SchemaDatasetFacet:
    return schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in columns],
        producer=PRODUCER,
    )


def _column_lineage_facet(
    columns: ColumnInputs, dataset_inputs: Iterable[DatasetId] = ()
) -> column_lineage_dataset.ColumnLineageDatasetFacet:
    """Direct column dependencies, and the datasets the whole output depends on (INDIRECT: joins, filters)."""
    fields = {
        target: column_lineage_dataset.Fields(
            inputFields=[
                column_lineage_dataset.InputField(
                    namespace=namespace,
                    name=name,
                    field=column,
                    transformations=[column_lineage_dataset.Transformation(type="DIRECT", subtype=subtype)],
                )
                for (namespace, name), column, subtype in inputs
            ]
        )
        for target, inputs in sorted(columns.items())
    }
    dataset = [
        column_lineage_dataset.InputField(
            namespace=namespace,
            name=name,
            field="",
            transformations=[column_lineage_dataset.Transformation(type="INDIRECT")],
        )
        for namespace, name in sorted(set(dataset_inputs))
    ]
    return column_lineage_dataset.ColumnLineageDatasetFacet(fields=fields, dataset=dataset, producer=PRODUCER)


def dataset_event(
    dataset: DatasetId,
    at: dt.datetime,
    schema: Iterable[tuple[str, str | None]] | None = None,
    columns: ColumnInputs | None = None,
    dataset_inputs: Iterable[DatasetId] = (),
) -> dict[str, Any]:
    """A DatasetEvent: ``dataset``'s schema facet (column names and types) and, for a derived dataset (a
    view, a Tableau data source or sheet), its column-lineage facet."""
    facets: dict[str, Any] = {}
    if schema is not None:
        facets["schema"] = _schema_facet(schema)
    if columns is not None:
        facets["columnLineage"] = _column_lineage_facet(columns, dataset_inputs)
    event = DatasetEvent(
        eventTime=_time(at),
        producer=PRODUCER,
        dataset=StaticDataset(namespace=dataset[0], name=dataset[1], facets=facets),
    )
    return Serde.to_dict(event)


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
) -> list[dict[str, Any]]:
    """START and COMPLETE RunEvents of one query execution ("It is required to issue 1 START event and
    1 of [COMPLETE, ABORT, FAIL] event per run", OpenLineage.json ``RunEvent.eventType``). COMPLETE holds
    the inputs, the output with its column-lineage facet, and the SQL (SQLJobFacet, masked later)."""
    run = Run(runId=run_id(run_key))
    job_type = job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="ATHENA", jobType="QUERY", producer=PRODUCER
    )
    start = RunEvent(
        eventType=RunState.START,
        eventTime=_time(submitted),
        producer=PRODUCER,
        run=run,
        job=Job(namespace=job_namespace, name=job_name, facets={"jobType": job_type}),
    )
    read = sorted(set(inputs))
    outputs = []
    if output is not None:
        outputs.append(
            OutputDataset(
                namespace=output[0],
                name=output[1],
                facets={"columnLineage": _column_lineage_facet(columns, read)},
            )
        )
    complete = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=_time(completed),
        producer=PRODUCER,
        run=run,
        job=Job(
            namespace=job_namespace,
            name=job_name,
            facets={
                "jobType": job_type,
                "sql": sql_job.SQLJobFacet(query=sql, dialect=dialect, producer=PRODUCER),
            },
        ),
        inputs=[InputDataset(namespace=ns, name=name) for ns, name in read],
        outputs=outputs,
    )
    return [Serde.to_dict(start), Serde.to_dict(complete)]
