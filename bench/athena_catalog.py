"""Benchmark: the Athena collector extracting a large Glue catalog from moto's server, full then incremental.

    python -m bench.athena_catalog [--tables 10000] [--columns-per-table 20] [--databases 10]
                                   [--queries 1000] [--seed-threads 4] [--no-tracemalloc]

What it seeds, runs and measures: docs/metadata-collectors.md ("Benchmark").
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import math
import resource
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_aws import AwsCredentials

from devstack.athena_catalog import SeededGlueCatalog, queue_query_results, seed_large_glue_catalog
from devstack.moto_server import DEFAULT_REGION, DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, MotoServer
from tasks.metadata.extract_files import WrittenFile, write_extracts
from tasks.metadata.extractors.athena import AthenaExtractor
from tasks.metadata.extractors.athena.information_schema import RESULTS_PAGE_SIZE
from tasks.metadata.hwm import Window

SOURCE = "athena-bench"
#: AWS Glue GetTables returns at most 100 tables per call (MaxResults 1-100, Glue API reference).
GLUE_TABLES_PER_PAGE = 100
#: ``tables``, ``views`` and ``columns`` each page GetTables (three passes of tasks/metadata/extractors/athena/glue_catalog.glue_tables).
GET_TABLES_PASSES = 3
MB = 2**20


def _count_calls(extractor: AthenaExtractor, calls: Counter) -> None:
    """Count the API calls of ``extractor``'s clients by ``service:Operation`` in ``calls``."""

    def count(event_name: str, **_: Any) -> None:
        _, service, operation = event_name.split(".", 2)
        calls[f"{service}:{operation}"] += 1

    for name in ("athena", "glue", "s3", "sts"):
        extractor.aws.client(name).meta.events.register("before-call", count)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class RunFigures:
    """One collector run: ``wall`` seconds, API ``calls`` by ``service:Operation``, ``peak`` MB of Python
    allocations (None untraced) and the ``traced_wall`` seconds of that traced run, max ``rss`` MB, files."""

    wall: float
    calls: Counter
    peak: float | None
    rss: float
    files: list[WrittenFile]
    traced_wall: float | None = None


def collect(
    moto: MotoServer, seeded: SeededGlueCatalog, window: Window, out_dir: Path, trace: bool
) -> RunFigures:
    """One collector run over ``window`` into ``out_dir``; its figures."""
    names = ["table_schema", "table_name", "table_type"]
    queue_query_results(moto.url, moto.region, [(names, sorted(seeded.tables))])
    calls: Counter = Counter()
    extractor = AthenaExtractor(
        SOURCE,
        AwsCredentials(
            aws_access_key_id=DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            region_name=moto.region,
        ),
        moto.region,
        workgroups=None,
        output_location=seeded.output_location,
        endpoint_url=moto.url,
    )
    _count_calls(extractor, calls)
    gc.collect()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    with extractor:
        files = write_extracts(
            extractor.run(window.start, window.end), out_dir, SOURCE, window, compress=True
        )
    wall = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / MB if trace else None
    tracemalloc.stop()
    return RunFigures(wall, calls, peak, _max_rss_mb(), files)


def aws_estimate(tables: int, databases: int) -> dict[str, int]:
    """Calls of a full run on AWS where moto answers in one page: GetTables pages 100 tables (3 passes),
    GetQueryResults 1,000 rows (the cross-check's header row included)."""
    per_db = [tables // databases + (d < tables % databases) for d in range(databases)]
    return {
        "GetTables": GET_TABLES_PASSES * sum(max(1, math.ceil(n / GLUE_TABLES_PER_PAGE)) for n in per_db),
        "GetQueryResults": math.ceil((tables + 1) / RESULTS_PAGE_SIZE),
    }


def _files_summary(files: list[WrittenFile]) -> str:
    return f"{len(files)} / {sum(f.rows for f in files):,} / {sum(f.bytes for f in files):,}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.athena_catalog", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tables", type=int, default=10_000)
    parser.add_argument("--columns-per-table", type=int, default=20)
    parser.add_argument("--databases", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1_000, help="query executions, over 2 workgroups")
    parser.add_argument("--seed-threads", type=int, default=4)
    parser.add_argument("--no-tracemalloc", action="store_true", help="time the runs without tracemalloc")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trace = not args.no_tracemalloc

    with (
        MotoServer(region=DEFAULT_REGION) as moto,
        tempfile.TemporaryDirectory(prefix="bench-athena-") as tmp,
    ):
        started = time.perf_counter()
        seeded = seed_large_glue_catalog(
            moto.url,
            moto.region,
            databases=args.databases,
            tables=args.tables,
            columns_per_table=args.columns_per_table,
            queries=args.queries,
            threads=args.seed_threads,
        )
        seconds = time.perf_counter() - started
        print(
            f"Seeded moto's server in {seconds:.1f} s ({args.seed_threads} threads; not in the figures): "
            f"{args.tables:,} Glue tables ({seeded.views:,} views) in {args.databases} databases, "
            f"{seeded.columns:,} columns, {args.queries:,} query executions in workgroups "
            f"{', '.join(seeded.workgroups)}; max RSS after seeding {_max_rss_mb():.0f} MB"
        )

        # The window ends at a whole second after every seeded execution completed.
        end = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
        time.sleep(max(0.0, (end - dt.datetime.now(dt.UTC)).total_seconds()) + 0.01)
        full_window = Window(end - dt.timedelta(days=1), end)
        full = collect(moto, seeded, full_window, Path(tmp) / "full", trace=False)
        end2 = max(dt.datetime.now(dt.UTC).replace(microsecond=0), end + dt.timedelta(seconds=1))
        time.sleep(max(0.0, (end2 - dt.datetime.now(dt.UTC)).total_seconds()))
        incremental_window = Window(end, end2)
        incremental = collect(moto, seeded, incremental_window, Path(tmp) / "incr", trace=False)
        for run, window, where in ((full, full_window, "full"), (incremental, incremental_window, "incr")):
            if trace:
                traced = collect(moto, seeded, window, Path(tmp) / f"{where}-traced", trace=True)
                assert [(f.entity, f.rows) for f in traced.files] == [
                    (f.entity, f.rows) for f in run.files
                ], "the traced rerun wrote other rows"
                run.peak, run.traced_wall = traced.peak, traced.wall

    runs = {"full": full, "incremental (nothing new)": incremental}
    print(
        f"\nAthena extractor run → write_extracts(compress=True), moto's server ({moto.region}); "
        "wall s without tracemalloc, peak MB (and its wall s) from the traced rerun"
    )
    print(
        f"{'run':27}{'wall s':>8}{'API calls':>11}{'peak MB':>9}{'(traced s)':>11}{'max RSS MB':>12}"
        "  files / rows / bytes (gzip)"
    )
    for label, run in runs.items():
        traced = run.peak is not None
        peak = f"{run.peak:9.1f}{run.traced_wall:11.1f}" if traced else f"{'-':>9}{'-':>11}"
        print(
            f"{label:27}{run.wall:8.1f}{sum(run.calls.values()):11,}{peak}{run.rss:12.0f}  "
            f"{_files_summary(run.files)}"
        )
    for label, run in runs.items():
        top = ", ".join(f"{op} {n:,}" for op, n in run.calls.most_common(8))
        print(f"  calls, {label}: {top}")

    print(f"\n{'entity':15}{'full rows':>11}{'bytes':>12}{'incr. rows':>12}{'bytes':>12}")
    for a, b in zip(full.files, incremental.files, strict=True):
        print(f"{a.entity:15}{a.rows:11,}{a.bytes:12,}{b.rows:12,}{b.bytes:12,}")

    calls = full.calls
    aws = aws_estimate(args.tables, args.databases)
    print(
        "\nIncremental run: data_catalogs, databases, tables, views, columns and users are full snapshots, "
        "read from Glue and written again whatever changed; only query_history is windowed: its rows are "
        "the executions completed since the first run's end (that run's own information_schema query)."
    )
    print(
        "Limits: moto answers from memory on loopback, one process behind the GIL, without AWS's latency "
        "(tens of ms a call) or throttling (Glue and Athena limit calls per second per account), and "
        f"unpaged: a whole database per GetTables call where AWS returns at most {GLUE_TABLES_PER_PAGE} "
        "tables, GetQueryResults in one page. The full run on AWS would make about "
        f"GetTables {aws['GetTables']:,} (here {calls['glue:GetTables']:,}), GetQueryResults "
        f"{aws['GetQueryResults']:,} (here {calls['athena:GetQueryResults']:,}); ListQueryExecutions and "
        "BatchGetQueryExecution as here (pages of 50, as AWS). Peak MB: Python allocations of this process "
        "only (moto's whole-database GetTables page is parsed at once); max RSS: the process's high-water "
        "mark, seeding included. Files are written to a local disk, not uploaded."
    )
    if full.wall > 180:
        print(f"Note: the full run took {full.wall:.0f} s, more than 3 minutes, on this machine.")


if __name__ == "__main__":
    main()
