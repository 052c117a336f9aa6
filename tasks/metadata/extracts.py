"""What a metadata extractor produces, and the errors every extractor raises.

An extractor (Athena, Tableau) has ``test_connection()`` and ``run(start_hwm, end_hwm)``; ``run``
returns one ``Extract`` per entity (databases, tables, columns, query history, lineage, usage, ...),
which ``tasks.metadata.extract_files`` writes as one file each: CSV, or JSON lines for OpenLineage.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class Extract:
    """One entity's rows: ``columns`` names the fields, each row is a tuple in that order.

    ``rows`` may be a generator (large catalogs are streamed to the file, not held in memory).
    ``sql_columns``: the columns holding SQL text (query history, view definitions), whose literals
    are masked when the source is configured with ``mask`` (``tasks.metadata.masking``).
    ``sql_dialect_column``: a column naming each row's SQL dialect (sqlglot's names, e.g. ``hive``
    for a Hive/Spark view), when it is not the source's own.

    ``format``: ``csv``, or ``jsonl`` (JSON lines: one column, each row a 1-tuple holding a JSON object,
    e.g. an OpenLineage event). ``sql_facet_paths``: in a ``jsonl`` row, the key paths of objects shaped
    like OpenLineage's SQLJobFacet (``{"query": <SQL>, "dialect": <name>}``) whose ``query`` is masked
    like a ``sql_columns`` cell (in its ``dialect`` when it names a sqlglot dialect).
    """

    entity: str
    columns: tuple[str, ...]
    rows: Iterable[tuple[Any, ...]]
    sql_columns: tuple[str, ...] = ()
    sql_dialect_column: str | None = None
    format: Literal["csv", "jsonl"] = "csv"
    sql_facet_paths: tuple[tuple[str, ...], ...] = ()


class ExtractorConnectionError(RuntimeError):
    """``test_connection`` failed: the message names what is missing (credentials, permission,
    bucket, workgroup, site) and what to do."""


class PartialExtractionError(RuntimeError):
    """A source answered only part of what was asked (e.g. the Tableau Metadata API after its retries):
    ``problems`` names each part missing, ``files`` the names of the files written (not landed). The run
    lands nothing and leaves the HWM where it was."""

    def __init__(self, source: str, problems: list[str], files: list[str] | None = None) -> None:
        super().__init__(source, list(problems), list(files or []))

    @property
    def source(self) -> str:
        return self.args[0]

    @property
    def problems(self) -> list[str]:
        return self.args[1]

    @property
    def files(self) -> list[str]:
        return self.args[2]

    def __str__(self) -> str:
        return (
            f"source {self.source!r} returned a partial result, so nothing was landed and the HWM did not "
            f"move (rerun the same window): " + "; ".join(self.problems)
        )


class Extractor(Protocol):
    """A metadata source. ``source``: its configured name (e.g. ``athena-prod``).

    ``problems``: filled while the extracts are produced, what the source could not answer; a run whose
    extractor reports any lands nothing (``PartialExtractionError``). An extractor whose extracts hold
    something until they are written (Athena: a temporary file) is also a context manager, and the
    collection writes them within its ``with`` block."""

    source: str
    problems: list[str]

    def test_connection(self) -> None:
        """Check credentials and permissions; raises ``ExtractorConnectionError``."""

    def run(self, start_hwm: dt.datetime, end_hwm: dt.datetime) -> list[Extract]:
        """Extract everything, and what changed in ``[start_hwm, end_hwm)`` for windowed entities."""
