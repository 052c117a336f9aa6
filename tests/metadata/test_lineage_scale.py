"""Lineage at scale: one analysis per normalized statement (fingerprints, the shared cache), per-query
outputs that stay each query's own, the process pool (inside a Prefect task, shut down on error)."""

from __future__ import annotations

import datetime as dt
import gzip
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task

from tasks.metadata.extract_files import write_extracts
from tasks.metadata.hwm import Window
from tasks.metadata.lineage.athena import AthenaLineage
from tasks.metadata.lineage.sql import LineageSchema, SqlLineage, Status
from tasks.metadata.lineage.statements import Fingerprinter, SharedAnalysis

END = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
WINDOW = Window(END - dt.timedelta(days=1), END)
CATALOG = "AwsDataCatalog"
TABLES = {
    "orders": ["id", "customer_id", "country", "amount", "created"],
    "customers": ["id", "name", "country", "segment"],
    "daily": ["country", "total", "orders"],
}


def column_rows() -> list[tuple[Any, ...]]:
    return [
        (CATALOG, "shop", table, column, i + 1, "string", False, None)
        for table, columns in TABLES.items()
        for i, column in enumerate(columns)
    ]


def schema() -> LineageSchema:
    lineage_schema = LineageSchema()
    for row in column_rows():
        lineage_schema.add(row[0], row[1], row[2], row[3], row[5])
    return lineage_schema


def fingerprint(sql: str, dialect: str = "athena", database: str = "shop") -> bytes | None:
    return Fingerprinter().fingerprint(sql, dialect, (CATALOG, database))


# --- fingerprints ----------------------------------------------------------------------------------

SAME_BUT_VALUES = [
    (
        "SELECT id, amount FROM orders WHERE country = 'DE' AND amount > 10 LIMIT 100",
        "SELECT id, amount FROM orders WHERE country = 'France' AND amount > 2500.5 LIMIT 7",
    ),
    (
        "SELECT id FROM orders WHERE created >= DATE '2026-11-01' AND id BETWEEN 1 AND 9",
        "SELECT id FROM orders WHERE created >= DATE '2025-01-31' AND id BETWEEN 400 AND 70000",
    ),
    (
        "SELECT name FROM customers WHERE segment IN ('a', 'b') AND name LIKE '%x%'",
        "SELECT name FROM customers WHERE segment IN ('retail', 'b2b') AND name LIKE 'Mc%'",
    ),
    (
        "INSERT INTO daily SELECT country, SUM(amount), COUNT(*) FROM orders WHERE id <> 3 GROUP BY 1",
        "INSERT INTO daily SELECT country, SUM(amount), COUNT(*) FROM orders WHERE id <> 45 GROUP BY 1",
    ),
    (
        "SELECT CASE WHEN amount > 5 THEN 'big' ELSE 'small' END AS size FROM orders",
        "SELECT CASE WHEN amount > 500 THEN 'large' ELSE 'tiny' END AS size FROM orders",
    ),
]


@pytest.mark.parametrize(("one", "other"), SAME_BUT_VALUES)
def test_statements_differing_in_values_share_a_fingerprint_and_their_lineage(one, other):
    assert fingerprint(one) == fingerprint(other) is not None
    analyzer = SqlLineage(schema())
    first = analyzer.analyze(one, catalog=CATALOG, database="shop")
    assert first.status is Status.RESOLVED
    assert first == analyzer.analyze(other, catalog=CATALOG, database="shop")


@pytest.mark.parametrize(
    ("one", "other", "dialect"),
    [
        # a number that is a position, not a value
        ("SELECT country, id FROM orders GROUP BY 1", "SELECT country, id FROM orders GROUP BY 2", "athena"),
        ("SELECT country, id FROM orders ORDER BY 1", "SELECT country, id FROM orders ORDER BY 2", "athena"),
        # a string that names an output column (MySQL's string aliases)
        ("SELECT id 'a' FROM orders", "SELECT id 'b' FROM orders", "mysql"),
        ("SELECT id AS 'a' FROM orders", "SELECT id AS 'b' FROM orders", "mysql"),
        # a pattern that picks the columns of * (Snowflake)
        ("SELECT * ILIKE 'c%' FROM orders", "SELECT * ILIKE 'a%' FROM orders", "snowflake"),
        # the values of a PIVOT's IN list name its output columns
        (
            "SELECT * FROM orders PIVOT (SUM(amount) FOR country IN ('DE', 'FR'))",
            "SELECT * FROM orders PIVOT (SUM(amount) FOR country IN ('US', 'UK'))",
            "spark",
        ),
        # a quoted name is no string
        (
            'SELECT id FROM orders WHERE country = "DE"',
            "SELECT id FROM orders WHERE country = 'DE'",
            "athena",
        ),
        # comments and the statement's text outside values are kept as written
        ("SELECT id FROM orders -- a", "SELECT id FROM orders -- b", "athena"),
        ("SELECT id FROM orders", "SELECT id FROM orders;", "athena"),
        ("SELECT id FROM orders WHERE id = 1", "SELECT id FROM orders WHERE id = id", "athena"),
    ],
)
def test_statements_whose_literals_may_matter_do_not_share_a_fingerprint(one, other, dialect):
    assert fingerprint(one, dialect) != fingerprint(other, dialect)


def test_the_context_and_dialect_are_part_of_the_fingerprint():
    sql = "SELECT id FROM orders WHERE id = 1"
    assert fingerprint(sql, database="shop") != fingerprint(sql, database="archive")
    assert fingerprint(sql, "athena") != fingerprint(sql, "hive")


def test_a_text_the_tokenizer_refuses_has_no_fingerprint():
    assert fingerprint("SELECT 'unterminated FROM orders") is None


def test_unparsed_statements_are_analysed_each_on_its_own():
    # Same fingerprint (only a value differs), but the error's column moves with the value's length.
    one = "SELECT id FROM orders WHERE amount = 1 AND ((("
    other = "SELECT id FROM orders WHERE amount = 123456789 AND ((("
    assert fingerprint(one) == fingerprint(other)
    analyzer = SqlLineage(schema())
    with SharedAnalysis(analyzer, processes=0) as analysis:
        for i, sql in enumerate([one, other, one]):
            analysis.submit(i, sql, "athena", CATALOG, "shop")
        results = list(analysis.drain())
    assert [i for i, _ in results] == [0, 1, 2]
    assert [r for _, r in results] == [
        analyzer.analyze(s, catalog=CATALOG, database="shop") for s in (one, other, one)
    ]
    assert analysis.counts.analysed == 3


def test_the_cache_keeps_the_most_recently_used_fingerprints():
    analyzer = SqlLineage(schema())
    statements = [f"SELECT id FROM orders WHERE amount = {n}" for n in range(3)] + [
        f"SELECT name FROM customers WHERE id = {n}" for n in range(3)
    ]
    with SharedAnalysis(analyzer, processes=0, cache_size=1) as analysis:
        for i, sql in enumerate(statements + statements[:1]):
            analysis.submit(i, sql, "athena", CATALOG, "shop")
        list(analysis.drain())
    # orders once, customers once, orders again (pushed out by customers): three analyses
    assert (analysis.counts.analysed, analysis.counts.shared, analysis.counts.cache_peak) == (3, 4, 1)


# --- per-query outputs -------------------------------------------------------------------------------


def history() -> list[tuple[Any, ...]]:
    """Dashboards' queries: each statement run by several workgroups at several times with other values."""
    rows = []
    templates = [
        "SELECT o.id, c.name FROM orders o JOIN customers c ON o.customer_id = c.id WHERE o.amount > {n}",
        "INSERT INTO daily SELECT country, SUM(amount), COUNT(*) FROM orders WHERE created > DATE '2026-11-{d:02d}' GROUP BY 1",
        "SELECT segment, COUNT(*) FROM customers WHERE country = 'C{n}' GROUP BY 1 LIMIT {n}",
        "SELECT id FROM orders WHERE ((( {n}",  # unparseable: never shared
    ]
    for i in range(24):
        workgroup = ("primary", "finance", "etl")[i % 3]
        completed = END - dt.timedelta(hours=23 - i, minutes=i)
        sql = templates[i % len(templates)].format(n=i * 37 + 1, d=i % 28 + 1)
        state = "FAILED" if i == 5 else "SUCCEEDED"
        rows.append(
            (f"q-{i:03d}", workgroup, f"athena_workgroup_{workgroup}", state, "DML", None, CATALOG, "shop", sql,
             completed - dt.timedelta(seconds=3), completed, 10, 9, 1, 0, None, None)
        )  # fmt: skip
    return rows


def lineage_files(out: Path, **options: Any) -> tuple[dict[str, list[str]], int]:
    """The lineage files of ``history()`` run through an ``AthenaLineage`` with ``options``: lines by
    entity; and how many statements its pool analysed."""
    with AthenaLineage("athena-test", "eu-west-1", END, **options) as lineage:
        for _ in lineage.columns(column_rows()):
            pass
        for _ in lineage.views([]):
            pass
        for _ in lineage.query_history(history()):
            pass
        files = write_extracts(lineage.extracts(), out, "athena-test", WINDOW, compress=True)
    return {
        f.entity: gzip.open(f.path, "rt").read().splitlines() for f in files
    }, lineage.analysis.counts.in_pool


def test_shared_analysis_keeps_each_querys_own_id_user_times_and_counts(tmp_path):
    shared, _ = lineage_files(tmp_path / "shared", processes=0)
    alone, _ = lineage_files(tmp_path / "alone", processes=0, cache_size=0)  # every query analysed
    assert shared == alone
    statements = shared["lineage_statements"]
    assert [line.split(",")[1] for line in statements[1:]] == [f"q-{i:03d}" for i in range(24)]
    assert statements[6].split(",")[5] == "skipped"  # q-005 failed
    # daily is written by q-001, q-009, q-013, q-017, q-021 (q-005 failed): 5 queries, the last q-021
    (edge,) = [line for line in shared["table_lineage"] if ",daily," in line and ",orders," in line]
    assert edge.endswith(",5,q-021,2026-11-21T21:39:00Z")
    (usage,) = [line for line in shared["table_usage"][1:] if ",customers," in line]
    assert usage.split(",")[3:5] == ["12", "3"]  # the joins and the segment counts, by all three workgroups


# --- the pool ----------------------------------------------------------------------------------------


@task
def lineage_in_a_task(out: str) -> tuple[dict[str, list[str]], int]:
    return lineage_files(Path(out), processes=2, pool_after=0)


@flow
def lineage_in_a_flow(out: str) -> tuple[dict[str, list[str]], int]:
    return lineage_in_a_task(out)


@pytest.mark.slow(seconds=4)
def test_a_pool_in_a_prefect_task_gives_the_same_files_and_is_shut_down(tmp_path):
    pooled, in_pool = lineage_in_a_flow(str(tmp_path / "pooled"))
    assert in_pool > 0
    assert pooled == lineage_files(tmp_path / "here", processes=0)[0]
    assert multiprocessing.active_children() == []


@pytest.mark.slow(seconds=3)
def test_a_run_that_fails_midway_shuts_its_pool_down():
    def failing() -> Any:
        yield from history()[:20]
        raise ConnectionError("BatchGetQueryExecution: connection reset")

    lineage = AthenaLineage("athena-test", "eu-west-1", END, processes=2, pool_after=0)
    with pytest.raises(ConnectionError), lineage:
        for _ in lineage.columns(column_rows()):
            pass
        for _ in lineage.query_history(failing()):
            pass
    assert lineage.analysis.counts.in_pool > 0
    assert multiprocessing.active_children() == []


def test_a_history_read_before_the_columns_is_spooled_and_gives_the_same_files(tmp_path):
    in_order, _ = lineage_files(tmp_path / "in-order", processes=0)
    with AthenaLineage("athena-test", "eu-west-1", END, processes=0) as lineage:
        for _ in lineage.query_history(history()):
            pass
        for _ in lineage.columns(column_rows()):
            pass
        for _ in lineage.views([]):
            pass
        files = write_extracts(lineage.extracts(), tmp_path / "early", "athena-test", WINDOW, compress=True)
    assert {f.entity: gzip.open(f.path, "rt").read().splitlines() for f in files} == in_order
