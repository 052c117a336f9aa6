"""The Tableau metadata extractor against the Tableau stand-in and a real Prefect server, including a
collection while domain refreshes hold the other PATs.

The stand-in's audit says what Tableau saw: sign-ins per PAT, sessions and every 401002.
"""

from __future__ import annotations

import csv
import datetime as dt
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from conftest import SITE, Workspace

from blocks.loading import BlockNotFoundError
from devstack.tableau.config import content_id, project_id, schedule_id, site_id, user_id, view_id
from flows.tableau.refresh import refresh_domain
from tasks.metadata.extract_files import write_extracts
from tasks.metadata.extractors.tableau import (
    CONNECTION_COLUMNS,
    DATASOURCE_COLUMNS,
    PROJECT_COLUMNS,
    SITE_COLUMNS,
    TASK_COLUMNS,
    USER_COLUMNS,
    VIEW_COLUMNS,
    WORKBOOK_COLUMNS,
    TableauExtractor,
)
from tasks.metadata.extracts import ExtractorConnectionError
from tasks.metadata.hwm import Window
from tasks.metadata.lineage import tableau as lineage
from tasks.tableau.pat_pool import PatLeaseTimeoutError, lease_pat, load_pool
from tasks.tableau.refresh import DomainRefreshError, PollPolicy
from tasks.tableau.session import TableauSession

FAST = PollPolicy(initial_interval=0.1, max_interval=0.5, backoff=1.5, rate_limit_default_wait=0.2)
END = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
START = END - dt.timedelta(days=1)

SNOWFLAKE = {
    "type": "snowflake",
    "server_address": "acme.snowflakecomputing.com",
    "server_port": 443,
    "username": "TABLEAU_SVC",
    "embed_password": False,
}


def site_content(orders_seconds: float = 60) -> dict[str, Any]:
    """Users, 3 projects, 3 data sources (4 connections, 2 scheduled tasks), 2 workbooks (5 views)."""
    return {
        "users": [
            {"name": "admin", "password": "pw", "full_name": "Site Admin", "email": "admin@example.com"},
            {"name": "analyst", "password": "pw", "site_role": "Explorer"},
        ],
        "projects": ["Sales", "Marketing"],
        "datasources": [
            {
                "project": "Sales",
                "name": "Orders",
                "tags": ["sales", "daily"],
                "duration_seconds": orders_seconds,
            },
            {
                "project": "Sales",
                "name": "Leads",
                "refresh_schedule": "Weekly",
                "connections": [SNOWFLAKE, {}],
            },
            {"project": "Marketing", "name": "Campaigns", "refresh_schedule": None},
        ],
        "workbooks": [
            {"project": "Sales", "name": "Sales Overview"},
            {"project": "Marketing", "name": "Funnel", "views": ["Top", "Middle", "Bottom"]},
        ],
    }


def ds_id(name: str, project: str = "Sales") -> str:
    return content_id("datasource", project, name)


def wb_id(name: str, project: str = "Sales") -> str:
    return content_id("workbook", project, name)


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        began = time.monotonic()
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - began

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_no_401002_and_no_pat_shared(audit: dict) -> None:
    """Tableau never saw a superseded, expired or unknown token, and every PAT session ended by
    sign-out before the next sign-in with that PAT began."""
    counters = ("invalidated_token_requests", "expired_token_requests", "unauthenticated_requests")
    assert {c: audit[c] for c in counters} == dict.fromkeys(counters, 0)
    sessions = defaultdict(list)
    for session in audit["sessions"]:
        sessions[session["pat"]].append(session)
    for pat, held in sessions.items():
        held.sort(key=lambda s: s["signed_in_at"])
        assert all(s["end_reason"] == "signed_out" for s in held), (pat, held)
        for earlier, later in zip(held, held[1:], strict=False):
            assert earlier["ended_at"] <= later["signed_in_at"], (pat, earlier, later)


def rows(extracts, entity: str) -> list[dict[str, Any]]:
    extract = next(e for e in extracts if e.entity == entity)
    return [dict(zip(extract.columns, row, strict=True)) for row in extract.rows]


# --- every entity, one sign-in ---------------------------------------------------------------------


def test_extracts_every_entity_with_one_sign_in(make_standin, tmp_path):
    standin = make_standin(**site_content())
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1", "pat-2"])

    extractor = TableauExtractor("tableau-test", workspace.pool_block, page_size=2)  # several pages
    extractor.test_connection()
    before = standin.audit()
    extracts = extractor.run(START, END)

    assert [(e.entity, e.columns) for e in extracts] == [
        ("sites", SITE_COLUMNS),
        ("projects", PROJECT_COLUMNS),
        ("workbooks", WORKBOOK_COLUMNS),
        ("views", VIEW_COLUMNS),
        ("datasources", DATASOURCE_COLUMNS),
        ("datasource_connections", CONNECTION_COLUMNS),
        ("users", USER_COLUMNS),
        ("extract_refresh_tasks", TASK_COLUMNS),
        ("lineage_assets", lineage.ASSET_COLUMNS),
        ("table_lineage", lineage.TABLE_LINEAGE_COLUMNS),
        ("column_lineage", lineage.COLUMN_LINEAGE_COLUMNS),
        ("custom_sql", lineage.CUSTOM_SQL_COLUMNS),
        ("table_usage", lineage.TABLE_USAGE_COLUMNS),
        ("column_usage", lineage.COLUMN_USAGE_COLUMNS),
        ("openlineage", ("event",)),
    ]
    assert extractor.problems == []
    # The Metadata API's lineage, with the REST content's ids: each data source's table (the stand-in's
    # default lineage) → the data source → the embedded data source of each workbook of its project → sheets.
    assets = {(a["asset_type"], a["name"]): a for a in rows(extracts, "lineage_assets")}
    assert assets[("published_datasource", "Orders")]["luid"] == ds_id("Orders")
    assert assets[("sheet", "Top")]["luid"] == view_id("Marketing", "Funnel", "Top")
    assert (
        assets[("database_table", "leads")]["connection_type"],
        assets[("database_table", "leads")]["openlineage_namespace"],
    ) == (
        "snowflake",
        "snowflake://acme",
    )
    # ... and as OpenLineage runs: a job per published data source and per workbook, the tables in
    events = [r["event"] for r in rows(extracts, "openlineage")]
    runs = {e["job"]["name"]: e for e in events if e.get("eventType") == "COMPLETE"}
    site = SITE
    assert set(runs) == {
        *(f"{site}/datasources/{p}/{n}" for p, n in (("Sales", "Orders"), ("Sales", "Leads"), ("Marketing", "Campaigns"))),
        *(f"{site}/workbooks/{p}/{n}" for p, n in (("Sales", "Sales Overview"), ("Marketing", "Funnel"))),
    }  # fmt: skip
    assert {e["job"]["namespace"] for e in runs.values()} == {"tableau-test"}  # the source's name
    leads = runs[f"{site}/datasources/Sales/Leads"]
    assert [(i["namespace"], i["name"].rsplit(".", 1)[-1]) for i in leads["inputs"]] == [
        ("snowflake://acme", "leads")
    ]
    assert [o["name"] for o in leads["outputs"]] == [f"{site}/datasources/Sales/Leads"]
    ids = {(a["asset_type"], a["asset_id"]): a["name"] for a in rows(extracts, "lineage_assets")}
    named_edges = {
        (ids[(e["upstream_type"], e["upstream_id"])], ids[(e["downstream_type"], e["downstream_id"])])
        for e in rows(extracts, "table_lineage")
    }
    assert {
        ("orders", "Orders"),
        ("Orders", "Orders"),
        ("leads", "Leads"),
        ("campaigns", "Campaigns"),
    } <= named_edges
    assert ("Campaigns", "Top") in named_edges
    assert ("Orders", "Overview") in named_edges
    assert {
        u["table_name"]: (u["datasource_count"], u["workbook_count"], u["sheet_count"])
        for u in rows(extracts, "table_usage")
    } == {
        "orders": (2, 1, 2),
        "leads": (2, 1, 0),
        "campaigns": (2, 1, 3),
    }
    assert rows(extracts, "sites") == [
        {
            "site_id": site_id(SITE),
            "name": SITE,
            "content_url": SITE,
            "state": "Active",
            "admin_mode": "ContentAndUsers",
        }
    ]
    admin = user_id("admin")
    projects = rows(extracts, "projects")
    assert [(p["project_id"], p["name"], p["owner_id"]) for p in projects] == [
        (project_id(name), name, admin) for name in ("default", "Sales", "Marketing")
    ]
    assert all(p["parent_project_id"] is None and p["top_level_project"] for p in projects)

    workbooks = rows(extracts, "workbooks")
    assert [
        (w["workbook_id"], w["name"], w["project_id"], w["project_name"], w["default_view_id"])
        for w in workbooks
    ] == [
        (
            wb_id("Sales Overview"),
            "Sales Overview",
            project_id("Sales"),
            "Sales",
            view_id("Sales", "Sales Overview", "Overview"),
        ),
        (
            wb_id("Funnel", "Marketing"),
            "Funnel",
            project_id("Marketing"),
            "Marketing",
            view_id("Marketing", "Funnel", "Top"),
        ),
    ]
    assert workbooks[0]["content_url"] == "SalesOverview"
    assert workbooks[0]["owner_id"] == admin

    views = rows(extracts, "views")
    assert [(v["name"], v["workbook_name"], v["project_name"], v["content_url"]) for v in views] == [
        ("Overview", "Sales Overview", "Sales", "SalesOverview/sheets/Overview"),
        ("Details", "Sales Overview", "Sales", "SalesOverview/sheets/Details"),
        ("Top", "Funnel", "Marketing", "Funnel/sheets/Top"),
        ("Middle", "Funnel", "Marketing", "Funnel/sheets/Middle"),
        ("Bottom", "Funnel", "Marketing", "Funnel/sheets/Bottom"),
    ]
    assert views[2]["view_id"] == view_id("Marketing", "Funnel", "Top")
    assert {(v["workbook_id"], v["project_id"], v["owner_id"]) for v in views[2:]} == {
        (wb_id("Funnel", "Marketing"), project_id("Marketing"), admin)
    }

    datasources = rows(extracts, "datasources")
    assert [(d["datasource_id"], d["name"], d["project_name"], d["tags"]) for d in datasources] == [
        (ds_id("Orders"), "Orders", "Sales", ["daily", "sales"]),
        (ds_id("Leads"), "Leads", "Sales", []),
        (ds_id("Campaigns", "Marketing"), "Campaigns", "Marketing", []),
    ]
    assert {(d["datasource_type"], d["has_extracts"], d["owner_id"]) for d in datasources} == {
        ("hyper", True, admin)
    }

    connections = rows(extracts, "datasource_connections")
    assert [
        (
            c["datasource_name"],
            c["connection_type"],
            c["server_address"],
            c["server_port"],
            c["username"],
            c["embed_password"],
        )
        for c in connections
    ] == [
        ("Orders", "postgres", "postgres.example.internal", 5432, "tableau_reader", True),
        ("Leads", "snowflake", "acme.snowflakecomputing.com", 443, "TABLEAU_SVC", False),
        ("Leads", "postgres", "postgres.example.internal", 5432, "tableau_reader", True),
        ("Campaigns", "postgres", "postgres.example.internal", 5432, "tableau_reader", True),
    ]
    assert connections[1]["datasource_id"] == ds_id("Leads")
    assert len({c["connection_id"] for c in connections}) == 4
    assert not any("password" in column and column != "embed_password" for column in CONNECTION_COLUMNS)

    users = {u["name"]: u for u in rows(extracts, "users")}
    assert {n: (u["user_id"], u["site_role"]) for n, u in users.items()} == {
        "admin": (admin, "SiteAdministratorCreator"),
        "analyst": (user_id("analyst"), "Explorer"),
        **{p: (user_id(p), "SiteAdministratorCreator") for p in ("pat-1", "pat-2", "pat-3")},
    }
    assert (users["admin"]["full_name"], users["admin"]["email"], users["admin"]["last_login"]) == (
        "Site Admin",
        "admin@example.com",
        None,
    )
    signed_in = [p for p in ("pat-1", "pat-2") if users[p]["last_login"] is not None]
    assert signed_in  # the PATs used by test_connection and run

    tasks = {t["target_name"]: t for t in rows(extracts, "extract_refresh_tasks")}
    assert set(tasks) == {"Orders", "Leads"}  # Campaigns has no schedule
    orders, leads = tasks["Orders"], tasks["Leads"]
    assert (
        orders["target_type"],
        orders["target_id"],
        orders["priority"],
        orders["consecutive_failed_count"],
    ) == (
        "datasource",
        ds_id("Orders"),
        50,
        0,
    )
    assert (
        orders["schedule_id"],
        orders["schedule_name"],
        orders["schedule_state"],
        orders["schedule_frequency"],
    ) == (
        schedule_id("Daily"),
        "Daily refresh at 06:00 UTC",
        "Active",
        "Daily",
    )
    assert (leads["schedule_frequency"], leads["schedule_interval"], leads["schedule_start_time"]) == (
        "Weekly",
        ["Monday"],
        "06:00:00",
    )
    assert leads["schedule_next_run_at"].weekday() == 0
    assert leads["schedule_next_run_at"].hour == 6

    # Times are aware UTC datetimes.
    stamped = [workbooks[0]["created_at"], views[0]["updated_at"], datasources[0]["updated_at"]]
    assert all(isinstance(t, dt.datetime) and t.tzinfo is dt.UTC for t in stamped)

    # One lease, one sign-in, signed out; no 401002 anywhere.
    audit = standin.audit()
    run_sign_ins = sum(audit["sign_ins"].values()) - sum(before["sign_ins"].values())
    assert run_sign_ins == 1
    assert len(audit["sessions"]) == 2  # test_connection's and run's
    assert_no_401002_and_no_pat_shared(audit)

    # The collector can write every entity as CSV.
    written = write_extracts(extracts, tmp_path / "out", "tableau-test", Window(START, END), compress=False)
    assert {f.entity: f.rows for f in written} == {
        "sites": 1,
        "projects": 3,
        "workbooks": 2,
        "views": 5,
        "datasources": 3,
        "datasource_connections": 4,
        "users": 5,
        "extract_refresh_tasks": 2,
        # 3 tables, 3 published and 3 embedded data sources, 5 sheets
        "lineage_assets": 14,
        "table_lineage": 3 + 3 + 5,
        # 4 columns → fields of each data source, published → embedded fields, 2 fields per sheet
        "column_lineage": 12 + 12 + 5 * 2,
        "custom_sql": 0,
        "table_usage": 3,
        "column_usage": 12,
        "openlineage": 3 + 3 + 5 + 2 * (3 + 2),  # DatasetEvents; START, COMPLETE per data source, workbook
    }
    with open(next(f.path for f in written if f.entity == "datasources"), encoding="utf-8") as file:
        first = next(csv.DictReader(file))
    assert (first["tags"], first["created_at"][-1]) == ('["daily","sales"]', "Z")


def test_consecutive_failures_of_a_scheduled_refresh_are_reported(make_standin, tmp_path):
    standin = make_standin(
        datasources=[
            {"project": "Sales", "name": "Broken", "duration_seconds": 5, "fail_notes": "ODBC: login failed"}
        ],
        workbooks=[],
        projects=["Sales"],
    )
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1"])
    config = workspace.write_domains({"sales": {"datasources": [{"project": "Sales", "name": "Broken"}]}})
    for _ in range(2):
        with pytest.raises(DomainRefreshError, match="Sales/Broken: failed"):
            refresh_domain("sales", config, FAST)

    extracts = TableauExtractor("tableau-test", workspace.pool_block).run(START, END)

    (task,) = rows(extracts, "extract_refresh_tasks")
    assert (task["target_name"], task["consecutive_failed_count"]) == ("Broken", 2)
    assert_no_401002_and_no_pat_shared(standin.audit())


def test_an_expired_token_mid_run_signs_in_again_once_and_the_run_completes(
    make_standin, tmp_path, monkeypatch
):
    standin = make_standin(**site_content())
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1"])
    fetch_connections = TableauExtractor._connections
    expired = []

    def expire_first(server, datasource):
        if not expired:  # Tableau's idle timeout strikes between two requests of the run
            expired.append(standin.expire_sessions())
        return fetch_connections(server, datasource)

    monkeypatch.setattr(TableauExtractor, "_connections", staticmethod(expire_first))
    extracts = TableauExtractor("tableau-test", workspace.pool_block, page_size=1).run(START, END)

    assert expired == [1]
    assert len(rows(extracts, "datasource_connections")) == 4
    assert len(rows(extracts, "users")) == 5
    audit = standin.audit()
    assert audit["sign_ins"] == {"pat-1": 2}  # the run's sign-in, and one more after the expiry
    assert (audit["expired_token_requests"], audit["invalidated_token_requests"]) == (1, 0)


# --- §6: the collector while domain refreshes hold other PATs --------------------------------------


def test_collects_while_a_domain_refresh_holds_the_other_pat(make_standin, tmp_path):
    standin = make_standin(**site_content(orders_seconds=400))  # the refresh polls for ~4 s
    workspace = Workspace(standin, tmp_path)
    workspace.create_pool(["pat-1", "pat-2"])
    config = workspace.write_domains({"sales": {"datasources": [{"project": "Sales", "name": "Orders"}]}})

    refresh, refreshed = in_thread(refresh_domain, "sales", config, FAST)
    wait_until(lambda: len(standin.audit()["jobs"]) == 1, what="the domain refresh's job")
    extracts = TableauExtractor("tableau-test", workspace.pool_block).run(START, END)
    refresh.join(60)

    assert "error" not in refreshed, refreshed.get("error")
    assert len(rows(extracts, "datasources")) == 3
    audit = standin.audit()
    refresh_session, extractor_session = audit["sessions"]
    assert refresh_session["pat"] != extractor_session["pat"]
    # The extraction ran while the refresh held its PAT: their sessions overlapped in time.
    assert refresh_session["signed_in_at"] < extractor_session["signed_in_at"] < refresh_session["ended_at"]
    assert audit["sign_ins"] == {"pat-1": 1, "pat-2": 1}
    assert_no_401002_and_no_pat_shared(audit)


def test_with_every_pat_leased_the_extractor_waits_for_a_lease(make_standin, tmp_path):
    standin = make_standin(**site_content(orders_seconds=600))  # the refresh holds its PAT ~6 s
    workspace = Workspace(standin, tmp_path)
    pool = workspace.create_pool(["pat-1", "pat-2"], acquire_timeout_seconds=60)
    config = workspace.write_domains({"sales": {"datasources": [{"project": "Sales", "name": "Orders"}]}})

    refresh, refreshed = in_thread(refresh_domain, "sales", config, FAST)
    wait_until(lambda: len(standin.audit()["jobs"]) == 1, what="the domain refresh's job")
    _, pats = load_pool(workspace.pool_block, needed_by="the test")
    with (
        lease_pat(pool, pool_block_name=workspace.pool_block) as lease,
        TableauSession(pool.site, pats[lease.pat_block_name], lease.pat_block_name) as session,
    ):
        extraction, extracted = in_thread(
            TableauExtractor("tableau-test", workspace.pool_block).run, START, END
        )
        for _ in range(15):  # another holder polling with its own token for 1.5 s
            session.call(session.server.jobs.get)
            time.sleep(0.1)
        assert extraction.is_alive()
        assert sum(standin.audit()["sign_ins"].values()) == 2  # the extractor has not signed in
    extraction.join(60)
    refresh.join(60)

    assert "error" not in extracted, extracted.get("error")
    assert "error" not in refreshed, refreshed.get("error")
    assert extracted["seconds"] >= 1.5
    audit = standin.audit()
    first_free = min(s["ended_at"] for s in audit["sessions"][:2])
    extractor_session = audit["sessions"][2]
    assert extractor_session["signed_in_at"] >= first_free  # signed in only once a PAT was released
    assert sum(audit["sign_ins"].values()) == 3
    assert_no_401002_and_no_pat_shared(audit)


def test_the_wait_for_a_lease_is_bounded_by_the_pools_acquire_timeout(standin, workspace):
    pool = workspace.create_pool(["pat-1", "pat-2"], acquire_timeout_seconds=1)
    extractor = TableauExtractor("tableau-test", workspace.pool_block)
    with (
        lease_pat(pool, pool_block_name=workspace.pool_block),
        lease_pat(pool, pool_block_name=workspace.pool_block),
    ):
        began = time.monotonic()
        with pytest.raises(PatLeaseTimeoutError, match="No PAT of pool"):
            extractor.run(START, END)
        assert time.monotonic() - began < 15
        with pytest.raises(ExtractorConnectionError, match=rf"'{workspace.pool_block}'.*No PAT of pool.*1 s"):
            extractor.test_connection()
    assert standin.audit()["sign_ins"] == {}  # never signed in with a busy PAT


# --- bad input: a clear error ----------------------------------------------------------------------


def test_missing_pool_block(standin, workspace):
    extractor = TableauExtractor("tableau-test", workspace.pool_block)
    with pytest.raises(ExtractorConnectionError, match=rf"Tableau PAT Pool block '{workspace.pool_block}'"):
        extractor.test_connection()
    with pytest.raises(BlockNotFoundError, match="needed by Tableau collector 'tableau-test'"):
        extractor.run(START, END)


def test_missing_concurrency_limits(standin, workspace):
    workspace.create_pool(["pat-1"], bootstrap=False)
    with pytest.raises(ExtractorConnectionError, match=r"does not exist.*deployments.bootstrap"):
        TableauExtractor("tableau-test", workspace.pool_block).test_connection()
    assert standin.audit()["sign_ins"] == {}


def test_wrong_pat_secret_names_the_pat_block_and_401001(standin, workspace):
    workspace.create_pool(["pat-1"], secrets={"pat-1": "not-the-secret"})
    with pytest.raises(
        ExtractorConnectionError, match=rf"PAT block '{workspace.pat_block('pat-1')}'.*401001"
    ) as raised:
        TableauExtractor("tableau-test", workspace.pool_block).test_connection()
    assert "not-the-secret" not in str(raised.value)
    assert f"site '{SITE}'" in str(raised.value)


def test_unreachable_server_names_the_site(standin, workspace, unused_port):
    from blocks import TableauSite

    pool = workspace.create_pool(["pat-1"])
    pool.site = TableauSite(
        server_url=f"http://127.0.0.1:{unused_port}", site_content_url=SITE, api_version="3.29"
    )
    pool.save(workspace.pool_block, overwrite=True)
    with pytest.raises(
        ExtractorConnectionError, match=rf"cannot reach site '{SITE}' of http://127.0.0.1:{unused_port}"
    ):
        TableauExtractor("tableau-test", workspace.pool_block).test_connection()


def test_page_size_is_tableaus_range():
    with pytest.raises(ValueError, match="1 to 1000"):
        TableauExtractor("tableau-test", "pool", page_size=1001)
