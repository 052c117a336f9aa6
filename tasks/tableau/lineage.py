"""The Tableau content downstream of warehouse tables, through the Metadata API: the published data
sources with extracts built on them, and the workbooks whose own (embedded) extracts are.

How tables are matched and what counts as downstream: docs/tableau-refresh.md ("Content from lineage").
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.metadata.lineage.metadata_api import ENABLE_HINT, MetadataApiClient, MetadataApiError
from tasks.tableau.assets import TableKey
from tasks.tableau.session import TableauSession

logger = logging.getLogger(__name__)

__all__ = [
    "ENABLE_HINT",
    "DownstreamContent",
    "LineageResolution",
    "LineageResolutionError",
    "MetadataApiError",
    "resolve_downstream",
]

#: Warehouses whose unquoted identifiers are folded (Athena/Glue, Redshift and Postgres to lower case,
#: Snowflake to upper case): their names match Tableau's case-insensitively. BigQuery's dataset and
#: table names are case-sensitive (BigQuery, "Datasets": "Dataset names are case-sensitive"; "Tables").
CASE_FOLDING = frozenset({"athena", "redshift", "postgres", "snowflake"})

_EXTRACT = "hasExtracts extractLastRefreshTime extractLastUpdateTime"
#: What is read of each database table: its identity, the published data sources and the workbooks
#: downstream (Metadata API reference: DatabaseTable, PublishedDatasource, Workbook,
#: EmbeddedDatasource; an embedded data source on a published one lists it in upstreamDatasources).
TABLE_SELECTION = (
    "id name schema fullName connectionType database { name connectionType } "
    f"downstreamDatasources {{ luid name projectName owner {{ username }} {_EXTRACT} }} "
    "downstreamWorkbooks { luid name projectName owner { username } "
    f"embeddedDatasources {{ {_EXTRACT} upstreamTables {{ id }} upstreamDatasources {{ id }} }} }}"
)


@dataclass(frozen=True)
class DownstreamContent:
    """A data source or workbook to refresh because its extract is built on some of the tables.

    ``tables``: the asset keys of the requested tables that brought it in, sorted. The extract times
    are the Metadata API's (UTC): for a data source its ``extractLastRefreshTime`` (last full refresh)
    and ``extractLastUpdateTime`` (last full refresh, incremental update or creation); for a workbook
    the oldest of its extracted embedded data sources' (None when one has none).
    """

    kind: str  # "datasource" | "workbook"
    luid: str
    name: str
    project: str | None
    owner: str | None  # the owner's username
    tables: tuple[str, ...]
    extract_last_refresh: dt.datetime | None
    extract_last_update: dt.datetime | None = None


@dataclass(frozen=True)
class LineageResolution:
    """What ``resolve_downstream`` found.

    ``content``: deduplicated by (kind, luid), data sources first, then by project, name and luid.
    ``tables_without_extracts``: the requested keys (in the order given) with no extract downstream,
    tables Tableau does not know included; the caller warns. ``requests``: GraphQL requests made.
    """

    content: tuple[DownstreamContent, ...]
    tables_without_extracts: tuple[str, ...]
    requests: int


class LineageResolutionError(RuntimeError):
    """The Metadata API answered only part of the lineage (limits, throttling, errors), so content
    downstream of the tables might be missed: nothing is resolved."""


def resolve_downstream(
    session: TableauSession, tables: Sequence[TableKey], *, page_size: int = 100
) -> LineageResolution:
    """The published data sources with extracts and the workbooks with their own extracts downstream of
    ``tables``, from the Metadata API with the run's ``session`` (its credential token).

    One paged query: ``databaseTablesConnection(filter: {nameWithin, connectionTypeWithin})`` with the
    tables' names (as given, and lower- and upper-cased where the warehouse folds case), then each
    table node is matched to the keys on connection type, database, schema and name client-side. A
    published data source counts when ``hasExtracts``; a workbook when one of its embedded data
    sources has extracts, is not a connection to a published data source and lists the table among its
    ``upstreamTables`` (a workbook that reaches the table only through a published data source is not
    refreshed for it: the data source is).

    Args:
        page_size: tables per page (``first``), 1 to 1000; halved on NODE_LIMIT_EXCEEDED.

    Raises:
        MetadataApiError: the Metadata API is off (Tableau Server: ``tsm maintenance metadata-services
            enable``, in the message) or refuses the user.
        LineageResolutionError: part of the lineage could not be read (node limit at one table per
            page, TIME_LIMIT_EXCEEDED or RATE_EXCEEDED after the retries, other errors).
    """
    keys = list(dict.fromkeys(tables))
    if not keys:
        return LineageResolution((), (), 0)
    names = sorted({variant for key in keys for variant in _name_variants(key)})
    connection_types = sorted({key.connection_type for key in keys})
    client = MetadataApiClient(session, page_size=page_size)
    result = client.connection(
        "databaseTablesConnection",
        TABLE_SELECTION,
        filter=("DatabaseTable_Filter", {"nameWithin": names, "connectionTypeWithin": connection_types}),
    )
    if not result.complete:
        raise LineageResolutionError(
            f"Tableau Metadata API: the lineage of {len(keys)} tables could not be read whole "
            f"({'; '.join(result.problems)}); no content was resolved. Run again later, or resolve fewer "
            "tables per domain."
        )
    # Candidate keys by connection type and case-folded name: each node is checked against its own.
    candidates: dict[tuple[str, str], list[TableKey]] = {}
    for key in keys:
        candidates.setdefault((key.connection_type, key.name.casefold()), []).append(key)
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for node in result.nodes:
        kind = (
            node.get("connectionType") or (node.get("database") or {}).get("connectionType") or ""
        ).casefold()
        near = candidates.get((kind, (node.get("name") or "").casefold()), [])
        for key in (k for k in near if _matches(k, node)):
            for content in _downstream(node):
                entry = found.setdefault((content["kind"], content["luid"]), content)
                entry["tables"].add(key.key)
    content = tuple(
        DownstreamContent(
            kind=c["kind"],
            luid=c["luid"],
            name=c["name"],
            project=c["project"],
            owner=c["owner"],
            tables=tuple(sorted(c["tables"])),
            extract_last_refresh=c["refresh"],
            extract_last_update=c["update"],
        )
        for c in sorted(
            found.values(),
            key=lambda c: (c["kind"] != "datasource", c["project"] or "", c["name"] or "", c["luid"]),
        )
    )
    covered = {table for c in content for table in c.tables}
    without = tuple(key.key for key in keys if key.key not in covered)
    logger.info(
        "Tableau lineage: %d data sources and %d workbooks downstream of %d tables (%d without an extract "
        "downstream), %d Metadata API requests",
        sum(c.kind == "datasource" for c in content),
        sum(c.kind == "workbook" for c in content),
        len(keys),
        len(without),
        client.queries,
    )
    return LineageResolution(content, without, client.queries)


def _name_variants(key: TableKey) -> set[str]:
    """The names to ask Tableau for (``nameWithin`` matches exactly): as given, and where the warehouse
    folds unquoted identifiers, lower- and upper-cased too."""
    if key.warehouse in CASE_FOLDING:
        return {key.name, key.name.lower(), key.name.upper()}
    return {key.name}


def _same(key: TableKey, ours: str, theirs: str | None) -> bool:
    if theirs is None:
        return False
    return ours.casefold() == theirs.casefold() if key.warehouse in CASE_FOLDING else ours == theirs


def _full_name_schema(full_name: str | None) -> str | None:
    """The qualifier before the table in ``fullName`` (``[sales].[orders]``, ``sales.orders``), if any."""
    parts = [p.strip('[]"`') for p in (full_name or "").split(".")]
    return parts[-2] if len(parts) >= 2 else None


def _matches(key: TableKey, node: dict[str, Any]) -> bool:
    """Whether a ``DatabaseTable`` node is the table of ``key``: same connection type, database name,
    schema and name. For Athena the schema may also be read from ``fullName``: Tableau warns that its
    ``schema`` attribute "may not return the correct schema name" for Amazon Athena (Metadata API
    reference, DatabaseTable_Filter.schema)."""
    database = node.get("database") or {}
    if (node.get("connectionType") or database.get("connectionType") or "").casefold() != key.connection_type:
        return False
    if not _same(key, key.name, node.get("name")) or not _same(key, key.database, database.get("name")):
        return False
    schemas = [node.get("schema")]
    if key.warehouse == "athena":
        schemas.append(_full_name_schema(node.get("fullName")))
    return any(_same(key, key.schema, schema) for schema in schemas)


def _downstream(table: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """The content of one table node to refresh for it, as entries of ``resolve_downstream``."""
    for ds in table.get("downstreamDatasources") or []:
        if ds.get("hasExtracts"):
            yield _entry("datasource", ds, [ds])
    for wb in table.get("downstreamWorkbooks") or []:
        extracts = [
            e
            for e in wb.get("embeddedDatasources") or []
            if e.get("hasExtracts") and not e.get("upstreamDatasources")
        ]
        if any(t.get("id") == table["id"] for e in extracts for t in e.get("upstreamTables") or []):
            yield _entry("workbook", wb, extracts)


def _entry(kind: str, content: dict[str, Any], extracts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": kind,
        "luid": content["luid"],
        "name": content.get("name"),
        "project": content.get("projectName"),
        "owner": (content.get("owner") or {}).get("username"),
        "tables": set(),
        "refresh": _oldest(e.get("extractLastRefreshTime") for e in extracts),
        "update": _oldest(e.get("extractLastUpdateTime") for e in extracts),
    }


def _oldest(values: Iterable[str | None]) -> dt.datetime | None:
    """The oldest of Metadata API ``DateTime`` values (ISO 8601), as an aware UTC datetime; None if
    any is null (an extract never refreshed is older than any time)."""
    times = []
    for value in values:
        if value is None:
            return None
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        times.append(parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC))
    return min(times) if times else None
