"""The dry run of the crm_export flow (``dry_run=True``), from the BigQuery emulator on the local launcher into
the generic endpoint's stand-in: it checks and plans as a real run does and stops there — the CRM receives
nothing, no job is submitted, the sync state, its table and its Variable stay as they were — and what it
counts is what the next real run sends."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from google.api_core.exceptions import NotFound
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.variables import Variable

from blocks import GenericCrmEndpoint
from devstack.crms import CrmStandIn
from devstack.user_rows import load_shard, shard_rows
from flows.crm_export.export import ExportPlanPreview, ExportSummary, crm_export
from tasks.crm_export.launchers.local import LocalLauncher
from tasks.crm_export.sync_state import DiffSql, ShardFieldError, state_variable_name
from tasks.crm_export.tasks import BigQuerySource, CrmSettings, LocalRunnerSettings

API_KEY = "sk-dry-run-5f0e1c"
FIELD_MAP = {"email": "email", "properties.plan": "plan"}
WEEK_1, WEEK_2 = dt.date(2026, 11, 16), dt.date(2026, 11, 23)
USERS = 60
BATCH = 8


@pytest.fixture
def crm(tmp_path):
    with CrmStandIn(api_key=API_KEY, db_path=tmp_path / "crm.sqlite3") as standin:
        yield standin


def block(crm: CrmStandIn, field_map: dict[str, str]) -> str:
    name = f"dry-run-{uuid.uuid4().hex[:8]}"
    GenericCrmEndpoint(url=crm.batch_url, api_key=API_KEY, field_map=field_map).save(name)
    return f"generic-crm-endpoint/{name}"


@pytest.fixture
def export(tmp_path, crm, bigquery, bigquery_dataset) -> dict:
    """Parameters of a local export of the shards ``<dataset>.users_YYYYMMDD`` on the emulator."""
    project, dataset = bigquery_dataset.split(".")
    return {
        "source": BigQuerySource(
            project=project,
            dataset=dataset,
            table_prefix="users",
            api_endpoint=bigquery.url,
            storage_api_endpoint=bigquery.storage_url,
        ),
        "crm": CrmSettings(block=block(crm, FIELD_MAP), batch_size=BATCH),
        "runner": LocalRunnerSettings(registry_dir=tmp_path / "jobs"),
        "dead_letter_location": str(tmp_path / "dead-letters"),
        "poll": {"interval_seconds": 0.2, "timeout_seconds": 300},
        # The sync state's Variable is the workspace's, shared by the tests running at once: one each.
        "pipeline_name": f"dry-run-{uuid.uuid4().hex[:8]}",
        "max_dead_letter_ratio": 1.0,  # a few invalid emails among few rows
    }


class Untouched:
    """What a dry run must leave as it is: the CRM's stand-in, the job registry, the sync state's table and
    its Variable."""

    def __init__(self, crm: CrmStandIn, export: dict, client):
        self.crm, self.export, self.client = crm, export, client

    def now(self) -> dict:
        state = self.export["source"].state_table(self.export["pipeline_name"])
        try:
            rows = sorted(
                (r["key"], r["fingerprint"], r["shard_date"])
                for r in self.client.query(f"SELECT * FROM `{state}`").result()
            )
        except NotFound:
            rows = None
        registry = LocalLauncher(self.export["runner"].registry_dir).jobs_dir
        return {
            "crm stats": self.crm.stats(),
            "crm users": self.crm.users(),
            "jobs": sorted(path.name for path in registry.glob("*")),
            "sync state": rows,
            "variable": Variable.get(state_variable_name(self.export["pipeline_name"]), default=None),
        }


def expected_record(row: dict) -> dict:
    """What the field map makes of a shard row: the key, ``email`` and the plan's one typed value."""
    plan = row["properties"]["plan"]
    value = next(v for v in (plan["string_value"], plan["int_value"]) if v is not None)
    return {"external_id": row["external_id"], "email": row["email"], "plan": value}


def assert_counts_are_what_it_sends(preview: ExportPlanPreview, summary: ExportSummary) -> None:
    assert summary.launch == "submitted" and summary.sync == preview.sync
    assert summary.rows_in_shard == preview.rows_in_shard
    assert summary.records_unchanged == preview.records_unchanged
    assert summary.records_read == preview.records_to_send  # no duplicates, no malformed rows here
    assert summary.records_accepted + summary.records_rejected == preview.records_to_send
    assert summary.requests == summary.batches == preview.requests  # no faults: one request per batch


@pytest.mark.slow(seconds=15)
def test_a_dry_run_sends_nothing_and_counts_what_the_next_run_sends(export, crm, bigquery, caplog):
    client = bigquery.client()
    week_1 = list(shard_rows(USERS, invalid_every=20))
    load_shard(client, export["source"].table(WEEK_1), week_1)
    untouched = Untouched(crm, export, client)

    # A pipeline's first run: no sync state yet, and the dry run does not create one.
    before = untouched.now()
    first = crm_export(**export, dry_run=True)
    assert untouched.now() == before and before["sync state"] is None and before["variable"] is None
    assert first.dry_run and first.launch == "submit" and first.sync == "full"
    assert first.sync_reason == "the first export of this pipeline: the sync state is new"
    assert first.records_to_send == first.rows_in_shard == USERS and first.records_unchanged == 0
    assert first.requests == -(-USERS // BATCH) and first.batch_size == BATCH
    assert first.plan_table == export["source"].plan_table(export["pipeline_name"], WEEK_1, dry_run=True)
    assert_counts_are_what_it_sends(first, crm_export(**export))

    # Another week: some users change their plan, some arrive.
    week_2 = list(shard_rows(USERS, invalid_every=20, change_every=6, new_users=5))
    load_shard(client, export["source"].table(WEEK_2), week_2)
    before = untouched.now()
    state = crm_export(**export, dry_run=True, return_state=True)
    preview = state.result()
    assert untouched.now() == before  # nothing sent, no job, the sync state and its Variable unchanged
    assert preview.shard_date == WEEK_2 and preview.launch == "submit" and preview.sync == "diff"
    # To send: the users whose plan changed, those the CRM refused last week (an invalid email), the new ones.
    resent = {i for i in range(USERS) if i % 6 == 5 or i % 20 == 19}
    assert preview.records_to_send == len(resent) + 5 and preview.records_unchanged == USERS - len(resent)
    assert preview.requests == -(-(len(resent) + 5) // BATCH) and preview.records_duplicate == 0
    assert preview.notes == ()
    # The sample: the first records of the plan as the CRM would receive them, shaped by the field map.
    users = preview.sample_request["users"]
    assert len(users) == 3 and all(set(user) == {"external_id", "email", "plan"} for user in users)
    by_key = {row["external_id"]: row for row in week_2}
    assert users == [expected_record(by_key[user["external_id"]]) for user in users]
    with get_client(sync_client=True) as prefect:
        of_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        artifacts = {a.key: a.data for a in prefect.read_artifacts(artifact_filter=of_run) if a.key}
    assert set(artifacts) == {f"{export['pipeline_name']}-dry-run"}  # not the export's summary
    (markdown,) = artifacts.values()
    assert f"| Records to send | {len(resent) + 5:,} |" in markdown and '"users": [' in markdown
    assert f"| CRM requests | {preview.requests:,} (up to {BATCH} records each; retries aside) |" in markdown
    assert API_KEY not in markdown + preview.model_dump_json() + caplog.text

    # The real run sends what the dry run counted.
    assert_counts_are_what_it_sends(preview, crm_export(**export))

    # A shard already exported: a real run would skip it, and so the dry run plans nothing.
    before = untouched.now()
    again = crm_export(**export, dry_run=True)
    assert untouched.now() == before
    assert again.launch == "skip" and again.existing_job_id and again.sync is None
    assert again.records_to_send == again.requests == 0 and again.sample_request is None


def test_a_dry_run_fails_on_an_unknown_field_as_a_real_run_does(export, crm, bigquery):
    load_shard(bigquery.client(), export["source"].table(WEEK_1), shard_rows(5))
    export["crm"] = CrmSettings(block=block(crm, {**FIELD_MAP, "properties.tier": "tier"}))
    with pytest.raises(ShardFieldError) as real:
        crm_export(**export)
    with pytest.raises(ShardFieldError) as dry:
        crm_export(**export, dry_run=True)
    assert str(dry.value) == str(real.value)
    assert "names unknown fields ['properties.tier']" in str(dry.value) and "(nothing was sent)" in str(
        dry.value
    )
    assert crm.stats()["requests"] == 0
    assert not list(LocalLauncher(export["runner"].registry_dir).jobs_dir.glob("*"))


def test_a_plan_without_a_state_table_reads_an_empty_state():
    import sqlglot

    sql = DiffSql(
        shard="p.crm.users_20261116",
        state="p.crm.crm_export_sync_state",
        key_field="external_id",
        key_type="STRING",
        fields=["email", "external_id"],
        settings="abc",
        empty_state=True,
    )
    for statement in (
        sql.counts(),
        sql.plan("p.crm.plan", dt.datetime(2026, 12, 16, tzinfo=dt.UTC), full=False),
    ):
        assert sqlglot.parse_one(statement, read="bigquery") is not None
        assert "crm_export_sync_state" not in statement and "UNNEST(ARRAY<STRUCT<key STRING" in statement
