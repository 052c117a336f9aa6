"""``python -m deployments.bootstrap``: idempotent creation of the pool's limits, and drift."""

from __future__ import annotations

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
    assert limits.count("created") == 4 and limits.count("ok ") == 4
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
    assert read_limit(pat_limit).active and read_limit(pool.pool_limit_name).limit == 2
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
    assert pools == ["bootstrap-test-other", "bootstrap-test-pool"]
    checked = bootstrap_work_pools(pools, check_only=True)
    assert checked.missing == [
        "work pool bootstrap-test-other (process)",
        "work pool bootstrap-test-pool (process)",
    ]
    assert not checked.ok
    assert bootstrap_work_pools(pools).created == checked.missing
    again = bootstrap_work_pools(pools)
    assert again.ok and again.unchanged == [
        "work pool bootstrap-test-other (process)",
        "work pool bootstrap-test-pool (process)",
    ]
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("bootstrap-test-pool").type == "process"


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
