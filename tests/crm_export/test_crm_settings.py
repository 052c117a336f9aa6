"""The settings contract: one definition, its pipeline flags both ways, the flow's parameters, Dataflow's names."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from flows.crm_export.export import crm_export
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.pipeline import CrmExportOptions
from pipelines.crm_export.settings import (
    DestinationSettings,
    PipelineSettings,
    job_name,
    settings_from_options,
    validate_job_name,
)
from tasks.crm_export.jobs import JobSpec
from tasks.crm_export.tasks import CrmSettings

ROOT = Path(__file__).resolve().parents[2]
URL = "https://crm.example.com/v1/users/batch"


def parsed(args: list[str]) -> PipelineSettings:
    return settings_from_options(PipelineOptions(args).view_as(CrmExportOptions))


def test_every_setting_goes_to_the_pipeline_and_back_and_the_crm_block_does_not() -> None:
    destination = DestinationSettings(
        url=URL,
        destination="hubspot",
        field_map={"email": "email", "properties.plan": "plan", "identity.country": "country"},
        id_property="external_id",
    )
    crm = CrmSettings(
        block="hubspot-crm/crm-export",
        batch_size=250,
        key_field="user_id",
        keep_null=["identity.phone", "properties.ltv"],
        read_timeout_seconds=12.5,
        max_attempts=3,
        max_backoff_seconds=7.0,
        max_in_flight=2,
        send_nulls=True,
        union_fields=["string_value", "int_value"],
        flat_separator="__",
    )
    settings = crm.pipeline_settings(destination)
    args = settings.pipeline_args()
    assert "--crm_url=" + URL in args
    assert "--crm_read_timeout_seconds=12.5" in args
    assert "--send_nulls" in args
    assert "--crm_destination=hubspot" in args
    assert "--hubspot_id_property=external_id" in args
    assert not any("hubspot-crm/" in arg or "block" in arg for arg in args)
    assert (
        parsed(args)
        == settings
        == PipelineSettings(**destination.model_dump(), **crm.model_dump(exclude={"block"}))
    )


def test_the_pipeline_flags_default_to_the_settings_defaults() -> None:
    assert parsed([f"--crm_url={URL}"]) == PipelineSettings(url=URL)
    defaults = CrmSettings(block="generic-crm-endpoint/k").pipeline_settings(DestinationSettings(url=URL))
    assert parsed(defaults.pipeline_args()) == defaults == PipelineSettings(url=URL)
    assert "--send_nulls" not in defaults.pipeline_args()


def test_a_missing_or_invalid_flag_is_named() -> None:
    with pytest.raises(ValueError, match=r"--crm_url is required \(the CRM's batch import endpoint\)"):
        parsed([])
    with pytest.raises(ValueError, match=r"--batch_size=0: .*greater than or equal to 1") as failure:
        parsed([f"--crm_url={URL}", "--batch_size=0", "--crm_max_in_flight=0"])
    assert "--crm_max_in_flight=0" in str(failure.value)


def test_hubspot_and_braze_need_a_field_map_and_hubspot_its_id_property() -> None:
    with pytest.raises(ValueError, match="field_map is required for braze"):
        PipelineSettings(url=URL, destination="braze")
    with pytest.raises(ValueError, match="id_property is required for hubspot"):
        PipelineSettings(url=URL, destination="hubspot", field_map={"email": "email"})
    with pytest.raises(ValueError, match=r"field_map: \['email'\] — every entry maps a non-empty field"):
        PipelineSettings(url=URL, field_map={"email": ""})
    with pytest.raises(ValueError, match=r"--field_map='\{nope': not a JSON object"):
        parsed([f"--crm_url={URL}", "--field_map={nope"])
    with pytest.raises(ValueError, match=r"--crm_destination='salesforce'"):
        parsed([f"--crm_url={URL}", "--crm_destination=salesforce"])


def test_each_destination_caps_the_batch_size_at_its_own_limit() -> None:
    fields = {"email": "email"}
    assert PipelineSettings(url=URL).batch_limit() == 5000
    assert (
        PipelineSettings(url=URL, destination="hubspot", field_map=fields, id_property="email").batch_limit()
        == 100
    )
    assert PipelineSettings(url=URL, destination="braze", field_map=fields).batch_limit() == 75
    assert PipelineSettings(url=URL, destination="braze", field_map=fields, batch_size=20).batch_limit() == 20


def test_a_list_entry_holding_a_comma_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_null: .*without commas"):
        PipelineSettings(url=URL, keep_null=["identity.phone,email"])


def test_the_flows_parameters_keep_their_names_and_take_the_deployments_json() -> None:
    schema = crm_export.parameters
    assert list(schema.properties) == [
        "source",
        "crm",
        "runner",
        "dead_letter_location",
        "shard_date",
        "force",
        "full_resync",
        "max_dead_letter_ratio",
        "poll",
        "prices",
        "pipeline_name",
        "dry_run",
    ]
    crm = schema.definitions["CrmSettings"]
    assert set(crm["properties"]) == {
        "block",
        "batch_size",
        "key_field",
        "keep_null",
        "read_timeout_seconds",
        "max_attempts",
        "max_backoff_seconds",
        "max_in_flight",
        "send_nulls",
        "union_fields",
        "flat_separator",
    }
    assert set(crm["required"]) == {"block"}
    assert crm["properties"]["batch_size"] == {
        "default": 5000,
        "description": "records per request (at most)",
        "minimum": 1,
        "title": "Batch Size",
        "type": "integer",
    }
    deployment = next(
        d
        for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "crm-export-weekly"
    )
    parameters = crm_export.validate_parameters(deployment["parameters"])
    assert parameters["crm"] == CrmSettings(block="hubspot-crm/crm-export", batch_size=5000)


def test_job_names_and_labels_follow_dataflows_rules() -> None:
    assert job_name("CRM Export (EU)", dt.date(2026, 11, 16)) == "crm-export-eu-20261116"
    assert validate_job_name("a" * 1024) == "a" * 1024
    for bad in ("a" * 1025, "crm_export", "crm-", "1crm"):
        with pytest.raises(ValueError, match="not a valid Dataflow job name"):
            validate_job_name(bad)
    with pytest.raises(ValueError, match="invalid Dataflow labels shard-date='2026/11/16'"):
        JobSpec("crm-export-20261116", (), {"shard-date": "2026/11/16"}, ApiKey("k"))


def imported(statement: str) -> set[str]:
    """The top-level packages among apache_beam and prefect that ``statement`` imports, in a fresh interpreter."""
    code = f"import sys; {statement}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split()) & {"apache_beam", "prefect"}


def test_the_contract_imports_neither_beam_nor_prefect_and_the_flow_no_beam() -> None:
    contract = (
        "import pipelines.crm_export.settings, pipelines.crm_export.accounting, pipelines.crm_export.api_key"
    )
    assert imported(contract + ", pipelines.crm_export.users") == set()  # what workers and blocks import
    assert imported("import flows.crm_export.export") == {"prefect"}  # Beam only where a job is built
