"""A domain whose content comes from Tableau's lineage: the refresh run resolves it through the
stand-in's Metadata API, merges it with the lists, refreshes only what is downstream of the tables an
asset-triggered run was told changed, skips what is up to date (``refresh: stale_only``), and records
each content as a Prefect asset — checked in the real Prefect server's events."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from conftest import Workspace, wait_for
from test_tableau_refresh import run_artifact

from devstack.tableau.config import content_id
from flows.tableau.refresh import Materialization, refresh_domain
from tasks.tableau.assets import MATERIALIZED_EVENT, content_key, last_materializations, materialization_burst
from tasks.tableau.lineage import MetadataApiError
from tasks.tableau.refresh import DomainRefreshError, PollPolicy

FAST = PollPolicy(initial_interval=0.1, max_interval=0.5, backoff=1.5, rate_limit_default_wait=0.2)
ATHENA = {"type": "athena", "server_address": "athena.eu-west-1.amazonaws.com", "server_port": 443}
SITE = "analytics"


class Lineage:
    """A site on Athena tables of a schema of the test's own (so that the session server's events of
    other tests never match): Orders (orders), Orders and Customers (orders, customers), a live data
    source on targets, Order Desk (a workbook with its own extract on orders and customers), Inventory
    (a data source listed by hand, on no table of the domain)."""

    def __init__(
        self,
        make_standin: Any,
        tmp_path: Any,
        *,
        refresh_times: dict[str, str] | None = None,
        failing: str | None = None,
        **seed: Any,
    ):
        self.schema = f"sales_{uuid.uuid4().hex[:8]}"
        refresh_times = refresh_times or {}

        def table(name: str) -> dict[str, str]:
            return {
                "connection_type": "athena",
                "database": "AwsDataCatalog",
                "schema": self.schema,
                "name": name,
            }

        def extract(name: str) -> dict[str, Any]:
            return {"extract_last_refresh_time": refresh_times[name]} if name in refresh_times else {}

        self.standin = make_standin(
            projects=["Sales", "Ops"],
            datasources=[
                {"project": "Sales", "name": "Orders", "connections": [ATHENA], "duration_seconds": 40,
                 **({"fail_notes": failing} if failing else {})},
                {"project": "Sales", "name": "Orders and Customers", "connections": [ATHENA], "duration_seconds": 40},
                {"project": "Sales", "name": "Targets Live", "connections": [ATHENA], "has_extracts": False},
                {"project": "Ops", "name": "Inventory", "duration_seconds": 40},
            ],
            workbooks=[{"project": "Sales", "name": "Order Desk", "duration_seconds": 40}],
            metadata_api={
                "datasources": {
                    "Sales/Orders": {"tables": [table("orders")], **extract("Orders")},
                    "Sales/Orders and Customers": {
                        "tables": [table("orders"), table("customers")],
                        **extract("Orders and Customers"),
                    },
                    "Sales/Targets Live": {"tables": [table("targets")]},
                },
                "workbooks": {
                    "Sales/Order Desk": {
                        "embedded": {
                            "Desk extract": {
                                "tables": [table("orders"), table("customers")],
                                "has_extracts": True,
                                **extract("Order Desk"),
                            }
                        }
                    }
                },
                **seed.pop("metadata_api", {}),
            },
            **seed,
        )  # fmt: skip
        self.workspace = Workspace(self.standin, tmp_path)
        self.workspace.create_pool(["pat-1"])

    def key(self, table: str) -> str:
        return f"athena://awsdatacatalog/{self.schema}/{table}"

    def write(self, **entry: Any) -> str:
        return self.workspace.write_domains({"sales": entry})


def assets_of(standin_url: str, *, expected: int) -> dict[str, Any]:
    """Tableau asset key → its latest materialization event (succeeded or failed) on the session server."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    prefix = content_key(standin_url, SITE, "datasource", "x").split("/datasource/")[0]

    def read() -> dict[str, Any] | None:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(prefix=["prefect.asset.materialization."]),
                    resource=EventResourceFilter(id_prefix=[prefix]),
                ),
                limit=50,
            )
        found = {event.resource.id: event for event in reversed(page.events)}
        return found if len(found) >= expected else None

    return wait_for(read, timeout=30, what=f"{expected} Tableau asset events")


def emit_materialization(key: str, occurred: dt.datetime) -> None:
    from prefect.events import emit_event

    emit_event(event=MATERIALIZED_EVENT, resource={"prefect.resource.id": key}, occurred=occurred)


@pytest.mark.slow(seconds=8)
def test_lineage_content_is_merged_with_the_lists_refreshed_and_recorded_as_assets(make_standin, tmp_path):
    site = Lineage(make_standin, tmp_path)
    unknown = site.key("returns")
    config = site.write(
        upstream_tables=[site.key("orders"), site.key("customers"), site.key("targets"), unknown],
        datasources=[{"project": "Sales", "name": "Orders"}, {"project": "Ops", "name": "Inventory"}],
    )

    state = refresh_domain("sales", config, FAST, return_state=True)
    summary = state.result()

    rows = {f"{r.kind} {r.project}/{r.content}": r for r in summary.refreshes}
    # Sales/Orders is listed and downstream: once. Targets Live is live: no extract, not refreshed.
    assert list(rows) == [
        "datasource Sales/Orders",
        "datasource Ops/Inventory",
        "datasource Sales/Orders and Customers",
        "workbook Sales/Order Desk",
    ]
    assert all(r.status == "succeeded" for r in rows.values())
    assert rows["datasource Sales/Orders"].brought_in_by == f"list, {site.key('orders')}"
    assert rows["datasource Ops/Inventory"].brought_in_by == "list"
    assert rows["workbook Sales/Order Desk"].tables == sorted([site.key("customers"), site.key("orders")])
    assert summary.tables_without_extracts == [site.key("targets"), unknown]
    assert summary.changed_tables is None
    assert site.standin.audit()["jobs_created"] == {
        "datasource:Sales/Orders": 1,
        "datasource:Ops/Inventory": 1,
        "datasource:Sales/Orders and Customers": 1,
        "workbook:Sales/Order Desk": 1,
    }

    table = run_artifact(state.state_details.flow_run_id, "tableau-refresh-sales")
    brought = {row["content"]: row["brought in by"] for row in json.loads(table.data)}
    assert brought["datasource Ops/Inventory"] == "list"
    assert (
        brought["datasource Sales/Orders and Customers"] == f"{site.key('customers')}, {site.key('orders')}"
    )
    assert f"WARNING no extract downstream of {site.key('targets')}, {unknown}" in table.description

    # Each content is an asset downstream of its tables, with its name, Tableau URL and owner.
    events = assets_of(site.standin.url, expected=4)
    desk = events[
        content_key(site.standin.url, SITE, "workbook", content_id("workbook", "Sales", "Order Desk"))
    ]
    assert desk.event == "prefect.asset.materialization.succeeded"
    assert desk.resource["prefect.resource.name"] == "Order Desk"
    assert desk.resource["prefect.asset.url"].startswith(site.standin.url)
    assert json.loads(desk.resource["prefect.asset.owners"]) == ["admin"]
    assert {r.id for r in desk.related if r.role == "asset"} == {site.key("orders"), site.key("customers")}
    assert desk.payload["job_id"] == rows["workbook Sales/Order Desk"].job_id
    inventory = events[
        content_key(site.standin.url, SITE, "datasource", content_id("datasource", "Ops", "Inventory"))
    ]
    assert not [r for r in inventory.related if r.role == "asset"]  # listed by hand: no known tables


@pytest.mark.slow(seconds=7)
def test_an_asset_triggered_run_refreshes_only_what_is_downstream_of_the_burst(make_standin, tmp_path):
    site = Lineage(make_standin, tmp_path)
    config = site.write(upstream_tables=[site.key("orders"), site.key("customers")], debounce_seconds=10)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # An earlier burst (orders, 40 s before: beyond the 10 s debounce) and this one: customers, 4 s apart.
    emit_materialization(site.key("orders"), now - dt.timedelta(seconds=44))
    emit_materialization(site.key("customers"), now - dt.timedelta(seconds=4))
    emit_materialization(site.key("customers"), now)
    keys = [site.key("orders"), site.key("customers")]
    wait_for(lambda: len(last_materializations(keys)) == 2, what="the materializations stored")
    assert materialization_burst(keys, now, 10) == {site.key("customers"): now}
    assert set(materialization_burst(keys, now, 60)) == set(keys)  # a longer debounce chains both bursts

    summary = refresh_domain(
        "sales", config, FAST, materialization=Materialization(asset_key=site.key("customers"), occurred=now)
    )

    assert summary.changed_tables == [site.key("customers")]
    # Orders (on orders only) is not downstream of customers.
    assert [(r.kind, r.content) for r in summary.refreshes] == [
        ("datasource", "Orders and Customers"),
        ("workbook", "Order Desk"),
    ]
    assert summary.refreshes[0].tables == [site.key("customers"), site.key("orders")]  # its dependencies
    assert summary.refreshes[0].brought_in_by == site.key("customers")


@pytest.mark.slow(seconds=7)
def test_stale_only_skips_content_whose_tables_did_not_change_since_its_extract_refresh(
    make_standin, tmp_path
):
    site = Lineage(
        make_standin,
        tmp_path,
        refresh_times={"Orders": "2026-12-01T06:00:00Z", "Orders and Customers": "2026-12-01T06:00:00Z"},
    )
    config = site.write(upstream_tables=[site.key("orders"), site.key("customers")], refresh="stale_only")
    emit_materialization(
        site.key("orders"), dt.datetime(2026, 12, 1, 5, 0, tzinfo=dt.UTC)
    )  # before the refreshes
    emit_materialization(site.key("customers"), dt.datetime(2026, 12, 1, 7, 0, tzinfo=dt.UTC))  # after them
    keys = [site.key("orders"), site.key("customers")]
    wait_for(lambda: len(last_materializations(keys)) == 2, what="the materializations stored")

    state = refresh_domain("sales", config, FAST, return_state=True)
    summary = state.result()

    status = {r.content: r.status for r in summary.refreshes}
    assert status == {
        "Orders": "up to date",  # orders last materialized 05:00, its extract refreshed 06:00
        "Orders and Customers": "succeeded",  # customers materialized 07:00, after its 06:00 refresh
        "Order Desk": "succeeded",  # its extract has no refresh time: refreshed, the safe side
    }
    assert "Orders" not in {k.split(":")[1].split("/")[1] for k in site.standin.audit()["jobs_created"]}
    description = run_artifact(state.state_details.flow_run_id, "tableau-refresh-sales").description
    assert "2/2 succeeded, 1 up to date (skipped: refresh stale_only)" in description
    assets = assets_of(site.standin.url, expected=2)
    assert (
        content_key(site.standin.url, SITE, "datasource", content_id("datasource", "Sales", "Orders"))
        not in assets
    )


def test_metadata_api_off_is_a_clear_error_and_nothing_starts(make_standin, tmp_path):
    site = Lineage(make_standin, tmp_path, metadata_api={"enabled": False})
    config = site.write(
        upstream_tables=[site.key("orders")], datasources=[{"project": "Ops", "name": "Inventory"}]
    )

    with pytest.raises(MetadataApiError, match="tsm maintenance metadata-services enable"):
        refresh_domain("sales", config, FAST)
    assert site.standin.audit()["jobs_created"] == {}


@pytest.mark.slow(seconds=6)
def test_a_failed_refresh_fails_the_run_and_emits_the_failed_materialization(make_standin, tmp_path):
    site = Lineage(make_standin, tmp_path, failing="ODBC error: login failed")
    config = site.write(upstream_tables=[site.key("orders")])

    with pytest.raises(DomainRefreshError, match="datasource Sales/Orders: failed .ODBC error"):
        refresh_domain("sales", config, FAST)

    events = assets_of(site.standin.url, expected=3)
    orders = events[
        content_key(site.standin.url, SITE, "datasource", content_id("datasource", "Sales", "Orders"))
    ]
    assert orders.event == "prefect.asset.materialization.failed"
    assert orders.payload["notes"] == "ODBC error: login failed"
    desk = events[
        content_key(site.standin.url, SITE, "workbook", content_id("workbook", "Sales", "Order Desk"))
    ]
    assert desk.event == "prefect.asset.materialization.succeeded"
