"""Write a collector run's extracts as files: one CSV (or JSON lines) per entity, optionally gzipped, atomically.

Names, value formats, gzip and atomicity: docs/metadata-extracts.md.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from tasks.metadata.extracts import Extract

_NAME_PART = re.compile(r"[a-z0-9][a-z0-9_-]*")
_NAME_TIME_FORMAT = "%Y%m%dT%H%M%S"

MAX_FILE_NAME_LENGTH = 200
"""Longest file name ``extract_file_name`` returns (characters = bytes). The temporary name adds 22
(``.`` + name + ``.`` + 16 hex + ``.tmp``), staying within Linux's ``NAME_MAX`` of 255 bytes."""

GZIP_LEVEL = 6
"""zlib compression level of ``.csv.gz`` files: gzip(1)'s default; 9 is much slower for ~1% less."""


@dataclass(frozen=True)
class WrittenFile:
    """One extract file on disk: ``rows`` data rows (header not counted), ``bytes`` its size on disk
    (compressed size for ``.csv.gz``)."""

    entity: str
    path: Path
    rows: int
    bytes: int


class WindowLike(Protocol):
    """A run's window ``[start, end)``: aware datetimes, whole seconds (e.g. ``tasks.metadata.hwm.Window``)."""

    @property
    def start(self) -> dt.datetime: ...

    @property
    def end(self) -> dt.datetime: ...


# --- names ---------------------------------------------------------------------------------------


def _check_name_part(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not _NAME_PART.fullmatch(value):
        bad = sorted({c for c in value if not re.fullmatch(r"[a-z0-9_-]", c)})
        detail = f"; not allowed: {''.join(bad)!r}" if bad else ""
        raise ValueError(
            f"{what} {value!r} cannot be part of an extract file name: it must be lowercase letters, "
            f"digits, '-' and '_', starting with a letter or digit{detail}"
        )
    return value


def _window_instant(value: object, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise ValueError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {value.isoformat()}")
    if value.microsecond:
        raise ValueError(
            f"{what} {value.isoformat()} has a fraction of a second: file names carry whole seconds, "
            "so the window must be in whole seconds (tasks.metadata.hwm.plan_window truncates `end`)"
        )
    return value.astimezone(dt.UTC)


def extract_file_name(
    source: str,
    entity: str,
    window_start: dt.datetime,
    window_end: dt.datetime,
    compress: bool,
    file_format: str = "csv",
) -> str:
    """``<source>_<entity>_<start>_<end>.csv`` (``.csv.gz`` when ``compress``; ``.jsonl[.gz]`` for
    ``file_format="jsonl"``), times in UTC as ``%Y%m%dT%H%M%S``, e.g.
    ``athena-prod_query_history_20261121T000000_20261122T000000.csv.gz``.

    Deterministic: a function of its arguments only. ``ValueError`` when ``source`` or ``entity`` does
    not match ``[a-z0-9][a-z0-9_-]*``, a window bound is naive or not a whole second, ``start > end``,
    or the name would exceed ``MAX_FILE_NAME_LENGTH``. ``start == end`` (an empty window) is allowed.
    """
    _check_name_part(source, "source")
    _check_name_part(entity, "entity")
    if file_format not in ("csv", "jsonl"):
        raise ValueError(f"file_format must be 'csv' or 'jsonl', got {file_format!r}")
    start = _window_instant(window_start, "window start")
    end = _window_instant(window_end, "window end")
    if start > end:
        raise ValueError(f"window start {start.isoformat()} is after its end {end.isoformat()}")
    name = (
        f"{source}_{entity}_{start.strftime(_NAME_TIME_FORMAT)}_{end.strftime(_NAME_TIME_FORMAT)}"
        f".{file_format}{'.gz' if compress else ''}"
    )
    if len(name) > MAX_FILE_NAME_LENGTH:
        raise ValueError(
            f"extract file name {name!r} is {len(name)} characters; at most {MAX_FILE_NAME_LENGTH} "
            "(file systems allow 255 bytes per name, and the temporary name is longer): shorten the "
            "source or entity name"
        )
    return name


# --- values --------------------------------------------------------------------------------------


def _format_datetime(value: dt.datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} has no time zone; extractors must give UTC")
    utc = value.astimezone(dt.UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds") + "Z"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _format_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"a {type(value).__name__} inside a list/dict cannot be written as JSON")


def _cell(value: Any) -> str:
    """``value`` as CSV field text (see the module's table); ``TypeError``/``ValueError`` if refused."""
    kind = type(value)
    if kind is str:
        return value
    if value is None:
        return ""
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if isinstance(value, str):  # e.g. a StrEnum: its value, not its repr
        return str.__str__(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):  # e.g. an IntEnum: the number
        return int.__repr__(value)
    if isinstance(value, float):
        return float.__repr__(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return _format_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple | dict):
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
        )
    raise TypeError(
        f"cannot write a {type(value).__name__} value; supported: str, int, float, Decimal, bool, None, "
        "datetime (timezone-aware), date, list/tuple/dict (as JSON)"
    )


# --- files ---------------------------------------------------------------------------------------


class _RowWriter:
    """CSV records into ``text``, ``\\n``-terminated, quoting fields with ``\\r`` too (module doc)."""

    def __init__(self, text: io.TextIOBase):
        self._text = text
        self._writer = csv.writer(text, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        self._buffer = io.StringIO()
        self._crlf_writer = csv.writer(self._buffer, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)

    def write(self, cells: list[str]) -> None:
        if any("\r" in cell for cell in cells):
            self._buffer.seek(0)
            self._buffer.truncate()
            self._crlf_writer.writerow(cells)
            self._text.write(self._buffer.getvalue()[:-2] + "\n")
        else:
            self._writer.writerow(cells)


def _located(
    exc: TypeError | ValueError, entity: str, number: int, columns: Sequence[str], row: Sequence[Any]
) -> TypeError | ValueError:
    """``exc`` (from ``_cell``) again, its message naming the entity, row number and column."""
    column = next((c for c, v in zip(columns, row, strict=True) if _fails(v)), "?")
    return type(exc)(f"extract {entity!r}: row {number}, column {column!r}: {exc}")


def _fails(value: Any) -> bool:
    try:
        _cell(value)
    except (TypeError, ValueError):
        return True
    return False


def _write_rows(text: io.TextIOBase, entity: str, columns: Sequence[str], rows: Iterable[Any]) -> int:
    """Header and rows of one extract into ``text``; returns the number of data rows."""
    out = _RowWriter(text)
    out.write(list(columns))
    width = len(columns)
    count = 0
    for count, row in enumerate(rows, start=1):
        if not isinstance(row, tuple | list):
            raise TypeError(
                f"extract {entity!r}: row {count} is a {type(row).__name__}, not a tuple of values"
            )
        if len(row) != width:
            raise ValueError(
                f"extract {entity!r}: row {count} has {len(row)} values but there are {width} columns "
                f"({', '.join(columns)})"
            )
        try:
            cells = [_cell(value) for value in row]
        except (TypeError, ValueError) as exc:
            raise _located(exc, entity, count, columns, row) from exc
        out.write(cells)
    return count


def _write_json_lines(text: io.TextIOBase, entity: str, rows: Iterable[Any]) -> int:
    """One compact JSON object per line (each row a 1-tuple holding it); returns the number of lines."""
    count = 0
    for count, row in enumerate(rows, start=1):
        if not isinstance(row, tuple | list) or len(row) != 1 or not isinstance(row[0], dict):
            raise TypeError(f"extract {entity!r}: row {count} is not a 1-tuple holding a JSON object")
        try:
            line = json.dumps(
                row[0], ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default
            )
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"extract {entity!r}: row {count}: {exc}") from exc
        text.write(line + "\n")
    return count


def _write_file(path: Path, extract: Extract, columns: Sequence[str], compress: bool) -> WrittenFile:
    """Write ``extract`` to ``path`` through a temporary name; see the module doc (Atomicity)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:16]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            with open(fd, "wb", closefd=False) as raw:
                binary: Any = (
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL)
                    if compress
                    else raw
                )
                # Closing the text layer closes the GzipFile (writing its trailer into ``raw``) but
                # never the descriptor (closefd=False), which is synced below.
                with io.TextIOWrapper(binary, encoding="utf-8", newline="") as text:
                    if extract.format == "jsonl":
                        rows = _write_json_lines(text, extract.entity, extract.rows)
                    else:
                        rows = _write_rows(text, extract.entity, columns, extract.rows)
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return WrittenFile(entity=extract.entity, path=path, rows=rows, bytes=size)


def _check_columns(extract: Extract) -> tuple[str, ...]:
    columns = tuple(extract.columns)
    if not columns:
        raise ValueError(f"extract {extract.entity!r} has no columns")
    for column in columns:
        if not isinstance(column, str) or not column:
            raise ValueError(
                f"extract {extract.entity!r}: column names must be non-empty strings, got {column!r}"
            )
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise ValueError(f"extract {extract.entity!r}: duplicate columns {duplicates}")
    return columns


def write_extracts(
    extracts: Iterable[Extract], out_dir: Path, source: str, window: WindowLike, compress: bool
) -> list[WrittenFile]:
    """Write each extract to ``out_dir/extract_file_name(source, entity, window, compress)``.

    Returns one ``WrittenFile`` per extract, in the given order, with its data row count and its size
    on disk in bytes. ``out_dir`` is created if missing; files of an earlier run of the same window
    are replaced.

    Before any file is written, every name is built and checked: ``ValueError`` for a bad source or
    entity name, a bad window (see ``extract_file_name``), a duplicate entity, or missing, empty or
    duplicate column names. (``extracts`` itself is listed for that; the rows are not.) While
    writing: ``ValueError`` naming the entity and the row number (1 = first row after the header) for
    a row whose length differs from the columns, and ``TypeError``/``ValueError`` naming entity, row
    and column for a value that cannot be written (module doc). Any failure leaves no file under the
    failing extract's name (an earlier run's file stays as it was); files completed before it stay,
    each complete. A caller must not upload a run whose ``write_extracts`` raised.
    """
    extracts = list(extracts)
    planned: list[tuple[Extract, tuple[str, ...], Path]] = []
    seen: set[str] = set()
    for extract in extracts:
        name = extract_file_name(source, extract.entity, window.start, window.end, compress, extract.format)
        if extract.entity in seen:
            raise ValueError(
                f"duplicate entity {extract.entity!r}: each entity is written to exactly one file"
            )
        seen.add(extract.entity)
        planned.append((extract, _check_columns(extract), out_dir / name))

    out_dir.mkdir(parents=True, exist_ok=True)
    return [_write_file(path, extract, columns, compress) for extract, columns, path in planned]
