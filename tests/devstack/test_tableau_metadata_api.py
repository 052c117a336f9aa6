"""The Tableau stand-in's Metadata API (devstack/tableau/metadata_api.py), driven by tableauserverclient's
metadata endpoint (``server.metadata.query`` / ``paginated_query``) as a client of Tableau would: the
same credential token as the REST API, cursor paging, the node limit and the documented errors; and the
collector's Metadata API client (tasks/metadata/lineage/metadata_api.py) paging through it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import tableauserverclient as TSC
from conftest import wait_for
from tableauserverclient.server.endpoint.exceptions import FailedSignInError

from devstack.tableau import TableauStandIn, load_config
from devstack.tableau.config import content_id, view_id
from devstack.tableau.metadata_api import MetadataApi
from devstack.tableau.state import TableauSite
from tasks.metadata.lineage.metadata_api import MetadataApiClient, MetadataApiError

SITE = "analytics"
PAT, SECRET = "pat-1", "s3cret-1"
ORDERS_SQL = "SELECT o.id, o.amount FROM public.orders o WHERE o.region = 'EU'"


def config(**metadata: Any) -> dict[str, Any]:
    return {
        "site_content_url": SITE,
        "pats": [{"name": PAT, "secret": SECRET}],
        "datasources": [{"project": "Sales", "name": f"Source {i:02d}"} for i in range(12)]
        + [{"project": "Sales", "name": "Orders"}],
        "workbooks": [{"project": "Sales", "name": "Sales Overview", "views": ["Overview", "Details"]}],
        "metadata_api": {
            "datasources": {
                "Sales/Orders": {
                    "tables": [{"schema": "public", "name": "orders", "columns": ["id", "amount", "region"]}],
                    "custom_sql": [
                        {
                            "name": "EU orders",
                            "query": ORDERS_SQL,
                            "tables": ["public.orders"],
                            "columns": ["id", "amount"],
                        }
                    ],
                    "calculated_fields": {"Amount x2": ["amount"]},
                }
            },
            "workbooks": {
                "Sales/Sales Overview": {
                    "datasources": ["Sales/Orders"],
                    "sheets": {"Overview": ["amount", "Amount x2"], "Details": ["id"]},
                }
            },
            **metadata,
        },
    }


class Session:
    """What MetadataApiClient needs of a TableauSession: the signed-in server and ``call``."""

    def __init__(self, server: TSC.Server):
        self.server = server

    def call(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


@pytest.fixture
def standin_with() -> Iterator[Any]:
    started = []

    def start(**metadata: Any) -> tuple[TableauStandIn, TSC.Server]:
        standin = TableauStandIn(load_config(config(**metadata))).start()
        started.append(standin)
        server = TSC.Server(standin.url, use_server_version=True)
        server.auth.sign_in(TSC.PersonalAccessTokenAuth(PAT, SECRET, site_id=SITE))
        return standin, server

    yield start
    for standin in started:
        standin.stop()


@pytest.fixture
def site(standin_with) -> tuple[TableauStandIn, TSC.Server]:
    return standin_with()


PAGE = """query page($first: Int, $afterToken: String) {
  publishedDatasourcesConnection(first: $first, after: $afterToken, orderBy: {field: NAME, direction: ASC}) {
    nodes { luid name }
    pageInfo { hasNextPage endCursor }
    totalCount
  }
}"""


def test_paginated_query_pages_by_cursor_in_a_stable_order(site):
    _, server = site
    result = server.metadata.paginated_query(PAGE, {"first": 5})
    pages = [p["data"]["publishedDatasourcesConnection"] for p in result["pages"]]
    assert [len(p["nodes"]) for p in pages] == [5, 5, 3]
    assert all(p["totalCount"] == 13 for p in pages)
    assert not any("errors" in p for p in result["pages"])
    names = [n["name"] for p in pages for n in p["nodes"]]
    assert names == sorted(names)
    assert len(set(names)) == 13
    orders = next(n for p in pages for n in p["nodes"] if n["name"] == "Orders")
    assert orders["luid"] == content_id("datasource", "Sales", "Orders")  # the REST API's id


def test_lineage_is_consistent_with_the_rest_content(site):
    _, server = site
    answer = server.metadata.query(
        """{ workbooksConnection(first: 10) { nodes { luid name sheets { luid name sheetFieldInstances { name
              ... on DatasourceField { remoteField { name datasource { ... on PublishedDatasource { luid name } } } }
            } } } }
            customSQLTablesConnection(first: 10) { nodes { name query connectionType tables { name schema } columns { name } } }
        }"""
    )
    assert "errors" not in answer
    (workbook,) = answer["data"]["workbooksConnection"]["nodes"]
    assert workbook["luid"] == content_id("workbook", "Sales", "Sales Overview")
    sheets = {s["name"]: s for s in workbook["sheets"]}
    assert sheets["Overview"]["luid"] == view_id("Sales", "Sales Overview", "Overview")
    assert [f["name"] for f in sheets["Overview"]["sheetFieldInstances"]] == ["amount", "Amount x2"]
    assert {f["remoteField"]["datasource"]["name"] for f in sheets["Overview"]["sheetFieldInstances"]} == {
        "Orders"
    }
    (custom,) = answer["data"]["customSQLTablesConnection"]["nodes"]
    assert custom == {
        "name": "EU orders",
        "query": ORDERS_SQL,
        "connectionType": "postgres",
        "tables": [{"name": "orders", "schema": "public"}],
        "columns": [{"name": "id"}, {"name": "amount"}],
    }


def test_the_same_credential_token_as_the_rest_api(site):
    standin, server = site
    assert server.metadata.query("{ workbooks { name } }")["data"]["workbooks"] == [
        {"name": "Sales Overview"}
    ]
    # The session ends (signed out behind TSC's back): the Metadata API refuses its token as REST does.
    ended = requests.post(
        f"{standin.url}/api/{server.version}/auth/signout",
        headers={"X-Tableau-Auth": server.auth_token},
        timeout=10,
    )
    assert ended.status_code == 204
    with pytest.raises(FailedSignInError) as refused:  # TSC reads a 401 as a failed sign-in
        server.metadata.query("{ workbooks { name } }")
    assert refused.value.code == "401002"


def test_node_limit_answers_partial_data_with_the_documented_warning(standin_with):
    _, server = standin_with(node_limit=10)
    answer = server.metadata.query(PAGE, {"first": 13, "afterToken": None})
    assert answer["errors"] == [
        {
            "message": "Showing partial results. The request exceeded the '10' node limit. Use pagination, "
            "additional filtering, or both in the query to adjust results.",
            "extensions": {"severity": "WARNING", "code": "NODE_LIMIT_EXCEEDED"},
        }
    ]
    page = answer["data"]["publishedDatasourcesConnection"]
    assert len(page["nodes"]) < 13  # truncated, while pageInfo still points past the whole page
    assert page["pageInfo"]["hasNextPage"] is False


def test_after_and_offset_together_are_an_invalid_argument(site):
    _, server = site
    answer = server.metadata.query(
        '{ workbooksConnection(first: 1, after: "Y3Vyc29yOjE=", offset: 1) { nodes { name } } }'
    )
    assert answer["errors"][0]["extensions"] == {"severity": "ERROR", "code": "INVALID_ARGUMENT"}
    assert 'Can\'t use "after" and "offset"' in answer["errors"][0]["message"]


def test_disabled_on_server_names_the_tsm_command(standin_with):
    _, server = standin_with(enabled=False)
    answer = server.metadata.query("{ workbooks { name } }")
    assert answer["data"] is None
    (error,) = answer["errors"]
    assert error["extensions"] == {"severity": "ERROR", "code": "FEATURE_DISABLED"}
    assert "tsm maintenance metadata-services enable" in error["message"]


# --- the collector's client ----------------------------------------------------------------------------


def test_client_halves_the_page_on_node_limit_and_reads_everything(standin_with):
    standin, server = standin_with(node_limit=12)
    client = MetadataApiClient(Session(server), page_size=13)
    result = client.connection("publishedDatasourcesConnection", "id luid name fields { name }")
    assert result.complete
    assert sorted(n["name"] for n in result.nodes) == sorted(
        [f"Source {i:02d}" for i in range(12)] + ["Orders"]
    )
    assert len({n["id"] for n in result.nodes}) == 13
    assert client.queries > 4  # 13 → 6 → 3 → 1 per page


def test_client_reports_a_node_limit_it_cannot_page_under(standin_with):
    _, server = standin_with(node_limit=1)
    result = MetadataApiClient(Session(server), page_size=4).connection(
        "publishedDatasourcesConnection", "id fields { name }"
    )
    assert not result.complete
    assert result.problems == ["publishedDatasourcesConnection: NODE_LIMIT_EXCEEDED with one node per page"]


def test_client_backs_off_on_time_and_rate_limits_then_reads_everything(standin_with):
    _, server = standin_with(faults=["TIME_LIMIT_EXCEEDED", "RATE_EXCEEDED", "TIME_LIMIT_EXCEEDED"])
    waits: list[float] = []
    client = MetadataApiClient(Session(server), page_size=100, backoff_seconds=2.0, sleep=waits.append)
    result = client.connection("workbooksConnection", "id name")
    assert result.complete
    assert [n["name"] for n in result.nodes] == ["Sales Overview"]
    assert len(waits) == 3
    assert 1.0 <= waits[0] <= 2.0
    assert 2.0 <= waits[1] <= 4.0
    assert 4.0 <= waits[2] <= 8.0


def test_client_gives_up_after_its_retries_and_says_so(standin_with):
    _, server = standin_with(faults=["RATE_EXCEEDED"] * 3)
    client = MetadataApiClient(Session(server), retries=2, sleep=lambda _: None)
    result = client.connection("workbooksConnection", "id")
    assert result.nodes == []
    assert result.problems == ["workbooksConnection: RATE_EXCEEDED after 2 retries"]


def test_client_raises_how_to_enable_a_disabled_api(standin_with):
    _, server = standin_with(enabled=False)
    with pytest.raises(MetadataApiError, match="tsm maintenance metadata-services enable"):
        MetadataApiClient(Session(server)).connection("workbooksConnection", "id")


# --- lineage downstream of tables (tasks/tableau/lineage.py asks these) ---------------------------------

ATHENA = {"type": "athena", "server_address": "athena.eu-west-1.amazonaws.com", "server_port": 443}


def lineage_config(**metadata: Any) -> dict[str, Any]:
    """Athena tables sales.orders and sales.ORDERS_ARCHIVE under data sources with and without extracts,
    one through custom SQL; a workbook with an embedded extract of its own and a connection to Orders."""
    table = {"connection_type": "athena", "database": "AwsDataCatalog", "schema": "sales"}
    return {
        "site_content_url": SITE,
        "clock_start": "2026-12-07T12:00:00+00:00",
        "time_scale": 100,
        "pats": [{"name": PAT, "secret": SECRET}],
        "datasources": [
            {"project": "Sales", "name": "Orders", "connections": [ATHENA]},
            {"project": "Sales", "name": "Orders Live", "connections": [ATHENA], "has_extracts": False},
            {"project": "Sales", "name": "Big Orders", "connections": [ATHENA]},
        ],
        "workbooks": [{"project": "Sales", "name": "Desk", "views": ["Desk"]}],
        "metadata_api": {
            "datasources": {
                "Sales/Orders": {
                    "tables": [{**table, "name": "orders", "columns": ["id"]}, {**table, "name": "ORDERS_ARCHIVE"}],
                    "extract_last_refresh_time": "2026-12-01T06:00:00Z",
                },
                "Sales/Orders Live": {"tables": [{**table, "name": "orders"}]},
                "Sales/Big Orders": {
                    "custom_sql": [{"name": "big", "query": "SELECT * FROM sales.orders", "database": "AwsDataCatalog",
                                    "tables": ["sales.orders"], "columns": ["id"]}]
                },
            },
            "workbooks": {
                "Sales/Desk": {
                    "datasources": ["Sales/Orders Live"],
                    "embedded": {"Desk extract": {"tables": [{**table, "name": "orders", "columns": ["id"]}]}},
                }
            },
            **metadata,
        },
    }  # fmt: skip


@pytest.fixture
def lineage_site() -> Iterator[tuple[TableauStandIn, TSC.Server]]:
    with TableauStandIn(load_config(lineage_config())) as standin:
        server = TSC.Server(standin.url, use_server_version=True)
        server.auth.sign_in(TSC.PersonalAccessTokenAuth(PAT, SECRET, site_id=SITE))
        yield standin, server


TABLES = """query tables($filter: DatabaseTable_Filter) {
  databaseTablesConnection(filter: $filter, first: 100) {
    totalCount
    nodes { name schema connectionType database { name }
      downstreamDatasources { name hasExtracts extractLastRefreshTime }
      downstreamWorkbooks { name embeddedDatasources { name hasExtracts upstreamTables { name } upstreamDatasources { name } } } }
  }
}"""


def tables(server: TSC.Server, **filter: Any) -> list[dict[str, Any]]:
    answer = server.metadata.query(TABLES, {"filter": filter})
    assert "errors" not in answer
    return answer["data"]["databaseTablesConnection"]["nodes"]


def test_table_filters_match_exactly_and_together(lineage_site):
    _, server = lineage_site
    assert sorted(t["name"] for t in tables(server, nameWithin=["orders", "ORDERS_ARCHIVE"])) == [
        "ORDERS_ARCHIVE",
        "orders",
    ]
    assert tables(server, nameWithin=["ORDERS", "orders_archive"]) == []  # case-sensitive
    assert [t["name"] for t in tables(server, name="orders", connectionTypeWithin=["athena"])] == ["orders"]
    assert tables(server, name="orders", connectionTypeWithin=["snowflake"]) == []  # fields are ANDed
    assert tables(server, nameWithin=[]) == []
    answer = server.metadata.query(TABLES, {"filter": {"nameWithin": ["orders"]}})
    assert answer["data"]["databaseTablesConnection"]["totalCount"] == 1


def test_an_unknown_filter_field_is_refused(lineage_site):
    _, server = lineage_site
    answer = server.metadata.query("{ databaseTablesConnection(filter: {hasExtracts: true}) { totalCount } }")
    assert answer["errors"][0]["extensions"]["code"] == "INVALID_ARGUMENT"


def test_downstream_of_a_table_runs_through_custom_sql_and_embedded_data_sources(lineage_site):
    _, server = lineage_site
    (orders,) = tables(server, name="orders")
    assert (orders["schema"], orders["connectionType"], orders["database"]["name"]) == (
        "sales",
        "athena",
        "AwsDataCatalog",
    )
    assert {(d["name"], d["hasExtracts"]) for d in orders["downstreamDatasources"]} == {
        ("Orders", True),
        ("Orders Live", False),
        ("Big Orders", True),  # reads it through custom SQL
    }
    (desk,) = orders["downstreamWorkbooks"]
    embedded = {e["name"]: e for e in desk["embeddedDatasources"]}
    assert embedded["Desk extract"]["hasExtracts"] is True
    assert embedded["Desk extract"]["upstreamTables"] == [{"name": "orders"}]
    assert embedded["Desk extract"]["upstreamDatasources"] == []
    # the connection to a published data source: no extract of its own, the published one upstream
    assert embedded["Orders Live"]["hasExtracts"] is False
    assert embedded["Orders Live"]["upstreamDatasources"] == [{"name": "Orders Live"}]


def test_has_extracts_is_the_same_in_rest_and_the_metadata_api(lineage_site):
    _, server = lineage_site
    rest = {d.name: d.has_extracts for d in TSC.Pager(server.datasources)}
    assert rest == {"Orders": True, "Orders Live": False, "Big Orders": True}


EXTRACT_TIMES = """{ publishedDatasources(filter: {nameWithin: ["Orders", "Orders Live"]}) {
  name extractLastRefreshTime extractLastIncrementalUpdateTime extractLastUpdateTime } }"""


def test_extract_times_follow_the_refresh_jobs_that_succeed(lineage_site):
    standin, server = lineage_site

    def times() -> dict[str, tuple[str | None, str | None, str | None]]:
        answer = server.metadata.query(EXTRACT_TIMES)
        return {
            d["name"]: (
                d["extractLastRefreshTime"],
                d["extractLastIncrementalUpdateTime"],
                d["extractLastUpdateTime"],
            )
            for d in answer["data"]["publishedDatasources"]
        }

    seeded = "2026-12-01T06:00:00Z"
    assert times() == {"Orders": (seeded, None, seeded), "Orders Live": (None, None, None)}
    orders = content_id("datasource", "Sales", "Orders")
    job = server.datasources.refresh(orders, incremental=True)
    wait_for(lambda: server.jobs.get_by_id(job.id).finish_code == 0, timeout=30)
    full, incremental, latest = times()["Orders"]
    assert full == seeded  # an incremental update is not a full refresh
    assert incremental is not None and incremental > seeded
    assert latest == incremental
    job = server.datasources.refresh(orders)
    wait_for(lambda: server.jobs.get_by_id(job.id).finish_code == 0, timeout=30)
    full, _, latest = times()["Orders"]
    assert full > incremental and latest == full
    assert times()["Orders Live"] == (None, None, None)  # no extract, no extract times


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["metadata_api"]["datasources"]["Sales/Orders"].update(extract="yes"), "unknown metadata_api.datasources.Sales/Orders keys"),
        (lambda c: c["metadata_api"]["datasources"]["Sales/Orders"]["tables"][0].update(connection_type="snowflake"), "add a connection of that type"),
        (lambda c: c["metadata_api"]["datasources"]["Sales/Orders"].update(extract_last_refresh_time="2026-12-01 06:00"), "ISO 8601 instant with its offset"),
        (lambda c: c["metadata_api"]["workbooks"]["Sales/Desk"]["embedded"]["Desk extract"].update(extracts=True), "unknown metadata_api.workbooks.Sales/Desk.embedded.Desk extract keys"),
        (lambda c: c["metadata_api"]["workbooks"].update({"Sales/Nope": {}}), "names workbooks the site lacks"),
        (lambda c: c["workbooks"][0].update(has_extracts=True), "has_extracts is a data source's"),
    ],
    ids=["unknown-key", "connection-type", "instant", "embedded-key", "unknown-workbook", "workbook-has-extracts"],
)  # fmt: skip
def test_lineage_seed_mistakes_are_named(change, message):
    config = lineage_config()
    change(config)
    with pytest.raises(ValueError, match=message):
        MetadataApi(TableauSite(load_config(config)))
