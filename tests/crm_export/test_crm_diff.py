"""Diff sync: which rows a diff sends (changed, new, previously dead-lettered; not unchanged), when an
export is full, the BigQuery query (parsed with sqlglot's BigQuery dialect) and its job, the field checks,
and the flow end to end on files: a full week, a diff week, a FAILED job's rows sent again."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import sqlglot
from prefect.blocks.system import Secret
from sqlglot import exp

from blocks import HubSpotCrm
from devstack.crms import HubSpotServer
from devstack.user_rows import write_next_week, write_user_rows
from flows.crm_export.export import CrmCredentialsError, crm_export
from pipelines.crm_export.settings import PipelineSettings
from tasks.crm_export.diff import (
    ExportState,
    ShardFieldError,
    check_shard_fields,
    diff_query,
    export_fingerprint,
    full_export_reason,
    plan_export,
    plan_local_diff,
    read_state,
    row_hasher,
)
from tasks.crm_export.tasks import BigQuerySource, CrmSettings, LocalRunnerSettings, LocalSource

FIELDS = {"email": "email", "properties.plan": "plan"}
SETTINGS = PipelineSettings(url="http://crm", field_map=FIELDS)


def write(path: Path, *rows) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows))
    return path


def row(key: str, plan: str = "pro", seen: str = "2026-11-01", email: str | None = None) -> dict:
    return {
        "external_id": key,
        "email": email or f"{key}@example.com",
        "properties.plan.string_value": plan,
        "properties.plan.int_value": None,
        "last_seen_at": seen,
    }


def test_a_diff_sends_changed_new_and_dead_lettered_rows_and_skips_unchanged(tmp_path):
    base = write(tmp_path / "w1.jsonl", row("same"), row("plan"), row("seen"), row("dead"), row("gone"))
    dead = write(
        tmp_path / "dl-00000-of-00001.jsonl", {"key": "dead", "reason": "x"}, {"key": None, "reason": "y"}
    )
    shard = write(
        tmp_path / "w2.jsonl",
        row("same"),
        row("plan", plan="team"),  # a mapped field changed
        row("seen", seen="2026-11-09"),  # a field the export does not send changed: unchanged
        row("dead"),  # unchanged, but dead-lettered last time
        row("new"),
        b'{"external_id": "broken", ',  # not JSON: sent, the pipeline dead-letters it again
        {"email": "nokey@example.com"},  # no key: sent, the pipeline dead-letters it again
    )
    hasher = row_hasher(sorted({"external_id", *FIELDS}), ".")
    rows, sent = plan_local_diff(shard, base, [dead], tmp_path / "out.jsonl", "external_id", hasher)
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines()
    keys = [
        orjson.loads(line).get("external_id") if line.startswith(b"{") and line.endswith(b"}") else "broken"
        for line in lines
    ]
    assert (rows, sent) == (7, 5) and keys == ["plan", "dead", "new", "broken", None]
    # Without a field map the whole record is sent: any column that changed counts.
    rows, sent = plan_local_diff(
        shard, base, [], tmp_path / "all.jsonl", "external_id", row_hasher(None, ".")
    )
    assert (rows, sent) == (7, 5)  # plan, seen, new, broken, no key


def test_an_export_is_full_the_first_time_on_resync_after_a_settings_change_or_for_an_older_shard():
    state = ExportState(
        shard_date=dt.date(2026, 11, 9),
        job_name="crm-export-20261109",
        job_id="j1",
        source="/shards/users_20261109.jsonl",
        dead_letter_prefix="/dl/crm-export-20261109/dead-letter",
        fingerprint=export_fingerprint(SETTINGS),
        exported_at=dt.datetime(2026, 11, 10, tzinfo=dt.UTC),
    )
    week = dt.date(2026, 11, 16)
    fingerprint = export_fingerprint(SETTINGS)
    assert full_export_reason(None, week, fingerprint, False) == "the first export of this pipeline"
    assert full_export_reason(state, week, fingerprint, True) == "full_resync=True"
    other = export_fingerprint(
        SETTINGS.model_copy(update={"field_map": {**FIELDS, "identity.country": "country"}})
    )
    assert "settings changed" in full_export_reason(state, week, other, False)
    assert "this shard or a newer one" in full_export_reason(state, dt.date(2026, 11, 9), fingerprint, False)
    assert full_export_reason(state, week, fingerprint, False) is None


def test_the_bigquery_diff_is_one_query_in_bigquerys_dialect_with_the_diff_semantics():
    expires = dt.datetime(2026, 12, 16, tzinfo=dt.UTC)
    fields = ["email", "external_id", "properties.plan"]
    sql = diff_query(
        "p:crm.users_20261116",
        "p:crm.users_20261109",
        "p.work.users_changed_20261116",
        "external_id",
        fields,
        expires,
    )
    tree = sqlglot.parse_one(sql, read="bigquery")
    assert (
        isinstance(tree, exp.Create)
        and tree.args.get("replace")
        and tree.this.sql("bigquery") == "`p`.`work`.`users_changed_20261116`"
    )
    assert "TIMESTAMP('2026-12-16 00:00:00+00')" in sql
    select = tree.expression
    assert select.sql("bigquery").startswith("SELECT cur.* FROM `p`.`crm`.`users_20261116` AS cur WHERE")
    tables = {t.sql("bigquery") for t in tree.find_all(exp.Table)}
    assert "`p`.`crm`.`users_20261109` AS prev" in tables and "dead_letters" in tables
    where = select.args["where"].this
    assert isinstance(where, exp.Or)
    conditions = [where.left.left, where.left.right, where.right]
    assert conditions[0].sql("bigquery") == "`cur`.`external_id` IS NULL"
    assert conditions[1].sql("bigquery").startswith("`cur`.`external_id` IN (SELECT `key` FROM dead_letters")
    anti = conditions[2]
    assert isinstance(anti, exp.Not) and isinstance(anti.this, exp.Exists)
    inner = anti.this.sql("bigquery")
    assert "`prev`.`external_id` = `cur`.`external_id`" in inner
    assert (
        "FARM_FINGERPRINT(TO_JSON_STRING(STRUCT(`cur`.`email` AS f0, `cur`.`external_id` AS f1, `cur`.`properties`.`plan` AS f2)))"
        in inner
    )
    assert not list(tree.find_all(exp.Join))  # no shuffle of our own: BigQuery plans the anti-join
    assert sqlglot.transpile(sql, read="bigquery", write="bigquery")[0] == sql  # stable round trip
    whole = diff_query(
        "p:crm.users_20261116", "p:crm.users_20261109", "p.crm.c", "external_id", None, expires
    )
    assert "FARM_FINGERPRINT(TO_JSON_STRING(prev)) = FARM_FINGERPRINT(TO_JSON_STRING(cur))" in whole


class FakeBigQuery:
    """A BigQuery client at its boundary: tables with row counts, and the query jobs it was given."""

    def __init__(self, tables: dict[str, int]):
        self.tables, self.jobs = tables, []

    def get_table(self, name: str):
        from google.api_core.exceptions import NotFound

        if name not in self.tables:
            raise NotFound(name)
        return SimpleNamespace(num_rows=self.tables[name])

    def query(self, sql: str, job_config):
        self.jobs.append((sql, job_config))
        self.tables["p.work.users_changed_20261116"] = 5_300
        return SimpleNamespace(result=lambda: None)


def test_the_bigquery_plan_runs_the_diff_in_bigquery_with_the_dead_letters_as_an_external_table(monkeypatch):
    source = BigQuerySource(project="p", dataset="crm", table_prefix="users", diff_dataset="work")
    client = FakeBigQuery({"p.crm.users_20261116": 100_000, "p.crm.users_20261109": 99_000})
    monkeypatch.setattr(BigQuerySource, "_client", lambda self: client)
    state = ExportState(
        shard_date=dt.date(2026, 11, 9),
        job_name="crm-export-20261109",
        job_id="j1",
        source="p:crm.users_20261109",
        dead_letter_prefix="gs://b/dl/crm-export-20261109/dead-letter",
        fingerprint=export_fingerprint(SETTINGS),
        exported_at=dt.datetime(2026, 11, 10, tzinfo=dt.UTC),
    )
    plan = plan_export(
        source, dt.date(2026, 11, 16), SETTINGS, state, False, "unused", {"pipeline": "crm-export"}
    )
    assert plan.mode == "diff" and (plan.rows_in_shard, plan.rows_to_send) == (100_000, 5_300)
    assert plan.pipeline_args() == [
        "--input_table=p:work.users_changed_20261116",
        "--rows_in_shard=100000",
        "--records_unchanged=94700",
    ]
    assert plan.job_labels() == {"sync": "diff", "sync-base": "2026-11-09"}
    ((sql, config),) = client.jobs
    assert "`p`.`crm`.`users_20261109` AS prev" in sql and config.labels == {"pipeline": "crm-export"}
    external = config.table_definitions["dead_letters"]
    assert external.source_uris == ["gs://b/dl/crm-export-20261109/dead-letter-*.jsonl"]
    assert [f.name for f in external.schema][:1] == ["key"]
    del client.tables["p.crm.users_20261109"]  # the base shard expired: a full export, no query
    plan = plan_export(source, dt.date(2026, 11, 16), SETTINGS, state, False, "unused", {})
    assert plan.mode == "full" and "is gone" in plan.reason and len(client.jobs) == 1
    assert plan.pipeline_args()[0] == "--input_table=p:crm.users_20261116"


def test_an_unknown_field_or_a_missing_key_column_is_named():
    columns = ["external_id", "email", "properties.plan.string_value", "properties.plan.int_value"]
    check_shard_fields(SETTINGS, columns, "shard x", "braze-crm/b")
    with pytest.raises(
        ShardFieldError,
        match=r"the field_map of CRM block 'braze-crm/b' names unknown fields \['properties.tier'\] in shard x",
    ):
        check_shard_fields(
            SETTINGS.model_copy(update={"field_map": {"properties.tier": "tier"}}),
            columns,
            "shard x",
            "braze-crm/b",
        )
    with pytest.raises(ShardFieldError, match=r"the key column 'user_id' \(crm.key_field\) is missing"):
        check_shard_fields(
            SETTINGS.model_copy(update={"key_field": "user_id"}), columns, "shard x", "braze-crm/b"
        )


# --- the flow on files, into the HubSpot stand-in ----------------------------------------------------

TOKEN = "pat-na1-diff-flow"


@pytest.fixture(scope="module")
def hubspot():
    with HubSpotServer(TOKEN) as server:
        yield server


FIELD_MAP = {"email": "email", "properties.plan": "plan", "identity.country": "country"}


def hubspot_block(url: str, field_map: dict[str, str] = FIELD_MAP, **token: str) -> str:
    """Save a ``HubSpotCrm`` block for the stand-in at ``url``; ``token``: access_token or access_token_block."""
    name = f"hubspot-{uuid.uuid4().hex[:8]}"
    HubSpotCrm(base_url=url, id_property="external_id", field_map=field_map, **token).save(name)
    return f"hubspot-crm/{name}"


@pytest.fixture
def weekly(tmp_path, hubspot):
    hubspot.reset()
    secret = f"hubspot-token-{uuid.uuid4().hex[:8]}"
    Secret(value=TOKEN).save(secret)  # the token in a secret block the CRM's block names
    shards = tmp_path / "shards"
    write_user_rows(shards / "users_20261109.jsonl", 2_000, invalid_every=400)
    pipeline = f"crm-diff-{uuid.uuid4().hex[:6]}"
    return {
        "source": LocalSource(directory=shards, table_prefix="users"),
        "crm": CrmSettings(block=hubspot_block(hubspot.url, access_token_block=f"secret/{secret}")),
        "runner": LocalRunnerSettings(registry_dir=tmp_path / "jobs"),
        "dead_letter_location": str(tmp_path / "dead-letters"),
        "poll": {"interval_seconds": 0.2, "timeout_seconds": 300},
        "pipeline_name": pipeline,
    }


@pytest.mark.slow(seconds=20)
def test_a_full_week_then_a_diff_week_then_a_failed_jobs_rows_sent_again(weekly, hubspot):
    first = crm_export(**weekly)
    assert first.sync == "full" and first.rows_in_shard == 2_000 and first.records_unchanged == 0
    assert first.records_accepted == 1_995 and first.records_dead_lettered == 5  # invalid emails
    assert read_state(weekly["pipeline_name"]).shard_date == dt.date(2026, 11, 9)
    shards = weekly["source"].directory
    made = write_next_week(
        shards / "users_20261109.jsonl", shards / "users_20261116.jsonl", change_every=20, new_users=30
    )
    hubspot.reset()
    # A wrong token: the job fails before anything is taken; the state stays at week 1.
    wrong = hubspot_block(hubspot.url, access_token="pat-na1-wrong")
    with pytest.raises(CrmCredentialsError, match=f"refused the key of CRM block '{wrong}'"):
        crm_export(**{**weekly, "crm": weekly["crm"].model_copy(update={"block": wrong})})
    refused = hubspot.stats()
    assert refused["distinct_users"] == 0 and set(refused["status_counts"]) == {"401"}
    assert read_state(weekly["pipeline_name"]).shard_date == dt.date(2026, 11, 9)
    second = crm_export(**weekly)
    assert second.launch == "submitted" and second.sync == "diff against 2026-11-09"
    assert second.rows_in_shard == 2_030 and made["changed"] == 100
    # changed + new + last week's dead letters; the 5 invalid emails (every 400th user) are among the
    # changed users (every 20th), and still invalid: dead-lettered again
    assert second.records_read == 100 + 30
    assert second.records_accepted == 125 and second.records_dead_lettered == 5
    assert second.records_unchanged == 2_030 - 130
    # batches of at most 100 inputs; the stand-in also counted the wrong token's 401s
    assert second.requests == hubspot.stats()["requests"] - refused["requests"] == 2
    assert hubspot.stats()["distinct_users"] == 125
    assert read_state(weekly["pipeline_name"]).shard_date == dt.date(2026, 11, 16)


def test_an_unknown_field_fails_before_anything_is_sent(weekly, hubspot):
    block = hubspot_block(hubspot.url, {"email": "email", "properties.tier": "tier"}, access_token=TOKEN)
    weekly["crm"] = weekly["crm"].model_copy(update={"block": block})
    with pytest.raises(
        ShardFieldError,
        match=rf"the field_map of CRM block '{block}' names unknown fields \['properties.tier'\]",
    ):
        crm_export(**weekly)
    assert hubspot.stats()["requests"] == 0 and not (weekly["runner"].registry_dir / "jobs").exists()
