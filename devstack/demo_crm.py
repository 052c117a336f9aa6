"""The CRM export part of ``make demo``: 200,000 generated users → the local CRM endpoint.

Generates a week's shard in BigQuery's flattened export shape (one row in 1,000 with an email the
CRM rejects, a few lines that are not JSON), starts the CRM stand-in with some 429s and 5xx, saves
the API key in a Prefect ``Secret`` block, and runs the ``crm-export`` flow on the local launcher.
Then it runs the flow again to show that a DONE shard is not exported twice.

Imports Prefect only inside functions (``devstack.demo`` sets the API URL first).
"""

from __future__ import annotations

import datetime as dt
import secrets
from contextlib import ExitStack
from pathlib import Path

from devstack.crm import CrmStandIn, FaultConfig
from devstack.user_rows import write_user_rows

USERS = 200_000
SHARD = dt.date(2026, 11, 16)
SECRET_BLOCK = "crm-api-key"
FAULTS = FaultConfig(rate_limit_rps=25, error_rate=0.05, seed=3, retry_after_seconds=1)


def run_crm_export(workdir: Path, stack: ExitStack) -> bool:
    """Run the export and print its summary; True when every record was accepted or dead-lettered."""
    from prefect.blocks.system import Secret

    from flows.crm_export.export import crm_export
    from tasks.crm_export.tasks import CrmSettings, LocalRunnerSettings, LocalSource

    shards = workdir / "crm" / "shards"
    made = write_user_rows(
        shards / f"users_{SHARD:%Y%m%d}.jsonl", USERS, invalid_every=1_000, malformed_every=50_000
    )
    api_key = secrets.token_urlsafe(24)
    crm = stack.enter_context(
        CrmStandIn(api_key=api_key, db_path=workdir / "crm" / "crm.sqlite3", faults=FAULTS)
    )
    Secret(value=api_key).save(SECRET_BLOCK, overwrite=True)
    print(
        f"\nGenerated {made['rows']:,} users ({made['bytes'] / 2**20:.0f} MiB, {made['invalid']} with an invalid email, "
        f"{made['malformed']} malformed lines); CRM stand-in {crm.url} (429 over {FAULTS.rate_limit_rps:.0f} req/s, "
        f"{FAULTS.error_rate:.0%} 5xx). Running the crm-export flow on the local launcher ..."
    )
    params = {
        "source": LocalSource(directory=shards, table_prefix="users"),
        "crm": CrmSettings(
            url=crm.batch_url, api_key_block=f"secret/{SECRET_BLOCK}", max_backoff_seconds=2.0
        ),
        "runner": LocalRunnerSettings(registry_dir=workdir / "crm" / "jobs"),
        "dead_letter_location": str(workdir / "crm" / "dead-letters"),
        "poll": {"interval_seconds": 1.0, "timeout_seconds": 900},
    }
    summary = crm_export(**params)
    again = crm_export(**params)
    stats = crm.stats()
    print("\n=== CRM export ===")
    print(f"job:                  {summary.job_name} ({summary.job_id}), {summary.state.value}")
    print(f"records read:         {summary.records_read:,}")
    print(
        f"accepted by the CRM:  {summary.records_accepted:,}  (CRM holds {stats['distinct_users']:,} users)"
    )
    print(
        f"dead-lettered:        {summary.records_dead_lettered:,}  (rejected {summary.records_rejected:,}, "
        f"malformed {summary.records_malformed:,}) → {summary.dead_letter_prefix}-*.jsonl"
    )
    batch = summary.batch_size
    print(f"batches:              {summary.batches:,} (size min {batch.min:,}, max {batch.max:,})")
    print(f"retries:              {summary.retries:,}  (HTTP {summary.http_status})")
    print(f"duplicate deliveries: {stats['duplicate_deliveries']}")
    print(f"throughput:           {summary.records_per_second:,} records/s over {summary.duration_seconds} s")
    print(f"second run:           {again.launch} (job {again.job_id}): a DONE shard is not exported twice")
    return (
        summary.records_read == summary.records_accepted + summary.records_dead_lettered
        and stats["duplicate_deliveries"] == 0
        and again.launch == "skipped"
    )
