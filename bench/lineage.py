"""Benchmark: Athena lineage and usage for a large catalog and query history.

    python -m bench.lineage [--tables 10000] [--columns-per-table 20] [--databases 10]
                            [--queries 100000] [--seed 7] [--profile] [--no-tracemalloc]

The catalog's column rows and the query history rows are generated in process, in the shapes the
Athena extractor yields (what Glue and BatchGetQueryExecution hold has no bearing on lineage), and fed
through ``AthenaLineage`` as a collector run feeds it; its extracts are written gzipped. What is
generated and measured: docs/metadata-lineage.md ("Benchmark").
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import io
import os
import pickle
import pstats
import random
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tasks.metadata.extract_files import write_extracts
from tasks.metadata.hwm import Window
from tasks.metadata.lineage.athena import AthenaLineage

SOURCE = "athena-bench"
REGION = "eu-west-1"
CATALOG = "AwsDataCatalog"
TYPES = ("int", "bigint", "string", "decimal(12,2)", "date", "timestamp", "double", "varchar(64)")
WORKGROUPS = ("primary", "analysts", "etl", "finance")
END = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
MB = 2**20
REPEAT = 10
"""Queries per distinct statement of the repeating history (docs/metadata-lineage.md, "Benchmark")."""
TARGET_RATE = 1_500
"""Statements/s end to end on 2 cores, repeating history (issue 26, section 6)."""
TARGET_RSS_MB = 400


class Catalog:
    """``tables`` tables of ``columns`` columns over ``databases`` databases ``bench_00``…, named as
    ``devstack.athena_catalog.seed_large_glue_catalog`` names them; every 50th table is a view of the
    table before it."""

    def __init__(self, tables: int, columns: int, databases: int) -> None:
        self.tables = tables
        self.columns = columns
        self.databases = [f"bench_{d:02d}" for d in range(databases)]

    def table(self, i: int) -> tuple[str, str]:
        return self.databases[i % len(self.databases)], f"t_{i:06d}"

    def is_view(self, i: int) -> bool:
        return i % 50 == 49

    def column_rows(self) -> Iterator[tuple[Any, ...]]:
        """``COLUMN_COLUMNS`` rows."""
        for i in range(self.tables):
            database, name = self.table(i)
            for c in range(self.columns):
                yield (CATALOG, database, name, f"c_{c:03d}", c + 1, TYPES[c % len(TYPES)], False, None)

    def view_rows(self) -> Iterator[tuple[Any, ...]]:
        """``VIEW_COLUMNS`` rows."""
        for i in range(self.tables):
            if self.is_view(i):
                database, name = self.table(i)
                source = self.table(i - 1)
                sql = f"SELECT * FROM {source[0]}.{source[1]} WHERE c_000 > 0"
                yield (CATALOG, database, name, "athena", sql)


def _query(catalog: Catalog, rng: random.Random, values: random.Random, i: int) -> tuple[str, str]:
    """Statement ``i`` of the mix (docs/metadata-lineage.md, "Benchmark") and its context database:
    its shape (tables, columns, kind) drawn from ``rng``, the values of its literals from ``values``."""

    def table() -> tuple[str, str]:
        return catalog.table(rng.randrange(catalog.tables))

    def col() -> str:
        return f"c_{rng.randrange(catalog.columns):03d}"

    def name(t: tuple[str, str]) -> str:
        return f"{t[0]}.{t[1]}"

    a, b, c = table(), table(), table()
    n = values.randrange(1, 10_000)
    kind = rng.random()
    if kind < 0.50:
        joins = rng.randrange(0, 3)
        sources = [a, b, c][: joins + 1]
        select = ", ".join(f"x{k}.{col()}" for k in range(len(sources)) for _ in range(rng.randrange(1, 4)))
        sql = f"SELECT {select} FROM {name(a)} x0"
        for k, t in enumerate(sources[1:], start=1):
            sql += f" JOIN {name(t)} x{k} ON x0.{col()} = x{k}.{col()}"
        sql += f" WHERE x0.{col()} = '{values.choice(['DE', 'FR', 'US'])}-{n}' AND x0.{col()} > {n}"
        if rng.random() < 0.3:
            sql = f"SELECT x0.{col()}, COUNT(*) AS n FROM {name(a)} x0 WHERE x0.{col()} < {n} GROUP BY 1 ORDER BY n DESC LIMIT 10"
    elif kind < 0.58:
        sql = f"SELECT * FROM {name(a)} WHERE {col()} = 'v{n}' LIMIT {n % 1000 + 1}"
    elif kind < 0.65:
        p, o, v = col(), col(), col()
        sql = (
            f"WITH ranked AS (SELECT {p}, {v}, ROW_NUMBER() OVER (PARTITION BY {p} ORDER BY {o} DESC) AS rn, "
            f"SUM({v}) OVER (PARTITION BY {p}) AS total FROM {name(a)} WHERE {o} >= DATE '2026-11-{n % 28 + 1:02d}') "
            f"SELECT {p}, {v}, total FROM ranked WHERE rn <= {n % 5 + 1}"
        )
    elif kind < 0.70:
        x, y = col(), col()
        sql = f"SELECT {x}, {y} FROM {name(a)} WHERE {x} > {n} UNION ALL SELECT {x}, {y} FROM {name(b)} WHERE {y} < {n}"
    elif kind < 0.75:
        x = col()
        sql = f"SELECT {col()}, {x} FROM {name(a)} WHERE {x} IN (SELECT {col()} FROM {name(b)} WHERE {col()} = {n})"
    elif kind < 0.83:
        sql = (
            f"CREATE TABLE {a[0]}.ctas_{i:06d} WITH (format = 'PARQUET') AS SELECT x.{col()}, y.{col()} AS y_value, "
            f"SUM(x.{col()}) AS total FROM {name(a)} x JOIN {name(b)} y ON x.{col()} = y.{col()} "
            f"WHERE x.{col()} > {n} GROUP BY 1, 2"
        )
    elif kind < 0.90:
        cols = ", ".join(f"c_{k:03d}" for k in range(catalog.columns))
        target = table()
        while catalog.is_view(int(target[1][2:])):
            target = table()
        sql = f"INSERT INTO {name(target)} SELECT {cols} FROM {name(a)} WHERE {col()} > {n}"
    elif kind < 0.92:
        sql = f"CREATE OR REPLACE VIEW {a[0]}.v_{i:06d} AS SELECT {col()}, {col()} FROM {name(a)} WHERE {col()} <> 'x{n}'"
    elif kind < 0.94:
        sql = f"SELECT {col()} FROM {name(a)} WHERE ((( {n}"  # unparseable
    elif kind < 0.96:
        sql = f"SELECT {col()} FROM {a[0]}.no_such_table_{i}"  # not in the catalog
    elif kind < 0.98:
        sql = f"MSCK REPAIR TABLE {name(a)}"
    else:
        sql = f"SELECT {col()} FROM {name(a)} WHERE {col()} = {n} AND {col()} LIKE '%{n}%'"
    return sql, a[0]


def history_rows(catalog: Catalog, queries: int, seed: int, repeat: int = 1) -> Iterator[tuple[Any, ...]]:
    """``QUERY_HISTORY_COLUMNS`` rows: SUCCEEDED executions, spread over the day before ``END``.

    ``repeat``: queries per distinct statement. Each query runs one of ``queries / repeat`` statements,
    drawn uniformly (as dashboards and scheduled queries rerun theirs), with literal values of its own;
    1: every query a statement of its own."""
    statements = max(1, queries // repeat)
    picks, values = random.Random(seed), random.Random(seed + 1)
    for i in range(queries):
        j = i if repeat == 1 else picks.randrange(statements)
        sql, database = _query(catalog, random.Random(seed * 1_000_003 + j), values, j)
        workgroup = WORKGROUPS[i % len(WORKGROUPS)]
        completed = END - dt.timedelta(seconds=86_400 * (queries - i) / queries)
        yield (
            f"q-{i:08d}",
            workgroup,
            f"athena_workgroup_{workgroup}",
            "SUCCEEDED",
            "DML",
            None,
            CATALOG,
            database,
            sql,
            completed - dt.timedelta(seconds=2),
            completed,
            1024,
            900,
            1000,
            50,
            None,
            None,
        )


def spooled_history(rows: Iterator[tuple[Any, ...]], spool: IO[bytes]) -> None:
    """Pickle ``rows`` into ``spool`` by pages of 50 (BatchGetQueryExecution's largest), before the
    clock: the run reads them back page by page, as the extractor reads Athena's, never the window."""
    page: list[tuple[Any, ...]] = []
    for row in rows:
        page.append(row)
        if len(page) == 50:
            pickle.dump(page, spool, protocol=pickle.HIGHEST_PROTOCOL)
            page = []
    pickle.dump(page, spool, protocol=pickle.HIGHEST_PROTOCOL)


def read_history(spool: IO[bytes]) -> Iterator[tuple[Any, ...]]:
    spool.seek(0)
    while True:
        try:
            yield from pickle.load(spool)
        except EOFError:
            return


def run(catalog: Catalog, history: IO[bytes], out: Path, processes: int | None) -> dict[str, Any]:
    """Feed the catalog and the spooled history through ``AthenaLineage`` and write its extracts; the
    timings, counts and files."""
    with AthenaLineage(SOURCE, REGION, END, processes=processes) as lineage:
        began = time.perf_counter()
        for _ in lineage.columns(catalog.column_rows()):
            pass
        for _ in lineage.views(catalog.view_rows()):
            pass
        schema_done = time.perf_counter()
        for _ in lineage.query_history(read_history(history)):
            pass
        analysed = time.perf_counter()
        window = Window(END - dt.timedelta(days=1), END)
        files = write_extracts(lineage.extracts(), out, SOURCE, window, compress=True)
        written = time.perf_counter()
        analysis = lineage.analysis
        return {
            "schema_seconds": schema_done - began,
            "analysis_seconds": analysed - schema_done,
            "write_seconds": written - analysed,
            "wall_seconds": written - began,
            "files": files,
            "counts": lineage.counts(),
            "shared": analysis.counts,
            "processes": analysis.processes if analysis.counts.in_pool else 0,
        }


def _max_rss_mb() -> tuple[float, float]:
    """Max RSS of this process and of its largest child (a pool process), in MB (Linux: ru_maxrss in kB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _load() -> str:
    """The 1-minute load average (the machine may be shared while the bench runs)."""
    return f"load {os.getloadavg()[0]:.1f}"


def measure(
    catalog: Catalog, views: int, queries: int, seed: int, repeat: int, processes: int | None, label: str
) -> float:
    """One history through the lineage; prints its figures; returns statements/s end to end."""
    with tempfile.TemporaryDirectory(prefix="bench-lineage-") as tmp, tempfile.TemporaryFile() as spool:
        spooled_history(history_rows(catalog, queries, seed, repeat), spool)
        gc.collect()
        load_before = _load()
        figures = run(catalog, spool, Path(tmp), processes)
        statements = queries + views
        rate = statements / figures["wall_seconds"]
        shared = figures["shared"]
        print(
            f"\n{label}: {queries:,} queries, repeat ratio {repeat} "
            f"({max(1, queries // repeat):,} distinct statements); {shared.analysed:,} analysed, "
            f"{shared.shared:,} shared (same fingerprint), pool of {figures['processes']} processes "
            f"({shared.in_pool:,} statements); {load_before} before, {_load()} after"
        )
        print(
            f"  wall {figures['wall_seconds']:.1f} s: schema {figures['schema_seconds']:.1f} s, "
            f"history {figures['analysis_seconds']:.1f} s, lineage files {figures['write_seconds']:.1f} s "
            f"(views analysed while writing)"
        )
        print(
            f"  statements/s: {queries / figures['analysis_seconds']:,.0f} (queries, history alone), "
            f"{rate:,.0f} (queries and views, end to end)"
        )
        print("  counts: " + ", ".join(f"{k} {v:,}" for k, v in sorted(figures["counts"].items())))
        for f in figures["files"]:
            print(f"     {f.path.name:<72} {f.rows:>9,} rows {f.bytes / MB:>7.1f} MB")
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lineage", description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=10_000)
    parser.add_argument("--columns-per-table", type=int, default=20)
    parser.add_argument("--databases", type=int, default=10)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--repeat", type=int, default=REPEAT, help="queries per distinct statement of the repeating history"
    )
    parser.add_argument(
        "--processes", type=int, default=None, help="pool processes (default: one per CPU; 0: none)"
    )
    parser.add_argument("--skip-distinct", action="store_true", help="skip the all-distinct history")
    parser.add_argument(
        "--profile", action="store_true", help="print cProfile's top functions of a 20,000-query run"
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="also a run under tracemalloc (peak Python allocations)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    catalog = Catalog(args.tables, args.columns_per_table, args.databases)
    views = sum(catalog.is_view(i) for i in range(catalog.tables))
    print(
        f"catalog: {args.tables:,} tables ({views:,} views) × {args.columns_per_table} columns in "
        f"{args.databases} databases; {args.queries:,} queries; {os.cpu_count()} CPUs; {_load()}"
    )
    repeating = measure(
        catalog, views, args.queries, args.seed, args.repeat, args.processes, "repeating history"
    )
    distinct = None
    if not args.skip_distinct:
        distinct = measure(catalog, views, args.queries, args.seed, 1, args.processes, "all-distinct history")
    own, child = _max_rss_mb()
    print(f"\nmax RSS: {own:.0f} MB this process, {child:.0f} MB the largest pool process")
    print("targets (issue 26, section 6):")
    print(
        f"  end to end, repeat ratio {args.repeat}: {repeating:,.0f} statements/s "
        f"(target >= {TARGET_RATE:,}): {'met' if repeating >= TARGET_RATE else 'NOT MET'}"
    )
    if distinct is not None:
        print(f"  end to end, all distinct: {distinct:,.0f} statements/s (no target; was 604 before sharing)")
    print(
        f"  max RSS: {own:.0f} MB (target <= {TARGET_RSS_MB}): {'met' if own <= TARGET_RSS_MB else 'NOT MET'}"
    )
    if args.profile:
        profiler = cProfile.Profile()
        with tempfile.TemporaryDirectory(prefix="bench-lineage-") as tmp, tempfile.TemporaryFile() as spool:
            spooled_history(history_rows(catalog, min(args.queries, 20_000), args.seed, args.repeat), spool)
            profiler.enable()
            run(catalog, spool, Path(tmp), args.processes)
            profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
        print(text.getvalue())
    if args.tracemalloc:
        with tempfile.TemporaryDirectory(prefix="bench-lineage-") as tmp, tempfile.TemporaryFile() as spool:
            spooled_history(history_rows(catalog, args.queries, args.seed, args.repeat), spool)
            tracemalloc.start()
            run(catalog, spool, Path(tmp), args.processes)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        print(f"peak Python allocations (traced run, this process): {peak / MB:.0f} MB")


if __name__ == "__main__":
    main()
