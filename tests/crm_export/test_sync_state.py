"""Diff sync against the sync state, on the BigQuery emulator: the statements (BigQuery's dialect), the plan
(what is sent, what counts as unchanged, duplicates, keys removed from the source), the recording, the
bookkeeping of an export waiting to be recorded, and the shard's checks; then the flow week after week
into the HubSpot stand-in."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from types import SimpleNamespace

import orjson
import pytest
import sqlglot
from google.cloud.bigquery import SchemaField
from prefect.blocks.system import Secret
from prefect.variables import Variable

from blocks import HubSpotCrm
from devstack.crms import HubSpotServer
from devstack.user_rows import load_shard, shard_rows
from flows.crm_export.export import CrmCredentialsError, crm_export
from pipelines.crm_export.settings import PipelineSettings
from tasks.crm_export.jobs import JobInfo, JobState
from tasks.crm_export.sync_state import (
    DiffSql,
    ExportInProgressError,
    PendingExport,
    ShardFieldError,
    SyncState,
    check_shard,
    check_shard_fields,
    export_fingerprint,
    invalidate,
    plan_export,
    read_state,
    record_export,
    sent_fields,
    state_variable_name,
    write_state,
)
from tasks.crm_export.tasks import BigQuerySource, CrmSettings, LocalRunnerSettings, settle_pending

SCHEMA = [
    SchemaField("external_id", "STRING"),
    SchemaField("email", "STRING"),
    SchemaField("profile", "RECORD", fields=[SchemaField("plan", "STRING"), SchemaField("seen", "STRING")]),
    SchemaField("updated", "INT64"),
]
SETTINGS = PipelineSettings(url="http://crm", field_map={"email": "email", "profile.plan": "plan"})
log = logging.getLogger(__name__)


def row(
    key: str, plan: str = "pro", seen: str = "2026-11-01", email: str | None = None, updated: int = 1
) -> dict:
    return {
        "external_id": key,
        "email": email or f"{key}@example.com",
        "profile": {"plan": plan, "seen": seen},
        "updated": updated,
    }


class Shards:
    """A dataset of the emulator holding shards and one pipeline's sync state."""

    def __init__(self, bigquery, dataset: str):
        self.client = bigquery.client()
        self.dataset = dataset
        self.state = f"{dataset}.crm_sync_state"

    def sql(self, shard: str, settings: PipelineSettings = SETTINGS, **changes) -> DiffSql:
        fields = dict(
            shard=f"{self.dataset}.{shard}",
            state=self.state,
            key_field=settings.key_field,
            key_type="STRING",
            fields=sent_fields(settings),
            settings=export_fingerprint(settings),
        )
        return DiffSql(**{**fields, **changes})

    def load(self, shard: str, *rows: dict) -> None:
        load_shard(self.client, f"{self.dataset}.{shard}", rows, SCHEMA)

    def plan(self, sql: DiffSql, state: SyncState | None = None, full: bool = False):
        plan = plan_export(self.client, sql, f"{sql.shard}_plan", state, full, {})
        rows = [dict(r) for r in self.client.query(f"SELECT * FROM `{plan.plan_table}`").result()]
        return plan, {r["external_id"]: r for r in rows}

    def accept(self, sql: DiffSql, tmp_path, rows: dict, keys: list[str], shard_date=dt.date(2026, 11, 16)):
        """Record ``keys`` of the plan's ``rows`` as accepted, as a job writes them."""
        prefix = tmp_path / f"accepted-{uuid.uuid4().hex[:6]}"
        lines = [{"key": k, "fingerprint": rows[k]["_crm_sync_fingerprint"]} for k in keys]
        (tmp_path / f"{prefix.name}-00000-of-00001.jsonl").write_bytes(
            b"".join(orjson.dumps(line) + b"\n" for line in lines)
        )
        return record_export(self.client, sql, str(prefix), shard_date)

    def state_keys(self) -> dict[str, str]:
        return {
            r["key"]: r["fingerprint"] for r in self.client.query(f"SELECT * FROM `{self.state}`").result()
        }


@pytest.fixture
def shards(bigquery, bigquery_dataset) -> Shards:
    return Shards(bigquery, bigquery_dataset)


def test_every_statement_is_bigquery_sql():
    for changes in ({}, {"fields": None}, {"key_type": "INT64", "order_by": "updated", "casefold": True}):
        given = {
            "shard": "p.crm.users_20261116",
            "state": "p.crm.crm_export_sync_state",
            "key_field": "external_id",
            "key_type": "STRING",
            "fields": ["email", "external_id", "properties.plan"],
            "settings": "abc",
        }
        sql = DiffSql(**{**given, **changes})
        expires = dt.datetime(2026, 12, 16, tzinfo=dt.UTC)
        for statement in (
            sql.create_state(),
            sql.counts(),
            sql.plan("p.crm.plan", expires, full=False),
            sql.invalidate("p.crm.plan"),
            sql.record("p.crm.accepted", dt.date(2026, 11, 16)),
            sql.out_of_sync(),
        ):
            (parsed,) = sqlglot.parse(statement, read="bigquery")
            assert parsed is not None
    plan = sql.plan("p.crm.plan", expires, full=False)
    assert "`properties`.`plan` AS f2" in plan
    assert "LOWER(shard.`external_id`)" in plan
    assert "REPLACE (CAST(cur.`external_id` AS STRING) AS `external_id`)" in plan
    assert "ORDER BY fingerprinted.`updated` DESC, _crm_sync_fingerprint DESC" in plan


def test_a_diff_sends_what_the_state_does_not_hold_and_counts_the_rest(shards, tmp_path):
    shards.load("w1", row("same"), row("plan"), row("seen"), row("dead"), row("gone"))
    sql = shards.sql("w1")
    first, sent = shards.plan(sql)
    assert (first.mode, first.rows_in_shard, first.unchanged, first.rows_to_send) == ("full", 5, 0, 5)
    assert "first export" in first.reason
    invalidate(shards.client, sql, first)
    recorded = shards.accept(sql, tmp_path, sent, ["same", "plan", "seen", "gone"])  # "dead" was refused
    assert (recorded.recorded, recorded.out_of_sync) == (4, 1)
    state = SyncState(table=shards.state, settings_fingerprint=sql.settings)
    shards.load(
        "w2",
        row("same"),
        row("plan", plan="team"),  # a field the CRM receives changed
        row("seen", seen="2026-11-09"),  # a field it does not receive changed: unchanged
        row("dead"),  # unchanged, but not in the state: the CRM refused it
        row("new"),
    )
    week2 = shards.sql("w2")
    plan, sent = shards.plan(week2, state)
    assert plan.mode == "diff"
    assert sorted(sent) == ["dead", "new", "plan"]
    assert (plan.rows_in_shard, plan.unchanged, plan.rows_to_send, plan.duplicates) == (5, 2, 3, 0)
    assert plan.removed_from_source == 1  # "gone": reported, kept in the state and in the CRM
    assert all(
        r["_crm_sync_duplicate_of"] is None and len(r["_crm_sync_fingerprint"]) == 32 for r in sent.values()
    )
    invalidate(shards.client, week2, plan)
    assert sorted(shards.state_keys()) == ["gone", "same", "seen"]  # the keys sent left the state
    recorded = shards.accept(week2, tmp_path, sent, ["dead", "new", "plan"])
    assert recorded.out_of_sync == 0
    assert sorted(shards.state_keys()) == ["dead", "gone", "new", "plan", "same", "seen"]
    again, sent = shards.plan(week2, state)
    assert (again.unchanged, again.rows_to_send) == (5, 0)
    full, sent = shards.plan(week2, state, full=True)
    assert (full.mode, full.reason, full.rows_to_send) == ("full", "full_resync=True", 5)


def test_other_settings_or_shaping_send_every_row_again(shards, tmp_path, monkeypatch):
    shards.load("w1", row("a"), row("b"))
    sql = shards.sql("w1")
    plan, sent = shards.plan(sql)
    shards.accept(sql, tmp_path, sent, ["a", "b"])
    state = SyncState(table=shards.state, settings_fingerprint=sql.settings)
    assert shards.plan(sql, state)[0].rows_to_send == 0
    mapped = SETTINGS.model_copy(update={"field_map": {**SETTINGS.field_map, "profile.seen": "seen"}})
    plan, _ = shards.plan(shards.sql("w1", mapped), state)
    assert (plan.mode, plan.rows_to_send) == ("full", 2)
    assert "settings that decide what is sent" in plan.reason
    monkeypatch.setattr("tasks.crm_export.sync_state.SHAPING_VERSION", 999)
    assert export_fingerprint(SETTINGS) != sql.settings
    assert shards.plan(shards.sql("w1"), state)[0].rows_to_send == 2


def test_duplicate_keys_send_one_row_by_the_documented_order_and_mark_the_others(shards, tmp_path):
    shards.load(
        "w1",
        row("a", plan="old", updated=1),
        row("a", plan="new", updated=3),
        row("a", plan="mid", updated=2),
        row("b"),
    )
    plan, sent = shards.plan(shards.sql("w1", order_by="updated"))
    assert (plan.rows_in_shard, plan.rows_to_send, plan.duplicates) == (4, 4, 2)
    rows = list(shards.client.query(f"SELECT * FROM `{plan.plan_table}` ORDER BY updated").result())
    exported = [r for r in rows if r["_crm_sync_duplicate_of"] is None]
    assert [(r["external_id"], r["profile"]["plan"]) for r in exported] == [("b", "pro"), ("a", "new")]
    assert [r["_crm_sync_duplicate_of"] for r in rows if r["external_id"] == "a" and r["updated"] < 3] == [
        "a",
        "a",
    ]
    # HubSpot matches emails case-insensitively: keys differing in case are one record.
    shards.load("w2", row("X@example.com", updated=1), row("x@example.com", updated=2))
    plan, _ = shards.plan(shards.sql("w2", order_by="updated", casefold=True))
    rows = {r["external_id"]: r for r in shards.client.query(f"SELECT * FROM `{plan.plan_table}`").result()}
    assert rows["X@example.com"]["_crm_sync_duplicate_of"] == "x@example.com"
    assert rows["x@example.com"]["_crm_sync_key"] == "x@example.com"
    assert plan.duplicates == 1


def test_a_duplicate_does_not_take_the_exported_rows_key_out_of_the_state(shards, tmp_path):
    shards.load("w1", row("a", updated=2))
    sql = shards.sql("w1", order_by="updated")
    plan, sent = shards.plan(sql)
    shards.accept(sql, tmp_path, sent, ["a"])
    shards.load("w2", row("a", updated=2), row("a", plan="stale", updated=1))  # a stale copy appears
    week2 = shards.sql("w2", order_by="updated")
    plan, _ = shards.plan(week2, SyncState(table=shards.state, settings_fingerprint=sql.settings))
    assert (plan.unchanged, plan.rows_to_send, plan.duplicates) == (1, 1, 1)  # only the copy, to dead-letter
    invalidate(shards.client, week2, plan)
    assert list(shards.state_keys()) == ["a"]


def test_the_shards_checks_name_what_is_wrong(shards):
    shards.load("w1", row("a"))
    table = f"{shards.dataset}.w1"
    assert check_shard(shards.client, table, SETTINGS, "hubspot-crm/h").rows == 1
    unknown = SETTINGS.model_copy(update={"field_map": {"profile.tier": "tier"}})
    with pytest.raises(
        ShardFieldError, match=r"block 'hubspot-crm/h' names unknown fields \['profile.tier'\]"
    ):
        check_shard(shards.client, table, unknown, "hubspot-crm/h")
    with pytest.raises(ShardFieldError, match=r"the key column 'user_id' \(crm.key_field\) is missing"):
        check_shard_fields(SETTINGS.model_copy(update={"key_field": "user_id"}), ["external_id"], "x", "b")
    load_shard(
        shards.client,
        f"{shards.dataset}.w2",
        [{"external_id": "a", "_crm_sync_key": "x"}],
        [SchemaField("external_id", "STRING"), SchemaField("_crm_sync_key", "STRING")],
    )
    with pytest.raises(ShardFieldError, match=r"columns \['_crm_sync_key'\], whose prefix '_crm_sync_'"):
        check_shard(shards.client, f"{shards.dataset}.w2", PipelineSettings(url="http://crm"), "b")


def test_a_state_of_the_version_before_the_sync_state_means_a_full_export(caplog):
    pipeline = f"legacy-{uuid.uuid4().hex[:6]}"
    Variable.set(
        state_variable_name(pipeline),
        {
            "shard_date": "2026-11-09",
            "job_name": f"{pipeline}-20261109",
            "job_id": "j1",
            "source": "p:crm.users_20261109",
            "dead_letter_prefix": "gs://b/dl",
            "fingerprint": "abc",
            "exported_at": "2026-11-10T00:00:00Z",
        },
        _sync=True,
    )
    with caplog.at_level(logging.WARNING):
        assert read_state(pipeline, log) is None
    assert "a version without a sync state" in caplog.text
    assert "sends every row" in caplog.text


class Launcher(SimpleNamespace):
    def list_jobs(self, name: str) -> list[JobInfo]:
        return [job for job in self.jobs if job.name == name]


def pending_state(shards: Shards, tmp_path, plan_id: str = "p1") -> SyncState:
    return SyncState(
        table=shards.state,
        settings_fingerprint="abc",
        pending=PendingExport(
            plan_id=plan_id,
            job_name="crm-20261116",
            shard_date=dt.date(2026, 11, 16),
            accepted_prefix=str(tmp_path / "accepted"),
            planned_at=dt.datetime.now(dt.UTC),
        ),
    )


def test_an_export_waiting_to_be_recorded_is_recorded_forgotten_or_waited_for(shards, tmp_path):
    shards.load("w1", row("a"), row("b"))
    sql = shards.sql("w1")
    plan, sent = shards.plan(sql)
    (tmp_path / "accepted-00000-of-00001.jsonl").write_bytes(
        orjson.dumps({"key": "a", "fingerprint": sent["a"]["_crm_sync_fingerprint"]}) + b"\n"
    )
    job = JobInfo(id="j1", name="crm-20261116", state=JobState.DONE, labels={"sync-plan": "p1"})
    # DONE but not recorded (its flow run died): recorded now.
    settled = settle_pending(pending_state(shards, tmp_path), Launcher(jobs=[job]), shards.client, sql, log)
    assert settled.pending is None
    assert settled.last_export.job_id == "j1"
    assert list(shards.state_keys()) == ["a"]
    # FAILED, or never submitted: forgotten (its keys are out of the state).
    failed = JobInfo(id="j2", name="crm-20261116", state=JobState.FAILED, labels={"sync-plan": "p1"})
    assert (
        settle_pending(
            pending_state(shards, tmp_path), Launcher(jobs=[failed]), shards.client, sql, log
        ).pending
        is None
    )
    assert (
        settle_pending(pending_state(shards, tmp_path), Launcher(jobs=[]), shards.client, sql, log).pending
        is None
    )
    # Still running: a second export now would race it.
    running = JobInfo(id="j3", name="crm-20261116", state=JobState.QUEUED, labels={"sync-plan": "p1"})
    with pytest.raises(
        ExportInProgressError, match=r"job crm-20261116 \(j3\) of shard 2026-11-16 is still JOB_STATE_QUEUED"
    ):
        settle_pending(pending_state(shards, tmp_path), Launcher(jobs=[running]), shards.client, sql, log)
    # Another plan's job of the same name does not count.
    other = JobInfo(id="j4", name="crm-20261116", state=JobState.RUNNING, labels={"sync-plan": "p0"})
    assert (
        settle_pending(
            pending_state(shards, tmp_path), Launcher(jobs=[other]), shards.client, sql, log
        ).pending
        is None
    )


def test_the_state_variable_round_trips(tmp_path):
    pipeline = f"rt-{uuid.uuid4().hex[:6]}"
    state = SyncState(table="p.d.t", settings_fingerprint="abc")
    write_state(pipeline, state)
    assert read_state(pipeline, log) == state


# --- the flow, week after week, into the HubSpot stand-in ---------------------------------------

TOKEN = "pat-na1-diff-flow"
FIELD_MAP = {"email": "email", "properties.plan": "plan", "identity.country": "country"}


@pytest.fixture(scope="module")
def hubspot():
    with HubSpotServer(TOKEN) as server:
        yield server


def hubspot_block(url: str, field_map: dict[str, str] = FIELD_MAP, **token: str) -> str:
    """Save a ``HubSpotCrm`` block for the stand-in at ``url``; ``token``: access_token or access_token_block."""
    name = f"hubspot-{uuid.uuid4().hex[:8]}"
    HubSpotCrm(base_url=url, id_property="external_id", field_map=field_map, **token).save(name)
    return f"hubspot-crm/{name}"


@pytest.fixture
def weekly(tmp_path, hubspot, bigquery, bigquery_dataset):
    hubspot.reset()
    secret = f"hubspot-token-{uuid.uuid4().hex[:8]}"
    Secret(value=TOKEN).save(secret)  # the token in a secret block the CRM's block names
    project, dataset = bigquery_dataset.split(".")
    source = BigQuerySource(
        project=project,
        dataset=dataset,
        table_prefix="users",
        api_endpoint=bigquery.url,
        storage_api_endpoint=bigquery.storage_url,
    )
    load_shard(bigquery.client(), source.table(dt.date(2026, 11, 9)), shard_rows(2_000, invalid_every=400))
    return {
        "source": source,
        "crm": CrmSettings(block=hubspot_block(hubspot.url, access_token_block=f"secret/{secret}")),
        "runner": LocalRunnerSettings(registry_dir=tmp_path / "jobs"),
        "dead_letter_location": str(tmp_path / "dead-letters"),
        "poll": {"interval_seconds": 0.2, "timeout_seconds": 300},
        "pipeline_name": f"crm-diff-{uuid.uuid4().hex[:6]}",
    }


@pytest.mark.slow(seconds=35)
def test_a_full_week_then_a_failed_week_then_a_diff_week(weekly, hubspot, bigquery):
    first = crm_export(**weekly)
    assert first.sync == "full"
    assert first.rows_in_shard == 2_000
    assert first.records_unchanged == 0
    assert first.records_accepted == 1_995
    assert first.records_dead_lettered == 5  # invalid emails
    assert first.records_recorded == 1_995
    assert first.out_of_sync == 5
    state = read_state(weekly["pipeline_name"], log)
    assert state.last_export.shard_date == dt.date(2026, 11, 9)
    assert state.pending is None
    week_2 = weekly["source"].table(dt.date(2026, 11, 16))
    load_shard(bigquery.client(), week_2, shard_rows(2_000, invalid_every=400, change_every=20, new_users=30))
    hubspot.reset()
    # A wrong token: the job fails before anything is taken; the state no longer waits for it.
    wrong = hubspot_block(hubspot.url, access_token="pat-na1-wrong")
    with pytest.raises(CrmCredentialsError, match=f"refused the key of CRM block '{wrong}'"):
        crm_export(**{**weekly, "crm": weekly["crm"].model_copy(update={"block": wrong})})
    refused = hubspot.stats()
    assert refused["distinct_users"] == 0
    assert set(refused["status_counts"]) == {"401"}
    assert read_state(weekly["pipeline_name"], log).pending is None
    second = crm_export(**weekly)
    assert second.launch == "submitted"
    assert second.sync == "diff"
    assert second.rows_in_shard == 2_030
    # changed (100) + new (30) + last week's dead letters (5, every 400th user, all among the changed:
    # every 20th) — the failed run's plan had taken the changed keys out of the state, so they are sent
    assert second.records_read == 100 + 30
    assert second.records_accepted == 125
    assert second.records_dead_lettered == 5
    assert second.records_unchanged == 2_030 - 130
    assert second.out_of_sync == 5
    assert second.requests == hubspot.stats()["requests"] - refused["requests"] == 2
    assert hubspot.stats()["distinct_users"] == 125
    assert read_state(weekly["pipeline_name"], log).last_export.shard_date == dt.date(2026, 11, 16)


def test_an_unknown_field_fails_before_anything_is_sent(weekly, hubspot):
    block = hubspot_block(hubspot.url, {"email": "email", "properties.tier": "tier"}, access_token=TOKEN)
    weekly["crm"] = weekly["crm"].model_copy(update={"block": block})
    with pytest.raises(
        ShardFieldError,
        match=rf"the field_map of CRM block '{block}' names unknown fields \['properties.tier'\]",
    ):
        crm_export(**weekly)
    assert hubspot.stats()["requests"] == 0
    assert not (weekly["runner"].registry_dir / "jobs").exists()
