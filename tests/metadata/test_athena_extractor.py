"""The Athena extractor (tasks/metadata/extractors/athena/) against moto's real server, seeded with the TPC-DS
catalog, workgroups and query history of devstack/athena_catalog.py.

moto runs behind ``devstack.moto_gaps``, which answers as AWS does where moto does not (errors of JSON
APIs, ListQueryExecutions newest first and paged, BatchGetQueryExecution, AwsDataCatalog, GetWorkGroup).
Where a test needs executions with given times, or checks the exact calls, the extractor's Athena
client is wrapped in botocore's ``Stubber`` (or only its ``batch_get_query_execution``), with responses
shaped as the API reference documents. information_schema queries return nothing in moto unless
results are queued (moto's ``/moto-api/static/athena/query-results``): tests queue what Athena would
answer, in query order. IAM tests turn moto's enforcement on around themselves (``MotoServer.enforce_iam``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber
from prefect_aws import AwsCredentials

from devstack.athena_catalog import (
    ACTIVE_CUSTOMERS_SQL,
    MONTHLY_REVENUE_SQL,
    TPCDS_PARTITION_KEYS,
    TPCDS_TABLES,
    SeededAthena,
    information_schema_tables,
    queue_query_results,
    seed_athena,
)
from devstack.moto_server import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, MotoServer
from tasks.metadata.extractors.athena import AthenaExtractionError, AthenaExtractor
from tasks.metadata.extractors.athena.information_schema import CATALOG_SQL, TABLES_SQL
from tasks.metadata.extractors.athena.query_history import QUERY_HISTORY_COLUMNS, STRAGGLER_MARGIN
from tasks.metadata.extracts import Extract, ExtractorConnectionError

REGION = "eu-west-1"
ACCOUNT = "123456789012"
SOURCE = "athena-test"

# What Athena's information_schema shows for the federated catalog crm_postgres (CATALOG_SQL's columns).
CRM_COLUMNS = [
    "table_schema",
    "table_name",
    "table_type",
    "column_name",
    "ordinal_position",
    "data_type",
    "comment",
    "extra_info",
    "view_definition",
]
OPEN_ACCOUNTS_SQL = "SELECT id, name FROM public.accounts WHERE closed_at IS NULL"
CRM_ROWS = [
    ("public", "accounts", "BASE TABLE", "id", 1, "bigint", "primary key", None, None),
    ("public", "accounts", "BASE TABLE", "name", 2, "varchar", None, None, None),
    ("public", "accounts", "BASE TABLE", "closed_at", 3, "timestamp(3)", None, None, None),
    ("public", "contacts", "BASE TABLE", "id", 1, "bigint", None, None, None),
    ("public", "contacts", "BASE TABLE", "account_id", 2, "bigint", None, None, None),
    ("public", "contacts", "BASE TABLE", "email", 3, "varchar", "PII", None, None),
    ("public", "open_accounts", "VIEW", "id", 1, "bigint", None, None, OPEN_ACCOUNTS_SQL),
    ("public", "open_accounts", "VIEW", "name", 2, "varchar", None, None, None),
]


# --- fixtures and helpers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(moto: MotoServer) -> SeededAthena:
    return seed_athena(moto.url, REGION)


def client(moto: MotoServer, name: str, **keys: str) -> Any:
    return boto3.client(
        name,
        endpoint_url=moto.url,
        region_name=REGION,
        aws_access_key_id=keys.get("key_id", DUMMY_ACCESS_KEY_ID),
        aws_secret_access_key=keys.get("secret", DUMMY_SECRET_ACCESS_KEY),
    )


def make_extractor(moto: MotoServer, seeded: SeededAthena, **overrides: Any) -> AthenaExtractor:
    key_id = overrides.pop("key_id", DUMMY_ACCESS_KEY_ID)
    secret = overrides.pop("secret", DUMMY_SECRET_ACCESS_KEY)
    kwargs: dict[str, Any] = {
        "source": SOURCE,
        "credentials": AwsCredentials(
            aws_access_key_id=key_id, aws_secret_access_key=secret, region_name=REGION
        ),
        "region": REGION,
        "workgroups": None,
        "output_location": seeded.output_location,
        "endpoint_url": moto.url,
        **overrides,
    }
    extractor = AthenaExtractor(**kwargs)
    extractor.query_poll_seconds = 0.01
    extractor.unprocessed_retry_seconds = 0.01
    return extractor


def by_entity(extracts: list[Extract]) -> dict[str, Extract]:
    return {e.entity: e for e in extracts}


def dicts(extract: Extract) -> list[dict[str, Any]]:
    return [dict(zip(extract.columns, row, strict=True)) for row in extract.rows]


def moto_executions(moto: MotoServer, workgroup: str) -> list[dict[str, Any]]:
    """The listing of ``workgroup`` (newest first, every page), each as GetQueryExecution has it."""
    athena = client(moto, "athena")
    pages = athena.get_paginator("list_query_executions").paginate(WorkGroup=workgroup)
    ids = [i for page in pages for i in page["QueryExecutionIds"]]
    return [athena.get_query_execution(QueryExecutionId=i)["QueryExecution"] for i in ids]


def timed(execution: dict[str, Any], submitted: datetime, completed: datetime | None) -> dict[str, Any]:
    """``execution`` with its submission/completion times set (no completion: still RUNNING)."""
    status: dict[str, Any] = {"State": "SUCCEEDED", "SubmissionDateTime": submitted}
    if completed is None:
        status["State"] = "RUNNING"
    else:
        status["CompletionDateTime"] = completed
    return {**execution, "Status": status}


def aws_execution(
    query_id: str, workgroup: str, submitted: datetime, completed: datetime | None
) -> dict[str, Any]:
    """A QueryExecution as the BatchGetQueryExecution API reference documents it."""
    return timed(
        {
            "QueryExecutionId": query_id,
            "Query": f"SELECT count(*) FROM tpcds_sf1.store_sales WHERE ss_quantity > {len(query_id)}",
            "StatementType": "DML",
            "SubstatementType": "SELECT",
            "ResultConfiguration": {
                "OutputLocation": f"s3://analytics-athena-results/collector/{query_id}.csv"
            },
            "QueryExecutionContext": {"Catalog": "AwsDataCatalog", "Database": "tpcds_sf1"},
            "Statistics": {
                "EngineExecutionTimeInMillis": 1234,
                "DataScannedInBytes": 10_485_760,
                "TotalExecutionTimeInMillis": 1500,
                "QueryQueueTimeInMillis": 120,
            },
            "WorkGroup": workgroup,
            "EngineVersion": {
                "SelectedEngineVersion": "AUTO",
                "EffectiveEngineVersion": "Athena engine version 3",
            },
        },
        submitted,
        completed,
    )


def stub_batch_get(extractor: AthenaExtractor, moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Stubber:
    """Route the extractor's ``batch_get_query_execution`` to a Stubber'd twin client (answers set by the
    test); every other Athena call of the extractor still reaches moto."""
    twin = client(moto, "athena")
    stubber = Stubber(twin)
    stubber.activate()
    monkeypatch.setattr(
        extractor.aws.client("athena"), "batch_get_query_execution", twin.batch_get_query_execution
    )
    return stubber


def expect_batches(
    stubber: Stubber, executions: list[dict[str, Any]], unprocessed_first: int = 0
) -> list[list[str]]:
    """Queue BatchGetQueryExecution answers for ``executions`` (in listing order) in chunks of 50; the first
    answer leaves its last ``unprocessed_first`` ids unprocessed, answered by a retry. Returns the id lists
    the extractor must send, in order."""
    calls = []
    for start in range(0, len(executions), 50):
        chunk = executions[start : start + 50]
        ids = [e["QueryExecutionId"] for e in chunk]
        if start == 0 and unprocessed_first:
            done, later = chunk[:-unprocessed_first], chunk[-unprocessed_first:]
            stubber.add_response(
                "batch_get_query_execution",
                {
                    "QueryExecutions": done,
                    "UnprocessedQueryExecutionIds": [
                        {
                            "QueryExecutionId": e["QueryExecutionId"],
                            "ErrorCode": "InternalServerException",
                            "ErrorMessage": "Internal error, please retry",
                        }
                        for e in later
                    ],
                },
                {"QueryExecutionIds": ids},
            )
            calls.append(ids)
            ids = [e["QueryExecutionId"] for e in later]
            chunk = later
        stubber.add_response(
            "batch_get_query_execution",
            {"QueryExecutions": chunk, "UnprocessedQueryExecutionIds": []},
            {"QueryExecutionIds": ids},
        )
        calls.append(ids)
    return calls


def queue_catalog_answers(moto: MotoServer, seeded: SeededAthena, glue_tables: Any = None) -> None:
    """Queue what Athena answers to the extractor's two information_schema queries, in its order:
    AwsDataCatalog's cross-check (TABLES_SQL), then crm_postgres (CATALOG_SQL)."""
    queue_query_results(
        moto.url,
        REGION,
        [glue_tables or information_schema_tables(seeded), (CRM_COLUMNS, CRM_ROWS)],
    )


def history_ids(extract: Extract) -> list[str]:
    return [row[0] for row in extract.rows]


# --- catalog entities --------------------------------------------------------------------------------


def test_every_entity_from_the_seeded_catalog(moto, seeded, monkeypatch, caplog):
    extractor = make_extractor(moto, seeded)
    queue_catalog_answers(moto, seeded)
    started = datetime.now(UTC) - timedelta(hours=1)
    end = datetime.now(UTC) + timedelta(minutes=1)
    caplog.set_level(logging.WARNING, logger="tasks.metadata.extractors.athena")

    extracts = by_entity(extractor.run(started, end))

    assert list(extracts) == [
        "data_catalogs",
        "databases",
        "tables",
        "views",
        "columns",
        "users",
        "query_history",
        "lineage_statements",
        "table_lineage",
        "column_lineage",
        "table_usage",
        "column_usage",
        "openlineage",
    ]
    assert sorted(extracts["data_catalogs"].rows) == [
        ("AwsDataCatalog", "GLUE", "glue"),  # listed as AWS lists it
        ("crm_postgres", "LAMBDA", "information_schema"),
    ]
    assert sorted((r["catalog_name"], r["database_name"]) for r in dicts(extracts["databases"])) == [
        ("AwsDataCatalog", "marketing"),
        ("AwsDataCatalog", "tpcds_sf1"),
        ("AwsDataCatalog", "tpcds_sf10"),
        ("crm_postgres", "public"),
    ]

    tables = dicts(extracts["tables"])
    for database in ("tpcds_sf1", "tpcds_sf10"):
        in_db = {t["table_name"]: t for t in tables if t["database_name"] == database}
        assert sorted(in_db) == sorted(TPCDS_TABLES)
        assert len(in_db) == 24
        for name, key in TPCDS_PARTITION_KEYS.items():
            assert in_db[name]["partition_keys"] == [key]
        assert in_db["store_sales"]["classification"] == "parquet"
        assert (
            in_db["store_sales"]["location"] == f"s3://analytics-warehouse/tpcds/{database[6:]}/store_sales/"
        )
        assert in_db["date_dim"]["partition_keys"] == []
    marketing = {t["table_name"]: t["table_type"] for t in tables if t["database_name"] == "marketing"}
    assert marketing == {
        "campaigns": "EXTERNAL_TABLE",
        "campaign_events": "EXTERNAL_TABLE",
        "monthly_store_revenue": "VIRTUAL_VIEW",
        "active_customers": "VIRTUAL_VIEW",
    }
    crm = {t["table_name"]: t["table_type"] for t in tables if t["catalog_name"] == "crm_postgres"}
    assert crm == {"accounts": "BASE TABLE", "contacts": "BASE TABLE", "open_accounts": "VIEW"}
    assert len(tables) == 24 * 2 + 4 + 3

    views = {
        (v["catalog_name"], v["view_name"]): (v["view_dialect"], v["view_sql"])
        for v in dicts(extracts["views"])
    }
    assert views == {
        ("AwsDataCatalog", "monthly_store_revenue"): ("athena", MONTHLY_REVENUE_SQL),  # decoded Presto View
        ("AwsDataCatalog", "active_customers"): ("hive", ACTIVE_CUSTOMERS_SQL),
        ("crm_postgres", "open_accounts"): ("athena", OPEN_ACCOUNTS_SQL),
    }

    columns = dicts(extracts["columns"])
    glue_columns = [c for c in columns if c["catalog_name"] == "AwsDataCatalog"]
    assert len(glue_columns) == seeded.column_count == 2 * 425 + 15 + 7
    store_sales = [
        c for c in glue_columns if (c["database_name"], c["table_name"]) == ("tpcds_sf1", "store_sales")
    ]
    assert [c["ordinal_position"] for c in store_sales] == list(range(1, 24))
    assert store_sales[-1] == {
        **store_sales[-1],
        "column_name": "ss_sold_date_sk",
        "is_partition_key": True,
        "data_type": "int",
    }
    assert store_sales[0]["column_name"] == "ss_sold_time_sk"
    assert not store_sales[0]["is_partition_key"]
    owner_email = next(c for c in glue_columns if c["column_name"] == "owner_email")
    assert owner_email["comment"] == "PII"
    assert owner_email["data_type"] == "string"
    crm_columns = [c for c in columns if c["catalog_name"] == "crm_postgres"]
    assert len(crm_columns) == len(CRM_ROWS)
    assert {c["column_name"]: c["comment"] for c in crm_columns if c["comment"]} == {
        "id": "primary key",
        "email": "PII",
    }

    users = dicts(extracts["users"])
    assert sorted(u["user_name"] for u in users) == ["athena_workgroup_analysts", "athena_workgroup_primary"]
    assert next(u for u in users if u["workgroup"] == "analysts")["description"].startswith("Ad-hoc")

    # Query history last: the extractor's own information_schema queries (run while the tables were
    # read) are in primary's history by now, like on AWS.
    executions = {wg: moto_executions(moto, wg) for wg in ("primary", "analysts")}
    stubber = stub_batch_get(extractor, moto, monkeypatch)
    for wg in ("primary", "analysts"):
        expect_batches(stubber, executions[wg])
    history = dicts(extracts["query_history"])
    stubber.assert_no_pending_responses()

    assert extracts["query_history"].columns == QUERY_HISTORY_COLUMNS
    got = {h["query_id"]: h for h in history}
    for wg, ids in seeded.query_execution_ids.items():
        assert set(ids) <= set(got)
        assert {got[i]["user_name"] for i in ids} == {f"athena_workgroup_{wg}"}
    own = [h for h in history if h["query_text"] in (TABLES_SQL, CATALOG_SQL)]
    assert sorted(h["catalog_name"] for h in own) == ["AwsDataCatalog", "crm_postgres"]
    assert len(history) == sum(len(v) for v in seeded.query_execution_ids.values()) + 2
    sample = got[seeded.query_execution_ids["analysts"][0]]
    assert sample["state"] == "SUCCEEDED"
    assert sample["database_name"] == "tpcds_sf1"
    assert "i_manufact_id = 1 AND" in sample["query_text"]  # raw: masking is the writer's job
    assert sample["completion_time"].tzinfo is not None

    assert not caplog.records  # the information_schema cross-check agreed with Glue

    # OpenLineage: a table of the Glue Data Catalog names its Glue identity, in the caller's account
    # (sts:GetCallerIdentity); a Lambda catalog's does not; the queries' jobs are in the source's namespace
    account = extractor.aws.client("sts").get_caller_identity()["Account"]
    events = [row[0] for row in extracts["openlineage"].rows]
    facets = {e["dataset"]["name"]: e["dataset"]["facets"] for e in events if "dataset" in e}
    assert facets["AwsDataCatalog.marketing.monthly_store_revenue"]["symlinks"]["identifiers"] == [
        {
            "namespace": f"arn:aws:glue:{extractor.region}:{account}",
            "name": "table/marketing/monthly_store_revenue",
            "type": "TABLE",
        }
    ]
    assert not [name for name, f in facets.items() if name.startswith("crm_postgres.") and "symlinks" in f]
    assert {e["job"]["namespace"] for e in events if "job" in e} == {extractor.source}


def test_information_schema_cross_check_warns_about_differences(moto, seeded, caplog):
    extractor = make_extractor(moto, seeded, catalogs=["AwsDataCatalog"])
    names, rows = information_schema_tables(seeded)
    rows = [r for r in rows if r[1] != "web_site" or r[0] != "tpcds_sf10"] + [
        ("tpcds_sf10", "orphan", "BASE TABLE")
    ]
    queue_query_results(moto.url, REGION, [(names, rows)])
    caplog.set_level(logging.WARNING, logger="tasks.metadata.extractors.athena")

    tables = list(
        by_entity(extractor.run(datetime.now(UTC) - timedelta(days=1), datetime.now(UTC)))["tables"].rows
    )

    assert len(tables) == 52  # Glue is the source of truth: the rows are Glue's
    messages = [r.getMessage() for r in caplog.records]
    assert any("Glue lists 1 table(s)" in m and "tpcds_sf10.web_site" in m for m in messages), messages
    assert any("Glue did not list" in m and "tpcds_sf10.orphan" in m for m in messages), messages


def test_information_schema_query_is_awaited_with_backoff(moto, seeded):
    """moto's state manager keeps each query QUEUED, then RUNNING, for 3 calls each (as a slow Athena)."""
    extractor = make_extractor(moto, seeded, catalogs=["crm_postgres"])
    queue_query_results(moto.url, REGION, [(CRM_COLUMNS, CRM_ROWS)])
    transition = {"model_name": "athena::execution", "transition": {"progression": "manual", "times": 3}}
    httpx.post(
        f"{moto.url}/moto-api/state-manager/set-transition", json=transition, timeout=10
    ).raise_for_status()
    states: list[str] = []
    started: list[str] = []
    events = extractor.aws.client("athena").meta.events
    events.register(
        "after-call.athena.GetQueryExecution",
        lambda parsed, **_: states.append(parsed["QueryExecution"]["Status"]["State"]),
    )
    events.register(
        "after-call.athena.StartQueryExecution",
        lambda parsed, **_: started.append(parsed["QueryExecutionId"]),
    )
    try:
        extracts = by_entity(extractor.run(datetime.now(UTC) - timedelta(days=1), datetime.now(UTC)))
        assert len(list(extracts["columns"].rows)) == len(CRM_ROWS)
        # polled until done: QUEUED, RUNNING for a few polls each (moto counts the start as one), then done
        assert states == sorted(states, key=["QUEUED", "RUNNING", "SUCCEEDED"].index), states
        assert states.count("QUEUED") >= 2
        assert states.count("RUNNING") >= 2
        assert states[-1] == "SUCCEEDED"
        assert len(list(extracts["tables"].rows)) == 3  # same query's results, paged again: no second query
    finally:
        httpx.post(
            f"{moto.url}/moto-api/state-manager/unset-transition",
            json={"model_name": "athena::execution"},
            timeout=10,
        ).raise_for_status()
    [query_id] = started
    status = client(moto, "athena").get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
    assert status["State"] == "SUCCEEDED"


def test_failed_information_schema_query_is_an_error(moto, seeded):
    extractor = make_extractor(moto, seeded, catalogs=["crm_postgres"])
    athena = extractor.aws.client("athena")
    extracts = by_entity(extractor.run(datetime.now(UTC) - timedelta(days=1), datetime.now(UTC)))
    with Stubber(athena) as stubber:
        stubber.add_response("start_query_execution", {"QueryExecutionId": "q-failed"})
        stubber.add_response(
            "get_query_execution",
            {
                "QueryExecution": {
                    "QueryExecutionId": "q-failed",
                    "Status": {
                        "State": "FAILED",
                        "StateChangeReason": "Lambda function athena-postgres-crm timed out",
                        "AthenaError": {"ErrorCategory": 2, "ErrorType": 1000, "Retryable": False},
                    },
                }
            },
        )
        with pytest.raises(
            AthenaExtractionError, match="q-failed on catalog 'crm_postgres'.*FAILED.*timed out"
        ):
            list(extracts["columns"].rows)


# --- query history ---------------------------------------------------------------------------------


def test_history_window_keeps_completions_in_start_inclusive_end_exclusive(moto, seeded, monkeypatch):
    """The listing of the analysts workgroup (one page of 16, newest first); completion times set around
    the window's edges, latest first."""
    start = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)
    end = start + timedelta(hours=10)
    tiny = timedelta(microseconds=1)
    completions = [
        start - timedelta(hours=1),
        start - tiny,
        start,  # exactly start: in
        start + tiny,
        *(start + timedelta(hours=h) for h in range(1, 9)),
        None,  # still running: no completion, not in this window
        end - tiny,
        end,  # exactly end: out (it belongs to the next window)
        end + timedelta(hours=1),
    ][::-1]
    listed = moto_executions(moto, "analysts")
    assert len(listed) == len(completions) == 16
    executions = [
        timed(e, (c or end) - timedelta(minutes=5), c) for e, c in zip(listed, completions, strict=True)
    ]
    extractor = make_extractor(moto, seeded, workgroups=["analysts"])
    stubber = stub_batch_get(extractor, moto, monkeypatch)
    expect_batches(stubber, executions)

    history = dicts(by_entity(extractor.run(start, end))["query_history"])

    stubber.assert_no_pending_responses()
    expected = [
        e["QueryExecutionId"] for e, c in zip(executions, completions, strict=True) if c and start <= c < end
    ]
    assert [h["query_id"] for h in history] == expected
    assert len(expected) == 11
    assert history[-1]["completion_time"] == start
    assert max(h["completion_time"] for h in history) == end - tiny


def test_history_batches_of_at_most_50_and_unprocessed_ids_retried(moto, seeded, monkeypatch):
    """primary lists > 50 executions: a page of 50 and the rest, one batch each; the first answer
    leaves 2 ids unprocessed, which are asked for again on their own."""
    listed = moto_executions(moto, "primary")
    assert len(listed) > 50
    extractor = make_extractor(moto, seeded, workgroups=["primary"])
    stubber = stub_batch_get(extractor, moto, monkeypatch)
    calls = expect_batches(stubber, listed, unprocessed_first=2)

    start = min(e["Status"]["CompletionDateTime"] for e in listed)
    history = history_ids(
        by_entity(extractor.run(start, datetime.now(UTC) + timedelta(minutes=1)))["query_history"]
    )

    stubber.assert_no_pending_responses()  # every queued call was made, with exactly those ids
    assert [len(c) for c in calls][:3] == [50, 2, min(50, len(listed) - 50)]
    assert all(len(c) <= 50 for c in calls)
    assert calls[1] == calls[0][-2:]
    assert sorted(history) == sorted(e["QueryExecutionId"] for e in listed)


def test_history_unprocessed_ids_reported_after_bounded_retries(moto, seeded):
    extractor = make_extractor(moto, seeded, workgroups=["analysts"])
    extractor.unprocessed_retries = 2
    now = datetime(2026, 11, 20, tzinfo=UTC)
    stuck = {"QueryExecutionId": "q-2", "ErrorCode": "InternalServerException", "ErrorMessage": "retry later"}
    extracts = by_entity(extractor.run(now - timedelta(days=1), now))
    with Stubber(extractor.aws.client("athena")) as stubber:
        stubber.add_response("list_query_executions", {"QueryExecutionIds": ["q-1", "q-2"]})
        stubber.add_response(
            "batch_get_query_execution",
            {
                "QueryExecutions": [aws_execution("q-1", "analysts", now, now)],
                "UnprocessedQueryExecutionIds": [stuck],
            },
            {"QueryExecutionIds": ["q-1", "q-2"]},
        )
        for _ in range(2):
            stubber.add_response(
                "batch_get_query_execution",
                {"QueryExecutions": [], "UnprocessedQueryExecutionIds": [stuck]},
                {"QueryExecutionIds": ["q-2"]},
            )
        with pytest.raises(
            AthenaExtractionError, match=r"1 execution\(s\) unprocessed after 2 retries: q-2 \(Internal"
        ):
            list(extracts["query_history"].rows)
        stubber.assert_no_pending_responses()


def _newest_first_pages(start: datetime) -> list[list[dict[str, Any]]]:
    """Three AWS pages of 50, newest first by submission: the window's last hours; executions around the
    window start (one submitted before it, completed inside: a straggler); and a page submitted entirely
    before ``start - STRAGGLER_MARGIN``."""
    pages = []
    minute = timedelta(minutes=1)
    page1 = [(start + timedelta(hours=5) - i * minute, 30) for i in range(50)]
    page2 = [(start + timedelta(minutes=25) - i * minute, 2) for i in range(50)]
    page2[40] = (page2[40][0], 60)  # submitted 15 min before start, ran 60 min: completes inside
    page3 = [(start - STRAGGLER_MARGIN - minute - i * minute, 10) for i in range(50)]
    for number, page in enumerate((page1, page2, page3), start=1):
        pages.append(
            [
                aws_execution(
                    f"p{number}-{i:02d}", "primary", submitted, submitted + timedelta(minutes=runtime)
                )
                for i, (submitted, runtime) in enumerate(page)
            ]
        )
    return pages


def test_history_aws_order_newest_first_stops_paging_early(moto, seeded):
    start = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
    end = start + timedelta(hours=6)
    pages = _newest_first_pages(start)
    extractor = make_extractor(moto, seeded, workgroups=["primary"])
    extracts = by_entity(extractor.run(start, end))  # lists catalogs and workgroups (moto) now
    with Stubber(extractor.aws.client("athena")) as stubber:
        for number, page in enumerate(pages, start=1):
            ids = [e["QueryExecutionId"] for e in page]
            params: dict[str, Any] = {"WorkGroup": "primary", "MaxResults": 50}
            if number > 1:
                params["NextToken"] = f"token-{number}"
            # page 3 still has a NextToken: the extractor must not follow it
            stubber.add_response(
                "list_query_executions",
                {"QueryExecutionIds": ids, "NextToken": f"token-{number + 1}"},
                params,
            )
            stubber.add_response(
                "batch_get_query_execution",
                {"QueryExecutions": page, "UnprocessedQueryExecutionIds": []},
                {"QueryExecutionIds": ids},
            )
        history = list(extracts["query_history"].rows)
        stubber.assert_no_pending_responses()  # exactly 3 pages listed: no request for token-4

    ids = [row[0] for row in history]
    expected = [
        e["QueryExecutionId"]
        for page in pages
        for e in page
        if start <= e["Status"]["CompletionDateTime"] < end
    ]
    assert ids == expected
    assert "p2-40" in ids  # the straggler
    assert len([i for i in ids if i.startswith("p1-")]) == 50
    assert not [i for i in ids if i.startswith("p3-")]


def test_window_older_than_45_days_is_clamped_with_a_warning(moto, seeded, caplog):
    extractor = make_extractor(moto, seeded, workgroups=["analysts"])
    end = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
    caplog.set_level(logging.WARNING, logger="tasks.metadata.extractors.athena")

    window = extractor.history_window(end - timedelta(days=60), end)

    assert window.start == end - timedelta(days=45)
    assert window.end == end
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "45 days" in record.getMessage()
    assert "clamped to 2026-10-06T04:00:00+00:00" in record.getMessage()

    caplog.clear()
    assert extractor.history_window(end - timedelta(days=45), end).start == end - timedelta(days=45)
    assert not caplog.records
    with pytest.raises(ValueError, match="naive"):
        extractor.history_window(datetime(2026, 11, 1), end)


def test_history_outside_45_days_not_extracted(moto, seeded):
    """An execution completed 50 days before the end falls before the clamped start."""
    end = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
    old, recent = end - timedelta(days=50), end - timedelta(days=2)
    extractor = make_extractor(moto, seeded, workgroups=["analysts"])
    extracts = by_entity(extractor.run(end - timedelta(days=60), end))
    with Stubber(extractor.aws.client("athena")) as stubber:
        stubber.add_response("list_query_executions", {"QueryExecutionIds": ["recent", "old"]})
        stubber.add_response(
            "batch_get_query_execution",
            {
                "QueryExecutions": [
                    aws_execution("recent", "analysts", recent, recent),
                    aws_execution("old", "analysts", old, old),
                ]
            },
        )
        assert history_ids(extracts["query_history"]) == ["recent"]


# --- test_connection ---------------------------------------------------------------------------------


def test_connection_ok(moto, seeded):
    make_extractor(moto, seeded, workgroups=["primary", "analysts"]).test_connection()
    make_extractor(moto, seeded).test_connection()  # all workgroups: athena:ListWorkGroups


def test_connection_names_a_missing_workgroup(moto, seeded):
    extractor = make_extractor(moto, seeded, workgroups=["primary", "finance"])
    with pytest.raises(ExtractorConnectionError, match="workgroup 'finance' does not exist in eu-west-1"):
        extractor.test_connection()
    with pytest.raises(AthenaExtractionError, match="workgroup 'finance' does not exist"):
        extractor.run(datetime.now(UTC) - timedelta(days=1), datetime.now(UTC))


def test_connection_names_a_missing_workgroup_as_aws_reports_it(moto, seeded):
    """AWS answers GetWorkGroup of an unknown name with InvalidRequestException (Athena API reference)."""
    extractor = make_extractor(moto, seeded, workgroups=["finance"])
    with Stubber(extractor.aws.client("athena")) as stubber:
        stubber.add_client_error(
            "get_work_group",
            service_error_code="InvalidRequestException",
            service_message="WorkGroup finance is not found.",
            expected_params={"WorkGroup": "finance"},
        )
        with pytest.raises(ExtractorConnectionError, match="workgroup 'finance' does not exist"):
            extractor.test_connection()


def test_connection_names_a_missing_results_bucket(moto, seeded):
    extractor = make_extractor(moto, seeded, output_location="s3://no-such-results-bucket/athena/")
    with pytest.raises(ExtractorConnectionError) as error:
        extractor.test_connection()
    assert "results bucket 'no-such-results-bucket'" in str(error.value)
    assert "does not exist" in str(error.value)


def test_bad_output_location_is_refused_up_front(moto, seeded):
    with pytest.raises(ValueError, match="must be an s3:// URI"):
        make_extractor(moto, seeded, output_location="analytics-athena-results/collector/")


def test_role_is_assumed_through_sts(moto, seeded):
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = client(moto, "iam").create_role(
        RoleName="AthenaCollector", AssumeRolePolicyDocument=json.dumps(trust)
    )
    extractor = make_extractor(moto, seeded, role_arn=role["Role"]["Arn"], workgroups=["primary"])

    extractor.test_connection()

    identity = extractor.aws.client("sts").get_caller_identity()["Arn"]
    assert identity == f"arn:aws:sts::{ACCOUNT}:assumed-role/AthenaCollector/analytics-flows-{SOURCE}"
    assert extractor.aws.client("glue").get_databases()[
        "DatabaseList"
    ]  # the assumed role's session reads Glue


# --- IAM enforced -----------------------------------------------------------------------------------

SETUP_REQUESTS = 4  # the iam_user fixture's setup, made before moto starts enforcing IAM


@pytest.fixture
def iam_user(moto, seeded) -> Iterator[dict[str, str]]:
    """While moto enforces IAM: a user who may list workgroups and use S3, nothing else, and a role."""
    name = f"collector-{uuid.uuid4().hex[:6]}"
    moto.enforce_iam(after_requests=SETUP_REQUESTS)
    try:
        iam = client(moto, "iam")
        iam.create_user(UserName=name)  # 1
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:*", "athena:ListWorkGroups"], "Resource": "*"},
            ],
        }
        iam.put_user_policy(UserName=name, PolicyName="partial", PolicyDocument=json.dumps(policy))  # 2
        key = iam.create_access_key(UserName=name)["AccessKey"]  # 3
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        role = iam.create_role(
            RoleName=f"AthenaCollector-{name}", AssumeRolePolicyDocument=json.dumps(trust)
        )  # 4
        yield {
            "name": name,
            "key_id": key["AccessKeyId"],
            "secret": key["SecretAccessKey"],
            "role_arn": role["Role"]["Arn"],
        }
    finally:
        moto.enforce_iam(after_requests=None)


def test_connection_denied_names_workgroup_glue_and_the_iam_actions(moto, seeded, iam_user):
    extractor = make_extractor(
        moto,
        seeded,
        workgroups=["primary"],
        key_id=iam_user["key_id"],
        secret=iam_user["secret"],
    )
    with pytest.raises(ExtractorConnectionError) as error:
        extractor.test_connection()
    message = str(error.value)
    assert "permission denied on workgroup 'primary': grant athena:GetWorkGroup" in message
    assert "permission denied on the Glue Data Catalog: grant glue:GetDatabases" in message
    assert f"arn:aws:iam::{ACCOUNT}:user/{iam_user['name']}" in message
    assert "results bucket" not in message  # S3 is allowed
    assert iam_user["secret"] not in message


def test_denied_during_run_is_a_connection_error(moto, seeded, iam_user):
    extractor = make_extractor(
        moto,
        seeded,
        key_id=iam_user["key_id"],
        secret=iam_user["secret"],
    )
    with pytest.raises(ExtractorConnectionError, match="ListDataCatalogs was refused"):
        extractor.run(datetime.now(UTC) - timedelta(days=1), datetime.now(UTC))


def test_connection_denied_role_assumption(moto, seeded, iam_user):
    extractor = make_extractor(
        moto,
        seeded,
        role_arn=iam_user["role_arn"],
        key_id=iam_user["key_id"],
        secret=iam_user["secret"],
    )
    with pytest.raises(
        ExtractorConnectionError, match="cannot assume role .*AthenaCollector.*needs sts:AssumeRole"
    ):
        extractor.test_connection()


def test_connection_rejected_credentials(moto, seeded, iam_user):
    extractor = make_extractor(
        moto,
        seeded,
        key_id="AKIAUNKNOWNKEY000000",
        secret="wrong",
    )
    with pytest.raises(ExtractorConnectionError, match="AWS rejected the credentials.*InvalidClientTokenId"):
        extractor.test_connection()


def test_view_sql_decodes_athena_views_and_keeps_hive_text():
    from devstack.athena_catalog import presto_view_text
    from tasks.metadata.extractors.athena.glue_catalog import view_sql

    encoded = presto_view_text("SELECT 1 AS one", "awsdatacatalog", "marketing", [("one", "integer")])
    assert view_sql(encoded) == ("athena", "SELECT 1 AS one")
    assert view_sql("SELECT a FROM t") == ("hive", "SELECT a FROM t")
    assert view_sql("/* Presto View: not-base64! */") == ("hive", "/* Presto View: not-base64! */")
    assert view_sql("/* Presto View: bm90IGpzb24= */") == ("athena", "/* Presto View: bm90IGpzb24= */")
    assert view_sql(None) == ("hive", None)


def test_partition_keys_are_written_as_a_json_list_that_splits_back(tmp_path):
    """docs/metadata-extracts.md: partition_keys is a JSON list, unambiguous even for a name with a comma."""
    import csv
    import gzip

    from tasks.metadata.extract_files import write_extracts
    from tasks.metadata.extractors.athena.glue_catalog import TABLE_COLUMNS, Catalog, table_rows
    from tasks.metadata.hwm import Window

    glue = boto3.client("glue", region_name=REGION, aws_access_key_id="k", aws_secret_access_key="s")
    table = {"Name": "events", "DatabaseName": "raw", "TableType": "EXTERNAL_TABLE"}
    with Stubber(glue) as stubber:
        stubber.add_response("get_databases", {"DatabaseList": [{"Name": "raw"}]})
        stubber.add_response(
            "get_tables",
            {
                "TableList": [
                    {**table, "PartitionKeys": [{"Name": "dt"}, {"Name": "region,zone"}]},
                    {**table, "Name": "lookup"},
                ]
            },
            {"DatabaseName": "raw"},
        )
        rows = list(table_rows(glue, Catalog("AwsDataCatalog", "GLUE"), set()))
    window = Window(datetime(2026, 11, 21, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC))

    [written] = write_extracts([Extract("tables", TABLE_COLUMNS, rows)], tmp_path, SOURCE, window, True)

    with gzip.open(written.path, "rt", newline="") as file:
        cells = [row["partition_keys"] for row in csv.DictReader(file)]
    assert cells == ['["dt","region,zone"]', "[]"]
    assert [json.loads(cell) for cell in cells] == [["dt", "region,zone"], []]
