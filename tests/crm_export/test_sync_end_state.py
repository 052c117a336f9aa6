"""The CRM's end state after six weeks of exports (and one forced) from the BigQuery emulator into the generic endpoint, through
everything that made a diff against last week's shard leave the CRM stale: random changes, invalid rows,
keys that leave the source, a change of the field map with batches the CRM failed (5xx, dead-lettered),
a run that fails midway (and the values it sent revert next week), last week's shard rewritten after
its export, and a forced export of an older shard. Afterwards the CRM must hold, for every valid key of the latest shard, exactly its latest shaped
values; every invalid row is dead-lettered; no record is delivered twice within a run.

The sync state is what makes it hold: ``test_a_state_that_records_the_shard_instead_leaves_the_crm_stale``
runs the same weeks with the state recording the shard's rows rather than what the CRM accepted, and
finds the CRM stale.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from pathlib import Path

import pytest

from blocks import GenericCrmEndpoint
from devstack.crms import CrmStandIn
from devstack.user_rows import load_shard
from flows.crm_export.export import crm_export
from tasks.crm_export.jobs import JobFailedError, JobState
from tasks.crm_export.launchers.local import LocalLauncher
from tasks.crm_export.tasks import BigQuerySource, CrmSettings, LocalRunnerSettings

API_KEY = "sk-end-state"
USERS = 300
PLANS = ("free", "pro", "team", "enterprise")
COUNTRIES = ("DE", "FR", "GB", "US")
MAP_1 = {"email": "email", "properties.plan": "plan"}
MAP_2 = {**MAP_1, "identity.country": "country"}  # week 2: the CRM receives one more property
WEEKS = [dt.date(2026, 11, 2) + dt.timedelta(weeks=i) for i in range(6)]


def user(key: str, plan: str, country: str, email: str) -> dict:
    """A nested row of the shard (``devstack.user_rows.user_schema``)."""
    typed = {"string_value": plan, "int_value": None, "float_value": None, "bool_value": None}
    return {
        "external_id": key,
        "email": email,
        "identity": {"phone": None, "country": country},
        "properties": {"plan": typed, "lifetime_value": None, "newsletter": None},
        "last_seen_at": None,
    }


class Users:
    """The source's users, week after week: values, invalid emails, keys leaving and arriving."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.values = {
            f"k{i:03d}": (self.rng.choice(PLANS), self.rng.choice(COUNTRIES), f"k{i:03d}@example.com")
            for i in range(USERS)
        }

    def change(self, share: float) -> set[str]:
        """Give ``share`` of the users another plan or country (some an invalid email, some valid again)."""
        changed = set(self.rng.sample(sorted(self.values), int(len(self.values) * share)))
        for key in changed:
            plan, country, email = self.values[key]
            what = self.rng.random()
            if what < 0.45:
                plan = self.rng.choice([p for p in PLANS if p != plan])
            elif what < 0.9:
                country = self.rng.choice([c for c in COUNTRIES if c != country])
            else:  # an email the CRM refuses, or one it takes again
                email = f"{key}@example.com" if "@" not in email else f"{key}.example.com"
            self.values[key] = (plan, country, email)
        return changed

    def rows(self) -> list[dict]:
        return [user(key, *values) for key, values in sorted(self.values.items())]

    def invalid(self) -> set[str]:
        return {key for key, (_, _, email) in self.values.items() if "@" not in email}


def expected(values: tuple[str, str, str], field_map: dict[str, str]) -> dict:
    plan, country, email = values
    shaped = {"email": email, "plan": plan, "country": country}
    return {prop: shaped[prop] for prop in field_map.values()}


@pytest.fixture
def weekly(tmp_path, bigquery, bigquery_dataset):
    with CrmStandIn(api_key=API_KEY, db_path=tmp_path / "crm.sqlite3") as crm:
        project, dataset = bigquery_dataset.split(".")
        source = BigQuerySource(
            project=project,
            dataset=dataset,
            table_prefix="users",
            api_endpoint=bigquery.url,
            storage_api_endpoint=bigquery.storage_url,
        )
        yield crm, source, tmp_path


def blocks(crm: CrmStandIn) -> dict[str, str]:
    names = {}
    for label, field_map in (("map-1", MAP_1), ("map-2", MAP_2)):
        name = f"end-state-{label}-{uuid.uuid4().hex[:6]}"
        GenericCrmEndpoint(url=crm.batch_url, api_key=API_KEY, field_map=field_map).save(name)
        names[label] = f"generic-crm-endpoint/{name}"
    return names


class Weeks:
    """The exports of one pipeline, week after week, into the stand-in: each run's summary (None for the
    failed one) and its deliveries per key; the users as each week's shard holds them."""

    def __init__(self, crm: CrmStandIn, source: BigQuerySource, tmp_path: Path, bigquery):
        self.crm, self.source, self.tmp_path = crm, source, tmp_path
        self.client = bigquery.client()
        self.blocks = blocks(crm)
        self.params = {
            "source": source,
            "runner": LocalRunnerSettings(registry_dir=tmp_path / "jobs"),
            "dead_letter_location": str(tmp_path / "dead-letters"),
            "poll": {"interval_seconds": 0.2, "timeout_seconds": 300},
            "pipeline_name": f"end-state-{uuid.uuid4().hex[:6]}",
            "max_dead_letter_ratio": 1.0,
        }
        self.users = Users(seed=21)
        self.history: dict[int, dict] = {}
        self.summaries: list = []
        self.deliveries: list[dict[str, int]] = []

    def load(self, week: int) -> None:
        self.history[week] = dict(self.users.values)
        load_shard(self.client, self.source.table(WEEKS[week]), self.users.rows())

    def export(self, week: int, block: str, attempts: int = 8, **extra) -> object:
        before = {key: u["deliveries"] for key, u in self.crm.users().items()}
        crm = CrmSettings(block=self.blocks[block], max_attempts=attempts, batch_size=20, max_in_flight=1)
        summary = crm_export(**self.params, crm=crm, shard_date=WEEKS[week], **extra)
        self.deliveries.append(
            {key: u["deliveries"] - before.get(key, 0) for key, u in self.crm.users().items()}
        )
        self.summaries.append(summary)
        return summary

    def first_two(self) -> set[str]:
        """Week 1, the first export, in full; week 2, where the field map gains a property, so every row is
        sent again, and the CRM fails a fifth of the batches (5xx), dead-lettered at once: those users
        keep week 1's properties in the CRM. Returns the keys the CRM accepted in week 1."""
        self.users.change(0.05)
        self.load(0)
        self.export(0, "map-1")
        accepted = set(self.users.values) - self.users.invalid()
        self.load(1)
        self.crm.configure(error_rate=0.2, seed=4)
        self.export(1, "map-2", attempts=1)
        self.crm.configure(error_rate=0.0)
        assert self.summaries[-1].dead_letter_reasons.get("retries_exhausted", 0) > 0
        return accepted

    def weeks_3_to_5(self) -> set[str]:
        """A run cancelled midway whose values revert, keys leaving, a rewritten shard, a forced older
        shard; none of which a later export mends by sending every row again. Returns the keys removed."""
        # Week 3: half the users change; the job is cancelled midway, after some batches were accepted.
        self.users.change(0.5)
        self.load(2)
        job = f"{self.params['pipeline_name']}-{WEEKS[2]:%Y%m%d}"
        _cancelled_midway(self.crm, lambda: self.export(2, "map-2"), self.tmp_path, job)
        self.summaries.append(None)
        # Week 4: what week 3 changed reverts to week 2's values; a few users leave; some change.
        # Those leaving are five keys the sync state holds (which batches of weeks 2 and 3 the CRM took
        # depends on timing, so the state is read).
        self.users.values = dict(self.history[1])
        state = self.source.state_table(self.params["pipeline_name"])
        held = {row.key for row in self.client.query(f"SELECT key FROM `{state}`").result()}
        removed = set(sorted(held & set(self.users.values))[-5:])
        for key in removed:
            del self.users.values[key]
        self.users.change(0.1)
        self.load(3)
        self.export(3, "map-2")
        # Week 4's shard is rewritten after its export: back-filled with what week 5 holds.
        self.users.change(0.1)
        for key in range(USERS, USERS + 10):  # new users
            self.users.values[f"k{key:03d}"] = ("pro", "DE", f"k{key:03d}@example.com")
        load_shard(self.client, self.source.table(WEEKS[3]), self.users.rows())
        # Week 5.
        self.load(4)
        self.export(4, "map-2")
        # An older shard (week 1) exported again, forced: the CRM gets week 1's values where they differ.
        self.export(0, "map-2", force=True)
        return removed

    def latest(self) -> None:
        """Week 6: the latest shard."""
        self.users.change(0.1)
        self.load(5)
        self.export(5, "map-2")


def _cancelled_midway(crm: CrmStandIn, export, tmp_path: Path, job_name: str) -> None:
    """Run ``export`` with slow answers and cancel its job once it has sent a few batches."""
    crm.configure(slow_rate=1.0, slow_seconds=0.5)
    accepted_before = crm.stats()["records_accepted"]
    failed: list[BaseException] = []
    runner = threading.Thread(target=lambda: _expect_failure(export, failed))
    runner.start()
    deadline = time.monotonic() + 120
    while crm.stats()["records_accepted"] < accepted_before + 40:
        assert time.monotonic() < deadline, "the job accepted nothing"
        assert runner.is_alive(), "the export ended before its job accepted 40 records"
        time.sleep(0.1)
    launcher = LocalLauncher(tmp_path / "jobs")
    (job,) = [j for j in launcher.list_jobs(job_name) if not j.terminal]
    launcher.cancel(job.id)
    runner.join(120)
    crm.configure(slow_rate=0.0)
    assert failed, failed
    assert isinstance(failed[0], JobFailedError), failed
    assert launcher.get_job(job.id).state is JobState.CANCELLED


def _expect_failure(run, failed: list[BaseException]) -> None:
    try:
        run()
    except BaseException as exc:  # noqa: BLE001 - the test reads it
        failed.append(exc)


def stale(crm: CrmStandIn, users: Users) -> dict[str, tuple]:
    """Valid keys of the latest shard whose values in the CRM are not their latest shaped values."""
    held = crm.users()
    return {
        key: (held.get(key, {}).get("attributes"), expected(values, MAP_2))
        for key, values in users.values.items()
        if key not in users.invalid() and held.get(key, {}).get("attributes") != expected(values, MAP_2)
    }


@pytest.mark.slow(seconds=90)
def test_after_six_weeks_the_crm_holds_the_latest_shard(weekly, bigquery):
    weeks = Weeks(*weekly, bigquery)
    accepted = weeks.first_two()
    removed = weeks.weeks_3_to_5()
    weeks.latest()
    crm, users = weeks.crm, weeks.users
    assert stale(crm, users) == {}
    last = weeks.summaries[-1]
    assert last.adds_up
    assert last.out_of_sync == len(users.invalid()) > 0
    dead = {
        line.split('"key":"')[1].split('"')[0]
        for path in Path(last.dead_letter_prefix).parent.glob("dead-letter-*.jsonl")
        for line in path.read_text().splitlines()
    }
    assert dead == users.invalid()  # every invalid row dead-lettered, and nothing else
    assert all(n <= 1 for run in weeks.deliveries for n in run.values())  # never twice within a run
    week_2 = weeks.summaries[1]
    assert week_2.sync == "full"  # the field map changed
    assert week_2.records_read == week_2.rows_in_shard
    # Keys that left the source: counted (the state held all five), and kept in the CRM.
    assert len(removed) == 5
    assert weeks.summaries[3].records_removed_from_source == 5
    assert removed & accepted
    assert all(crm.user(key) is not None for key in removed & accepted)


@pytest.mark.slow(seconds=40)
def test_a_state_that_records_the_shard_instead_leaves_the_crm_stale(weekly, bigquery, monkeypatch):
    """Weeks 1, 2 and 6 with the state update broken: the shard's rows recorded as if the CRM had accepted
    them all (what a diff against last week's shard assumes). The rows the CRM failed in week 2 are never
    sent again, and the end state is wrong."""
    from tasks.crm_export import sync_state

    def record_the_shard(self, accepted_table: str, shard_date: dt.date) -> str:
        return f"""MERGE {sync_state._table(self.state)} AS state
USING ({self.ranked()} SELECT _crm_sync_key AS key, _crm_sync_fingerprint AS fingerprint FROM ranked
       WHERE _rank = 1) AS accepted
ON state.key = accepted.key
WHEN MATCHED THEN UPDATE SET fingerprint = accepted.fingerprint
WHEN NOT MATCHED THEN INSERT (key, fingerprint) VALUES (accepted.key, accepted.fingerprint)"""

    monkeypatch.setattr(sync_state.DiffSql, "record", record_the_shard)
    monkeypatch.setattr("flows.crm_export.export._check_in_sync", lambda *args: None)
    weeks = Weeks(*weekly, bigquery)
    weeks.first_two()
    weeks.latest()
    assert len(stale(weeks.crm, weeks.users)) > 0
