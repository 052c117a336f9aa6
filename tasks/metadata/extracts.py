"""What a metadata extractor produces, and the errors every extractor raises.

An extractor (Athena, Tableau) has ``test_connection()`` and ``run(start_hwm, end_hwm)``; ``run``
returns one ``Extract`` per entity (databases, tables, columns, query history, ...), which
``tasks.metadata.extract_files`` writes as one CSV file each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Extract:
    """One entity's rows: ``columns`` names the fields, each row is a tuple in that order.

    ``rows`` may be a generator (large catalogs are streamed to the file, not held in memory).
    ``sql_columns``: the columns holding SQL text (query history, view definitions), whose literals
    are masked when the source is configured with ``mask`` (``tasks.metadata.masking``).
    ``sql_dialect_column``: a column naming each row's SQL dialect (sqlglot's names, e.g. ``hive``
    for a Hive/Spark view), when it is not the source's own.
    """

    entity: str
    columns: tuple[str, ...]
    rows: Iterable[tuple[Any, ...]]
    sql_columns: tuple[str, ...] = ()
    sql_dialect_column: str | None = None


class ExtractorConnectionError(RuntimeError):
    """``test_connection`` failed: the message names what is missing (credentials, permission,
    bucket, workgroup, site) and what to do."""


class Extractor(Protocol):
    """A metadata source. ``source``: its configured name (e.g. ``athena-prod``)."""

    source: str

    def test_connection(self) -> None:
        """Check credentials and permissions; raises ``ExtractorConnectionError``."""

    def run(self, start_hwm: dt.datetime, end_hwm: dt.datetime) -> list[Extract]:
        """Extract everything, and what changed in ``[start_hwm, end_hwm)`` for windowed entities."""
