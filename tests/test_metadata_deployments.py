"""prefect.yaml: the metadata collection deployments are generated from metadata_sources.yaml by
``python -m deployments.metadata`` (a deployment ``metadata-<source>`` per source, on its schedule)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deployments.metadata import main
from tasks.metadata.sources import SourceConfigError

ROOT = Path(__file__).resolve().parents[1]
NEW_SOURCE = {
    "extractor": {"kind": "tableau", "pat_pool_block": "tableau-pat-pool"},
    "landing": {"kind": "gcs", "gcs_bucket_block": "catalog-dev", "landing_dir": "tableau/landing"},
}


def deployments_of(path: Path) -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(path.read_text())["deployments"]}


@pytest.fixture
def files(tmp_path):
    """(sources file, prefect.yaml, its arguments, the sources as a dict): copies of the project's."""
    sources_yaml, deploy_yaml = tmp_path / "metadata_sources.yaml", tmp_path / "prefect.yaml"
    sources_yaml.write_text((ROOT / "metadata_sources.yaml").read_text())
    config = yaml.safe_load(sources_yaml.read_text())
    deploy_yaml.write_text((ROOT / "prefect.yaml").read_text())
    args = ["--config", str(sources_yaml), "--prefect-yaml", str(deploy_yaml)]
    return sources_yaml, deploy_yaml, args, config


def test_the_metadata_deployments_of_prefect_yaml_are_generated_from_the_configuration():
    assert main(["--check"]) == 0, "prefect.yaml is out of date: run `python -m deployments.metadata`"


def test_the_shipped_example_sources_are_deployed_paused_on_a_daily_cron():
    deployments = deployments_of(ROOT / "prefect.yaml")
    for name in ("metadata-athena-prod", "metadata-tableau-prod"):
        assert deployments[name]["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": False}]
        assert deployments[name]["work_pool"]["name"] == "metadata"


def test_a_stale_prefect_yaml_fails_the_check_naming_the_command_and_is_left_unchanged(files, capsys):
    sources_yaml, deploy_yaml, args, config = files
    config["sources"]["athena-prod"]["schedule"]["cron"] = "30 5 * * *"
    sources_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    before = deploy_yaml.read_text()

    assert main([*args, "--check"]) == 1
    assert capsys.readouterr().err == (
        f"prefect.yaml is out of date with {sources_yaml}: run `python -m deployments.metadata`\n"
    )
    assert deploy_yaml.read_text() == before

    assert main(args) == 0
    assert "wrote the deployments of 2 source(s): athena-prod, tableau-prod" in capsys.readouterr().out
    assert main([*args, "--check"]) == 0
    schedules = deployments_of(deploy_yaml)["metadata-athena-prod"]["schedules"]
    assert schedules == [{"cron": "30 5 * * *", "timezone": "UTC", "active": False}]


def test_a_new_source_is_one_configuration_entry_and_one_command(files):
    sources_yaml, deploy_yaml, args, config = files
    config["sources"]["tableau-dev"] = NEW_SOURCE  # no schedule: the default, daily at 02:00 UTC, active
    config["sources"]["athena-eu"] = {
        **config["sources"]["athena-prod"],
        "schedule": {"cron": "*/30 * * * *", "timezone": "Europe/Paris"},
    }
    sources_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    before = deployments_of(deploy_yaml)

    assert main([*args, "--check"]) == 1
    assert main(args) == 0
    assert main([*args, "--check"]) == 0

    deployments = deployments_of(deploy_yaml)
    dev = deployments["metadata-tableau-dev"]
    assert dev["entrypoint"] == "flows/metadata/collect.py:collect_metadata"  # from the *collect anchor
    assert dev["work_pool"]["name"] == "metadata"
    assert dev["concurrency_limit"] == 1
    assert dev["parameters"] == {"source": "tableau-dev"}
    assert dev["tags"] == ["metadata", "tableau"]
    assert dev["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert deployments["metadata-athena-eu"]["schedules"] == [
        {"cron": "*/30 * * * *", "timezone": "Europe/Paris", "active": True}
    ]
    assert deployments["metadata-athena-eu"]["description"] == before["metadata-athena-prod"]["description"]
    # Everything else is as it was: the examples (still paused), the domains, the CRM export.
    assert {name: d for name, d in deployments.items() if name in before} == before
    names = list(deployments)
    assert names[-4:] == [
        "metadata-athena-prod",
        "metadata-tableau-prod",
        "metadata-tableau-dev",
        "metadata-athena-eu",
    ]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (
            '{cron: "0 2 * *"}',
            r"line 7, sources\.athena-prod\.schedule\.cron: cron '0 2 \* \*' is not a cron expression Prefect "
            r"takes: give five fields",
        ),
        (
            '{crn: "0 2 * * *"}',
            r"line 7, sources\.athena-prod\.schedule\.crn: unknown key 'crn'; expected one of: cron, timezone, "
            r"active\. Remove it or correct its spelling\.",
        ),
        (
            "{timezone: Europe/Pariss}",
            r"line 7, sources\.athena-prod\.schedule\.timezone: timezone 'Europe/Pariss' is not an IANA time "
            r"zone Prefect knows: use a tz database name, e.g\. UTC or Europe/Paris\.",
        ),
        (
            "{active: paused}",
            r"line 7, sources\.athena-prod\.schedule\.active: expected true or false, got 'paused'\.",
        ),
        (
            "daily",
            r"line 7, sources\.athena-prod\.schedule: expected a mapping with the keys cron, timezone, active, "
            r"got 'daily'\.",
        ),
    ],
    ids=["bad cron", "unknown key", "unknown timezone", "active not a boolean", "not a mapping"],
)
def test_a_bad_schedule_is_refused_naming_the_source_and_the_key(files, schedule, message):
    sources_yaml, deploy_yaml, args, _ = files
    sources_yaml.write_text(
        "sources:\n"
        "  tableau-dev:\n"
        "    extractor: {kind: tableau, pat_pool_block: p}\n"
        "    landing: {kind: local, root: /srv, landing_dir: out}\n"
        "  athena-prod:\n"
        "    extractor: {kind: tableau, pat_pool_block: p}\n"
        f"    schedule: {schedule}\n"
        "    landing: {kind: local, root: /srv, landing_dir: out}\n"
    )
    before = deploy_yaml.read_text()
    with pytest.raises(
        SourceConfigError, match=f"^Metadata sources file {re.escape(str(sources_yaml))}, {message}"
    ):
        main(args)
    assert deploy_yaml.read_text() == before


def test_prefect_yaml_without_the_generated_metadata_section_is_refused(files):
    _, deploy_yaml, args, _ = files
    text = deploy_yaml.read_text()
    deploy_yaml.write_text(text.replace("  # END metadata deployments", ""))
    with pytest.raises(
        ValueError,
        match=r"no generated section: put the lines '# BEGIN metadata deployments: generated from "
        r"metadata_sources\.yaml by `python -m deployments\.metadata`' and '# END metadata deployments' "
        r"under 'deployments:' where the metadata deployments belong",
    ):
        main(args)
