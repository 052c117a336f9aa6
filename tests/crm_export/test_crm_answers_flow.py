"""The crm_export flow against the HubSpot and Braze stand-ins answering as the services do: HubSpot's daily
limit reached mid-run, then the next run sending the rest; a whole-batch refusal isolated; a Braze key
refused at once, before any record is dead-lettered."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from blocks import BrazeCrm, HubSpotCrm
from devstack.crms import BrazeServer, HubSpotServer
from devstack.crms.hubspot import HubSpotConfig
from devstack.user_rows import load_shard, shard_rows
from flows.crm_export.export import CrmCredentialsError, crm_export
from tasks.crm_export.tasks import BigQuerySource, CrmSettings, LocalRunnerSettings

TOKEN = "pat-na1-answers-flow"
FIELD_MAP = {"email": "email", "properties.plan": "plan", "identity.country": "country"}
SHARD = dt.date(2026, 11, 16)


@pytest.fixture
def params(tmp_path, bigquery, bigquery_dataset):
    project, dataset = bigquery_dataset.split(".")
    source = BigQuerySource(
        project=project,
        dataset=dataset,
        table_prefix="users",
        api_endpoint=bigquery.url,
        storage_api_endpoint=bigquery.storage_url,
    )
    load_shard(bigquery.client(), source.table(SHARD), shard_rows(2_000, invalid_every=400))
    return {
        "source": source,
        "runner": LocalRunnerSettings(registry_dir=tmp_path / "jobs"),
        "dead_letter_location": str(tmp_path / "dead-letters"),
        "poll": {"interval_seconds": 0.2, "timeout_seconds": 300},
        "pipeline_name": f"crm-answers-{uuid.uuid4().hex[:6]}",
    }


def block(cls, **fields) -> str:
    name = f"{cls.__name__.lower()}-{uuid.uuid4().hex[:8]}"
    cls(**fields).save(name)
    return f"{cls.get_block_type_slug()}/{name}"


@pytest.mark.slow(seconds=30)
def test_a_daily_limit_reached_mid_run_leaves_the_rest_to_the_next_run(params, caplog):
    config = HubSpotConfig(tier="starter", daily_limit=8, trace_ids=False)  # whole batches refused
    with HubSpotServer(TOKEN, config) as hubspot:
        crm = CrmSettings(
            block=block(
                HubSpotCrm,
                base_url=hubspot.url,
                access_token=TOKEN,
                id_property="external_id",
                field_map=FIELD_MAP,
            ),
            max_in_flight=1,
        )
        first = crm_export(**params, crm=crm)
        assert first.records_not_sent > 0
        assert first.adds_up
        assert first.records_accepted + first.records_dead_lettered + first.records_not_sent == 2_000
        assert first.out_of_sync == first.records_dead_lettered + first.records_not_sent
        assert hubspot.stats()["distinct_users"] == first.records_accepted
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Not sent:")]
        assert said == [
            f"Not sent: {first.records_not_sent:,} records of shard {SHARD:%Y-%m-%d}: the CRM's daily limit of "
            "250,000 requests was reached. They are not in the sync state and go out with the next export "
            "(after the CRM's daily reset, a run of this shard with force=True sends them)"
        ]
        # The next day: the limit starts afresh; the export of the shard is run again.
        hubspot.configure(daily_limit=1_000)
        second = crm_export(**params, crm=crm, force=True)
        assert second.records_not_sent == 0
        assert second.records_unchanged == first.records_accepted
        assert second.records_read == first.records_not_sent + first.records_dead_lettered
        assert hubspot.stats()["distinct_users"] == 2_000 - 5  # all but the 5 invalid emails
        assert second.out_of_sync == 5
        assert second.dead_letter_reasons == {"http_400": 5}
        # The batches holding an invalid email were split until it stood alone: in the first run if it
        # met them before the daily limit (the order of batches across bundles varies), else in this one.
        assert first.requests_isolating + second.requests_isolating > 0


@pytest.mark.slow(seconds=10)
def test_a_braze_key_braze_does_not_know_fails_the_run_and_dead_letters_nothing(params):
    with BrazeServer(TOKEN) as braze:
        crm = CrmSettings(
            block=block(BrazeCrm, rest_endpoint=braze.url, api_key="not-the-key", field_map=FIELD_MAP)
        )
        with pytest.raises(CrmCredentialsError, match=r"refused the key of CRM block 'braze-crm/"):
            crm_export(**params, crm=crm)
        assert braze.stats()["status_counts"] == {"404": braze.stats()["requests"]}
        assert braze.stats()["distinct_users"] == 0
    dead = list(Path(params["dead_letter_location"]).rglob("dead-letter-*.jsonl"))
    assert dead == []  # the job failed at once: no dead-letter file was written
