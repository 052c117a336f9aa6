"""Domain refreshes through a Tableau connected app (direct trust): the JWT, the sign-in and its
refusals, the refresh-capacity limit, against the stand-in and a real Prefect server."""

from __future__ import annotations

import threading
import time
import uuid

import jwt
import pytest
from conftest import BOOTSTRAP_COMMAND, SITE, Workspace
from prefect.blocks.system import Secret
from pydantic import ValidationError

from blocks import TableauConnectedApp, TableauSite
from blocks.secrets import SecretSource
from deployments.bootstrap import bootstrap_connected_app_limits, main
from tasks.tableau.connected_app import (
    RefreshCapacityError,
    RefreshCapacityTimeoutError,
    hold_refresh_capacity,
)
from tasks.tableau.refresh import PollPolicy
from tasks.tableau.session import ConnectedAppCredentials, TableauAuthError, TableauSession, connected_app_jwt

CLIENT_ID, SECRET_ID = "refresh-app", "secret-1"
SECRET = "connected-app-secret-value-of-at-least-32-bytes"
USER = "svc-refresh@example.com"
FAST = PollPolicy(initial_interval=0.1, max_interval=0.5, backoff=1.5, rate_limit_default_wait=0.2)
OPS = [{"project": "Sales", "name": n, "duration_seconds": 300} for n in ("Orders", "Leads", "Targets")]


def app_standin(make_standin, **overrides):
    return make_standin(
        connected_apps=[{"client_id": CLIENT_ID, "secrets": [{"id": SECRET_ID, "value": SECRET}]}],
        users=[{"name": "admin", "password": "pw"}, {"name": USER, "password": "unused"}],
        **overrides,
    )


def create_app(workspace: Workspace, *, bootstrap: bool = True, **fields) -> tuple[str, TableauConnectedApp]:
    name = f"app-{workspace.tag}"
    values = {
        "site": TableauSite(server_url=workspace.standin.url, site_content_url=SITE, api_version="3.29"),
        "client_id": CLIENT_ID,
        "secret_id": SECRET_ID,
        "secret_value": SECRET,
        "username": USER,
        "concurrency_limit_name": f"tableau-capacity-{workspace.tag}",
        "refresh_capacity": 2,
        "lease_duration_seconds": 60,
        **fields,
    }
    app = TableauConnectedApp(**values)
    app.save(name, overwrite=True)
    if bootstrap:
        assert bootstrap_connected_app_limits(app).ok
    return name, app


def active_slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_the_jwt_carries_what_tableau_requires_and_a_fresh_jti_each_time() -> None:
    app = TableauConnectedApp(
        site=TableauSite(server_url="https://10ax.online.tableau.com", site_content_url="mysite"),
        client_id=CLIENT_ID,
        secret_id=SECRET_ID,
        secret_value=SECRET,
        username=USER,
        token_lifetime_seconds=240,
    )
    first, second = (connected_app_jwt(app, SECRET, now=1_800_000_000) for _ in range(2))
    assert jwt.get_unverified_header(first) == {
        "alg": "HS256",
        "typ": "JWT",
        "kid": SECRET_ID,
        "iss": CLIENT_ID,
    }
    claims = jwt.decode(
        first, SECRET, algorithms=["HS256"], audience="tableau", options={"verify_exp": False}
    )
    assert {k: v for k, v in claims.items() if k != "jti"} == {
        "iss": CLIENT_ID,
        "sub": USER,
        "aud": "tableau",
        "exp": 1_800_000_240,
        "scp": ["tableau:content:read", "tableau:tasks:run", "tableau:jobs:read", "tableau:jobs:update"],
    }
    assert uuid.UUID(claims["jti"])
    assert claims["jti"] != jwt.decode(second, options={"verify_signature": False})["jti"]


def test_the_block_refuses_a_lifetime_over_ten_minutes_two_secrets_and_odd_scopes() -> None:
    site = TableauSite(server_url="https://tableau.example.com")
    base = {"site": site, "client_id": "c", "secret_id": "s", "username": "u"}
    with pytest.raises(ValidationError, match="less than or equal to 600"):
        TableauConnectedApp(**base, secret_value="x", token_lifetime_seconds=900)
    with pytest.raises(ValidationError, match="exactly one of secret_value and secret_value_source"):
        TableauConnectedApp(
            **base, secret_value="x", secret_value_source=SecretSource(kind="secret", block="b")
        )
    with pytest.raises(ValidationError, match="tableau:<resource>:<action>"):
        TableauConnectedApp(**base, secret_value="x", scopes=["tasks:run"])


def test_a_connected_app_domain_refreshes_on_its_own_sessions_and_signs_in_again_with_a_fresh_jwt(
    make_standin, tmp_path
) -> None:
    from test_tableau_refresh import in_thread, run_artifact, wait_until

    from flows.tableau.refresh import refresh_domain

    standin = app_standin(make_standin, datasources=OPS, workbooks=[], projects=["Sales"])
    workspace = Workspace(standin, tmp_path)
    secret_block = f"app-secret-{workspace.tag}"
    Secret(value=SECRET).save(secret_block)
    name, app = create_app(
        workspace, secret_value=None, secret_value_source=SecretSource(kind="secret", block=secret_block)
    )
    config = workspace.write_domains(  # the defaults name a PAT pool; the domain's own choice wins
        {
            "ops": {
                "connected_app_block": name,
                "datasources": [{"project": "Sales", "name": n["name"]} for n in OPS],
            }
        }
    )

    run, outcome = in_thread(refresh_domain, "ops", config, FAST, return_state=True)
    wait_until(lambda: len(standin.audit()["jobs"]) == 3, what="the run's jobs")
    assert active_slots(app.concurrency_limit_name) == 1  # the run holds one slot of the refresh capacity
    assert standin.expire_sessions() == 1
    run.join(60)

    assert "error" not in outcome, outcome.get("error")
    state = outcome["value"]
    summary = state.result()
    assert (summary.connected_app, summary.pat, summary.sign_ins) == (name, "", 2)
    assert all(r.status == "succeeded" for r in summary.refreshes)
    audit = standin.audit()
    assert audit["jwt_sign_ins"] == {CLIENT_ID: 2}
    assert audit["sign_ins"] == {}  # no PAT involved
    assert audit["refused_jwt_sign_ins"] == {}
    assert audit["out_of_scope_requests"] == {}
    assert [s["user"] for s in audit["sessions"]] == [USER, USER]
    assert active_slots(app.concurrency_limit_name) == 0

    progress = run_artifact(state.state_details.flow_run_id, "tableau-refresh-ops-progress")
    assert (progress.type, progress.data) == ("progress", 100.0)
    assert progress.description == "Tableau refresh of domain **ops**; 3 of 3 refreshes finished; 3 succeeded"
    table = run_artifact(state.state_details.flow_run_id, "tableau-refresh-ops")
    assert f"connected app `{name}`, capacity slot after" in table.description


def test_a_request_outside_the_jwt_scopes_names_the_scopes(make_standin, tmp_path) -> None:
    standin = app_standin(make_standin)
    workspace = Workspace(standin, tmp_path)
    name, app = create_app(workspace, bootstrap=False, scopes=["tableau:content:read", "tableau:tasks:run"])
    with TableauSession(app.site, ConnectedAppCredentials(app, name)) as session:
        assert session.call(session.server.datasources.get)[1].total_available == 8
        with pytest.raises(
            TableauAuthError, match=r"refused Jobs.get_by_id with 401002 right after a fresh sign-in"
        ) as raised:
            session.call(session.server.jobs.get_by_id, "job-1")
    assert "['tableau:content:read', 'tableau:tasks:run'] do not cover it" in str(raised.value)
    assert standin.audit()["out_of_scope_requests"] == {"tableau:jobs:read": 2}


def test_a_refused_jwt_names_the_block_and_tableaus_number_never_the_secret(make_standin, tmp_path) -> None:
    standin = app_standin(make_standin)
    workspace = Workspace(standin, tmp_path)
    wrong = "a-wrong-secret-value-of-at-least-32-bytes-long"
    name, app = create_app(workspace, bootstrap=False, secret_value=wrong)
    with pytest.raises(
        TableauAuthError,
        match=rf"JWT of Tableau Connected App block '{name}'.*401001 \(Error signing in to Tableau Server \(127\)\)",
    ) as raised:
        TableauSession(app.site, ConnectedAppCredentials(app, name)).__enter__()
    assert wrong not in str(raised.value)


@BOOTSTRAP_COMMAND
def test_refresh_capacity_limit_is_bootstrapped_and_required(make_standin, tmp_path, capsys) -> None:
    from flows.tableau.refresh import refresh_domain

    standin = app_standin(make_standin)
    workspace = Workspace(standin, tmp_path)
    name, app = create_app(workspace, bootstrap=False)
    config = workspace.write_domains(
        {"ops": {"connected_app_block": name, "datasources": [{"project": "Sales", "name": "Orders"}]}}
    )
    with pytest.raises(
        RefreshCapacityError,
        match=rf"'{app.concurrency_limit_name}' does not exist.*--connected-app-block {name} --fix",
    ):
        refresh_domain("ops", config)
    assert standin.audit()["jwt_sign_ins"] == {}  # nothing started

    assert main(["--connected-app-block", name]) == 0
    assert main(["--connected-app-block", name, "--check"]) == 0
    out = capsys.readouterr().out
    assert f"created   {app.concurrency_limit_name} (limit 2)" in out
    assert f"ok        {app.concurrency_limit_name}" in out


@pytest.mark.slow(seconds=20)
def test_the_refresh_capacity_bounds_concurrent_domain_runs(make_standin, tmp_path) -> None:
    from flows.tableau.refresh import refresh_domain

    # d0's job takes 15 s, so that d1 asks for the slot while d0 holds it even on a loaded machine (a
    # domain run's start took over 4 s there); d1's own job takes 1 s.
    sources = [
        {"project": "Sales", "name": f"ds{i}", "duration_seconds": d} for i, d in enumerate((1500, 100))
    ]
    standin = app_standin(make_standin, datasources=sources, workbooks=[], projects=["Sales"])
    workspace = Workspace(standin, tmp_path)
    name, app = create_app(workspace, refresh_capacity=1)
    config = workspace.write_domains(
        {
            f"d{i}": {"connected_app_block": name, "datasources": [{"project": "Sales", "name": f"ds{i}"}]}
            for i in range(2)
        }
    )
    summaries = {}
    threads = [
        threading.Thread(target=lambda d=d: summaries.__setitem__(d, refresh_domain(d, config, FAST)))
        for d in ("d0", "d1")
    ]
    threads[0].start()
    # d1 starts once d0 holds the slot and refreshes (its job exists), however long d0 took to start.
    deadline = time.monotonic() + 60
    while not standin.audit()["jobs"] and time.monotonic() < deadline:
        time.sleep(0.05)
    threads[1].start()
    for thread in threads:
        thread.join(120)
    jobs = sorted(standin.audit()["jobs"], key=lambda j: j["created_at"])
    assert len(jobs) == 2
    assert jobs[0]["completed_at"] <= jobs[1]["created_at"]  # one domain run at a time
    assert summaries["d1"].lease_wait_seconds > 0.5  # it waited for the slot d0 held


def test_a_run_that_finds_no_free_slot_in_time_names_the_capacity_and_the_fix(make_standin, tmp_path) -> None:
    workspace = Workspace(app_standin(make_standin), tmp_path)
    name, app = create_app(workspace, refresh_capacity=1, acquire_timeout_seconds=120)
    impatient = app.model_copy(update={"acquire_timeout_seconds": 1})
    with hold_refresh_capacity(app, block_name=name):  # a free slot, however slow the machine is
        with pytest.raises(
            RefreshCapacityTimeoutError,
            match=rf"No slot of '{app.concurrency_limit_name}' \(refresh capacity 1\) became free within 1 s.*"
            "Raise refresh_capacity",
        ):
            with hold_refresh_capacity(impatient, block_name=name):
                pass
        # The holder's slot; the refused run took none.
        assert active_slots(app.concurrency_limit_name) == 1
    assert active_slots(app.concurrency_limit_name) == 0
