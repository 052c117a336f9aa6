"""prefect.yaml: a deployment per domain, triggered by its upstream, deployable with `prefect deploy`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployments.triggers import upstream_trigger_spec
from tasks.tableau.domains import load_domains

ROOT = Path(__file__).resolve().parents[1]


def prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_every_domain_has_a_deployment_with_its_upstream_trigger_and_cron():
    deployments = {d["name"]: d for d in prefect_yaml()["deployments"]}
    domains = load_domains(ROOT / "tableau_domains.yaml")
    assert set(domains) <= set(deployments), (
        f"domains without a deployment: {set(domains) - set(deployments)}"
    )
    for name, domain in domains.items():
        deployment = deployments[name]
        assert deployment["entrypoint"] == "flows/tableau/refresh.py:refresh_domain"
        assert deployment["parameters"] == {"domain": name}
        assert deployment["triggers"] == [upstream_trigger_spec(domain)], name
        assert deployment["schedules"] == [{"cron": domain.cron, "timezone": "UTC"}], name
        assert deployment["work_pool"]["name"] == "tableau-refresh"


def test_every_metadata_source_has_a_daily_deployment_with_concurrency_one():
    from tasks.metadata.sources import load_sources

    deployments = {d["name"]: d for d in prefect_yaml()["deployments"]}
    for name in load_sources(ROOT / "metadata_sources.yaml"):
        deployment = deployments[f"metadata-{name}"]
        assert deployment["entrypoint"] == "flows/metadata/collect.py:collect_metadata"
        assert deployment["parameters"] == {"source": name}
        assert deployment["concurrency_limit"] == 1 and deployment["schedules"][0]["cron"]


@pytest.mark.slow(seconds=15)
def test_prefect_deploy_all_against_a_real_server(prefect_api_url):
    def prefect(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            cwd=ROOT,
            env={**os.environ, "ANALYTICS_FLOWS_DIR": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )

    registered = prefect("block", "register", "-m", "blocks")
    assert registered.returncode == 0, registered.stdout + registered.stderr
    for block_type in ("Tableau PAT Pool", "Dataflow Options", "Vault KV Secret", "KMS Encrypted GCS Secret"):
        assert block_type in registered.stdout, registered.stdout
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:  # as `prefect work-pool create <pool> --type process`
        for pool in ("tableau-refresh", "crm-export", "metadata"):
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass
    deployed = prefect("--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        automations = {a.name: a for a in client.read_automations()}
    for name in ("sales", "marketing", "finance", "all-domains"):
        assert deployments[name].work_pool_name == "tableau-refresh"
    sales = deployments["sales"]
    assert sales.parameters == {"domain": "sales"}
    assert [s.schedule.cron for s in sales.schedules] == ["0 7 * * *"]
    assert sales.global_concurrency_limit.limit == 1
    assert sales.pull_steps == [
        {"deployments.steps.set_project_directory": {"variable": "ANALYTICS_FLOWS_DIR"}}
    ]
    trigger = next(a for a in automations.values() if str(sales.id) in str(a.actions))
    assert trigger.trigger.expect == {"prefect.flow-run.Completed"}
    assert {"prefect.resource.role": "flow", "prefect.resource.name": "sales-pipeline"} in [
        spec.root for spec in trigger.trigger.match_related
    ]

    crm = deployments["crm-export-weekly"]
    assert crm.work_pool_name == "crm-export" and crm.global_concurrency_limit.limit == 1
    assert [s.schedule.cron for s in crm.schedules] == ["0 3 * * 1"]
    # The shipped examples with placeholder sources are deployed paused, never live by accident.
    assert [s.active for s in crm.schedules] == [False]
    assert [s.active for s in deployments["metadata-athena-prod"].schedules] == [False]
    assert [s.active for s in sales.schedules] == [True]
    assert crm.parameters["runner"] == {"kind": "dataflow", "options_block": "crm-export"}
    assert crm.parameters["crm"]["block"] == "hubspot-crm/crm-export"  # a block name, never the key
    assert {"shard_date", "force", "source", "crm", "runner"} <= set(
        crm.parameter_openapi_schema["properties"]
    )
    metadata = deployments["metadata-athena-prod"]
    assert metadata.work_pool_name == "metadata" and metadata.global_concurrency_limit.limit == 1
    # Every run beats every 30 s (the dead-host automation watches it) and keeps its output off the worker.
    beats = {"stream_output": False, "env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
    assert sales.job_variables == crm.job_variables == metadata.job_variables == beats


def test_the_domain_deployments_of_prefect_yaml_are_generated_from_the_configuration():
    from deployments.domains import main

    assert main(["--check"]) == 0, "prefect.yaml is out of date: run `python -m deployments.domains`"


def test_a_new_domain_is_one_configuration_entry_and_one_command(tmp_path, capsys):
    from deployments.domains import main

    config = yaml.safe_load((ROOT / "tableau_domains.yaml").read_text())
    config["domains"]["hr"] = {
        "upstream": {"flow": "hr-pipeline", "deployment": "nightly"},
        "cron": "30 6 * * 1-5",
        "datasources": [{"project": "HR", "name": "Headcount"}],
    }
    domains_yaml, deploy_yaml = tmp_path / "domains.yaml", tmp_path / "prefect.yaml"
    domains_yaml.write_text(yaml.safe_dump(config))
    deploy_yaml.write_text((ROOT / "prefect.yaml").read_text())
    args = ["--config", str(domains_yaml), "--prefect-yaml", str(deploy_yaml)]

    assert main([*args, "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(args) == 0
    assert main([*args, "--check"]) == 0

    deployments = {d["name"]: d for d in yaml.safe_load(deploy_yaml.read_text())["deployments"]}
    hr = deployments["hr"]
    assert hr["entrypoint"] == "flows/tableau/refresh.py:refresh_domain"  # from the *refresh anchor
    assert hr["concurrency_limit"] == 1 and hr["parameters"] == {"domain": "hr"}
    assert hr["schedules"] == [{"cron": "30 6 * * 1-5", "timezone": "UTC"}]
    assert {"prefect.resource.role": "deployment", "prefect.resource.name": "nightly"} in hr["triggers"][0][
        "match_related"
    ]
    assert {"sales", "marketing", "finance", "all-domains", "crm-export-weekly"} <= set(deployments)


def test_prefect_yaml_without_the_generated_section_is_refused(tmp_path):
    from deployments.domains import main

    deploy_yaml = tmp_path / "prefect.yaml"
    deploy_yaml.write_text("deployments: []\n")
    with pytest.raises(ValueError, match="no generated section"):
        main(["--prefect-yaml", str(deploy_yaml)])
