"""Content from lineage (tasks/tableau/lineage.py): the published data sources and workbooks with
extracts downstream of warehouse tables, resolved through the stand-in's Metadata API over HTTP with a
signed-in ``TableauSession``, as a refresh run does."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import tableauserverclient as TSC
from conftest import PATS, SITE, wait_for

from blocks import TableauPersonalAccessToken, TableauSite
from devstack.tableau.config import content_id
from tasks.tableau.assets import parse_table_key
from tasks.tableau.lineage import LineageResolutionError, MetadataApiError, resolve_downstream
from tasks.tableau.session import TableauSession

ATHENA = {"type": "athena", "server_address": "athena.eu-west-1.amazonaws.com", "server_port": 443}
SNOWFLAKE = {"type": "snowflake", "server_address": "acme-prod.snowflakecomputing.com", "server_port": 443}
BIGQUERY = {"type": "bigquery", "server_address": "bigquery.googleapis.com", "server_port": 443}
CATALOG = "AwsDataCatalog"  # Tableau's database of an Athena connection: the data catalog, as spelled there
SEEDED_REFRESH = "2026-12-01T06:00:00Z"

ORDERS = "athena://awsdatacatalog/sales/orders"
CUSTOMERS = "athena://awsdatacatalog/sales/customers"
TARGETS = "athena://awsdatacatalog/sales/targets"
UNKNOWN = "athena://awsdatacatalog/sales/returns"
SNOWFLAKE_ORDERS = "snowflake://acme-prod/analytics/sales/orders"
BIGQUERY_EVENTS = "bigquery://acme-web/tracking/Events"


def athena(schema: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"connection_type": "athena", "database": CATALOG, "schema": schema, "name": name, **extra}


def seed() -> dict[str, Any]:
    """Sales on Athena: extracts on orders (direct, and through custom SQL), a live data source on
    targets, a workbook with its own extract on orders and customers, a workbook on the published
    Orders only; look-alikes in another schema, on Snowflake (upper case) and on BigQuery."""
    ds = [
        {"project": "Sales", "name": "Orders", "connections": [ATHENA]},
        {"project": "Sales", "name": "Orders and Customers", "connections": [ATHENA]},
        {"project": "Sales", "name": "Big Orders", "connections": [ATHENA]},
        {"project": "Sales", "name": "Targets Live", "connections": [ATHENA], "has_extracts": False},
        {"project": "Staging", "name": "Orders", "connections": [ATHENA]},
        {"project": "Finance", "name": "Orders", "connections": [SNOWFLAKE]},
        {"project": "Web", "name": "Events", "connections": [BIGQUERY]},
    ]
    lineage = {
        "Sales/Orders": {
            "tables": [athena("sales", "orders", columns=["id", "amount"])],
            "extract_last_refresh_time": SEEDED_REFRESH,
        },
        "Sales/Orders and Customers": {"tables": [athena("sales", "orders"), athena("sales", "customers")]},
        "Sales/Big Orders": {
            "custom_sql": [
                {"name": "big", "query": "SELECT * FROM sales.orders WHERE amount > 100", "database": CATALOG,
                 "tables": ["sales.orders"], "columns": ["id"]}
            ]
        },
        "Sales/Targets Live": {"tables": [athena("sales", "targets")]},
        "Staging/Orders": {"tables": [athena("staging", "orders")]},
        "Finance/Orders": {
            "tables": [{"connection_type": "snowflake", "database": "ANALYTICS", "schema": "SALES", "name": "ORDERS"}]
        },
        "Web/Events": {"tables": [{"connection_type": "bigquery", "database": "acme-web", "schema": "tracking", "name": "events"}]},
    }  # fmt: skip
    workbooks = [
        {"project": "Sales", "name": "Sales Overview", "views": ["Overview"]},
        {"project": "Sales", "name": "Order Desk", "views": ["Desk"]},
    ]
    workbook_lineage = {
        "Sales/Sales Overview": {"datasources": ["Sales/Orders"]},  # through the published data source only
        "Sales/Order Desk": {
            "datasources": ["Sales/Targets Live"],
            "embedded": {
                "Desk extract": {
                    "tables": [athena("sales", "orders"), athena("sales", "customers")],
                    "extract_last_refresh_time": "2026-12-02T06:00:00+00:00",
                },
                "Desk live": {"tables": [athena("sales", "targets")], "has_extracts": False},
            },
        },
    }
    return {
        "datasources": ds,
        "workbooks": workbooks,
        "clock_start": "2026-12-07T12:00:00+00:00",
        "metadata_api": {"datasources": lineage, "workbooks": workbook_lineage},
    }


@contextmanager
def signed_in(standin: Any) -> Iterator[TableauSession]:
    site = TableauSite(server_url=standin.url, site_content_url=SITE, api_version="3.29")
    pat = TableauPersonalAccessToken(token_name="pat-1", token_secret=PATS["pat-1"])
    with TableauSession(site, pat, "pat-1-block") as session:
        yield session


def resolve(standin: Any, *keys: str, **kwargs: Any):
    with signed_in(standin) as session:
        return resolve_downstream(session, [parse_table_key(k) for k in keys], **kwargs)


@pytest.fixture
def sales(make_standin):
    return make_standin(**seed())


def by_name(resolution) -> dict[tuple[str, str], Any]:
    return {(c.kind, f"{c.project}/{c.name}"): c for c in resolution.content}


def test_extracts_downstream_of_the_tables_in_one_request(sales):
    resolution = resolve(sales, ORDERS, CUSTOMERS, TARGETS, UNKNOWN)
    found = by_name(resolution)
    assert set(found) == {
        ("datasource", "Sales/Orders"),
        ("datasource", "Sales/Orders and Customers"),
        ("datasource", "Sales/Big Orders"),  # through custom SQL
        ("workbook", "Sales/Order Desk"),  # its own extract
    }
    assert resolution.requests == 1
    assert found["datasource", "Sales/Orders and Customers"].tables == (CUSTOMERS, ORDERS)
    assert found["workbook", "Sales/Order Desk"].tables == (CUSTOMERS, ORDERS)
    assert found["datasource", "Sales/Big Orders"].tables == (ORDERS,)


def test_content_carries_its_rest_id_project_and_owner(sales):
    orders = by_name(resolve(sales, ORDERS))["datasource", "Sales/Orders"]
    assert orders.luid == content_id("datasource", "Sales", "Orders")
    assert (orders.project, orders.owner) == ("Sales", "admin")
    desk = by_name(resolve(sales, ORDERS))["workbook", "Sales/Order Desk"]
    assert desk.luid == content_id("workbook", "Sales", "Order Desk")


def test_a_workbook_on_a_published_data_source_is_not_refreshed_for_its_tables(sales):
    kinds = {(c.kind, c.name) for c in resolve(sales, ORDERS).content}
    assert ("workbook", "Sales Overview") not in kinds
    assert ("datasource", "Orders") in kinds


def test_tables_without_an_extract_downstream_are_reported_in_the_order_given(sales):
    resolution = resolve(sales, UNKNOWN, TARGETS, ORDERS)
    # targets: a live data source and a live embedded one; returns: Tableau does not know it.
    assert resolution.tables_without_extracts == (UNKNOWN, TARGETS)


def test_content_is_deduplicated_and_in_a_stable_order(sales):
    first = resolve(sales, ORDERS, CUSTOMERS, ORDERS)
    again = resolve(sales, CUSTOMERS, ORDERS, page_size=1)
    assert first.content == again.content
    assert [(c.kind, c.name) for c in first.content] == [
        ("datasource", "Big Orders"),
        ("datasource", "Orders"),
        ("datasource", "Orders and Customers"),
        ("workbook", "Order Desk"),
    ]


def test_the_same_name_in_another_schema_or_warehouse_is_not_matched(sales):
    names = {f"{c.project}/{c.name}" for c in resolve(sales, ORDERS).content}
    assert "Staging/Orders" not in names
    assert "Finance/Orders" not in names


def test_names_of_case_folding_warehouses_match_in_any_case(sales):
    resolution = resolve(sales, SNOWFLAKE_ORDERS)  # lower case in the key, upper case in Snowflake
    assert [f"{c.project}/{c.name}" for c in resolution.content] == ["Finance/Orders"]


def test_bigquery_names_are_case_sensitive(sales):
    assert resolve(sales, BIGQUERY_EVENTS).tables_without_extracts == (BIGQUERY_EVENTS,)
    exact = "bigquery://acme-web/tracking/events"
    assert [c.name for c in resolve(sales, exact).content] == ["Events"]


def test_no_tables_no_request(sales):
    with signed_in(sales) as session:
        assert resolve_downstream(session, []).requests == 0


def test_pages_through_every_matching_table(sales):
    resolution = resolve(sales, ORDERS, CUSTOMERS, TARGETS, page_size=1)
    # one table per page: sales.orders, staging.orders (the name filter's, matched out), customers, targets
    assert resolution.requests == 4
    assert len(resolution.content) == 4


def test_node_limit_halves_the_page_and_still_reads_everything(make_standin):
    config = seed()
    config["metadata_api"]["node_limit"] = 40
    resolution = resolve(make_standin(**config), ORDERS, CUSTOMERS, TARGETS, page_size=3)
    assert resolution.requests > 1
    assert len(resolution.content) == 4


def test_a_node_limit_it_cannot_page_under_resolves_nothing(make_standin):
    config = seed()
    config["metadata_api"]["node_limit"] = 5
    with pytest.raises(LineageResolutionError, match="NODE_LIMIT_EXCEEDED.*no content was resolved"):
        resolve(make_standin(**config), ORDERS)


def test_a_metadata_api_that_is_off_names_the_tsm_command(make_standin):
    config = seed()
    config["metadata_api"]["enabled"] = False
    with pytest.raises(MetadataApiError, match="tsm maintenance metadata-services enable"):
        resolve(make_standin(**config), ORDERS)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_extract_times_come_from_the_seed_and_from_refresh_jobs_that_succeed(sales):
    found = by_name(resolve(sales, ORDERS))
    assert found["datasource", "Sales/Orders"].extract_last_refresh == utc(SEEDED_REFRESH)
    assert found["datasource", "Sales/Orders and Customers"].extract_last_refresh is None  # never refreshed
    assert found["workbook", "Sales/Order Desk"].extract_last_refresh == utc("2026-12-02T06:00:00Z")

    server = TSC.Server(sales.url, use_server_version=True)
    server.auth.sign_in(TSC.PersonalAccessTokenAuth("pat-2", PATS["pat-2"], site_id=SITE))
    jobs = [
        server.datasources.refresh(content_id("datasource", "Sales", "Orders")),
        server.workbooks.refresh(content_id("workbook", "Sales", "Order Desk")),
    ]
    wait_for(lambda: all(server.jobs.get_by_id(j.id).finish_code == 0 for j in jobs), timeout=30)
    finished = max(server.jobs.get_by_id(j.id).completed_at for j in jobs)

    found = by_name(resolve(sales, ORDERS))
    for key in (("datasource", "Sales/Orders"), ("workbook", "Sales/Order Desk")):
        refreshed = found[key].extract_last_refresh
        assert utc("2026-12-07T12:00:00Z") < refreshed <= finished.astimezone(dt.UTC)
        assert found[key].extract_last_update == refreshed
    assert found["datasource", "Sales/Orders and Customers"].extract_last_refresh is None


@pytest.mark.parametrize(
    ("key", "schema", "matched"),
    [
        ("athena://awsdatacatalog/sales/orders", None, True),  # Athena: the schema from fullName
        ("athena://awsdatacatalog/sales/orders", "awsdatacatalog", True),
        ("athena://awsdatacatalog/staging/orders", None, False),
        ("postgres://db.internal:5432/awsdatacatalog/sales/orders", None, False),  # only Athena's is doubted
    ],
)
def test_an_athena_schema_tableau_gets_wrong_is_read_from_the_full_name(key, schema, matched):
    from tasks.tableau.lineage import _matches

    kind = parse_table_key(key).connection_type
    node = {
        "name": "orders",
        "schema": schema,
        "fullName": "[sales].[orders]",
        "connectionType": kind,
        "database": {"name": "AwsDataCatalog", "connectionType": kind},
    }
    assert _matches(parse_table_key(key), node) is matched
