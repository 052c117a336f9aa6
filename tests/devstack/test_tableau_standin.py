"""The Tableau stand-in (devstack/tableau) against what it stands in for: Tableau's official REST API
3.29 schema, tableauserverclient (TSC) driving it for real, TSC's own response fixtures, and the
documented failure modes (docs/architecture.md, "Tableau refresh").

Every XML body served during a test is validated against the schema when the test ends; the only
tolerated deviations are the two asserted in `assert_schema_valid`.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import requests
import tableauserverclient as TSC
from lxml import etree
from tableauserverclient.server.endpoint.exceptions import JobFailedException, ServerResponseError

from devstack.tableau import TableauStandIn, load_config
from devstack.tableau.config import content_id, project_id, schedule_id, site_id, user_id, view_id

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "tableau"  # sources: tests/fixtures/README.md
XSD = FIXTURES / "ts-api_3_29.xsd"
TSC_ASSETS = FIXTURES / "tsc-assets"
NS = {"t": "http://tableau.com/api"}
XML_CONTENT_TYPE = "application/xml;charset=utf-8"

SITE = "analytics"
PAT, SECRET = "pat-1", "s3cret-1"
CLIENT_ID, SECRET_ID = "ca-client", "ca-secret-1"
SECRET_VALUE = "ca-secret-value-1-at-least-32-bytes-long"  # HS256 keys of 32 bytes or more (RFC 7518)
OTHER_SECRET = "another-secret-value-at-least-32-bytes-long"


def make_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "site_content_url": SITE,
        "time_scale": 1000,  # a 600 s refresh takes 0.6 s
        "pats": [{"name": PAT, "secret": SECRET}, {"name": "pat-2", "secret": "s3cret-2"}],
        "users": [{"name": "admin", "password": "pw"}],
        "connected_apps": [
            {"client_id": CLIENT_ID, "secrets": [{"id": SECRET_ID, "value": SECRET_VALUE}]},
            {"client_id": "ca-disabled", "secrets": [{"id": "s", "value": OTHER_SECRET}], "enabled": False},
        ],
        "projects": ["Sales", "Marketing"],
        "datasources": [
            {"project": "Sales", "name": "Orders", "duration_seconds": 600},
            {"project": "Sales", "name": "Leads", "duration_seconds": [300, 900]},
            {
                "project": "Sales",
                "name": "Broken",
                "duration_seconds": 60,
                "fail_notes": "ODBC: login failed",
            },
            {"project": "Sales", "name": "Bridged", "duration_seconds": 60, "finish_code": 3},
            {"project": "Marketing", "name": "Orders", "duration_seconds": 600},
        ],
        "workbooks": [{"project": "Sales", "name": "Sales Overview", "duration_seconds": 120}],
    }
    return config | overrides


# -- schema -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))


def schema_errors(schema: etree.XMLSchema, body: bytes) -> list[str]:
    schema.validate(etree.fromstring(body))
    return [error.message for error in schema.error_log]


def assert_schema_valid(schema: etree.XMLSchema, response: requests.Response) -> None:
    """The body validates against ts-api_3_29.xsd, except three deliberate, exact deviations:
    - serverInfo: the schema types restApiVersion with the build-number pattern, but Tableau sends
      "3.29" there and TSC uses that text as the URL version;
    - Query Jobs and Query Views for Site: the schema admits <backgroundJobs> and <views> only without
      <pagination>; Tableau's documented responses and TSC (Pager, QuerySet) have pagination first.
    """
    assert response.headers["Content-Type"] == XML_CONTENT_TYPE
    assert response.content.startswith(
        b"<?xml version='1.0' encoding='UTF-8'?><tsResponse xmlns=\"http://tableau.com/api\""
    )
    found = schema_errors(schema, response.content)
    path, method = urlsplit(response.url).path, response.request.method
    if response.status_code == 200 and path.endswith("/serverInfo"):
        assert found, found
        assert all("restApiVersion" in e and "'3.29'" in e for e in found), found
    elif response.status_code == 200 and method == "GET" and path.endswith("/jobs"):
        assert len(found) == 1, found
        assert "backgroundJobs': This element is not expected" in found[0], found
    elif response.status_code == 200 and method == "GET" and path.endswith("/views"):
        assert len(found) == 1, found
        assert "views': This element is not expected" in found[0], found
    else:
        assert found == [], f"{method} {path}: {found}"


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def served() -> list[requests.Response]:
    """Every response the stand-in gave to this test's clients."""
    return []


@pytest.fixture
def new_session(served: list[requests.Response]) -> Callable[[], requests.Session]:
    def factory() -> requests.Session:
        session = requests.Session()
        session.hooks["response"].append(lambda response, *args, **kwargs: served.append(response))
        return session

    return factory


@pytest.fixture
def http(new_session: Callable[[], requests.Session]) -> requests.Session:
    return new_session()


@pytest.fixture
def start(
    schema: etree.XMLSchema, served: list[requests.Response]
) -> Iterator[Callable[..., TableauStandIn]]:
    """Start a stand-in with `make_config(**overrides)`; at the end stop it and check every XML body."""
    started: list[TableauStandIn] = []

    def start(**overrides: Any) -> TableauStandIn:
        standin = TableauStandIn(load_config(make_config(**overrides))).start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()
    xml_responses = [
        r for r in served if r.content and not r.headers["Content-Type"].startswith("application/json")
    ]
    for response in xml_responses:
        assert_schema_valid(schema, response)


@pytest.fixture
def sign_in(new_session: Callable[[], requests.Session]) -> Callable[..., TSC.Server]:
    def sign_in(standin: TableauStandIn, pat: str = PAT, secret: str = SECRET) -> TSC.Server:
        server = TSC.Server(standin.url, use_server_version=True, session_factory=new_session)
        server.auth.sign_in(TSC.PersonalAccessTokenAuth(pat, secret, site_id=SITE))
        return server

    return sign_in


def site_url(server: TSC.Server, path: str) -> str:
    return f"{server.baseurl}/sites/{server.site_id}/{path}"


def auth(server: TSC.Server) -> dict[str, str]:
    return {"X-Tableau-Auth": server.auth_token}


def error_code(response: requests.Response) -> str:
    return etree.fromstring(response.content).find("t:error", NS).get("code")


def audit(http: requests.Session, standin: TableauStandIn) -> dict[str, Any]:
    return http.get(f"{standin.url}/devstack/audit").json()


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


def ds_id(name: str, project: str = "Sales") -> str:
    return content_id("datasource", project, name)


def wb_id(name: str, project: str = "Sales") -> str:
    return content_id("workbook", project, name)


# -- server info, sign-in, sessions -----------------------------------------------------------------


def test_server_info_negotiates_the_api_version(start, sign_in, http, schema) -> None:
    standin = start()
    info = http.get(f"{standin.url}/api/2.4/serverInfo")
    assert info.status_code == 200
    # The one schema deviation of serverInfo, asserted here too: only restApiVersion's pattern.
    errors = schema_errors(schema, info.content)
    assert errors
    assert all("restApiVersion" in e for e in errors)

    server = sign_in(standin)
    assert server.version == "3.29"
    item = server.server_info.get()
    assert (item.product_version, item.build_number) == ("2026.2.0", "20262.26.0101.0000")


def test_sign_in_answers_site_and_user_and_sign_out_ends_the_session(start, sign_in, http) -> None:
    standin = start()
    server = sign_in(standin)
    assert server.site_id == site_id(SITE)
    assert server.user_id == user_id(PAT)
    token = server.auth_token

    server.auth.sign_out()
    response = http.get(
        f"{server.baseurl}/sites/{site_id(SITE)}/datasources", headers={"X-Tableau-Auth": token}
    )
    assert (response.status_code, error_code(response)) == (401, "401002")
    report = audit(http, standin)
    assert report["sessions"][0]["end_reason"] == "signed_out"
    assert report["unauthenticated_requests"] == 1


def test_second_sign_in_with_the_same_pat_invalidates_the_first_token(start, sign_in, http) -> None:
    standin = start()
    first = sign_in(standin)
    second = sign_in(standin)
    assert second.datasources.get()[1].total_available == 5

    with pytest.raises(TSC.FailedSignInError) as raised:
        first.datasources.get()
    assert raised.value.code == "401002"

    other_pat = sign_in(standin, "pat-2", "s3cret-2")  # another PAT leaves pat-1's session alone
    assert second.datasources.get()
    assert other_pat.datasources.get()
    report = audit(http, standin)
    assert report["sign_ins"] == {PAT: 2, "pat-2": 1}
    assert report["invalidated_token_requests"] == 1
    assert [s["end_reason"] for s in report["sessions"]] == ["superseded", None, None]
    assert report["sessions"][0]["ended_at"] == report["sessions"][1]["signed_in_at"]


def test_password_sign_ins_may_hold_several_sessions(start, new_session, http) -> None:
    standin = start()
    servers = [
        TSC.Server(standin.url, use_server_version=True, session_factory=new_session) for _ in range(2)
    ]
    for server in servers:
        server.auth.sign_in(TSC.TableauAuth("admin", "pw", site_id=SITE))
    assert all(server.projects.get()[1].total_available == 3 for server in servers)
    assert audit(http, standin)["user_sign_ins"] == {"admin": 2}


@pytest.mark.parametrize(
    "credentials",
    [
        TSC.PersonalAccessTokenAuth(PAT, "wrong", site_id=SITE),
        TSC.PersonalAccessTokenAuth("pat-unknown", SECRET, site_id=SITE),
        TSC.PersonalAccessTokenAuth(PAT, SECRET, site_id="other-site"),
        TSC.TableauAuth("admin", "wrong", site_id=SITE),
    ],
    ids=["wrong-secret", "unknown-pat", "wrong-site", "wrong-password"],
)
def test_wrong_credentials_fail_with_401001(start, new_session, http, credentials) -> None:
    standin = start()
    server = TSC.Server(standin.url, session_factory=new_session)
    with pytest.raises(TSC.FailedSignInError) as raised:
        server.auth.sign_in(credentials)
    assert raised.value.code == "401001"
    assert audit(http, standin)["failed_sign_ins"] == 1


# -- connected apps (direct trust) -------------------------------------------------------------------

ALL_SCOPES = ["tableau:content:read", "tableau:tasks:run", "tableau:jobs:read", "tableau:jobs:update"]


def make_jwt(
    *, claims: dict[str, Any] | None = None, headers: dict[str, Any] | None = None, key: str = SECRET_VALUE
) -> str:
    """A JWT as a connected app signs it ("Configure Connected Apps with Direct Trust"), with overrides
    (a value of None drops the claim or header)."""
    body = {
        "iss": CLIENT_ID,
        "sub": "admin",
        "aud": "tableau",
        "jti": str(uuid.uuid4()),
        "exp": int(time.time()) + 300,
        "scp": ALL_SCOPES,
        **(claims or {}),
    }
    head = {"kid": SECRET_ID, "iss": CLIENT_ID, **(headers or {})}
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None},
        key,
        algorithm="HS256",
        headers={k: v for k, v in head.items() if v is not None},
    )


@pytest.fixture
def jwt_sign_in(new_session: Callable[[], requests.Session]) -> Callable[..., TSC.Server]:
    def sign_in(standin: TableauStandIn, token: str) -> TSC.Server:
        server = TSC.Server(standin.url, use_server_version=True, session_factory=new_session)
        server.auth.sign_in(TSC.JWTAuth(token, site_id=SITE))
        return server

    return sign_in


def test_jwt_sign_ins_are_independent_sessions_of_the_user(start, jwt_sign_in, http) -> None:
    standin = start()
    first, second = jwt_sign_in(standin, make_jwt()), jwt_sign_in(standin, make_jwt())
    assert first.user_id == user_id("admin")
    assert first.site_id == site_id(SITE)
    assert first.datasources.get()[1].total_available == 5  # a second sign-in ends no session
    assert second.datasources.get()[1].total_available == 5
    report = audit(http, standin)
    assert report["jwt_sign_ins"] == {CLIENT_ID: 2}
    assert [(s["user"], s["connected_app"], s["end_reason"]) for s in report["sessions"]] == [
        ("admin", CLIENT_ID, None),
        ("admin", CLIENT_ID, None),
    ]


@pytest.mark.parametrize(
    ("token", "number"),
    [
        (lambda: make_jwt(key=OTHER_SECRET), 127),  # signature: not the app's secret
        (lambda: make_jwt(headers={"kid": "unknown-secret"}), 127),
        (lambda: make_jwt(headers={"iss": "unknown-app"}, claims={"iss": "unknown-app"}), 126),
        (
            lambda: make_jwt(
                headers={"iss": "ca-disabled", "kid": "s"}, claims={"iss": "ca-disabled"}, key=OTHER_SECRET
            ),
            126,
        ),
        (lambda: make_jwt(headers={"kid": None}), 10083),
        (lambda: "not-a-jwt", 10084),
        (lambda: make_jwt(claims={"aud": "someone-else"}), 16),
        (lambda: make_jwt(claims={"exp": int(time.time()) - 5}), 16),
        (lambda: make_jwt(claims={"exp": int(time.time()) + 660}), 16),  # more than 10 minutes ahead
        (lambda: make_jwt(claims={"jti": None}), 16),
        (lambda: make_jwt(claims={"scp": None}), 16),
        (lambda: make_jwt(claims={"sub": "nobody"}), 5),
    ],
    ids=[
        "wrong-secret-value",
        "unknown-secret-id",
        "unknown-client-id",
        "disabled-app",
        "no-kid-header",
        "not-a-jwt",
        "wrong-aud",
        "expired",
        "exp-over-10-min",
        "no-jti",
        "no-scp",
        "unknown-user",
    ],
)
def test_jwt_refusals_are_401001_with_the_connected_app_error_number(
    start, new_session, http, token, number
) -> None:
    standin = start()
    server = TSC.Server(standin.url, session_factory=new_session)
    with pytest.raises(TSC.FailedSignInError) as raised:
        server.auth.sign_in(TSC.JWTAuth(token(), site_id=SITE))
    assert (raised.value.code, raised.value.summary) == ("401001", "Signin Error")
    assert raised.value.detail == f"Error signing in to Tableau Server ({number})"
    report = audit(http, standin)
    assert report["refused_jwt_sign_ins"] == {str(number): 1}
    assert report["jwt_sign_ins"] == {}


def test_a_reused_jti_is_refused(start, jwt_sign_in, new_session, http) -> None:
    standin = start()
    token = make_jwt()
    jwt_sign_in(standin, token)
    with pytest.raises(TSC.FailedSignInError) as raised:
        TSC.Server(standin.url, session_factory=new_session).auth.sign_in(TSC.JWTAuth(token, site_id=SITE))
    assert raised.value.detail == "Error signing in to Tableau Server (16)"


def test_requests_outside_the_jwt_scopes_get_401002_per_method(start, jwt_sign_in, http) -> None:
    standin = start()
    reader = jwt_sign_in(standin, make_jwt(claims={"scp": ["tableau:content:read"]}))
    assert reader.datasources.get()[1].total_available == 5
    with pytest.raises(TSC.FailedSignInError) as refused:
        reader.datasources.refresh(ds_id("Orders"))  # Update Data Source Now: tableau:tasks:run
    assert refused.value.code == "401002"

    runner = jwt_sign_in(standin, make_jwt(claims={"scp": ["tableau:content:read", "tableau:tasks:*"]}))
    job = runner.datasources.refresh(ds_id("Orders"))  # the wildcard covers tableau:tasks:run
    for call in (lambda: runner.jobs.get_by_id(job.id), lambda: runner.jobs.cancel(job.id)):
        with pytest.raises(TSC.FailedSignInError) as refused:
            call()
        assert refused.value.code == "401002"
    users = http.get(site_url(runner, "users"), headers=auth(runner))
    assert (users.status_code, error_code(users)) == (401, "401002")

    everything = jwt_sign_in(standin, make_jwt(claims={"scp": ALL_SCOPES}))
    assert everything.jobs.get_by_id(job.id).id == job.id
    everything.jobs.cancel(job.id)
    assert audit(http, standin)["out_of_scope_requests"] == {
        "tableau:tasks:run": 1,
        "tableau:jobs:read": 1,
        "tableau:jobs:update": 1,
        "tableau:users:read": 1,
    }


def test_requests_without_a_valid_token_or_for_another_site_are_refused(start, sign_in, http) -> None:
    standin = start()
    server = sign_in(standin)
    missing = http.get(site_url(server, "datasources"))
    unknown = http.get(site_url(server, "datasources"), headers={"X-Tableau-Auth": "not-a-token"})
    other_site = http.get(f"{server.baseurl}/sites/{site_id('elsewhere')}/datasources", headers=auth(server))
    assert [(r.status_code, error_code(r)) for r in (missing, unknown, other_site)] == [
        (401, "401002"),
        (401, "401002"),
        (404, "404000"),
    ]
    assert audit(http, standin)["unauthenticated_requests"] == 2


def test_session_expires_after_the_idle_timeout_measured_from_last_use(start, sign_in, http) -> None:
    standin = start(session_ttl_seconds=1000)  # 1 s real at time_scale 1000
    server = sign_in(standin)
    # Real time passing is the behaviour under test: these sleeps are the idle times.
    for _ in range(4):  # 1.2 s in all, but never idle for 1 s
        time.sleep(0.3)
        assert server.projects.get()
    time.sleep(1.3)  # idle past the timeout
    with pytest.raises(TSC.FailedSignInError) as raised:
        server.projects.get()
    assert raised.value.code == "401002"
    report = audit(http, standin)
    assert report["expired_token_requests"] == 1
    assert report["sessions"][0]["end_reason"] == "expired"
    assert report["sessions"][0]["ended_at"] < time.time()


def test_expire_endpoint_ends_sessions_mid_poll_and_a_new_sign_in_resumes(start, sign_in, http) -> None:
    standin = start()
    server = sign_in(standin)
    job = server.datasources.refresh(ds_id("Orders"))
    assert http.post(f"{standin.url}/devstack/sessions/expire").json() == {"expired": 1}
    with pytest.raises(TSC.FailedSignInError) as raised:
        server.jobs.get_by_id(job.id)
    assert raised.value.code == "401002"

    server.auth.sign_in(TSC.PersonalAccessTokenAuth(PAT, SECRET, site_id=SITE))
    assert server.jobs.get_by_id(job.id).id == job.id
    assert audit(http, standin)["expired_token_requests"] == 1


# -- content ----------------------------------------------------------------------------------------


def test_content_lists_page_and_filter_as_tsc_expects(start, sign_in, served) -> None:
    standin = start()
    server = sign_in(standin)

    before = len(served)
    names = [(d.project_name, d.name) for d in TSC.Pager(server.datasources, TSC.RequestOptions(pagesize=2))]
    assert names == [
        ("Sales", "Orders"),
        ("Sales", "Leads"),
        ("Sales", "Broken"),
        ("Sales", "Bridged"),
        ("Marketing", "Orders"),
    ]
    assert len(served) - before == 3  # pages of 2, 2 and 1
    queryset_names = [d.name for d in server.datasources.filter(page_size=2)]
    assert len(queryset_names) == 5

    orders = list(server.datasources.filter(name="Orders", project_name="Marketing"))
    assert [(d.id, d.project_id, d.owner_id) for d in orders] == [
        (ds_id("Orders", "Marketing"), project_id("Marketing"), user_id("admin"))
    ]
    assert len(list(server.datasources.filter(name="Orders"))) == 2
    assert {d.name for d in server.datasources.filter(name__in=["Leads", "Broken"])} == {"Leads", "Broken"}
    assert [w.name for w in server.workbooks.filter(project_name="Sales")] == ["Sales Overview"]
    assert [p.name for p in server.projects.filter(name="Marketing")] == ["Marketing"]

    workbook = server.workbooks.get_by_id(wb_id("Sales Overview"))
    assert (workbook.name, workbook.project_name) == ("Sales Overview", "Sales")
    assert server.datasources.get_by_id(ds_id("Leads")).name == "Leads"


def test_content_errors_carry_tableau_codes(start, sign_in, http) -> None:
    standin = start()
    server = sign_in(standin)
    for endpoint, code in ((server.datasources, "404011"), (server.workbooks, "404006")):
        with pytest.raises(ServerResponseError) as raised:
            endpoint.get_by_id("00000000-0000-0000-0000-000000000000")
        assert raised.value.code == code

    def get(params: dict[str, str]) -> tuple[int, str]:
        response = http.get(site_url(server, "datasources"), params=params, headers=auth(server))
        return response.status_code, error_code(response)

    assert get({"pageNumber": "4", "pageSize": "2"}) == (400, "400006")
    assert get({"pageSize": "1001"}) == (400, "400007")
    assert get({"filter": "owner:eq:admin"}) == (400, "400000")
    assert get({"filter": "name:like:Orders"}) == (400, "400000")
    unknown = http.get(f"{server.baseurl}/sites/{server.site_id}/flows", headers=auth(server))
    wrong_method = http.delete(site_url(server, "datasources"), headers=auth(server))
    assert (unknown.status_code, error_code(unknown)) == (404, "404003")
    assert (wrong_method.status_code, error_code(wrong_method)) == (405, "405000")


# -- site metadata: site, views, connections, users, extract-refresh tasks --------------------------


def test_query_site_and_query_sites_answer_the_signed_in_site(start, sign_in, http) -> None:
    standin = start()
    server = sign_in(standin)
    site = server.sites.get_by_id(server.site_id)
    assert (site.id, site.name, site.content_url, site.state, site.admin_mode) == (
        site_id(SITE),
        SITE,
        SITE,
        "Active",
        "ContentAndUsers",
    )
    assert [s.content_url for s in TSC.Pager(server.sites)] == [SITE]

    def query_site(site: str, **params: str) -> requests.Response:
        return http.get(f"{server.baseurl}/sites/{site}", params=params, headers=auth(server))

    assert query_site(SITE, key="contentUrl").status_code == 200
    assert query_site(SITE, key="name").status_code == 200
    other = query_site(site_id("elsewhere"))
    bad_key = query_site(SITE, key="owner")
    assert [(r.status_code, error_code(r)) for r in (other, bad_key)] == [(404, "404000"), (400, "400000")]
    signed_out = http.get(f"{server.baseurl}/sites")
    assert (signed_out.status_code, error_code(signed_out)) == (401, "401002")


def test_views_for_site_page_and_filter_as_tsc_expects(start, sign_in, served) -> None:
    standin = start(
        workbooks=[
            {"project": "Sales", "name": "Sales Overview"},  # the default two views
            {"project": "Marketing", "name": "Funnel", "views": ["Top", "Middle", "Bottom"]},
        ]
    )
    server = sign_in(standin)

    before = len(served)
    views = list(TSC.Pager(server.views, TSC.RequestOptions(pagesize=2)))
    assert len(served) - before == 3  # pages of 2, 2 and 1
    assert [(v.name, v.content_url) for v in views] == [
        ("Overview", "SalesOverview/sheets/Overview"),
        ("Details", "SalesOverview/sheets/Details"),
        ("Top", "Funnel/sheets/Top"),
        ("Middle", "Funnel/sheets/Middle"),
        ("Bottom", "Funnel/sheets/Bottom"),
    ]
    top = views[2]
    assert (top.id, top.workbook_id, top.project_id, top.owner_id, top.view_url_name) == (
        view_id("Marketing", "Funnel", "Top"),
        wb_id("Funnel", "Marketing"),
        project_id("Marketing"),
        user_id("admin"),
        "Top",
    )
    assert top.created_at is not None
    assert top.updated_at is not None
    assert [v.name for v in server.views.filter(workbook_name="Funnel", name__in=["Top", "Bottom"])] == [
        "Top",
        "Bottom",
    ]
    workbooks = {w.name: w for w in TSC.Pager(server.workbooks)}
    assert workbooks["Funnel"].default_view_id == view_id("Marketing", "Funnel", "Top")


def test_datasource_connections_carry_server_port_and_user_but_never_a_password(
    start, sign_in, served
) -> None:
    snowflake = {
        "type": "snowflake",
        "server_address": "acme.snowflakecomputing.com",
        "server_port": 443,
        "username": "TABLEAU_SVC",
        "embed_password": False,
    }
    standin = start(
        datasources=[
            {"project": "Sales", "name": "Orders"},  # the default connection: one Postgres database
            {"project": "Sales", "name": "Leads", "connections": [snowflake, {"type": "sqlserver"}]},
        ]
    )
    server = sign_in(standin)
    found = {}
    for datasource in TSC.Pager(server.datasources):
        server.datasources.populate_connections(datasource)
        found[datasource.name] = [
            (c.connection_type, c.server_address, c.server_port, c.username, c.embed_password)
            for c in datasource.connections
        ]
    assert found == {
        "Orders": [("postgres", "postgres.example.internal", "5432", "tableau_reader", True)],
        "Leads": [
            ("snowflake", "acme.snowflakecomputing.com", "443", "TABLEAU_SVC", False),
            ("sqlserver", "postgres.example.internal", "5432", "tableau_reader", True),
        ],
    }
    bodies = [r.content for r in served if urlsplit(r.url).path.endswith("/connections")]
    assert len(bodies) == 2
    assert not any(b"password=" in body for body in bodies)

    missing = TSC.DatasourceItem(project_id("Sales"))
    missing._id = "00000000-0000-0000-0000-000000000000"
    server.datasources.populate_connections(missing)
    with pytest.raises(ServerResponseError) as raised:
        missing.connections  # noqa: B018 -- populate_connections fetches when the attribute is read
    assert raised.value.code == "404011"


def test_users_on_site_list_configured_and_pat_users_with_their_last_login(start, sign_in, http) -> None:
    standin = start(
        users=[
            {"name": "admin", "password": "pw", "full_name": "Site Admin", "email": "admin@example.com"},
            {"name": "viewer", "password": "pw", "site_role": "Viewer"},
        ]
    )
    server = sign_in(standin)
    users = {u.name: u for u in TSC.Pager(server.users, TSC.RequestOptions(pagesize=1))}
    assert {n: (u.id, u.site_role) for n, u in users.items()} == {
        "admin": (user_id("admin"), "SiteAdministratorCreator"),
        "viewer": (user_id("viewer"), "Viewer"),
        PAT: (user_id(PAT), "SiteAdministratorCreator"),
        "pat-2": (user_id("pat-2"), "SiteAdministratorCreator"),
    }
    assert (users["admin"].fullname, users["admin"].email) == ("Site Admin", "admin@example.com")
    assert users[PAT].last_login is not None  # signed in with that PAT
    assert users["admin"].last_login is users["pat-2"].last_login is None
    assert [u.name for u in server.users.filter(site_role="Viewer")] == ["viewer"]
    with pytest.raises(ValueError, match="site_role"):
        load_config(make_config(users=[{"name": "x", "password": "y", "site_role": "Publisher"}]))


def test_extract_refresh_tasks_one_per_scheduled_datasource_counting_failures(start, sign_in) -> None:
    standin = start(
        datasources=[
            {"project": "Sales", "name": "Orders"},
            {"project": "Sales", "name": "Leads", "refresh_schedule": "Weekly"},
            {
                "project": "Sales",
                "name": "Broken",
                "duration_seconds": 10,
                "fail_notes": "ODBC: login failed",
            },
            {"project": "Sales", "name": "Manual", "refresh_schedule": None},
        ]
    )
    server = sign_in(standin)
    for _ in range(2):
        with pytest.raises(JobFailedException):
            server.jobs.wait_for_job(server.datasources.refresh(ds_id("Broken")), timeout=5)

    tasks = {t.target.id: t for t in TSC.Pager(server.tasks)}
    assert set(tasks) == {ds_id("Orders"), ds_id("Leads"), ds_id("Broken")}
    orders, leads, broken = tasks[ds_id("Orders")], tasks[ds_id("Leads")], tasks[ds_id("Broken")]
    assert (orders.task_type, orders.priority, orders.target.type) == ("extractRefresh", 50, "datasource")
    assert (orders.consecutive_failed_count, broken.consecutive_failed_count) == (0, 2)
    daily, weekly = orders.schedule_item, leads.schedule_item
    assert (daily.id, daily.name, daily.state, daily.schedule_type) == (
        schedule_id("Daily"),
        "Daily refresh at 06:00 UTC",
        "Active",
        "Extract",
    )
    assert (type(daily.interval_item).__name__, str(daily.interval_item.start_time)) == (
        "DailyInterval",
        "06:00:00",
    )
    assert (type(weekly.interval_item).__name__, weekly.interval_item.interval) == (
        "WeeklyInterval",
        ("Monday",),
    )
    assert (daily.next_run_at.hour, weekly.next_run_at.weekday()) == (6, 0)
    assert broken.schedule_id == daily.id  # tasks of one frequency share the site's schedule

    with pytest.raises(ValueError, match="only workbooks have views"):
        load_config(make_config(datasources=[{"project": "A", "name": "X", "views": ["V"]}]))
    with pytest.raises(ValueError, match="refresh_schedule"):
        load_config(make_config(datasources=[{"project": "A", "name": "X", "refresh_schedule": "Hourly"}]))


# -- refresh jobs -----------------------------------------------------------------------------------


def test_refresh_records_the_incremental_flag_and_counts_jobs_per_content(start, sign_in, http) -> None:
    standin = start()
    server = sign_in(standin)
    datasource_job = server.datasources.refresh(ds_id("Orders"))
    workbook_job = server.workbooks.refresh(wb_id("Sales Overview"), incremental=True)
    assert (datasource_job.type, datasource_job.mode, datasource_job.datasource_id) == (
        "RefreshExtract",
        "Asynchronous",
        ds_id("Orders"),
    )
    assert (workbook_job.workbook_id, workbook_job.workbook_name) == (
        wb_id("Sales Overview"),
        "Sales Overview",
    )

    server.jobs.wait_for_job(datasource_job, timeout=5)
    assert server.datasources.refresh(ds_id("Orders")) is not None  # finished: a new refresh is welcome
    report = audit(http, standin)
    assert report["jobs_created"] == {"datasource:Sales/Orders": 2, "workbook:Sales/Sales Overview": 1}
    assert [(j["name"], j["incremental"]) for j in report["jobs"]] == [
        ("Orders", False),
        ("Sales Overview", True),
        ("Orders", False),
    ]


def test_second_refresh_of_queued_content_is_409093(start, sign_in, http) -> None:
    standin = start()
    server = sign_in(standin)
    assert server.datasources.refresh(ds_id("Orders")) is not None
    # TSC 0.42 logs 409093 as a warning and returns None instead of raising.
    assert server.datasources.refresh(ds_id("Orders")) is None

    raw = http.post(
        site_url(server, f"datasources/{ds_id('Orders')}/refresh"), data=b"<tsRequest/>", headers=auth(server)
    )
    assert (raw.status_code, error_code(raw)) == (409, "409093")
    assert "already queued" in etree.fromstring(raw.content).findtext("t:error/t:detail", namespaces=NS)
    report = audit(http, standin)
    assert report["conflict_requests"] == 2
    assert report["jobs_created"] == {"datasource:Sales/Orders": 1}


def test_refresh_rate_limit_answers_429000_with_retry_after(start, sign_in, http) -> None:
    standin = start(refresh_rate_limit={"max_requests": 2, "per_seconds": 1, "retry_after_seconds": 5})
    server = sign_in(standin)
    server.datasources.refresh(ds_id("Orders"))
    server.datasources.refresh(ds_id("Leads"))
    with pytest.raises(ServerResponseError) as raised:
        server.datasources.refresh(ds_id("Broken"))
    assert raised.value.code == "429000"
    assert (
        raised.value.detail
        == "Too many requests for 'api.rest.refresh_extracts'. Please retry after 5 seconds."
    )

    raw = http.post(site_url(server, f"workbooks/{wb_id('Sales Overview')}/refresh"), headers=auth(server))
    assert (raw.status_code, error_code(raw), raw.headers["Retry-After"]) == (429, "429000", "5")
    report = audit(http, standin)
    assert report["rate_limited_requests"] == 2
    assert set(report["jobs_created"]) == {"datasource:Sales/Orders", "datasource:Sales/Leads"}

    time.sleep(1.05)  # the sliding window (real seconds) has passed: the behaviour under test
    assert server.datasources.refresh(ds_id("Broken")) is not None


@pytest.mark.parametrize(
    ("seconds", "unit", "worded"),
    [
        (1740, "minutes", "29 minutes"),
        (60, "minutes", "1 minute"),
        (7200, "hours", "2 hours"),
        (90, "minutes", "2 minutes"),
    ],
)
def test_rate_limit_words_the_wait_in_the_configured_unit_as_tableau_cloud_does(
    start, sign_in, http, seconds, unit, worded
) -> None:
    limit = {"max_requests": 1, "per_seconds": 60, "retry_after_seconds": seconds}
    standin = start(refresh_rate_limit={**limit, "retry_after_unit": unit, "retry_after_header": False})
    server = sign_in(standin)
    server.datasources.refresh(ds_id("Orders"))
    raw = http.post(site_url(server, f"datasources/{ds_id('Leads')}/refresh"), headers=auth(server))
    detail = etree.fromstring(raw.content).find("t:error/t:detail", NS).text
    assert (raw.status_code, error_code(raw)) == (429, "429000")
    assert detail == f"Too many requests for 'api.rest.refresh_extracts'. Please retry after {worded}."
    assert "Retry-After" not in raw.headers


def test_spent_daily_job_capacity_cancels_jobs_with_tableaus_quota_notes(start, sign_in, http) -> None:
    # The capacity is per UTC day: a clock that started near midnight would reset it mid-test.
    standin = start(daily_job_capacity_seconds=600, backgrounder_slots=1, clock_start="2026-06-01T12:00:00Z")
    server = sign_in(standin)
    first = server.datasources.refresh(ds_id("Orders"))  # 600 s: the whole day's capacity
    queued = server.datasources.refresh(ds_id("Leads"))  # starts when Orders ends: capacity spent
    done = wait_until(lambda: (j := server.jobs.get_by_id(queued.id)).finish_code in (0, 1, 2) and j)
    assert done.created_at.date() == dt.date(2026, 6, 1)  # the simulated clock's day, not today
    assert done.finish_code == 2
    assert done.notes == ["No more non-interactive quota remaining for your site"]
    assert server.jobs.get_by_id(first.id).finish_code == 0
    assert audit(http, standin)["quota_cancelled_jobs"] == 1


def test_backgrounder_runs_at_most_its_slots_and_starts_queued_jobs_fifo_as_slots_free(
    start, sign_in, http
) -> None:
    names = [f"DS {i}" for i in range(5)]
    standin = start(
        backgrounder_slots=2,
        datasources=[{"project": "Sales", "name": n, "duration_seconds": 1000} for n in names],
    )
    server = sign_in(standin)
    jobs = [server.datasources.refresh(ds_id(n)) for n in names]

    statuses = {job.id: job.status for job in server.jobs.get()[0]}
    assert [statuses[job.id] for job in jobs] == ["InProgress"] * 2 + ["Pending"] * 3
    assert server.jobs.get_by_id(jobs[2].id).started_at is None

    wait_until(lambda: all(server.jobs.get_by_id(job.id).finish_code == 0 for job in jobs), timeout=10)
    report = audit(http, standin)
    assert report["max_concurrent_jobs"] == 2
    timeline = report["jobs"]
    # Each queued job starts at the exact simulated instant a running one finishes, first in first out.
    assert timeline[2]["started_at"] == timeline[0]["completed_at"]
    assert timeline[3]["started_at"] == timeline[1]["completed_at"]
    assert timeline[4]["started_at"] == timeline[2]["completed_at"]


def test_time_scale_makes_a_600_second_refresh_take_about_0_6_seconds(start, sign_in) -> None:
    standin = start()
    server = sign_in(standin)
    began = time.monotonic()
    job = server.datasources.refresh(ds_id("Orders"))
    done = wait_until(lambda: (j := server.jobs.get_by_id(job.id)).completed_at and j)
    elapsed = time.monotonic() - began
    assert 0.55 <= elapsed < 2.0
    assert (done.finish_code, done.progress) == (0, "100")
    assert abs((done.completed_at - done.started_at).total_seconds() - 600) <= 1


def test_durations_are_drawn_per_job_from_the_seeded_generator(start, sign_in, http) -> None:
    def durations(standin: TableauStandIn) -> list[float]:
        server = sign_in(standin)
        for _ in range(2):
            server.jobs.wait_for_job(server.datasources.refresh(ds_id("Leads")), timeout=5)
        return [j["completed_at"] - j["started_at"] for j in audit(http, standin)["jobs"]]

    first = durations(start(time_scale=20000, seed=7))
    again = durations(start(time_scale=20000, seed=7))
    assert all(300 <= d <= 900 for d in first)
    assert first[0] != first[1]
    assert first == pytest.approx(again)


def test_failure_injection_and_bridge_finish_codes(start, sign_in) -> None:
    standin = start()
    server = sign_in(standin)
    failing = server.datasources.refresh(ds_id("Broken"))
    with pytest.raises(JobFailedException):
        server.jobs.wait_for_job(failing, timeout=5)
    failed = server.jobs.get_by_id(failing.id)
    assert (failed.finish_code, failed.notes) == (1, ["ODBC: login failed"])

    bridged = server.jobs.wait_for_job(server.datasources.refresh(ds_id("Bridged")), timeout=5)
    assert bridged.finish_code == 3  # TSC's wait_for_job counts 3 (completed by Bridge) as success


def test_cancel_ends_queued_and_running_jobs_with_finish_code_2(start, sign_in, http) -> None:
    standin = start(backgrounder_slots=1)
    server = sign_in(standin)
    running = server.datasources.refresh(ds_id("Orders"))
    queued = server.datasources.refresh(ds_id("Leads"))
    waiting = server.workbooks.refresh(wb_id("Sales Overview"))

    server.jobs.cancel(queued.id)
    server.jobs.cancel(running)
    cancelled_running, cancelled_queued = server.jobs.get_by_id(running.id), server.jobs.get_by_id(queued.id)
    assert (cancelled_running.finish_code, cancelled_queued.finish_code) == (2, 2)
    assert cancelled_running.started_at is not None
    assert cancelled_queued.started_at is None
    assert server.jobs.get_by_id(waiting.id).started_at is not None  # the freed slot went to the next job
    assert {j.status for j in server.jobs.filter(status="Cancelled")} == {"Cancelled"}

    again = http.put(site_url(server, f"jobs/{running.id}"), headers=auth(server))
    assert (again.status_code, error_code(again)) == (409, "409000")
    with pytest.raises(ServerResponseError) as raised:
        server.jobs.get_by_id("00000000-0000-0000-0000-000000000000")
    assert raised.value.code == "404000"
    assert audit(http, standin)["jobs"][0]["finish_code"] == 2


def test_query_jobs_filters_and_its_shape_versus_the_schema(start, sign_in, http, served, schema) -> None:
    standin = start(backgrounder_slots=1, time_scale=100)  # Orders (600 s) runs 6 s behind Bridged
    server = sign_in(standin)
    first = server.datasources.refresh(ds_id("Bridged"))
    server.datasources.refresh(ds_id("Orders"))
    server.workbooks.refresh(wb_id("Sales Overview"))
    server.jobs.wait_for_job(first, timeout=5)

    def titles(**filters: Any) -> list[str]:
        return [job.title for job in server.jobs.filter(**filters)]

    assert titles(status="Success") == ["Bridged"]
    assert titles(status__in=["InProgress", "Pending"]) == ["Orders", "Sales Overview"]
    assert titles(subtitle="Workbook", job_type="refresh_extracts") == ["Sales Overview"]
    assert titles(title="Orders") == ["Orders"]
    job = server.jobs.get(TSC.RequestOptions(pagesize=1))[0][0]
    assert (job.type, job.priority, job.subtitle, job.ended_at is not None) == (
        "refresh_extracts",
        "50",
        "Data Source",
        True,
    )

    listing = next(r for r in reversed(served) if urlsplit(r.url).path.endswith("/jobs"))
    # The schema's own shape (backgroundJobs without pagination) validates; ours adds pagination.
    body = etree.fromstring(listing.content)
    body.remove(body.find("t:pagination", NS))
    assert schema.validate(body), schema.error_log
    assert len(audit(http, standin)["jobs"]) == 3


def test_reset_forgets_sessions_jobs_and_counters_but_keeps_content(start, sign_in, http) -> None:
    standin = start()
    server = sign_in(standin)
    server.datasources.refresh(ds_id("Orders"))
    assert http.post(f"{standin.url}/devstack/reset").status_code == 204
    report = audit(http, standin)
    assert (report["sign_ins"], report["jobs"], report["sessions"], report["jobs_created"]) == (
        {},
        [],
        [],
        {},
    )
    with pytest.raises(TSC.FailedSignInError):
        server.projects.get()
    assert sign_in(standin).datasources.get_by_id(ds_id("Orders")).name == "Orders"


# -- shapes versus TSC's fixtures -------------------------------------------------------------------

XS = "{http://www.w3.org/2001/XMLSchema}"


class SchemaModel:
    """Which child elements and attributes each element may have per the XSD (order and counts aside)."""

    def __init__(self, path: Path) -> None:
        root = etree.parse(str(path)).getroot()

        def top(kind: str) -> dict[str, etree._Element]:
            return {el.get("name"): el for el in root.findall(XS + kind)}

        self._types = top("complexType") | top("simpleType")
        self._groups = {"group": top("group"), "attributeGroup": top("attributeGroup")}
        self._response = top("element")["tsResponse"]

    def _members(self, declaration: etree._Element) -> tuple[dict[str, etree._Element], set[str]]:
        elements: dict[str, etree._Element] = {}
        attributes: set[str] = set()

        def walk(node: etree._Element) -> None:
            for child in node:
                if not isinstance(child.tag, str):
                    continue
                kind = etree.QName(child).localname
                if kind == "element":
                    elements[child.get("name")] = child
                elif kind == "attribute":
                    attributes.add(child.get("name"))
                elif kind in self._groups and child.get("ref"):
                    walk(self._groups[kind][child.get("ref").rpartition(":")[2]])
                elif kind in ("extension", "restriction"):
                    base = self._types.get(child.get("base", "").rpartition(":")[2])
                    if base is not None:
                        walk(base)
                    walk(child)
                elif kind in ("sequence", "choice", "all", "complexContent", "simpleContent", "complexType"):
                    walk(child)

        type_name = declaration.get("type", "").rpartition(":")[2]
        walk(self._types.get(type_name, declaration))
        return elements, attributes

    def allowed_paths(self, document: etree._Element) -> set[str]:
        paths: set[str] = set()

        def visit(element: etree._Element, declaration: etree._Element, path: str) -> None:
            paths.add(path)
            elements, attributes = self._members(declaration)
            paths.update(f"{path}@{name}" for name in element.attrib if name in attributes)
            for child in element:
                if isinstance(child.tag, str) and (name := etree.QName(child).localname) in elements:
                    visit(child, elements[name], f"{path}/{name}")

        visit(document, self._response, "tsResponse")
        return paths


def element_paths(document: etree._Element) -> set[str]:
    paths: set[str] = set()

    def visit(element: etree._Element, path: str) -> None:
        paths.add(path)
        paths.update(f"{path}@{name}" for name in element.attrib if not name.startswith("{"))
        for child in element:
            if isinstance(child.tag, str):
                visit(child, f"{path}/{etree.QName(child).localname}")

    visit(document, "tsResponse")
    return paths


def populated_fields(items: list[Any]) -> set[str]:
    return {
        name
        for item in items
        for name, value in vars(item).items()
        if value is not None and value != [] and value != set()
    }


PARSERS: dict[str, Callable[[bytes, dict[str, str]], list[Any]] | None] = {
    "auth_sign_in": None,  # TSC's Auth.sign_in reads it inline; the sign-in tests exercise that
    "server_info_get": lambda body, ns: [TSC.ServerInfoItem.from_response(body, ns)],
    "datasource_get": TSC.DatasourceItem.from_response,
    "datasource_get_by_id": TSC.DatasourceItem.from_response,
    "workbook_get": TSC.WorkbookItem.from_response,
    "project_get": TSC.ProjectItem.from_response,
    "datasource_refresh": TSC.JobItem.from_response,
    "workbook_refresh": TSC.JobItem.from_response,
    "job_get": TSC.BackgroundJobItem.from_response,
    "job_get_by_id": TSC.JobItem.from_response,
    "job_get_by_id_completed": TSC.JobItem.from_response,
    "job_get_by_id_failed": TSC.JobItem.from_response,
    "job_get_by_id_failed_workbook": TSC.JobItem.from_response,
    "job_get_by_id_inprogress": TSC.JobItem.from_response,
}
_STATUS_NOTES = {"tsResponse/job/statusNotes": "statusNotes report user-import jobs, not extract refreshes"}
_UPLOAD_JOB = {
    "tsResponse/job/updateUploadedFileJob": "an UpdateUploadedFile job; the stand-in runs RefreshExtract jobs only"
}
# What a fixture has, and the schema allows, that the stand-in leaves out on purpose (path prefixes).
NOT_EMITTED: dict[str, dict[str, str]] = {
    "project_get": {"tsResponse/projects/project@parentProjectId": "the stand-in's projects are top-level"},
    "job_get_by_id": _STATUS_NOTES,
    "job_get_by_id_completed": _STATUS_NOTES,
    "job_get_by_id_failed": _UPLOAD_JOB,
    "job_get_by_id_inprogress": _UPLOAD_JOB,
}
# TSC fields a fixture populates that the stand-in leaves empty, with the reason.
FIELDS_NOT_POPULATED: dict[str, dict[str, str]] = {
    "datasource_get_by_id": {"_ask_data_enablement": "<askData> is not in the 3.29 schema's dataSourceType"},
    "project_get": {"parent_id": "the stand-in's projects are top-level"},
    "job_get_by_id": {"_status_notes": _STATUS_NOTES["tsResponse/job/statusNotes"]},
    "job_get_by_id_completed": {"_status_notes": _STATUS_NOTES["tsResponse/job/statusNotes"]},
}


@pytest.fixture(scope="module")
def standin_bodies(schema: etree.XMLSchema) -> Iterator[dict[str, bytes]]:
    """The stand-in's answer to each request a TSC fixture answers, in the matching job state."""
    config = make_config(
        backgrounder_slots=10,
        datasources=[
            {
                "project": "Sales",
                "name": "Orders",
                "description": "One row per order",
                "tags": ["sales", "daily"],
            },
            {
                "project": "Sales",
                "name": "Broken",
                "duration_seconds": 60,
                "fail_notes": "ODBC: login failed",
            },
            {"project": "Sales", "name": "Bridged", "duration_seconds": 60, "finish_code": 3},
            {"project": "Sales", "name": "Slow", "duration_seconds": 10**9},
        ],
        workbooks=[
            {"project": "Sales", "name": "Sales Overview", "description": "KPIs", "tags": ["kpi"]},
            {"project": "Sales", "name": "Broken Book", "duration_seconds": 60, "fail_notes": "Login failed"},
        ],
    )
    with TableauStandIn(load_config(config)) as standin, requests.Session() as http:
        api = f"{standin.url}/api/3.29"
        signin = http.post(
            f"{api}/auth/signin",
            data=f'<tsRequest><credentials personalAccessTokenName="{PAT}" personalAccessTokenSecret="{SECRET}">'
            f'<site contentUrl="{SITE}"/></credentials></tsRequest>',
        )
        token = etree.fromstring(signin.content).find("t:credentials", NS).get("token")
        site = f"{api}/sites/{site_id(SITE)}"

        def call(method: str, path: str) -> bytes:
            response = http.request(method, f"{site}/{path}", headers={"X-Tableau-Auth": token})
            assert response.ok, response.text
            return response.content

        def refresh(kind: str, item: str) -> str:
            body = call("POST", f"{kind}/{item}/refresh")
            return etree.fromstring(body).find("t:job", NS).get("id")

        jobs = {name: refresh("datasources", ds_id(name)) for name in ("Orders", "Broken", "Bridged", "Slow")}
        failed_workbook = refresh("workbooks", wb_id("Broken Book"))
        time.sleep(0.2)  # 200 simulated seconds (the clock, not a thread): all but Slow have finished
        yield {
            "auth_sign_in": signin.content,
            "server_info_get": http.get(f"{api}/serverInfo").content,
            "datasource_get": call("GET", "datasources"),
            "datasource_get_by_id": call("GET", f"datasources/{ds_id('Orders')}"),
            "workbook_get": call("GET", "workbooks"),
            "project_get": call("GET", "projects"),
            "datasource_refresh": call("POST", f"datasources/{ds_id('Orders')}/refresh"),
            "workbook_refresh": call("POST", f"workbooks/{wb_id('Sales Overview')}/refresh"),
            "job_get": call("GET", "jobs?filter=status:eq:Success"),
            "job_get_by_id": call("GET", f"jobs/{jobs['Orders']}"),
            "job_get_by_id_completed": call("GET", f"jobs/{jobs['Bridged']}"),
            "job_get_by_id_failed": call("GET", f"jobs/{jobs['Broken']}"),
            "job_get_by_id_failed_workbook": call("GET", f"jobs/{failed_workbook}"),
            "job_get_by_id_inprogress": call("GET", f"jobs/{jobs['Slow']}"),
        }


@pytest.fixture(scope="module")
def schema_model() -> SchemaModel:
    return SchemaModel(XSD)


@pytest.mark.parametrize("fixture", sorted(PARSERS))
def test_shape_covers_what_the_tsc_fixture_has_within_the_schema(
    fixture, standin_bodies, schema, schema_model
) -> None:
    fixture_body = (TSC_ASSETS / f"{fixture}.xml").read_bytes()
    ours = standin_bodies[fixture]

    expected = schema_model.allowed_paths(etree.fromstring(fixture_body))
    skipped = NOT_EMITTED.get(fixture, {})
    expected = {p for p in expected if not any(p.startswith(prefix) for prefix in skipped)}
    assert expected - element_paths(etree.fromstring(ours)) == set()

    parse = PARSERS[fixture]
    if parse is not None:
        fixture_items, our_items = parse(fixture_body, NS), parse(ours, NS)
        assert len(our_items) >= 1
        missing = populated_fields(fixture_items) - populated_fields(our_items)
        assert missing <= set(FIELDS_NOT_POPULATED.get(fixture, {})), missing
    if fixture == "server_info_get":
        assert all("restApiVersion" in e for e in schema_errors(schema, ours))
    elif fixture != "job_get":
        assert schema_errors(schema, ours) == []


# -- config and CLI ---------------------------------------------------------------------------------


def test_config_loads_from_yaml_and_json_and_rejects_unknown_keys(tmp_path) -> None:
    yaml_file = tmp_path / "tableau.yaml"
    yaml_file.write_text(
        "time_scale: 60\nclock_start: 2026-06-01T12:00:00Z\n"
        "datasources:\n  - {project: Finance, name: Ledger, duration_seconds: [1, 2]}\n"
    )
    json_file = tmp_path / "tableau.json"
    json_file.write_text(
        json.dumps({"site_content_url": "", "workbooks": [{"project": "Ops", "name": "KPIs"}]})
    )
    from_yaml, from_json = load_config(yaml_file), load_config(json_file)
    assert (from_yaml.time_scale, from_yaml.projects, from_yaml.datasources[0].duration_seconds) == (
        60,
        ("default", "Finance"),
        (1.0, 2.0),
    )
    assert (from_json.site_content_url, from_json.workbooks[0].id) == ("", wb_id("KPIs", "Ops"))
    assert from_yaml.clock_start_seconds() == dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC).timestamp()
    assert from_json.clock_start_seconds() is None  # the real time at start
    with pytest.raises(ValueError, match="clock_start '2026-06-01T12:00:00': give an ISO 8601 instant with"):
        load_config({"clock_start": "2026-06-01T12:00:00"})  # no offset
    with pytest.raises(ValueError, match="unknown config keys"):
        load_config({"time_scael": 60})
    with pytest.raises(ValueError, match="duplicate content"):
        load_config({"datasources": [{"project": "A", "name": "X"}, {"project": "A", "name": "X"}]})


@pytest.mark.timeout(30)
def test_cli_serves_on_an_ephemeral_port_and_stops_on_sigterm(tmp_path) -> None:
    config = tmp_path / "tableau.json"
    config.write_text(json.dumps(make_config()))
    url_file = tmp_path / "url"
    command = [sys.executable, "-m", "devstack.tableau", "--config", str(config), "--port", "0"]
    with subprocess.Popen(
        [*command, "--url-file", str(url_file)], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            line = process.stdout.readline().strip()
            url = url_file.read_text().strip()
            assert line == f"listening on {url}"
            assert url.startswith("http://127.0.0.1:")
            assert requests.get(f"{url}/api/3.29/serverInfo", timeout=5).status_code == 200
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_the_documented_seed_example_loads_and_serves_its_site(tmp_path: Path):
    """docs/tableau-standin.md's example is a seed the stand-in takes, and a PAT of it signs in."""
    import re

    import yaml

    doc = (Path(__file__).resolve().parents[2] / "docs" / "tableau-standin.md").read_text()
    (example,) = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    config = load_config(yaml.safe_load(example))
    assert [p.name for p in config.pats] == ["pat-1", "pat-2"]
    assert [c.name for c in config.datasources] == ["Orders", "Leads"]
    assert config.datasources[0].duration_seconds == (60.0, 180.0)
    assert config.workbooks[0].finish_code == 3
    assert config.connected_apps[0].client_id == "app-1"
    with TableauStandIn(config) as standin:
        server = TSC.Server(standin.url, use_server_version=True)
        auth = TSC.PersonalAccessTokenAuth("pat-1", "s3cret-1", site_id=config.site_content_url)
        with server.auth.sign_in(auth):
            names = {d.name for d in TSC.Pager(server.datasources)}
    assert names == {"Orders", "Leads"}
