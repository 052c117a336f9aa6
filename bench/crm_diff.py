"""Benchmark: diff sync on the BigQuery emulator — a weekly export with 5 % of the users changed, full vs
diff, per destination — and the cost of isolating invalid rows.

    python -m bench.crm_diff [--users 1000000] [--destinations generic,hubspot,braze] [--isolation-users 100000]

Loads week 1 (one user in 1,000 with an invalid email) and week 2 (every 20th user changed) into the
BigQuery emulator (``devstack.bigquery_emulator``). Then for each destination — the generic endpoint, the
HubSpot and the Braze stand-ins, each in its own process with limits high enough not to throttle — it
plans week 1 against an empty sync state (a full export) in the emulator, exports the plan table on
Beam's local runner (read with the Storage Read API), records what the CRM accepted in the sync state,
plans week 2 against it and exports the diff. Prints the planning time (the emulator's; BigQuery's own
is not measured here), the requests of each export, the diff's share of the full export's requests
(target: ≤ 5.5 %) and the sync state's size (rows, and bytes as BigQuery counts them).

Then the cost of invalid rows: ``--isolation-users`` users with 0.1 % and 1 % invalid emails exported in
full to each stand-in (HubSpot with per-input errors through trace ids, and HubSpot refusing a whole
batch for one invalid input, which the export splits until the input is alone), printing the requests
sent against the ideal (the valid rows / records per request).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from devstack.bigquery_emulator import BigQueryEmulator
from devstack.crms import BrazeServer, CrmStandIn, HubSpotServer
from devstack.crms.braze import BrazeConfig
from devstack.crms.hubspot import HubSpotConfig
from devstack.user_rows import load_shard, shard_rows, write_user_rows
from pipelines.crm_export.accounting import Counters, check_accounting
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.destinations import destination_for
from pipelines.crm_export.pipeline import build_pipeline, pipeline_metrics
from pipelines.crm_export.settings import PipelineSettings
from tasks.crm_export.sync_state import (
    DiffSql,
    export_fingerprint,
    invalidate,
    plan_export,
    record_export,
    sent_fields,
)

KEY = "bench-key"
WORKDIR = Path(".bench/crm-diff")
FIELDS = {"email": "email", "identity.country": "country", "properties.plan": "plan"}
UNLIMITED_HUBSPOT = HubSpotConfig(
    ten_second_limit=10**9, daily_limit=10**9, unique_properties=["external_id"]
)
UNLIMITED_BRAZE = BrazeConfig(requests_per_window=10**9)
WEEKS = (dt.date(2026, 11, 16), dt.date(2026, 11, 23))
TARGET = 0.055


def export(plan_table: str, settings: PipelineSettings, storage_url: str, work: Path, plan) -> Counters:
    """Export the plan table on Beam's in-process runner; the counters (accounting checked)."""
    args = [
        "--runner=FnApiRunner",
        f"--input_table={plan_table}",
        f"--bigquery_storage_endpoint={storage_url}",
        *settings.pipeline_args(),
        f"--dead_letter_prefix={work / 'dead-letter'}",
        f"--accepted_prefix={work / 'accepted'}",
        "--idempotency_namespace=bench",
        f"--rows_in_shard={plan.rows_in_shard}",
        f"--records_unchanged={plan.unchanged}",
    ]
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    build_pipeline(pipeline, ApiKey(KEY))
    result = pipeline.run()
    result.wait_until_finish()
    counters = pipeline_metrics(result).counters
    check_accounting(counters)
    return counters


def isolation(users: int) -> None:
    """Requests of a full export with 0.1 % and 1 % invalid rows, per destination, against the ideal."""
    servers = {
        "generic": (
            lambda: CrmStandIn(api_key=KEY, db_path=WORKDIR / "isolation.sqlite3"),
            lambda s: s.batch_url,
            {},
        ),
        "hubspot (trace ids)": (
            lambda: HubSpotServer(KEY, UNLIMITED_HUBSPOT),
            lambda s: s.url,
            {"destination": "hubspot", "field_map": FIELDS, "id_property": "external_id"},
        ),
        "hubspot (whole batch refused)": (
            lambda: HubSpotServer(KEY, dataclasses.replace(UNLIMITED_HUBSPOT, trace_ids=False)),
            lambda s: s.url,
            {"destination": "hubspot", "field_map": FIELDS, "id_property": "external_id"},
        ),
        "braze": (
            lambda: BrazeServer(KEY, UNLIMITED_BRAZE),
            lambda s: s.url,
            {"destination": "braze", "field_map": FIELDS},
        ),
    }
    print(
        f"\nInvalid rows in a full export of {users:,} users: requests sent against the ideal (valid rows / batch)"
    )
    print(f"{'destination':32}{'invalid':>9}{'requests':>10}{'ideal':>8}{'extra':>8}{'isolating':>11}")
    for invalid_every in (1_000, 100):
        source = WORKDIR / f"isolation_{users}_{invalid_every}.jsonl"
        write_user_rows(source, users, invalid_every=invalid_every)
        for name, (server, url, extra) in servers.items():
            with server() as crm:
                settings = PipelineSettings(url=url(crm), **extra)
                counters = run_file(source, settings, WORKDIR / "isolation" / name.split()[0])
                ideal = -(-counters.records_accepted // settings.batch_limit())
                print(
                    f"{name:32}{1 / invalid_every:>9.1%}{counters.requests:>10,}{ideal:>8,}"
                    f"{counters.requests / ideal - 1:>8.1%}{counters.requests_isolating:>11,}"
                )


def run_file(source: Path, settings: PipelineSettings, work: Path) -> Counters:
    """Export a newline-delimited JSON file on Beam's in-process runner; the counters (accounting checked)."""
    args = [
        "--runner=FnApiRunner",
        f"--input_file={source}",
        *settings.pipeline_args(),
        f"--dead_letter_prefix={work / 'dead-letter'}",
        "--idempotency_namespace=isolation",
    ]
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    build_pipeline(pipeline, ApiKey(KEY))
    result = pipeline.run()
    result.wait_until_finish()
    counters = pipeline_metrics(result).counters
    check_accounting(counters)
    return counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000, help="0: the isolation part only")
    parser.add_argument("--destinations", default="generic,hubspot,braze")
    parser.add_argument("--isolation-users", type=int, default=100_000)
    args = parser.parse_args()
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    servers = {
        "generic": (
            lambda: CrmStandIn(api_key=KEY, db_path=WORKDIR / "crm.sqlite3"),
            lambda s: s.batch_url,
            {},
        ),
        "hubspot": (
            lambda: HubSpotServer(KEY, UNLIMITED_HUBSPOT),
            lambda s: s.url,
            {"field_map": FIELDS, "id_property": "external_id"},
        ),
        "braze": (lambda: BrazeServer(KEY, UNLIMITED_BRAZE), lambda s: s.url, {"field_map": FIELDS}),
    }
    if args.users:
        diff_sync(args.users, args.destinations.split(","), servers)
    if args.isolation_users:
        isolation(args.isolation_users)


def diff_sync(n: int, destinations: list[str], servers: dict) -> None:
    """Full week, then diff week, per destination, on the emulator (the module's docstring)."""
    with BigQueryEmulator(data_dir=WORKDIR / "bigquery") as bigquery:
        client = bigquery.client()
        dataset = f"{bigquery.project}.bench"
        started = time.perf_counter()
        shards = [f"{dataset}.users_{week:%Y%m%d}" for week in WEEKS]
        load_shard(client, shards[0], shard_rows(n, invalid_every=1_000))
        load_shard(client, shards[1], shard_rows(n, invalid_every=1_000, change_every=20))
        print(
            f"{n:,} users; week 2: every 20th changed (5.0 %); loaded in {time.perf_counter() - started:.1f} s"
        )
        print(
            f"\n{'destination':12}{'run':6}{'planning s':>11}{'rows sent':>11}{'requests':>10}{'export s':>10}"
            f"{'records/s':>11}"
        )
        for name in destinations:
            server, url, extra = servers[name]
            with server() as crm:
                settings = PipelineSettings(url=url(crm), destination=name, **extra)
                state = f"{dataset}.{name}_sync_state"
                results = []
                for week, shard in enumerate(shards):
                    sql = DiffSql(
                        shard=shard,
                        state=state,
                        key_field="external_id",
                        key_type="STRING",
                        fields=sent_fields(settings),
                        settings=export_fingerprint(settings),
                        casefold=destination_for(settings).keys_case_insensitive,
                    )
                    started = time.perf_counter()
                    plan = plan_export(client, sql, f"{shard}_{name}_plan", None, False, {})
                    invalidate(client, sql, plan)
                    planning = time.perf_counter() - started
                    started = time.perf_counter()
                    work = WORKDIR / name / f"w{week + 1}"
                    counters = export(
                        plan.plan_table.replace(".", ":", 1), settings, bigquery.storage_url, work, plan
                    )
                    exporting = time.perf_counter() - started
                    started = time.perf_counter()
                    recorded = record_export(client, sql, str(work / "accepted"), WEEKS[week])
                    recording = time.perf_counter() - started
                    run = "full" if week == 0 else "diff"
                    print(
                        f"{name:12}{run:6}{planning:>11.1f}{counters.records_read:>11,}{counters.requests:>10,}"
                        f"{exporting:>10.1f}{counters.records_read / exporting:>11,.0f}"
                    )
                    results.append((counters, recorded, recording))
                (full, _, _), (diff, recorded, recording) = results
                (size,) = client.query(
                    f"SELECT COUNT(*) AS keys, SUM(2 + BYTE_LENGTH(key) + 2 + BYTE_LENGTH(fingerprint) + 8) AS bytes "
                    f"FROM `{state}`"
                ).result()
                share = diff.requests / full.requests
                print(
                    f"{'':12}diff: {share:.2%} of the full export's requests (target ≤ {TARGET:.1%}: "
                    f"{'met' if share <= TARGET else 'NOT MET'}); {diff.records_unchanged:,} skipped unchanged; "
                    f"recorded in {recording:.1f} s; sync state {size['keys']:,} keys, "
                    f"{size['bytes'] / 2**20:,.1f} MiB ({size['bytes'] / max(size['keys'], 1):.0f} bytes a key)"
                )


if __name__ == "__main__":
    main()
