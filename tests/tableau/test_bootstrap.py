"""``python -m deployments.bootstrap``: idempotent creation of the pool's limits, and drift."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BOOTSTRAP_COMMAND
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectNotFound

from deployments.bootstrap import main

pytestmark = BOOTSTRAP_COMMAND


def read_limit(name: str):
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_creates_the_limits_once_then_reports_them_unchanged(workspace, capsys):
    pool = workspace.create_pool(["pat-1", "pat-2", "pat-3"], bootstrap=False)

    assert main(["--pool-block", workspace.pool_block]) == 0
    assert main(["--pool-block", workspace.pool_block]) == 0

    out = capsys.readouterr().out
    limits = "\n".join(  # the limits' lines
        line for line in out.splitlines() if "automation" not in line and "work pool" not in line
    )
    assert limits.count("created") == 4
    assert limits.count("ok ") == 4
    assert read_limit(pool.pool_limit_name).limit == 3
    assert all(
        read_limit(name).limit == 1 and read_limit(name).active for name in pool.pat_limit_names().values()
    )


def test_check_reports_missing_limits_and_creates_nothing(workspace, capsys):
    pool = workspace.create_pool(["pat-1"], bootstrap=False)
    assert main(["--pool-block", workspace.pool_block, "--check"]) == 1
    assert "MISSING" in capsys.readouterr().out
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
        client.read_global_concurrency_limit_by_name(pool.pool_limit_name)


def test_disabled_or_missized_limits_are_drift_until_fixed(workspace, capsys):
    pool = workspace.create_pool(["pat-1", "pat-2"])
    pat_limit = pool.pat_limit_names()[workspace.pat_block("pat-1")]
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(pat_limit, GlobalConcurrencyLimitUpdate(active=False))
        client.update_global_concurrency_limit(pool.pool_limit_name, GlobalConcurrencyLimitUpdate(limit=5))

    assert main(["--pool-block", workspace.pool_block]) == 1
    out = capsys.readouterr()
    assert f"DRIFT     {pat_limit}: disabled" in out.out
    assert f"DRIFT     {pool.pool_limit_name}: limit 5, expected 2" in out.out
    assert "--fix" in out.err
    assert not read_limit(pat_limit).active  # reported, not changed

    assert main(["--pool-block", workspace.pool_block, "--fix"]) == 0
    assert read_limit(pat_limit).active
    assert read_limit(pool.pool_limit_name).limit == 2
    assert main(["--pool-block", workspace.pool_block, "--check"]) == 0


def test_missing_pool_block_is_a_clear_error(workspace, capsys):
    assert main(["--pool-block", "no-such-pool"]) == 2
    assert "Tableau PAT Pool block 'no-such-pool' could not be loaded" in capsys.readouterr().err


def test_creates_the_work_pools_the_deployments_name(tmp_path, capsys):
    from deployments.bootstrap import bootstrap_work_pools, deployment_work_pools

    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(
        "definitions:\n  pool: &pool {name: bootstrap-test-pool}\n"
        "deployments:\n  - {name: a, work_pool: *pool}\n  - {name: b, work_pool: {name: bootstrap-test-other}}\n"
    )
    pools = deployment_work_pools(prefect_file)
    assert pools == {"bootstrap-test-other": "process", "bootstrap-test-pool": "process"}
    checked = bootstrap_work_pools(pools, check_only=True)
    assert checked.missing == [
        "work pool bootstrap-test-other (process)",
        "work pool bootstrap-test-pool (process)",
    ]
    assert not checked.ok
    assert bootstrap_work_pools(pools).created == checked.missing
    again = bootstrap_work_pools(pools)
    assert again.ok
    assert again.unchanged == [
        "work pool bootstrap-test-other (process)",
        "work pool bootstrap-test-pool (process)",
    ]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("bootstrap-test-pool").type == "process"


def test_the_docker_deployments_pool_is_created_as_a_docker_pool_and_a_process_one_is_drift(tmp_path):
    from deployments.bootstrap import bootstrap_work_pools, deployment_work_pools

    pools = deployment_work_pools(Path(__file__).resolve().parents[2] / "prefect.docker.yaml")
    assert pools == {"analytics-flows-docker": "docker"}
    renamed = {"bootstrap-test-docker": "docker"}
    assert bootstrap_work_pools(renamed).created == ["work pool bootstrap-test-docker (docker)"]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("bootstrap-test-docker").type == "docker"
    wrong = bootstrap_work_pools({"bootstrap-test-docker": "process"}, check_only=True)
    assert not wrong.ok
    assert wrong.drift == [
        "work pool bootstrap-test-docker is of type 'docker'; the deployments need 'process': delete it "
        "(prefect work-pool delete bootstrap-test-docker) and run this again, or rename the pool in the "
        "prefect file"
    ]


def test_a_second_pool_with_the_first_ones_limit_prefix_is_refused_naming_the_setting(workspace, capsys):
    from blocks.tableau import TableauPatPool

    pool = workspace.create_pool(["pat-1"], bootstrap=False)
    second = f"{workspace.pool_block}-second"
    TableauPatPool(
        site=pool.site, pat_block_names=["pat-2"], concurrency_limit_prefix=pool.concurrency_limit_prefix
    ).save(second)
    assert main(["--pool-block", second, "--check"]) == 2
    err = capsys.readouterr().err
    assert (
        f"Tableau PAT Pool block {second!r} has the concurrency_limit_prefix {pool.concurrency_limit_prefix!r} "
        f"of {workspace.pool_block!r}: they would hold and size the same global concurrency limits"
    ) in err
    assert (
        f"Give each block its own concurrency_limit_prefix (e.g. '{pool.concurrency_limit_prefix}-{second}')"
        in err
    )
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
        client.read_global_concurrency_limit_by_name(pool.pool_limit_name)  # nothing created


# --- Blocks saved while the site was a block of its own (before issue 25) ---------------------------


def test_a_pool_referring_to_a_site_block_loads_and_is_drift_until_fix_resaves_it(workspace, capsys):
    from conftest import SITE
    from old_site_shape import save_in_old_shape, stored_site

    from blocks.tableau import TableauPatPool, TableauSite
    from tasks.tableau.pat_pool import lease_pat, load_pool
    from tasks.tableau.session import TableauSession

    pool = workspace.create_pool(["pat-1"])  # the PAT blocks and the limits; the pool is saved again below
    site_block = f"site-{workspace.tag}"
    site = {"server_url": workspace.standin.url, "site_content_url": SITE, "api_version": "3.29"}
    save_in_old_shape(
        "pool",
        workspace.pool_block,
        site_block,
        site,
        pat_block_names=pool.pat_block_names,
        concurrency_limit_prefix=pool.concurrency_limit_prefix,
    )
    assert TableauPatPool.load(workspace.pool_block).site == TableauSite(**site)  # it works as it is

    assert main(["--pool-block", workspace.pool_block, "--check"]) == 1
    out = capsys.readouterr()
    assert (
        f"DRIFT     Tableau PAT Pool block {workspace.pool_block!r}: holds its site as Tableau Site block "
        f"{site_block!r} (saved before the site became a field); --fix re-saves it with the site as its field"
    ) in out.out
    assert "--fix to repair drift" in out.err

    assert main(["--pool-block", workspace.pool_block, "--fix"]) == 0
    assert (
        f"repaired  Tableau PAT Pool block {workspace.pool_block!r}: was holding its site as Tableau Site "
        f"block {site_block!r}; re-saved with the site as its field ({workspace.standin.url}, site {SITE!r})"
    ) in capsys.readouterr().out
    assert stored_site("tableau-pat-pool", workspace.pool_block) == TableauSite(**site).model_dump()
    assert main(["--pool-block", workspace.pool_block, "--check"]) == 0
    assert f"Tableau Site block {site_block!r}" not in capsys.readouterr().out

    migrated, pats = load_pool(workspace.pool_block, needed_by="a test")
    assert migrated.site == TableauSite(**site)
    with (
        lease_pat(migrated) as lease,
        TableauSession(migrated.site, pats[lease.pat_block_name], lease.pat_block_name) as session,
    ):
        assert session.sign_ins == 1  # signed in to the site the Site block held


def test_a_connected_app_saved_with_its_site_as_a_block_warns_on_load_until_fix_resaves_it(caplog, capsys):
    import logging
    import uuid

    from old_site_shape import save_in_old_shape, stored_site

    from blocks.tableau import TableauConnectedApp, TableauSite

    name = f"app-{uuid.uuid4().hex[:8]}"
    site = {"server_url": "https://tableau.example.com", "site_content_url": "mysite"}
    fields = {"client_id": "c", "secret_id": "s", "secret_value": "v", "username": "u@example.com"}
    save_in_old_shape(
        "app", name, "", site, concurrency_limit_name=f"capacity-{name}", **fields
    )  # site inline
    assert stored_site("tableau-connected-app", name)["block_type_slug"] == "tableau-site"

    with caplog.at_level(logging.WARNING):
        app = TableauConnectedApp.load(name)
    assert app.site == TableauSite(**site)
    assert app.secret_value.get_secret_value() == "v"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        "A Tableau Connected App block (site 'mysite' of https://tableau.example.com) was saved when the "
        "Tableau site was a block of its own; it loads as it is. Re-save it in the current shape: "
        "python -m deployments.bootstrap --connected-app-block <its name> --fix"
    )

    assert main(["--connected-app-block", name, "--check"]) == 1
    assert (
        f"DRIFT     Tableau Connected App block {name!r}: holds its site as a Tableau Site block"
        in capsys.readouterr().out
    )
    assert main(["--connected-app-block", name, "--fix"]) == 0
    assert f"repaired  Tableau Connected App block {name!r}" in capsys.readouterr().out
    assert stored_site("tableau-connected-app", name) == TableauSite(**site).model_dump()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        migrated = TableauConnectedApp.load(name)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert migrated.site == TableauSite(**site)
    assert migrated.secret_value.get_secret_value() == "v"  # the secret re-saved as it was
