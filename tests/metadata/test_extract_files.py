"""Extract files (tasks.metadata.extract_files): names, CSV content, gzip, streaming, bad rows, atomic writes."""

from __future__ import annotations

import csv
import datetime as dt
import enum
import gzip
import io
import json
import math
import tracemalloc
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tasks.metadata.extract_files import MAX_FILE_NAME_LENGTH, WrittenFile, extract_file_name, write_extracts
from tasks.metadata.extracts import Extract
from tasks.metadata.hwm import Window

UTC = dt.UTC
START = dt.datetime(2026, 11, 21, tzinfo=UTC)
END = dt.datetime(2026, 11, 22, tzinfo=UTC)
WINDOW = Window(START, END)
SOURCE = "athena-prod"


def read_rows(path: Path) -> list[list[str]]:
    """All records of an extract file (header first), through ``csv.reader`` as a consumer would."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            return list(csv.reader(f))
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- names ---------------------------------------------------------------------------------------


def test_name_carries_source_entity_and_window() -> None:
    assert (
        extract_file_name(SOURCE, "query_history", START, END, compress=True)
        == "athena-prod_query_history_20261121T000000_20261122T000000.csv.gz"
    )
    assert (
        extract_file_name(SOURCE, "tables", START, END, compress=False)
        == "athena-prod_tables_20261121T000000_20261122T000000.csv"
    )


def test_name_is_deterministic_and_in_utc() -> None:
    sydney = dt.timezone(dt.timedelta(hours=11))
    names = {
        extract_file_name(SOURCE, "columns", START, END, True),
        extract_file_name(SOURCE, "columns", START, END, True),
        extract_file_name(SOURCE, "columns", START.astimezone(sydney), END.astimezone(sydney), True),
    }
    assert names == {"athena-prod_columns_20261121T000000_20261122T000000.csv.gz"}
    assert extract_file_name(SOURCE, "columns", START, START, False).endswith(
        "_20261121T000000_20261121T000000.csv"
    )  # the empty window is a window


def test_name_uses_only_key_and_file_safe_characters() -> None:
    name = extract_file_name("a0-b_c", "x-1_y", START, END, True)
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-.T")


@pytest.mark.parametrize(
    "source, entity, fragment",
    [
        ("Athena", "tables", "source 'Athena'"),
        ("athena prod", "tables", "' '"),
        ("athena/prod", "tables", "'/'"),
        ("-athena", "tables", "source '-athena'"),
        ("", "tables", "source ''"),
        ("athena", "Tables", "entity 'Tables'"),
        ("athena", "../tables", "entity '../tables'"),
        ("athena", "query.history", "'.'"),
        ("athena", "_tables", "entity '_tables'"),
    ],
)
def test_name_rejects_bad_source_or_entity(source: str, entity: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="lowercase letters") as info:
        extract_file_name(source, entity, START, END, True)
    assert fragment in str(info.value)


def test_name_rejects_non_string_parts() -> None:
    with pytest.raises(ValueError, match="entity must be a string"):
        extract_file_name(SOURCE, 3, START, END, True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "start, end, message",
    [
        (dt.datetime(2026, 11, 21), END, "timezone-aware"),
        (START, dt.datetime(2026, 11, 22), "timezone-aware"),
        (START.replace(microsecond=5), END, "fraction of a second"),
        (END, START, "after its end"),
        ("2026-11-21", END, "must be a datetime"),
    ],
)
def test_name_rejects_bad_windows(start: Any, end: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        extract_file_name(SOURCE, "tables", start, end, True)


def test_name_length_is_bounded() -> None:
    fixed = len(extract_file_name("s", "e", START, END, True)) - 1  # without the entity
    assert len(extract_file_name("s", "e" * (MAX_FILE_NAME_LENGTH - fixed), START, END, True)) == 200
    with pytest.raises(ValueError, match="characters; at most 200"):
        extract_file_name("s", "e" * (MAX_FILE_NAME_LENGTH - fixed + 1), START, END, True)


# --- content -------------------------------------------------------------------------------------


class Kind(enum.StrEnum):
    VIEW = "VIRTUAL_VIEW"


class Level(enum.IntEnum):
    HIGH = 3


TRICKY: list[tuple[Any, str]] = [
    ("plain", "plain"),
    ("a,b", "a,b"),
    ('say "hi"', 'say "hi"'),
    ("line1\nline2", "line1\nline2"),
    ("select 1\r\nfrom t", "select 1\r\nfrom t"),
    ("old mac\rline", "old mac\rline"),
    ("  padded  ", "  padded  "),
    ("ünïcødé — 表 🚀", "ünïcødé — 表 🚀"),
    ("", ""),
    (None, ""),
    (True, "true"),
    (False, "false"),
    (0, "0"),
    (-12345678901234567890, "-12345678901234567890"),
    (0.1, "0.1"),
    (1e20, "1e+20"),
    (Decimal("1.50"), "1.50"),
    (dt.datetime(2026, 11, 21, 10, 0, tzinfo=UTC), "2026-11-21T10:00:00Z"),
    (dt.datetime(2026, 11, 21, 21, 0, tzinfo=dt.timezone(dt.timedelta(hours=11))), "2026-11-21T10:00:00Z"),
    (dt.datetime(2026, 11, 21, 10, 0, 0, 123000, tzinfo=UTC), "2026-11-21T10:00:00.123000Z"),
    (dt.date(2026, 11, 21), "2026-11-21"),
    (["a", 1, None, True], '["a",1,null,true]'),
    (("x", "y"), '["x","y"]'),
    (
        {"k": 'v, "q"', "n": {"d": dt.datetime(2026, 1, 1, tzinfo=UTC)}},
        '{"k":"v, \\"q\\"","n":{"d":"2026-01-01T00:00:00Z"}}',
    ),
    ({"été": Decimal("2.5")}, '{"été":"2.5"}'),
    (Kind.VIEW, "VIRTUAL_VIEW"),
    (Level.HIGH, "3"),
]


@pytest.mark.parametrize("compress", [False, True])
def test_header_and_rows_round_trip_through_csv_reader(tmp_path: Path, compress: bool) -> None:
    columns = tuple(f"c{i}" for i in range(len(TRICKY)))
    row = tuple(value for value, _ in TRICKY)
    expected = [text for _, text in TRICKY]
    [written] = write_extracts(
        [Extract("odd_values", columns, [row, row[::-1]])], tmp_path, SOURCE, WINDOW, compress
    )
    records = read_rows(written.path)
    assert records[0] == list(columns)
    assert records[1] == expected
    assert records[2] == expected[::-1]
    assert len(records) == 3
    assert written.rows == 2
    for text in expected:
        if text.startswith(("[", "{")):
            json.loads(text)  # valid JSON


def test_file_is_utf8_with_lf_records_and_minimal_quoting(tmp_path: Path) -> None:
    rows = [(1, "a,b", None, True), (2, 'q"', "x\ny", False), (3, "cr\rhere", "", None)]
    [written] = write_extracts(
        [Extract("t", ("id", "name", "note", "flag"), rows)], tmp_path, SOURCE, WINDOW, False
    )
    data = written.path.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")  # no BOM
    assert data.decode("utf-8") == (
        'id,name,note,flag\n1,"a,b",,true\n2,"q""","x\ny",false\n3,"cr\rhere",,\n'
    )


def test_header_only_for_an_empty_extract(tmp_path: Path) -> None:
    [written] = write_extracts(
        [Extract("views", ("name", "sql"), iter(()))], tmp_path / "new" / "dir", SOURCE, WINDOW, False
    )
    assert written.path.read_text(encoding="utf-8") == "name,sql\n"
    assert written.rows == 0


def test_one_file_per_entity_with_counts_and_sizes(tmp_path: Path) -> None:
    extracts = [
        Extract("databases", ("name",), [("sales",), ("hr",)]),
        Extract("tables", ("database", "name"), ((f"db{i}", f"t{i}") for i in range(5))),
    ]
    window = SimpleNamespace(start=START, end=END)  # anything with .start/.end
    written = write_extracts(extracts, tmp_path, SOURCE, window, True)
    assert [w.entity for w in written] == ["databases", "tables"]
    assert [w.rows for w in written] == [2, 5]
    assert [w.path.name for w in written] == [
        "athena-prod_databases_20261121T000000_20261122T000000.csv.gz",
        "athena-prod_tables_20261121T000000_20261122T000000.csv.gz",
    ]
    assert all(w.path.parent == tmp_path and w.bytes == w.path.stat().st_size for w in written)
    assert entries(tmp_path) == sorted(w.path.name for w in written)
    assert isinstance(written[0], WrittenFile)


# --- gzip and determinism ------------------------------------------------------------------------


def sample_extracts() -> list[Extract]:
    return [
        Extract(
            "query_history", ("id", "sql", "at"), ((f"q{i}", f"select {i}, 'x'", START) for i in range(500))
        ),
        Extract("workgroups", ("name", "user"), [("primary", "athena_workgroup_primary")]),
    ]


def test_gzip_round_trip_and_identical_bytes_across_runs(tmp_path: Path) -> None:
    first = write_extracts(sample_extracts(), tmp_path / "run1", SOURCE, WINDOW, True)
    second = write_extracts(sample_extracts(), tmp_path / "run2", SOURCE, WINDOW, True)
    for a, b in zip(first, second, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes()
        assert (a.rows, a.bytes) == (b.rows, b.bytes)
    raw = first[0].path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw[4:8] == b"\x00\x00\x00\x00"  # MTIME 0 (RFC 1952 §2.3)
    assert raw[3] & 0x08 == 0  # no FNAME: the temporary name is not recorded
    records = read_rows(first[0].path)
    assert records[0] == ["id", "sql", "at"]
    assert records[1] == ["q0", "select 0, 'x'", "2026-11-21T00:00:00Z"]
    assert len(records) == 501
    assert gzip.decompress(raw).decode("utf-8").count("\n") == 501


def test_uncompressed_identical_bytes_and_rerun_replaces(tmp_path: Path) -> None:
    first = write_extracts(sample_extracts(), tmp_path, SOURCE, WINDOW, False)
    before = [w.path.read_bytes() for w in first]
    again = write_extracts(sample_extracts(), tmp_path, SOURCE, WINDOW, False)
    assert [w.path.read_bytes() for w in again] == before
    assert entries(tmp_path) == sorted(w.path.name for w in first)  # replaced, no leftovers


# --- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_streams_a_generator_of_50k_rows_in_constant_memory(tmp_path: Path, compress: bool) -> None:
    n = 50_000
    consumed = 0

    def rows() -> Iterator[tuple[Any, ...]]:
        nonlocal consumed
        for i in range(n):
            consumed += 1
            yield (i, f"db_{i % 7}", f"table_{i}", dt.datetime(2026, 11, 21, tzinfo=UTC), i % 2 == 0, None)

    extract = Extract("columns", ("id", "database", "table", "created", "partition", "comment"), rows())
    tracemalloc.start()
    try:
        [written] = write_extracts([extract], tmp_path, SOURCE, WINDOW, compress)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert consumed == n
    assert written.rows == n
    # A list of the rows alone would take ~12 MB; streaming holds a few I/O buffers.
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes"
    last = None
    count = 0
    opener = gzip.open if compress else open
    with opener(written.path, "rt", encoding="utf-8", newline="") as f:
        for count, last in enumerate(csv.reader(f)):  # noqa: B007
            pass
    assert count == n
    assert last == [str(n - 1), f"db_{(n - 1) % 7}", f"table_{n - 1}", "2026-11-21T00:00:00Z", "false", ""]


# --- bad input -----------------------------------------------------------------------------------


def test_row_length_mismatch_names_entity_and_row(tmp_path: Path) -> None:
    rows = [("a", 1), ("b", 2), ("c",)]
    with pytest.raises(ValueError, match=r"extract 'tables': row 3 has 1 values but there are 2 columns"):
        write_extracts([Extract("tables", ("name", "n"), rows)], tmp_path, SOURCE, WINDOW, True)
    assert entries(tmp_path) == []


@pytest.mark.parametrize(
    "value, error, message",
    [
        ({1, 2}, TypeError, "cannot write a set"),
        (dt.datetime(2026, 11, 21, 10), ValueError, "naive datetime"),
        ([float("nan")], ValueError, "Out of range float"),
        ([object()], TypeError, "a object inside a list/dict"),
        (b"bytes", TypeError, "cannot write a bytes"),
    ],
)
def test_unwritable_value_names_entity_row_and_column(
    tmp_path: Path, value: Any, error: type[Exception], message: str
) -> None:
    rows = [("ok", 1), ("ok", value)]
    with pytest.raises(error, match=message) as info:
        write_extracts([Extract("views", ("name", "extra"), rows)], tmp_path, SOURCE, WINDOW, False)
    assert "extract 'views': row 2, column 'extra'" in str(info.value)
    assert entries(tmp_path) == []


def test_top_level_nan_is_written_as_python_writes_it(tmp_path: Path) -> None:
    [written] = write_extracts(
        [Extract("t", ("x", "y"), [(math.nan, -math.inf)])], tmp_path, SOURCE, WINDOW, False
    )
    assert read_rows(written.path)[1] == ["nan", "-inf"]


def test_row_that_is_not_a_tuple_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="extract 't': row 1 is a str"):
        write_extracts([Extract("t", ("a", "b"), ["ab"])], tmp_path, SOURCE, WINDOW, False)


def test_duplicate_entity_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    extracts = [
        Extract("tables", ("a",), [(1,)]),
        Extract("views", ("a",), []),
        Extract("tables", ("a",), []),
    ]
    with pytest.raises(ValueError, match="duplicate entity 'tables'"):
        write_extracts(extracts, tmp_path, SOURCE, WINDOW, True)
    assert entries(tmp_path) == []


@pytest.mark.parametrize(
    "columns, message",
    [((), "has no columns"), (("a", "a"), r"duplicate columns \['a'\]"), (("a", ""), "non-empty strings")],
)
def test_bad_columns_are_refused_before_anything_is_written(
    tmp_path: Path, columns: tuple, message: str
) -> None:
    extracts = [Extract("good", ("a",), [(1,)]), Extract("bad", columns, [])]
    with pytest.raises(ValueError, match=message):
        write_extracts(extracts, tmp_path, SOURCE, WINDOW, True)
    assert entries(tmp_path) == []


def test_bad_entity_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entity 'Query History'"):
        write_extracts(
            [Extract("good", ("a",), [(1,)]), Extract("Query History", ("a",), [])],
            tmp_path,
            SOURCE,
            WINDOW,
            True,
        )
    assert entries(tmp_path) == []


# --- atomicity -----------------------------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("compress", [False, True])
def test_generator_failing_midway_leaves_no_partial_file(tmp_path: Path, compress: bool) -> None:
    final = tmp_path / extract_file_name(SOURCE, "query_history", START, END, compress)
    seen_mid_write: list[list[str]] = []

    def rows() -> Iterator[tuple[Any, ...]]:
        for i in range(50_000):
            if i == 40_000:
                seen_mid_write.append(entries(tmp_path))
                raise Boom("API page failed")
            yield (f"q{i}", "select 1")

    with pytest.raises(Boom):
        write_extracts([Extract("query_history", ("id", "sql"), rows())], tmp_path, SOURCE, WINDOW, compress)
    [during] = seen_mid_write
    assert len(during) == 1
    assert during[0].startswith(f".{final.name}.")
    assert during[0].endswith(".tmp")
    assert entries(tmp_path) == []  # neither the final name nor the temporary file


def test_failed_rerun_keeps_the_earlier_file_intact(tmp_path: Path) -> None:
    [earlier] = write_extracts(
        [Extract("tables", ("name",), [("t1",), ("t2",)])], tmp_path, SOURCE, WINDOW, True
    )
    content = earlier.path.read_bytes()

    def rows() -> Iterator[tuple[Any, ...]]:
        yield ("t1",)
        raise KeyboardInterrupt  # not an Exception: still cleaned up

    with pytest.raises(KeyboardInterrupt):
        write_extracts([Extract("tables", ("name",), rows())], tmp_path, SOURCE, WINDOW, True)
    assert earlier.path.read_bytes() == content
    assert entries(tmp_path) == [earlier.path.name]


def test_failure_in_a_later_extract_keeps_completed_files_whole(tmp_path: Path) -> None:
    extracts = [
        Extract("databases", ("name",), [("sales",)]),
        Extract("tables", ("name",), [("t",), ("x", "y")]),
    ]
    with pytest.raises(ValueError, match="extract 'tables': row 2"):
        write_extracts(extracts, tmp_path, SOURCE, WINDOW, True)
    [done] = entries(tmp_path)
    assert done.startswith("athena-prod_databases_")
    assert read_rows(tmp_path / done) == [["name"], ["sales"]]


def test_file_content_matches_an_in_memory_csv(tmp_path: Path) -> None:
    """The streamed file is exactly what one ``csv.writer`` call per row gives (no \\r involved)."""
    rows = [(i, f"n,{i}", 'q"') for i in range(100)]
    [written] = write_extracts([Extract("t", ("a", "b", "c"), rows)], tmp_path, SOURCE, WINDOW, True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["a", "b", "c"])
    writer.writerows(rows)
    assert gzip.decompress(written.path.read_bytes()).decode("utf-8") == buffer.getvalue()
