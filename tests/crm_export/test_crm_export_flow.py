"""The crm_export flow from the BigQuery emulator on the local launcher into the generic endpoint:
launch/poll idempotence, crashes, bad input, no secret leaks (the key in the CRM's block, or in a secret
block it names)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from blocks import GenericCrmEndpoint
from blocks.loading import BlockNotFoundError
from devstack.crms import CrmStandIn, FaultConfig
from devstack.user_rows import load_shard, shard_rows
from flows.crm_export.export import crm_export
from tasks.crm_export.jobs import JobState
from tasks.crm_export.launchers.local import LocalLauncher
from tasks.crm_export.secrets import SecretBlockNotFoundError
from tasks.crm_export.sync_state import ShardEmptyError, ShardKeyError
from tasks.crm_export.tasks import BigQuerySource, CrmSettings, LocalRunnerSettings, ShardNotFoundError

API_KEY = "sk-live-9c1d7e55-leakcheck"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crm(tmp_path_factory):
    with CrmStandIn(api_key=API_KEY, db_path=tmp_path_factory.mktemp("crm") / "crm.sqlite3") as standin:
        yield standin


def crm_block(url: str, **key: str) -> str:
    """Save a ``GenericCrmEndpoint`` block for ``url`` with ``key`` (``api_key`` or ``api_key_block``)."""
    name = f"crm-{uuid.uuid4().hex[:8]}"
    GenericCrmEndpoint(url=url, **key).save(name)
    return f"generic-crm-endpoint/{name}"


@pytest.fixture(scope="module")
def inline_key_block(crm):
    """The endpoint's block holding the key itself (a secret field)."""
    return crm_block(crm.batch_url, api_key=API_KEY)


def emulator_source(bigquery, dataset: str, **fields) -> BigQuerySource:
    """The shards ``<dataset>.users_YYYYMMDD`` on the BigQuery emulator."""
    project, dataset = dataset.split(".")
    return BigQuerySource(
        project=project,
        dataset=dataset,
        table_prefix="users",
        api_endpoint=bigquery.url,
        storage_api_endpoint=bigquery.storage_url,
        **fields,
    )


@pytest.fixture
def export(tmp_path, crm, inline_key_block, bigquery, bigquery_dataset):
    """Parameters of a local export of a generated shard on the BigQuery emulator, and the paths it writes."""
    crm.configure(**FaultConfig().to_dict())
    crm.reset()
    load_shard(bigquery.client(), f"{bigquery_dataset}.users_20261116", shard_rows(3_000, invalid_every=500))
    params = {
        "source": emulator_source(bigquery, bigquery_dataset),
        "crm": CrmSettings(block=inline_key_block, batch_size=500),
        "runner": LocalRunnerSettings(registry_dir=tmp_path / "jobs"),
        "dead_letter_location": str(tmp_path / "dead-letters"),
        "poll": {"interval_seconds": 0.2, "timeout_seconds": 300},
        # The sync state's Variable is the workspace's, shared by the tests running at once: one each.
        "pipeline_name": f"crm-test-{uuid.uuid4().hex[:8]}",
    }
    return params


def jobs(params) -> list:
    launcher = LocalLauncher(params["runner"].registry_dir)
    return [launcher.read(p.stem) for p in sorted(launcher.jobs_dir.glob("*.json"))]


def test_exports_the_latest_shard_and_publishes_the_summary(export, crm, bigquery):
    load_shard(
        bigquery.client(), export["source"].table(dt.date(2026, 11, 9)), shard_rows(10)
    )  # an older shard
    state = crm_export(**export, return_state=True)
    summary = state.result()
    name = f"{export['pipeline_name']}-20261116"
    assert summary.shard_date == dt.date(2026, 11, 16)
    assert summary.job_name == name
    assert summary.launch == "submitted"
    assert summary.state == "JOB_STATE_DONE"
    assert summary.records_read == 3_000
    assert summary.records_accepted == crm.stats()["distinct_users"] == 2_994
    assert summary.records_dead_lettered == summary.records_rejected == 6
    assert summary.batch_size.max <= 500
    assert summary.batches == 6
    assert summary.http_status == {200: 6}  # no faults
    assert summary.estimated_cost is None  # local runner
    assert summary.dead_letter_reasons == {"email_is_not_a_valid_email_address": 6}
    assert summary.records_recorded == 2_994
    assert summary.out_of_sync == 6  # the 6 the CRM did not take
    assert summary.sync == "full"
    assert summary.sync_state == export["source"].state_table(export["pipeline_name"])
    dead = list(Path(summary.dead_letter_prefix).parent.glob("dead-letter-*.jsonl"))
    assert sum(len(f.read_text().splitlines()) for f in dead) == 6
    (job,) = jobs(export)
    assert job["labels"]["shard-date"] == "2026-11-16"
    assert job["labels"]["prefect-flow-run-id"]
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        of_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        artifacts = [
            a for a in client.read_artifacts(artifact_filter=of_run) if a.key == export["pipeline_name"]
        ]
        progress = [
            a
            for a in client.read_artifacts(artifact_filter=of_run)
            if a.key == f"{export['pipeline_name']}-progress"
        ]
        persisted = client.read_flow_run(run_id).state.result()
    assert persisted == summary  # the flow's result, read back from result storage
    assert artifacts
    assert "2,994" in artifacts[-1].data
    assert "Dead-lettered" in artifacts[-1].data
    assert "| Batch size | min 500, mean 500.0, max 500 |" in artifacts[-1].data
    assert "| HTTP statuses | 200: 6 |" in artifacts[-1].data
    assert [(p.type, p.data) for p in progress] == [("progress", 100.0)]
    assert progress[0].description == (
        f"CRM export job `{name}`; 3,000 of 3,000 records read; JOB_STATE_DONE"
    )


@pytest.mark.slow(seconds=25)
def test_a_done_shard_is_skipped_unless_forced(export, crm):
    crm_export(**export)
    again = crm_export(**export)
    assert again.launch == "skipped"
    assert len(jobs(export)) == 1
    assert again.records_accepted == 2_994  # the summary of the job that did the export
    assert again.records_recorded is None  # recorded by the first run
    forced = crm_export(**export, force=True)
    assert forced.launch == "submitted"
    assert len(jobs(export)) == 2
    # A forced export sends what the CRM does not hold as it is: the 6 it rejected.
    assert forced.records_unchanged == 2_994
    assert forced.records_read == 6
    assert crm.stats()["replays"] == 0  # a forced export is sent again, not dropped as a replay


@pytest.mark.slow(seconds=25)
def test_a_killed_flow_run_is_adopted_by_the_next_run_one_job_in_total(export, crm, tmp_path):
    crm.configure(slow_rate=1.0, slow_seconds=8.0)  # 6 batches, 4 in flight: the job runs ≥ 16 s
    params = tmp_path / "params.json"
    params.write_text(
        json.dumps(
            {k: (v.model_dump(mode="json") if hasattr(v, "model_dump") else v) for k, v in export.items()}
        )
    )
    script = textwrap.dedent(
        f"""
        import json
        from flows.crm_export.export import crm_export
        crm_export(**json.loads(open({str(params)!r}).read()))
        """
    )
    flow = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=os.environ.copy(), start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not any(j["state"] == JobState.RUNNING.value for j in jobs(export)):
            assert flow.poll() is None, "the flow ended before its job ran"
            assert time.monotonic() < deadline, "no job started"
            time.sleep(0.2)
    finally:
        os.killpg(flow.pid, signal.SIGKILL)
        flow.wait()
    (job,) = jobs(export)
    assert job["state"] == JobState.RUNNING.value  # the job outlived the flow run that launched it
    summary = crm_export(**export)
    assert summary.launch == "adopted"
    assert summary.job_id == job["id"]
    assert summary.records_recorded == 2_994  # the killed run's plan, recorded by the run that adopted it
    assert len(jobs(export)) == 1
    stats = crm.stats()
    assert stats["distinct_users"] == 2_994
    assert stats["duplicate_deliveries"] == 0


def test_a_job_whose_process_died_is_failed_and_the_next_run_submits_again(export, crm, job_tmpdir):
    crm.configure(slow_rate=1.0, slow_seconds=2.0)
    launcher = LocalLauncher(export["runner"].registry_dir)
    from pipelines.crm_export.api_key import ApiKey
    from tasks.crm_export.jobs import JobSpec

    job_id = launcher.submit(
        JobSpec(
            name=f"{export['pipeline_name']}-20261116",
            pipeline_args=("--input_file=/nonexistent",),
            labels={},
            api_key=ApiKey("x"),
        )
    )
    os.killpg(launcher.read(job_id)["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while launcher.get_job(job_id).state is not JobState.FAILED:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "exited without a final state" in launcher.job_errors(job_id)[-1]
    crm.configure(slow_rate=0.0)
    summary = crm_export(**export)
    assert summary.launch == "submitted"
    assert summary.job_id != job_id


def test_a_missing_shard_is_named_with_the_newest_ones(export):
    with pytest.raises(
        ShardNotFoundError, match=r"no shard 20261123 in BigQuery dataset .*newest shards: 20261116"
    ):
        crm_export(**export, shard_date=dt.date(2026, 11, 23))
    assert jobs(export) == []


def test_a_missing_crm_block_or_secret_block_is_named_and_nothing_runs(export, crm):
    export["crm"] = export["crm"].model_copy(update={"block": "generic-crm-endpoint/no-such-crm"})
    with pytest.raises(
        BlockNotFoundError, match=r"'generic-crm-endpoint/no-such-crm'.*crm\.block.*GenericCrmEndpoint\(url="
    ):
        crm_export(**export)
    block = crm_block(crm.batch_url, api_key_block="secret/no-such-crm-key")
    export["crm"] = export["crm"].model_copy(update={"block": block})
    with pytest.raises(
        SecretBlockNotFoundError, match=rf"'secret/no-such-crm-key'.*CRM block '{block}' \(api_key_block\)"
    ):
        crm_export(**export)
    assert jobs(export) == []
    assert crm.stats()["requests"] == 0


def test_an_empty_shard_or_missing_keys_fail_before_any_job(export, bigquery):
    from google.cloud.bigquery import SchemaField

    client, table = bigquery.client(), export["source"].table(dt.date(2026, 11, 16))
    load_shard(client, table, [])
    with pytest.raises(ShardEmptyError, match=rf"shard {table} has 0 rows: nothing to export"):
        crm_export(**export)
    rows = list(shard_rows(5))
    rows[1]["external_id"], rows[3]["external_id"] = None, ""
    load_shard(client, table, rows)
    with pytest.raises(
        ShardKeyError, match=r"2 of the 5 rows of shard .* have a NULL or empty key column 'external_id'"
    ):
        crm_export(**export)
    load_shard(
        client,
        table,
        [{"external_id": 1.5, "email": "a@example.com"}],
        [
            SchemaField("external_id", "FLOAT64"),
            SchemaField("email", "STRING"),
        ],
    )
    with pytest.raises(
        ShardKeyError, match=r"key column 'external_id' .* is NULLABLE FLOAT.*STRING or INT64"
    ):
        crm_export(**export)
    assert jobs(export) == []


@pytest.mark.slow(seconds=15)
def test_an_int64_key_is_sent_as_its_string(export, bigquery, crm):
    from google.cloud.bigquery import SchemaField

    table = export["source"].table(dt.date(2026, 11, 16))
    rows = [{"external_id": 7 + i, "email": f"u{i}@example.com"} for i in range(3)]
    load_shard(
        bigquery.client(), table, rows, [SchemaField("external_id", "INT64"), SchemaField("email", "STRING")]
    )
    summary = crm_export(**export)
    assert summary.records_accepted == 3
    assert crm.user("8")["attributes"] == {"email": "u1@example.com"}
    again = crm_export(**export, force=True)
    assert again.records_unchanged == 3
    assert again.records_read == 0  # the state holds the string keys


@pytest.mark.slow(seconds=15)
def test_the_api_key_reaches_no_parameter_label_log_artifact_result_or_file(export, crm, caplog, tmp_path):
    from prefect.settings import get_current_settings

    caplog.set_level("DEBUG")
    started = time.time()
    summary = crm_export(**export)
    assert summary.records_accepted == 2_994  # it really was used
    # The key in a secret block the CRM's block names.
    secret = f"crm-api-key-{uuid.uuid4().hex[:8]}"
    Secret(value=API_KEY).save(secret)
    by_reference = crm_block(crm.batch_url, api_key_block=f"secret/{secret}")
    forced = crm_export(
        **{**export, "crm": export["crm"].model_copy(update={"block": by_reference})},
        force=True,
        full_resync=True,
    )
    assert forced.records_accepted == 2_994
    # An error path too: a key with a trailing newline is refused without being quoted.
    pasted = f"crm-api-key-pasted-{uuid.uuid4().hex[:8]}"
    Secret(value=API_KEY + "\n").save(pasted)
    pasted_block = crm_block(crm.batch_url, api_key_block=f"secret/{pasted}")
    with pytest.raises(ValueError, match=rf"secret block 'secret/{pasted}'.*trailing newline") as refused:
        crm_export(**{**export, "crm": export["crm"].model_copy(update={"block": pasted_block})})
    places = {
        "log": caplog.text,
        "summaries": summary.model_dump_json() + forced.model_dump_json(),
        "error": str(refused.value),
    }
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs():
            places[f"flow run {run.id}"] = json.dumps(run.parameters, default=str) + str(run.state.message)
        for task_run in client.read_task_runs():
            places[f"task run {task_run.name}"] = str(task_run.state.message) + json.dumps(
                task_run.task_inputs, default=str
            )
        places |= {f"artifact {a.key}": str(a.data) for a in client.read_artifacts()}
    storage = get_current_settings().results.local_storage_path
    files = [
        p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in {".json", ".log", ".jsonl", ".txt"}
    ]
    files += [
        p for p in storage.glob("*") if p.is_file() and p.stat().st_mtime >= started
    ]  # persisted results
    places |= {str(p): p.read_bytes().decode(errors="replace") for p in files}
    assert [where for where, text in places.items() if API_KEY in text] == []
    assert any("task run" in where for where in places)
    assert any(str(storage) in where for where in places)
    assert any(p.suffix == ".log" for p in files)
    assert any(p.name.endswith(".json") for p in files)


def test_the_shard_is_resolved_once_per_flow_run(bigquery, bigquery_dataset):
    from prefect import flow

    from tasks.crm_export.tasks import resolve_export_shard

    source = emulator_source(bigquery, bigquery_dataset)
    load_shard(bigquery.client(), source.table(dt.date(2026, 11, 9)), shard_rows(1))

    @flow
    def resolve_twice() -> tuple:
        first = resolve_export_shard(source, None)
        load_shard(
            bigquery.client(), source.table(dt.date(2026, 11, 16)), shard_rows(1)
        )  # a newer shard lands
        return first, resolve_export_shard(source, None)

    dates = resolve_twice()
    assert [f"{d:%Y%m%d}" for d in dates] == ["20261109", "20261109"]  # as a retried run sees it
    assert [f"{d:%Y%m%d}" for d in resolve_twice()] == ["20261116", "20261116"]  # the next run


def test_a_missing_dataflow_options_or_gcp_credentials_block_is_named():
    from tasks.crm_export.tasks import BigQuerySource, DataflowRunnerSettings, make_launcher

    with pytest.raises(
        BlockNotFoundError, match=r"Dataflow Options block 'no-such-options'.*runner.options_block"
    ):
        make_launcher(DataflowRunnerSettings(options_block="no-such-options"))
    source = BigQuerySource(
        project="p", dataset="crm", table_prefix="users", gcp_credentials_block="no-such-gcp"
    )
    with pytest.raises(
        BlockNotFoundError, match=r"GCP Credentials block 'no-such-gcp'.*BigQuery source p\.crm"
    ):
        source.shards()


def test_the_artifact_writes_every_number_with_thousands_separators():
    from flows.crm_export.export import ExportSummary, _markdown
    from pipelines.crm_export.accounting import Distribution
    from tasks.crm_export.jobs import JobState

    summary = ExportSummary(
        shard_date=dt.date(2026, 11, 16),
        job_name="crm-export-20261116",
        job_id="2026-11-30_06_49_05-9ca481e50c5e",
        launch="submitted",
        state=JobState.DONE,
        sync="diff",
        rows_in_shard=210_300,
        records_unchanged=10_000,
        records_removed_from_source=1_234,
        records_read=200_000,
        records_accepted=199_800,
        records_rejected=196,
        records_malformed=4,
        records_duplicate=0,
        records_dead_lettered=200,
        records_not_sent=300,
        dead_letter_reasons={"invalid_email": 196, "malformed_row": 4},
        batches=40,
        batch_size=Distribution(count=40, sum=199_996, min=4_996, max=5_000),
        requests=42,
        requests_isolating=4,
        retries=2,
        http_status={200: 40, 502: 2},
        sync_state="p.crm.crm_export_sync_state",
        records_recorded=199_800,
        out_of_sync=200,
        duration_seconds=7.0,
        records_per_second=28_571,
        dead_letter_prefix="/tmp/dead-letter",
        estimated_cost=None,
    )
    markdown = _markdown(summary)
    assert "| Batch size | min 4,996, mean 4,999.9, max 5,000 |" in markdown
    assert "| Records read | 200,000 |" in markdown
    assert "(28,571 records/s)" in markdown
    assert "| Rows in shard | 210,300 |" in markdown
    assert "| Skipped unchanged | 10,000 |" in markdown
    assert (
        "| Accounting | 210,300 rows = 10,000 unchanged + 199,800 accepted + 200 dead-lettered + 300 not sent |"
        in markdown
    )
    assert (
        "| Not sent | 300: the CRM's daily limit was reached; they go out with the next export |" in markdown
    )
    assert "| Requests sent | 42 (4 isolating inputs of batches refused whole) |" in markdown
    assert "| Sync | diff (sync state `p.crm.crm_export_sync_state`) |" in markdown
    assert "| Removed from the source | 1,234 (kept in the CRM) |" in markdown
    assert "| Dead letters by reason | invalid_email: 196, malformed_row: 4 |" in markdown
    assert (
        "| Sync state | 199,800 accepted records recorded; 200 keys of the shard not held as they are |"
        in markdown
    )


def test_a_bigquery_source_sends_no_credential_in_plaintext():
    from pydantic import ValidationError

    fields = {"project": "p", "dataset": "crm", "table_prefix": "users"}
    with pytest.raises(
        ValidationError, match=r"api_endpoint 'http://bq.internal:9050': http:// is for an emulator"
    ):
        BigQuerySource(**fields, api_endpoint="http://bq.internal:9050")
    with pytest.raises(ValidationError, match=r"storage_api_endpoint 'http://10.1.2.3:9060'"):
        BigQuerySource(**fields, storage_api_endpoint="http://10.1.2.3:9060")
    with pytest.raises(ValidationError, match=r"gcp_credentials_block 'gcp' with the plaintext api_endpoint"):
        BigQuerySource(**fields, api_endpoint="http://127.0.0.1:9050", gcp_credentials_block="gcp")
    assert BigQuerySource(**fields, api_endpoint="https://bigquery-psc.p.googleapis.com").api_endpoint


@pytest.mark.parametrize(
    ("counters", "errors", "raised"),
    [
        # the signal: the job counted the CRM's refusal of its key, whatever its error messages say
        ({"records_read": 40, "crm_key_refused": 1}, ["RuntimeError: the job failed"], "CrmCredentialsError"),
        # no signal: words in the errors are not one
        ({"records_read": 40}, ["CrmRejectedCredentialsError: the CRM answered 401"], "JobFailedError"),
        # the CRM refused a setting every request carries (HubSpot's non-unique idProperty)
        (
            {"records_read": 40, "crm_settings_refused": 1},
            ["RuntimeError: the job failed"],
            "CrmSettingsError",
        ),
    ],
    ids=["counted-refusal", "words-only", "settings-refused"],
)
def test_a_refused_key_is_told_by_the_job_metrics_counter_not_by_its_error_text(
    tmp_path, counters, errors, raised
):
    from types import SimpleNamespace

    from flows.crm_export import export

    launcher = LocalLauncher(tmp_path / "jobs")
    job_id = "2026-11-16_00_00_00-failedjob"
    launcher._write(
        {
            "id": job_id,
            "name": "crm-test-20261116",
            "state": JobState.FAILED.value,
            "labels": {},
            "create_time": "2026-11-16T00:00:00+00:00",
            "end_time": "2026-11-16T00:01:00+00:00",
            "pid": None,
            "errors": errors,
            "counters": counters,
        }
    )
    with pytest.raises(
        (export.CrmCredentialsError, export.CrmSettingsError, export.JobFailedError)
    ) as failure:
        export._wait_for_job(
            LocalRunnerSettings(registry_dir=tmp_path / "jobs"),
            job_id,
            export.PollSettings(interval_seconds=0.1, timeout_seconds=10),
            f"crm-test-{uuid.uuid4().hex[:8]}",
            SimpleNamespace(url="https://api.hubapi.com", destination="hubspot", id_property="phone"),
            "hubspot-crm/crm-test",
        )
    assert type(failure.value).__name__ == raised
    if raised == "CrmCredentialsError":
        assert "refused the key of CRM block 'hubspot-crm/crm-test' (crm.block)" in str(failure.value)
        assert "job crm-test-20261116 failed before any record was accepted" in str(failure.value)
    if raised == "CrmSettingsError":
        assert str(failure.value).startswith(
            "HubSpot refused id_property 'phone' of CRM block 'hubspot-crm/crm-test' (crm.block): it upserts "
            "only by a property with unique values, email or a custom contact property"
        )
        assert str(failure.value).endswith(
            "Job crm-test-20261116 failed at the CRM's first refusal; no record was dead-lettered"
        )
