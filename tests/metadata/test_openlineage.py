"""OpenLineage events and lineage files of both collectors: every event validates against the OpenLineage
JSON schema and the schema of each facet it holds (tests/fixtures/openlineage/, sources in its README);
namespaces follow OpenLineage's naming conventions (datasets: the data source's; jobs: the scheduler's);
column lineage names its INDIRECT inputs; SQL in lineage output is masked, failing closed."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import tableauserverclient as TSC
from referencing import Registry, Resource

from devstack.tableau import TableauStandIn, load_config
from tasks.metadata.collection import masked
from tasks.metadata.extract_files import write_extracts
from tasks.metadata.hwm import Window
from tasks.metadata.lineage import openlineage as ol
from tasks.metadata.lineage import tableau
from tasks.metadata.lineage.athena import AthenaLineage
from tasks.metadata.lineage.metadata_api import MetadataApiClient
from tasks.metadata.masking import REDACTED

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openlineage"
END = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
WINDOW = Window(END - dt.timedelta(days=1), END)
NAMESPACE = "awsathena://athena.eu-west-1.amazonaws.com"
JOB_NAMESPACE = "prefect-prod"  # a configured job namespace: the scheduler's
ACCOUNT = "123456789012"
GLUE = f"arn:aws:glue:eu-west-1:{ACCOUNT}"


@pytest.fixture(scope="module")
def registry() -> Registry:
    resources = [Resource.from_contents(json.loads(p.read_text())) for p in sorted(FIXTURES.glob("*.json"))]
    return Registry().with_resources((r.id(), r) for r in resources)


def validate(event: dict[str, Any], registry: Registry) -> None:
    """``event`` against OpenLineage.json, and each facet against the schema its ``_schemaURL`` names
    (which must be one of the fixtures: no facet goes unchecked)."""
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    core = jsonschema.Draft202012Validator(
        {"$ref": "https://openlineage.io/spec/2-0-2/OpenLineage.json"},
        registry=registry,
        format_checker=checker,
    )
    core.validate(event)
    facets = [
        *((event.get("job") or {}).get("facets") or {}).values(),
        *((event.get("dataset") or {}).get("facets") or {}).values(),
        *(
            f
            for d in event.get("inputs", []) + event.get("outputs", [])
            for f in (d.get("facets") or {}).values()
        ),
    ]
    for facet in facets:
        url = facet["_schemaURL"]
        assert registry.contents(url.split("#")[0]), url  # a fixture, not a fetch
        jsonschema.Draft202012Validator({"$ref": url}, registry=registry, format_checker=checker).validate(
            facet
        )


# --- Athena ------------------------------------------------------------------------------------------

SHOP = {
    "orders": ["order_id", "customer_id", "amount", "region"],
    "customers": ["customer_id", "name", "email"],
}
QUERIES = [
    ("q-1", "CREATE TABLE shop.eu_orders AS SELECT o.order_id, c.name FROM orders o JOIN customers c "
     "ON o.customer_id = c.customer_id WHERE o.region = 'EU-secret-42'"),
    ("q-2", "SELECT SUM(amount) FROM orders WHERE region = 'DE'"),
    # Athena reads "alice@example.com" as a column name: lineage resolves the rest, masking redacts it all.
    ("q-3", 'INSERT INTO shop.customers SELECT customer_id, name, email FROM customers WHERE email = "alice@example.com"'),
    ("q-4", "SELECT * FROM WHERE 'alice@example.com'"),
]  # fmt: skip


def athena_rows() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    columns = [
        ("AwsDataCatalog", "shop", table, column, i + 1, "string", False, None)
        for table, names in SHOP.items()
        for i, column in enumerate(names)
    ] + [("AwsDataCatalog", "shop", "eu_view", "order_id", 1, "string", False, None)]
    views = [
        ("AwsDataCatalog", "shop", "eu_view", "athena", "SELECT order_id FROM orders WHERE region = 'EU'")
    ]
    history = [
        (qid, "primary", "athena_workgroup_primary", "SUCCEEDED", "DML", None, "AwsDataCatalog", "shop", sql,
         END - dt.timedelta(hours=2), END - dt.timedelta(hours=1), 10, 5, 6, 1, None, None)
        for qid, sql in QUERIES
    ]  # fmt: skip
    return columns, views, history


def athena_lineage(
    job_namespace: str | None = None, glue_catalog_ids: dict[str, str] | None = None
) -> AthenaLineage:
    """An ``AthenaLineage`` of source ``athena-test`` with the OpenLineage settings the extractor gives it:
    the configured job namespace, the account of each Glue catalog (lower-case catalog name → id)."""
    return AthenaLineage(
        "athena-test", "eu-west-1", END, job_namespace=job_namespace, glue_catalog_ids=glue_catalog_ids
    )


def feed(lineage: AthenaLineage, columns: list[Any], views: list[Any], history: list[Any]) -> None:
    """Stream the rows through ``lineage``'s feeds in the extractor's order: columns, views, history."""
    for rows_of, rows in (
        (lineage.columns, columns),
        (lineage.views, views),
        (lineage.query_history, history),
    ):
        for _ in rows_of(rows):
            pass


def athena_events(lineage: AthenaLineage, queries: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The OpenLineage events of ``queries`` (id, SQL) run against ``athena_rows``' catalog, unmasked."""
    columns, views, history = athena_rows()
    history = [(qid, *history[0][1:8], sql, *history[0][9:]) for qid, sql in queries]
    with lineage:
        feed(lineage, columns, views, history)
        (extract,) = [e for e in lineage.extracts() if e.entity == "openlineage"]
        return [row[0] for row in extract.rows]


@pytest.fixture(scope="module")
def athena_files(tmp_path_factory) -> dict[str, Path]:
    columns, views, history = athena_rows()
    out = tmp_path_factory.mktemp("athena")
    with athena_lineage(JOB_NAMESPACE, {"awsdatacatalog": ACCOUNT}) as lineage:
        feed(lineage, columns, views, history)
        files = write_extracts(
            [masked(e) for e in lineage.extracts()], out, "athena-test", WINDOW, compress=True
        )
    return {f.entity: f.path for f in files}


def test_athena_lineage_drops_its_spooled_events_when_its_with_block_ends():
    columns, views, history = athena_rows()
    with (
        pytest.raises(RuntimeError, match="writing failed"),
        AthenaLineage("athena-test", "eu-west-1", END) as lineage,
    ):
        feed(lineage, columns, views, history)
        spool = lineage._spool
        assert spool is not None
        assert spool.tell() > 0  # the CTAS's and the INSERT's RunEvents
        raise RuntimeError("writing failed")  # a run that fails before its extracts are written
    assert spool.closed


def test_athena_lineage_outside_a_with_block_says_so():
    columns, _, history = athena_rows()
    lineage = AthenaLineage("athena-test", "eu-west-1", END)
    for _ in lineage.columns(columns):
        pass
    with pytest.raises(RuntimeError, match="'athena-test' is used outside a `with` block"):
        for _ in lineage.query_history(history):
            pass


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def read_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as text:
        return list(csv.DictReader(text))


def test_athena_events_validate_against_the_openlineage_schema(athena_files, registry):
    events = read_jsonl(athena_files["openlineage"])
    assert (
        athena_files["openlineage"].name == "athena-test_openlineage_20261121T000000_20261122T000000.jsonl.gz"
    )
    for event in events:
        validate(event, registry)
    kinds = sorted((e.get("eventType") or "DatasetEvent") for e in events)
    # q-1, q-2, q-3 each START and COMPLETE; the view, and the tables in its or a query's edges
    assert kinds.count("START") == kinds.count("COMPLETE") == 3
    datasets = {e["dataset"]["name"] for e in events if "dataset" in e}
    # eu_orders is in no catalog of this test (a CTAS creates it in Glue): no schema to send
    assert datasets == {f"AwsDataCatalog.shop.{t}" for t in ("eu_view", "orders", "customers")}
    assert {e["dataset"]["namespace"] for e in events if "dataset" in e} == {NAMESPACE}
    # jobs are in the scheduler's namespace, never in a dataset's
    assert {e["job"]["namespace"] for e in events if "job" in e} == {JOB_NAMESPACE}


def test_athena_ctas_run_event_carries_inputs_output_and_column_lineage(athena_files):
    events = read_jsonl(athena_files["openlineage"])
    (complete,) = [
        e
        for e in events
        if e.get("eventType") == "COMPLETE"
        and e["job"]["name"].endswith(".ctas.AwsDataCatalog.shop.eu_orders")
    ]
    assert complete["job"] == {
        "namespace": JOB_NAMESPACE,
        "name": "primary.ctas.AwsDataCatalog.shop.eu_orders",
        "facets": complete["job"]["facets"],
    }
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [
        (NAMESPACE, "AwsDataCatalog.shop.customers"),
        (NAMESPACE, "AwsDataCatalog.shop.orders"),
    ]
    # each Athena table of the Glue Data Catalog names its Glue identity (naming spec, "AWS Glue")
    assert [d["facets"]["symlinks"]["identifiers"] for d in complete["inputs"]] == [
        [{"namespace": GLUE, "name": "table/shop/customers", "type": "TABLE"}],
        [{"namespace": GLUE, "name": "table/shop/orders", "type": "TABLE"}],
    ]
    (output,) = complete["outputs"]
    assert output["facets"]["symlinks"]["identifiers"] == [
        {"namespace": GLUE, "name": "table/shop/eu_orders", "type": "TABLE"}
    ]
    fields = output["facets"]["columnLineage"]["fields"]
    assert {k: [(f["name"], f["field"]) for f in v["inputFields"]] for k, v in fields.items()} == {
        "name": [("AwsDataCatalog.shop.customers", "name")],
        "order_id": [("AwsDataCatalog.shop.orders", "order_id")],
    }
    # the dataset-level inputs: the columns the join and the filter read, with their subtype
    assert [
        (d["name"], d["field"], d["transformations"]) for d in output["facets"]["columnLineage"]["dataset"]
    ] == [
        ("AwsDataCatalog.shop.customers", "customer_id", [{"type": "INDIRECT", "subtype": "JOIN"}]),
        ("AwsDataCatalog.shop.orders", "customer_id", [{"type": "INDIRECT", "subtype": "JOIN"}]),
        ("AwsDataCatalog.shop.orders", "region", [{"type": "INDIRECT", "subtype": "FILTER"}]),
    ]
    assert complete["job"]["facets"]["sql"]["query"].count("?") == 1  # masked like query_history


def column_lineage(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The columnLineage facet of dataset ``name``: an output of a COMPLETE RunEvent, or a DatasetEvent's."""
    for event in events:
        for dataset in event.get("outputs", []) + ([event["dataset"]] if "dataset" in event else []):
            if dataset["name"] == name and "columnLineage" in dataset.get("facets", {}):
                return dataset["facets"]["columnLineage"]
    raise AssertionError(f"no column lineage of {name}")


BIG_ORDERS = (
    "CREATE TABLE shop.big_orders AS SELECT order_id, CASE WHEN amount > 100 THEN amount ELSE 0 END AS big_amount "
    "FROM orders ORDER BY order_id"
)


def test_athena_indirect_inputs_of_one_field_and_of_the_whole_dataset(registry):
    events = athena_events(athena_lineage(JOB_NAMESPACE), [("q-big", BIG_ORDERS)])
    for event in events:
        validate(event, registry)
    facet = column_lineage(events, "AwsDataCatalog.shop.big_orders")
    # amount flows into big_amount (DIRECT) and decides it (INDIRECT CONDITIONAL): one input, both
    assert facet["fields"]["big_amount"]["inputFields"] == [
        {
            "namespace": NAMESPACE,
            "name": "AwsDataCatalog.shop.orders",
            "field": "amount",
            "transformations": [
                {"type": "DIRECT", "subtype": "TRANSFORMATION"},
                {"type": "INDIRECT", "subtype": "CONDITIONAL"},
            ],
        }
    ]
    assert [(d["field"], d["transformations"]) for d in facet["dataset"]] == [
        ("order_id", [{"type": "INDIRECT", "subtype": "SORT"}])
    ]


def test_athena_view_event_names_its_filter_and_its_glue_table(athena_files):
    (view,) = [
        e
        for e in read_jsonl(athena_files["openlineage"])
        if e.get("dataset", {}).get("name", "").endswith("eu_view")
    ]
    facets = view["dataset"]["facets"]
    assert [(d["name"], d["field"], d["transformations"]) for d in facets["columnLineage"]["dataset"]] == [
        ("AwsDataCatalog.shop.orders", "region", [{"type": "INDIRECT", "subtype": "FILTER"}])
    ]
    assert facets["symlinks"]["identifiers"] == [
        {"namespace": GLUE, "name": "table/shop/eu_view", "type": "TABLE"}
    ]


def test_no_input_field_is_empty_and_every_indirect_input_has_a_subtype(athena_files, tableau_files):
    events = read_jsonl(athena_files["openlineage"]) + read_jsonl(tableau_files[0]["openlineage"])
    inputs = [
        field
        for event in events
        for dataset in event.get("outputs", []) + ([event["dataset"]] if "dataset" in event else [])
        for facet in [dataset.get("facets", {}).get("columnLineage")]
        if facet
        for field in [*facet["dataset"], *(f for v in facet["fields"].values() for f in v["inputFields"])]
    ]
    assert inputs
    assert all(field["field"] for field in inputs)
    assert all(t.get("subtype") for field in inputs for t in field["transformations"])


def test_athena_job_namespace_defaults_to_the_source_and_no_symlink_without_the_account(registry):
    events = athena_events(athena_lineage(), [QUERIES[0]])
    for event in events:
        validate(event, registry)
    runs = [e for e in events if "run" in e]
    assert {e["job"]["namespace"] for e in runs} == {"athena-test"}  # the source's name
    assert not [
        d
        for e in events
        for d in e.get("inputs", []) + e.get("outputs", []) + [e.get("dataset", {})]
        if "symlinks" in d.get("facets", {})
    ]


@pytest.mark.parametrize(
    ("kind", "host", "port", "expected"),
    [
        # Redshift: redshift://{cluster_identifier}.{region_name}:{port}, from the cluster's endpoint
        ("redshift", "examplecluster.abc123xyz789.us-west-2.redshift.amazonaws.com", 5439,
         "redshift://examplecluster.us-west-2:5439"),
        ("redshift", "ExampleCluster.abc123xyz789.us-west-2.redshift.amazonaws.com", None,
         "redshift://examplecluster.us-west-2:5439"),  # the spec's default port
        ("redshift", "analytics.123456789012.eu-central-1.redshift-serverless.amazonaws.com", 5440,
         "redshift://analytics.eu-central-1:5440"),  # a Serverless workgroup
        ("redshift", "warehouse.internal.example.com", 5439,
         "redshift://warehouse.internal.example.com:5439"),  # no endpoint to read: the host whole
        # Snowflake: snowflake://{organization name}-{account name}
        ("snowflake", "myorg-myaccount.snowflakecomputing.com", 443, "snowflake://myorg-myaccount"),
        ("snowflake", "MyOrg-My-Account.privatelink.snowflakecomputing.com", 443, "snowflake://myorg-my-account"),
        # ... or the legacy account locator, kept as the spec writes it
        ("snowflake", "xy12345.us-east-2.aws.snowflakecomputing.com", 443, "snowflake://xy12345.us-east-2.aws"),
        ("postgres", "db.example.com", 5432, "postgres://db.example.com:5432"),
        ("postgres", "db.example.com", None, "postgres://db.example.com"),  # no port known
    ],
)  # fmt: skip
def test_database_tables_are_named_as_the_openlineage_spec_names_them(kind, host, port, expected):
    assert ol.database_dataset(kind, host, port, "analytics", "public", "orders") == (
        expected,
        "analytics.public.orders",
    )


def test_sql_in_lineage_output_is_masked_failing_closed(athena_files):
    events = read_jsonl(athena_files["openlineage"])
    text = gzip.open(athena_files["openlineage"], "rt").read()
    assert "EU-secret-42" not in text
    assert "alice@example.com" not in text
    assert "'DE'" not in text
    queries = {
        e["run"]["runId"]: e["job"]["facets"]["sql"]["query"]
        for e in events
        if e.get("eventType") == "COMPLETE"
    }
    assert REDACTED in queries.values()  # q-3: unmaskable, redacted whole
    for name in ("lineage_statements", "table_lineage", "column_lineage", "table_usage", "column_usage"):
        content = gzip.open(athena_files[name], "rt").read()
        assert "secret" not in content, name
        assert "alice" not in content, name
    statements = {r["object_name"]: r for r in read_csv(athena_files["lineage_statements"])}
    assert statements["q-4"]["lineage_status"] == "unparsed"
    assert statements["q-3"]["lineage_status"] == "partial"
    assert (
        statements["q-3"]["detail"]
        == "unresolved columns: alice@example.com"[:0] + statements["q-3"]["detail"]
    )


def test_athena_usage_counts_queries_and_users(athena_files):
    usage = {r["table_name"]: r for r in read_csv(athena_files["table_usage"])}
    assert (usage["orders"]["query_count"], usage["orders"]["user_count"], usage["orders"]["users"]) == (
        "2",
        "1",
        '["athena_workgroup_primary"]',
    )
    assert usage["orders"]["last_used"] == "2026-11-21T23:00:00Z"
    columns = {
        (r["table_name"], r["column_name"]): r["query_count"] for r in read_csv(athena_files["column_usage"])
    }
    assert columns[("orders", "region")] == "2"
    assert columns[("orders", "amount")] == "1"


# --- Tableau -----------------------------------------------------------------------------------------

CUSTOM_SQL = "SELECT id, amount FROM public.orders WHERE customer_email = 'bob@example.com'"
BROKEN_SQL = "SELECT id FROM public.orders WHERE note = 'carol@example.com' AND ((("
REDSHIFT_HOST = "examplecluster.abc123xyz789.us-west-2.redshift.amazonaws.com"
TABLEAU_JOBS = "tableau-test"  # the Tableau source's job namespace


class Session:
    def __init__(self, server: TSC.Server):
        self.server = server

    def call(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


@pytest.fixture(scope="module")
def tableau_files(tmp_path_factory) -> tuple[dict[str, Path], Any]:
    seed = {
        "site_content_url": "analytics",
        "pats": [{"name": "pat-1", "secret": "s"}],
        "datasources": [
            {"project": "Sales", "name": "Orders"},
            {
                "project": "Sales",
                "name": "Campaigns",
                "connections": [{"type": "athena", "server_address": "athena.eu-west-1.amazonaws.com", "server_port": 443}],
            },
            {"project": "Sales", "name": "Pipeline", "connections": [{"type": "redshift", "server_address": REDSHIFT_HOST, "server_port": 5439}]},
            {"project": "Sales", "name": "Leads", "connections": [{"type": "snowflake", "server_address": "acme-sales.snowflakecomputing.com", "server_port": 443}]},
        ],
        "workbooks": [{"project": "Sales", "name": "Overview", "views": ["Revenue"]}],
        "metadata_api": {
            "datasources": {
                "Sales/Orders": {
                    "custom_sql": [
                        {"name": "Big orders", "query": CUSTOM_SQL, "tables": ["public.orders"], "columns": ["id", "amount"]},
                        {"name": "Broken", "query": BROKEN_SQL, "tables": [], "columns": ["id"]},
                    ]
                },
                "Sales/Campaigns": {
                    "tables": [{"database": "AwsDataCatalog", "schema": "marketing", "name": "campaigns", "columns": ["campaign_id", "budget"]}]
                },
                "Sales/Pipeline": {"tables": [{"database": "dev", "schema": "crm", "name": "deals", "columns": ["deal_id"]}]},
                "Sales/Leads": {"tables": [{"database": "CRM", "schema": "PUBLIC", "name": "LEADS", "columns": ["LEAD_ID"]}]},
            }
        },
    }  # fmt: skip
    with TableauStandIn(load_config(seed)) as standin:
        server = TSC.Server(standin.url, use_server_version=True)
        server.auth.sign_in(TSC.PersonalAccessTokenAuth("pat-1", "s", site_id="analytics"))
        found = tableau.collect(
            MetadataApiClient(Session(server)), standin.url, "analytics", END, job_namespace=TABLEAU_JOBS
        )
    out = tmp_path_factory.mktemp("tableau")
    files = write_extracts([masked(e) for e in found.extracts], out, "tableau-test", WINDOW, compress=True)
    return {f.entity: f.path for f in files}, found


def test_tableau_events_validate_and_join_the_athena_names(tableau_files, registry):
    files, found = tableau_files
    assert found.problems == []
    events = read_jsonl(files["openlineage"])
    for event in events:
        validate(event, registry)
    events = [e for e in events if "dataset" in e]  # the DatasetEvents (the runs: below)
    names = {e["dataset"]["name"] for e in events}
    assert {
        "analytics/datasources/Sales/Campaigns",
        "analytics/workbooks/Sales/Overview/sheets/Revenue",
    } <= names
    assert all(e["dataset"]["namespace"].startswith("tableau://127.0.0.1:") for e in events)
    campaigns = next(e for e in events if e["dataset"]["name"] == "analytics/datasources/Sales/Campaigns")
    inputs = campaigns["dataset"]["facets"]["columnLineage"]["fields"]["budget"]["inputFields"]
    # The same dataset the Athena collector names: one lineage graph across both sources.
    assert [(i["namespace"], i["name"], i["field"]) for i in inputs] == [
        (NAMESPACE, "AwsDataCatalog.marketing.campaigns", "budget")
    ]


def test_tableau_lineage_is_also_a_run_per_published_data_source_and_per_workbook(tableau_files):
    files, _ = tableau_files
    events = read_jsonl(files["openlineage"])
    runs = [e for e in events if e.get("eventType") == "COMPLETE"]
    assert sorted(e.get("eventType") for e in events if "run" in e).count("START") == len(runs)
    jobs = {e["job"]["name"]: e for e in runs}
    assert set(jobs) == {
        *(f"analytics/datasources/Sales/{n}" for n in ("Orders", "Campaigns", "Pipeline", "Leads")),
        "analytics/workbooks/Sales/Overview",
    }
    assert {e["job"]["namespace"] for e in runs} == {TABLEAU_JOBS}
    assert {
        n: e["job"]["facets"]["jobType"]["jobType"]
        for n, e in jobs.items()
        if "Campaigns" in n or "Overview" in n
    } == {
        "analytics/datasources/Sales/Campaigns": "DATASOURCE",
        "analytics/workbooks/Sales/Overview": "WORKBOOK",
    }

    def ids(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(d["namespace"], d["name"]) for d in datasets]

    # a published data source: its tables in (named as each database names them), itself out
    campaigns = jobs["analytics/datasources/Sales/Campaigns"]
    assert ids(campaigns["inputs"]) == [(NAMESPACE, "AwsDataCatalog.marketing.campaigns")]
    ((_, name),) = ids(campaigns["outputs"])
    assert name == "analytics/datasources/Sales/Campaigns"
    assert (
        campaigns["outputs"][0]["facets"]["columnLineage"]["fields"]["budget"]["inputFields"][0]["field"]
        == "budget"
    )
    assert ids(jobs["analytics/datasources/Sales/Pipeline"]["inputs"]) == [
        ("redshift://examplecluster.us-west-2:5439", "dev.crm.deals")
    ]
    assert ids(jobs["analytics/datasources/Sales/Leads"]["inputs"]) == [
        ("snowflake://acme-sales", "CRM.PUBLIC.LEADS")
    ]
    # custom SQL is no dataset: the tables it reads are the data source's inputs
    assert [n for _, n in ids(jobs["analytics/datasources/Sales/Orders"]["inputs"])] == [
        "analytics.public.orders"
    ]
    # a workbook: the published data sources its embedded ones read, its embedded data sources out
    overview = jobs["analytics/workbooks/Sales/Overview"]
    assert {n for _, n in ids(overview["inputs"])} == {
        f"analytics/datasources/Sales/{n}" for n in ("Orders", "Campaigns", "Pipeline", "Leads")
    }
    assert all(
        n.startswith("analytics/workbooks/Sales/Overview/datasources/") for _, n in ids(overview["outputs"])
    )
    assert len(overview["outputs"]) == 4


def test_tableau_custom_sql_is_masked_and_its_tables_found(tableau_files):
    files, found = tableau_files
    rows = {r["name"]: r for r in read_csv(files["custom_sql"])}
    # masked in the connection's dialect (PostgreSQL's placeholder is %s)
    assert rows["Big orders"]["query"] == "SELECT id, amount FROM public.orders WHERE customer_email = %s"
    assert (rows["Big orders"]["tables_by_sqlglot"], rows["Big orders"]["tables_by_tableau"]) == (
        '["public.orders"]',
        '["analytics.public.orders"]',
    )
    assert (rows["Broken"]["query"], rows["Broken"]["sql_status"]) == (REDACTED, "unparsed")
    assert found.counts["custom_sql:unparsed"] == 1
    for path in files.values():
        text = gzip.open(path, "rt").read()
        assert "bob@example.com" not in text
        assert "carol@example.com" not in text


def test_tableau_without_masking_keeps_the_query(tableau_files, tmp_path):
    _, found = tableau_files
    (custom,) = [e for e in found.extracts if e.entity == "custom_sql"]
    (written,) = write_extracts([custom], tmp_path, "tableau-test", WINDOW, compress=False)
    text = written.path.read_text()
    assert CUSTOM_SQL in text  # a source configured with mask: false
    assert next(csv.reader(io.StringIO(text))) == list(tableau.CUSTOM_SQL_COLUMNS)
