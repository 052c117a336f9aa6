"""Benchmark: a weekly export with 5 % of the users changed, full vs diff, per destination, in one run.

    python -m bench.crm_diff [--users 1000000]

Generates week 1 (one user in 1,000 with an invalid email) and week 2 (every 20th user changed), exports
week 1 in full to learn its dead letters, plans week 2's diff on the files (``plan_local_diff``, the
local twin of the BigQuery query), then for each destination — the generic endpoint, the HubSpot and
the Braze stand-ins, each in its own process with limits high enough not to throttle — exports week 2
in full and by diff on Beam's local runner. Prints requests sent and wall time of each, and the diff's
share of the full export's requests (target: ≤ 6 %).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from devstack.crm import CrmStandIn
from devstack.crms import BrazeServer, HubSpotServer
from devstack.crms.braze import BrazeConfig
from devstack.crms.hubspot import HubSpotConfig
from devstack.user_rows import write_next_week, write_user_rows
from pipelines.crm_export.accounting import check_accounting
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.pipeline import build_pipeline, pipeline_metrics
from pipelines.crm_export.settings import PipelineSettings
from tasks.crm_export.diff import hashed_fields, plan_local_diff, row_hasher

KEY = "bench-key"
WORKDIR = Path(".bench/crm-diff")
FIELDS = {"email": "email", "identity.country": "country", "properties.plan": "plan"}
UNLIMITED_HUBSPOT = HubSpotConfig(ten_second_limit=10**9, daily_limit=10**9)
UNLIMITED_BRAZE = BrazeConfig(requests_per_window=10**9)


def export(source: Path, settings: PipelineSettings, dead_letters: Path, *plan: str) -> tuple[float, object]:
    args = [
        "--runner=FnApiRunner",
        f"--input_file={source}",
        *settings.pipeline_args(),
        f"--dead_letter_prefix={dead_letters}",
        "--idempotency_namespace=bench",
        *plan,
    ]
    pipeline = beam.Pipeline(options=PipelineOptions(args))
    build_pipeline(pipeline, ApiKey(KEY))
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    metrics = pipeline_metrics(result)
    check_accounting(metrics.counters)
    return time.perf_counter() - started, metrics.counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.users
    week_1, week_2 = WORKDIR / f"users_{n}_w1.jsonl", WORKDIR / f"users_{n}_w2.jsonl"
    if not week_1.exists():
        write_user_rows(week_1, n, invalid_every=1_000)
    changes = write_next_week(week_1, week_2, change_every=20)
    print(f"{n:,} users; week 2: {changes['changed']:,} changed ({changes['changed'] / n:.1%})")
    destinations = {
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
    print(f"\n{'destination':12}{'run':6}{'rows sent':>11}{'requests':>10}{'seconds':>9}{'records/s':>11}")
    for name, (server, url, extra) in destinations.items():
        with server() as crm:
            settings = PipelineSettings(url=url(crm), destination=name, **extra)
            # Week 1 in full: its dead letters are what the diff re-sends.
            dead_1 = WORKDIR / name / "w1" / "dead-letter"
            export(week_1, settings, dead_1)
            started = time.perf_counter()
            diff_file = WORKDIR / name / "w2-rows-to-send.jsonl"
            rows, to_send = plan_local_diff(
                week_2,
                week_1,
                sorted(dead_1.parent.glob("dead-letter-*.jsonl")),
                diff_file,
                "external_id",
                row_hasher(hashed_fields(settings), "."),
            )
            plan_seconds = time.perf_counter() - started
            full_s, full = export(week_2, settings, WORKDIR / name / "w2-full" / "dead-letter")
            diff_s, diff = export(
                diff_file,
                settings,
                WORKDIR / name / "w2-diff" / "dead-letter",
                f"--rows_in_shard={rows}",
                f"--records_unchanged={rows - to_send}",
            )
            for run, seconds, counters in (("full", full_s, full), ("diff", diff_s + plan_seconds, diff)):
                print(
                    f"{name:12}{run:6}{counters.records_read:>11,}{counters.requests:>10,}{seconds:>9.1f}"
                    f"{counters.records_read / seconds:>11,.0f}"
                )
            print(
                f"{'':12}diff: {diff.requests / full.requests:.1%} of the full export's requests (target ≤ 6 %), "
                f"{diff_s + plan_seconds:.1f} s incl. {plan_seconds:.1f} s planning on the files; "
                f"{diff.records_unchanged:,} skipped unchanged"
            )


if __name__ == "__main__":
    main()
