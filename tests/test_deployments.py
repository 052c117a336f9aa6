"""prefect.yaml: a deployment per domain, triggered by its upstream, deployable with `prefect deploy`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.triggers import MATERIALIZATION_PARAMETER, trigger_specs
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
        assert deployment["triggers"] == trigger_specs(domain), name
        assert deployment["schedules"] == [{"cron": domain.cron, "timezone": "UTC"}], name
        assert deployment["work_pool"]["name"] == "tableau-refresh"


def test_every_metadata_source_has_a_daily_deployment_with_concurrency_one():
    from tasks.metadata.sources import load_sources

    deployments = {d["name"]: d for d in prefect_yaml()["deployments"]}
    for name in load_sources(ROOT / "metadata_sources.yaml"):
        deployment = deployments[f"metadata-{name}"]
        assert deployment["entrypoint"] == "flows/metadata/collect.py:collect_metadata"
        assert deployment["parameters"] == {"source": name}
        assert deployment["concurrency_limit"] == 1
        assert deployment["schedules"][0]["cron"]


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
    assert hr["concurrency_limit"] == 1
    assert hr["parameters"] == {"domain": "hr"}
    assert hr["schedules"] == [{"cron": "30 6 * * 1-5", "timezone": "UTC"}]
    assert {"prefect.resource.role": "deployment", "prefect.resource.name": "nightly"} in hr["triggers"][0][
        "match_related"
    ]
    assert {"sales", "marketing", "finance", "all-domains", "crm-export-weekly"} <= set(deployments)


def test_a_lineage_domain_triggers_on_its_tables_materializations_debounced(tmp_path):
    from deployments.domains import main

    config = yaml.safe_load((ROOT / "tableau_domains.yaml").read_text())
    tables = ["athena://awsdatacatalog/hr/people", "snowflake://acme-prod/HR/PUBLIC/ABSENCES"]
    config["domains"]["hr"] = {"upstream_tables": tables, "debounce_seconds": 120}
    config["domains"]["finance"]["upstream_tables"] = ["athena://awsdatacatalog/finance/ledger"]
    domains_yaml, deploy_yaml = tmp_path / "domains.yaml", tmp_path / "prefect.yaml"
    domains_yaml.write_text(yaml.safe_dump(config))
    deploy_yaml.write_text((ROOT / "prefect.yaml").read_text())
    assert main(["--config", str(domains_yaml), "--prefect-yaml", str(deploy_yaml)]) == 0

    deployments = {d["name"]: d for d in yaml.safe_load(deploy_yaml.read_text())["deployments"]}
    (hr_trigger,) = deployments["hr"]["triggers"]  # no upstream flow: its tables only
    assert hr_trigger == {
        "type": "event",
        "enabled": True,
        "match": {"prefect.resource.id": tables},
        "after": ["prefect.asset.materialization.succeeded"],
        "expect": ["prefect.asset.materialization.succeeded"],
        "for_each": ["prefect.resource.role"],
        "posture": "Proactive",
        "threshold": 1,
        "within": 120,
        "parameters": {"domain": "hr", "materialization": MATERIALIZATION_PARAMETER},
    }
    assert deployments["hr"]["description"] == (
        "Refresh the Tableau content of the hr domain 120 s after the last materialization of its 2 upstream table(s)."
    )
    completed, materialized = deployments["finance"]["triggers"]  # both: its upstream flow and its table
    assert completed["expect"] == ["prefect.flow-run.Completed"]
    assert materialized["match"] == {"prefect.resource.id": ["athena://awsdatacatalog/finance/ledger"]}
    assert materialized["within"] == 300  # the default debounce


def test_prefect_yaml_without_the_generated_section_is_refused(tmp_path):
    from deployments.domains import main

    deploy_yaml = tmp_path / "prefect.yaml"
    deploy_yaml.write_text("deployments: []\n")
    with pytest.raises(ValueError, match="no generated section"):
        main(["--prefect-yaml", str(deploy_yaml)])
