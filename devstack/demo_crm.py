"""The CRM export part of ``make demo``: 50,000 generated users in the BigQuery emulator → the HubSpot
stand-in, then a diff week against the sync state.

Starts the BigQuery emulator (its database on disk) and loads a week's shard in BigQuery's export shape
(RECORDs, union properties; one user in 5,000 with an email HubSpot rejects, a few rows with two typed
values in a union, a few keys twice), starts the HubSpot stand-in as HubSpot answers without trace ids
(an invalid input refuses its whole batch: the export splits it until the input is alone) with some
5xx, on the limits of an Enterprise account with an API limit increase (250 requests per 10 s, which
the export paces itself below), saves it as a ``HubSpotCrm`` block and runs the ``crm-export`` flow on
the local launcher: the shard is checked and planned in the emulator, the job reads its rows with the
Storage Read API, and what HubSpot accepted is recorded in the sync state. Runs it again to show that a
DONE shard is not exported twice; then loads the next week's shard with ~5 % of the users changed and
some new ones, and exports it by diff sync. Prints, per run, rows in shard, skipped unchanged, accepted,
dead-lettered and requests sent, and the sync state.

Imports Prefect only inside functions (``devstack.demo`` sets the API URL first).
"""

from __future__ import annotations

import datetime as dt
import secrets
from contextlib import ExitStack
from pathlib import Path

from devstack.bigquery_emulator import BigQueryEmulator
from devstack.crms import HubSpotServer
from devstack.crms.hubspot import HubSpotConfig
from devstack.user_rows import load_shard, shard_rows

USERS = 50_000
NEW_USERS = 250
WEEK_1 = dt.date(2026, 11, 16)
WEEK_2 = dt.date(2026, 11, 23)
CRM_BLOCK = "hubspot-demo"
DATASET = "crm"
#: HubSpot's limits of an Enterprise account with one API limit increase (250 per 10 s), which the
#: export paces itself below; 2 % of requests get a 5xx; no per-input errors: whole batches refused.
LIMITS = HubSpotConfig(
    tier="enterprise", ten_second_limit=250, daily_limit=2_000_000, trace_ids=False, error_rate=0.02, seed=3
)
FIELD_MAP = {
    "email": "email",
    "identity.country": "country",
    "identity.phone": "phone",
    "properties.plan": "plan",
    "properties.lifetime_value": "lifetime_value",
    "properties.newsletter": "newsletter",
}
#: The dead letters a week may have: HubSpot's refusal of an invalid email (a 400 for the whole batch,
#: split until the input is alone), a row with two typed values in a union, a key's second row.
EXPECTED_REASONS = {"http_400", "malformed_row", "duplicate_key"}
#: Week 1: the shard's rows; week 2: every 20th user changed, 250 new.
WEEK_1_ROWS = {"users": USERS, "invalid_every": 5_000, "malformed_every": 10_000, "duplicates": 3}
WEEK_2_ROWS = {**WEEK_1_ROWS, "change_every": 20, "new_users": NEW_USERS}


def run_crm_export(workdir: Path, stack: ExitStack) -> bool:
    """Run both weeks and print their figures; True when every run's accounting adds up, the dead letters
    are the invalid rows only (HubSpot's refusals of invalid emails, isolated by splitting the batches it
    refused whole; malformed rows; duplicate keys) and everything else was accepted, the sync state holds
    what HubSpot accepted, nothing was delivered twice in the first week, and the second run of week 1
    was skipped."""
    from blocks import HubSpotCrm
    from flows.crm_export.export import crm_export
    from tasks.crm_export.tasks import BigQuerySource, CrmSettings, LocalRunnerSettings

    bigquery = stack.enter_context(BigQueryEmulator(data_dir=workdir / "bigquery"))
    client = bigquery.client()
    source = BigQuerySource(
        project=bigquery.project,
        dataset=DATASET,
        table_prefix="users",
        dedupe_order_by="last_seen_at",
        api_endpoint=bigquery.url,
        storage_api_endpoint=bigquery.storage_url,
    )
    rows = load_shard(client, source.table(WEEK_1), shard_rows(**WEEK_1_ROWS))
    token = "pat-na1-" + secrets.token_hex(16)
    hubspot = stack.enter_context(HubSpotServer(token, LIMITS))
    HubSpotCrm(
        access_token=token,
        id_property="external_id",
        field_map=FIELD_MAP,
        base_url=hubspot.url,
        tier="enterprise",
        api_limit_increases=1,
    ).save(CRM_BLOCK, overwrite=True)
    print(
        f"\nBigQuery emulator {bigquery.url}: shard {source.table(WEEK_1)}, {rows:,} rows "
        f"({USERS // WEEK_1_ROWS['invalid_every']} emails HubSpot rejects, "
        f"{USERS // WEEK_1_ROWS['malformed_every']} of their rows also with two typed values in a union: malformed, "
        f"never sent; {WEEK_1_ROWS['duplicates']} keys twice); HubSpot stand-in {hubspot.url} ({LIMITS.ten_second_limit:,} requests per 10 s, paced; "
        f"{LIMITS.error_rate:.0%} 5xx; a batch holding an invalid input refused whole). Running the crm-export "
        "flow on the local launcher ..."
    )
    params = {
        "source": source,
        "crm": CrmSettings(block=f"hubspot-crm/{CRM_BLOCK}", max_backoff_seconds=2.0),
        "runner": LocalRunnerSettings(registry_dir=workdir / "crm" / "jobs"),
        "dead_letter_location": str(workdir / "crm" / "dead-letters"),
        "poll": {"interval_seconds": 1.0, "timeout_seconds": 900},
    }
    week_1 = crm_export(**params, shard_date=WEEK_1)
    week_1_stats = hubspot.stats()
    again = crm_export(**params, shard_date=WEEK_1)
    load_shard(client, source.table(WEEK_2), shard_rows(**WEEK_2_ROWS))
    print(
        f"Next week's shard: {USERS // WEEK_2_ROWS['change_every']:,} users changed, {NEW_USERS:,} new; "
        "exporting it by diff sync against the sync state ..."
    )
    requests_before = hubspot.stats()["requests"]
    week_2 = crm_export(**params, shard_date=WEEK_2)
    week_2_requests = hubspot.stats()["requests"] - requests_before
    (held,) = client.query(f"SELECT COUNT(*) AS n FROM `{week_2.sync_state}`").result()

    print("\n=== CRM export to HubSpot ===")
    print(
        f"{'run':16}{'rows in shard':>15}{'skipped unchanged':>19}{'accepted':>10}{'dead-lettered':>15}{'requests sent':>15}"
    )
    for label, summary in ((f"week 1 ({week_1.sync})", week_1), (f"week 2 ({week_2.sync})", week_2)):
        print(
            f"{label:16}{summary.rows_in_shard:>15,}{summary.records_unchanged:>19,}{summary.records_accepted:>10,}"
            f"{summary.records_dead_lettered:>15,}{summary.requests:>15,}"
        )
    print(f"records read:         {week_1.records_read:,}")
    print(
        f"week 1 dead letters:  {week_1.records_dead_lettered:,} (rejected by HubSpot {week_1.records_rejected:,}, "
        f"malformed {week_1.records_malformed:,}, duplicate keys {week_1.records_duplicate:,}) → "
        f"{week_1.dead_letter_prefix}-*.jsonl"
    )
    print(
        f"week 1 by reason:     {week_1.dead_letter_reasons} (http_400: an invalid email HubSpot refused); "
        f"accepted {week_1.records_accepted:,} = read {week_1.records_read:,} − dead-lettered "
        f"{week_1.records_dead_lettered:,}: everything else"
    )
    print(f"week 1 retries:       {week_1.retries:,}  (HTTP {week_1.http_status})")
    print(
        f"week 1 isolation:     {week_1.requests_isolating:,} of the {week_1.requests:,} requests split batches "
        f"HubSpot refused whole, until each of the {week_1.records_rejected:,} invalid inputs was alone"
    )
    print(f"duplicate deliveries: {week_1_stats['duplicate_deliveries']}")
    print(f"HubSpot holds:        {hubspot.stats()['distinct_users']:,} contacts")
    print(
        f"week 2 requests seen by HubSpot: {week_2_requests:,} ({week_2_requests / max(week_1.requests, 1):.1%} of week 1's)"
    )
    print(f"second run:           {again.launch} (job {again.job_id}): a DONE shard is not exported twice")
    print(
        f"sync state:           {week_2.sync_state}: {held['n']:,} keys as HubSpot accepted them; "
        f"{week_2.out_of_sync:,} keys of week 2 not held as they are (the dead-lettered ones)"
    )
    adds_up = week_1.adds_up and week_2.adds_up
    only_invalid = all(
        set(week.dead_letter_reasons) <= EXPECTED_REASONS and week.records_not_sent == 0
        for week in (week_1, week_2)
    )
    print(f"accounting:           {'adds up' if adds_up else 'DOES NOT ADD UP'} for both weeks")
    return (
        adds_up
        and only_invalid
        and week_1.records_rejected > 0
        and week_1.requests_isolating > 0
        and week_1_stats["duplicate_deliveries"] == 0
        and again.launch == "skipped"
        and week_2.sync == "diff"
        and week_2.out_of_sync == week_2.records_dead_lettered - week_2.records_duplicate
    )
