"""Prefect assets of the Tableau refresh job: the asset keys of warehouse tables and Tableau content,
the materializations of tables read back from Prefect's events, and Tableau content materialized.

A warehouse table is named by the asset key its pipeline materializes (``@materialize``), in the
OpenLineage naming spec's namespace and name joined into one URI; Tableau content by
``tableau://<host>/<site>/<datasource|workbook>/<luid>``. The forms, per warehouse, and the events:
docs/tableau-refresh.md ("Asset keys", "Tableau content as Prefect assets").
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prefect.types.names import validate_valid_asset_key

MATERIALIZED_EVENT = "prefect.asset.materialization.succeeded"
#: How far back an asset-triggered run looks for the start of its burst of materializations.
BURST_LOOKBACK = dt.timedelta(hours=24)

#: Warehouse → (Tableau Metadata API ``connectionType``, key form, pattern of the part after ``://``).
#: Key forms follow the OpenLineage naming spec (openlineage.io/docs/spec/naming): Athena's namespace
#: there is ``awsathena://athena.{region}.amazonaws.com``; the key keeps only what names the table
#: (catalog, database, table) because Tableau's Metadata API does not say the region.
_WAREHOUSES: dict[str, tuple[str, str, re.Pattern[str]]] = {
    "athena": (
        "athena",
        "athena://{catalog}/{database}/{table}",
        re.compile(r"(?P<database>[^/]+)/(?P<schema>[^/]+)/(?P<name>[^/]+)"),
    ),
    "redshift": (
        "redshift",
        "redshift://{cluster}.{region}:{port}/{database}/{schema}/{table}",
        re.compile(
            r"(?P<cluster>[^/.:]+)\.(?P<region>[^/:]+):(?P<port>\d+)/(?P<database>[^/]+)/(?P<schema>[^/]+)/(?P<name>[^/]+)"
        ),
    ),
    "snowflake": (
        "snowflake",
        "snowflake://{org}-{account}/{database}/{schema}/{table}",
        re.compile(r"(?P<account>[^/-]+-[^/]+)/(?P<database>[^/]+)/(?P<schema>[^/]+)/(?P<name>[^/]+)"),
    ),
    "bigquery": (
        "bigquery",
        "bigquery://{project}/{dataset}/{table}",
        re.compile(r"(?P<database>[^/]+)/(?P<schema>[^/]+)/(?P<name>[^/]+)"),
    ),
    "postgres": (
        "postgres",
        "postgres://{host}:{port}/{database}/{schema}/{table}",
        re.compile(r"(?P<host>[^/:]+):(?P<port>\d+)/(?P<database>[^/]+)/(?P<schema>[^/]+)/(?P<name>[^/]+)"),
    ),
}

#: The accepted forms, for error messages and the docs.
TABLE_KEY_FORMS: tuple[str, ...] = tuple(form for _, form, _ in _WAREHOUSES.values())

CONTENT_KINDS = ("datasource", "workbook")


@dataclass(frozen=True)
class TableKey:
    """A warehouse table named by its Prefect asset key.

    ``database``/``schema``/``name`` are what Tableau's Metadata API calls the table's
    ``Database.name``, ``DatabaseTable.schema`` and ``DatabaseTable.name``: for Athena the data catalog
    (e.g. ``awsdatacatalog``), the Glue database and the table; for Redshift, Snowflake and Postgres the
    database, the schema and the table; for BigQuery the project, the dataset and the table.
    """

    key: str  #: e.g. "athena://awsdatacatalog/sales/orders"
    warehouse: str  #: athena | redshift | snowflake | bigquery | postgres
    connection_type: str  #: Tableau Metadata API's ``connectionType`` of such a table's database
    database: str  #: Tableau's ``Database.name``
    schema: str  #: Athena/Glue database, Redshift/Snowflake/Postgres schema, BigQuery dataset
    name: str  #: the table's name

    @property
    def qualified_name(self) -> str:
        """``{database}.{schema}.{name}``, as the warehouse's SQL would name the table."""
        return f"{self.database}.{self.schema}.{self.name}"


def parse_table_key(key: str) -> TableKey:
    """Parse a warehouse table's asset key (one of ``TABLE_KEY_FORMS``) into a ``TableKey``.

    Raises ``ValueError`` naming the key and the accepted forms when the scheme is not a known
    warehouse, a part is missing or empty, or the key is not a valid Prefect asset key (no spaces,
    ``#``, ``?``, ``%``, quotes, brackets; at most 512 characters: ``prefect.types.names``).
    """
    if not isinstance(key, str):
        raise ValueError(f"table key {key!r} is not a string; {_forms_hint()}")
    scheme, sep, rest = key.partition("://")
    if not sep or scheme not in _WAREHOUSES:
        raise ValueError(
            f"table key {key!r}: {'unknown warehouse ' + repr(scheme) if sep else 'no <warehouse>:// scheme'}; "
            f"{_forms_hint()}"
        )
    connection_type, form, pattern = _WAREHOUSES[scheme]
    match = pattern.fullmatch(rest)
    if match is None:
        raise ValueError(f"table key {key!r} does not have the {scheme} form {form!r}; {_forms_hint()}")
    try:
        validate_valid_asset_key(key)
    except ValueError as exc:
        raise ValueError(f"table key {key!r} is not a valid Prefect asset key: {exc}") from None
    return TableKey(
        key=key,
        warehouse=scheme,
        connection_type=connection_type,
        database=match["database"],
        schema=match["schema"],
        name=match["name"],
    )


def _forms_hint() -> str:
    return "use one of: " + ", ".join(TABLE_KEY_FORMS) + " (docs/tableau-refresh.md, 'Asset keys')"


def tableau_site_key(server_url: str, site: str) -> str:
    """``tableau://<host>/<site>`` of a Tableau site: the host (and port) of ``server_url``, and the
    site's content URL (``site`` of the site's URL ``/#/site/<site>/``); the Default site of Tableau
    Server, whose content URL is empty, is ``default``."""
    host = urlsplit(server_url).netloc
    if not host:
        raise ValueError(
            f"Tableau server URL {server_url!r} has no host; use e.g. https://tableau.example.com"
        )
    return f"tableau://{host}/{site or 'default'}"


def content_key(server_url: str, site: str, kind: str, luid: str) -> str:
    """``tableau://<host>/<site>/<datasource|workbook>/<luid>``: a Tableau data source's or workbook's
    asset key. ``luid`` is the content's REST API id (the Metadata API's ``luid``). Raises
    ``ValueError`` for another kind or an empty luid."""
    if kind not in CONTENT_KINDS:
        raise ValueError(f"Tableau content kind {kind!r}: use one of {', '.join(CONTENT_KINDS)}")
    if not luid:
        raise ValueError(f"Tableau {kind} has no luid; its asset key needs one")
    return validate_valid_asset_key(f"{tableau_site_key(server_url, site)}/{kind}/{luid}")


# --- Materializations of warehouse tables, from Prefect's events API -------------------------------


def _materialization_filter(keys: Sequence[str], since: dt.datetime, until: dt.datetime, *, distinct: bool):
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    return EventFilter(
        occurred=EventOccurredFilter(since=since, until=until),
        event=EventNameFilter(name=[MATERIALIZED_EVENT]),
        resource=EventResourceFilter(id=list(keys), distinct=distinct),
    )


def _pages(client: Any, event_filter: Any, limit: int = 50) -> Iterable[Any]:
    """The events of ``event_filter`` (newest first), page after page (the API serves at most 50 a page)."""
    page = client.read_events(filter=event_filter, limit=limit)
    while True:
        yield from page.events
        if not page.next_page:
            return
        page = client.read_events_page(str(page.next_page))


def last_materializations(
    keys: Iterable[str], *, until: dt.datetime | None = None, client: Any = None
) -> dict[str, dt.datetime]:
    """Asset key → ``occurred`` (UTC) of its latest ``prefect.asset.materialization.succeeded`` event
    up to ``until`` (default now); keys never seen materialized (or whose events the server no longer
    keeps: ``PREFECT_SERVER_EVENTS_RETENTION_PERIOD``, default 7 days) are absent.

    One ``POST /events/filter`` with ``resource.distinct`` (the newest event per resource id).
    ``client``: a sync Prefect client (default: ``get_client(sync_client=True)``).
    """
    keys = sorted(set(keys))
    if not keys:
        return {}
    until = until or dt.datetime.now(dt.UTC)
    # Not the filter's default since (180 days back): a server may keep events longer than that.
    since = until - dt.timedelta(days=3650)
    with _client(client) as events:
        found = _pages(events, _materialization_filter(keys, since, until, distinct=True))
        return {event.resource.id: event.occurred.astimezone(dt.UTC) for event in found}


def materialization_burst(
    keys: Iterable[str],
    last: dt.datetime,
    debounce_seconds: float,
    *,
    lookback: dt.timedelta = BURST_LOOKBACK,
    client: Any = None,
) -> dict[str, dt.datetime]:
    """The materializations of ``keys`` that one debounced trigger firing stands for: asset key →
    ``occurred`` (UTC) of its latest materialization in the burst.

    The burst ends with the materialization the trigger reported (``last``, its ``occurred``) and goes
    back, newest first, while each materialization is within ``debounce_seconds`` of the next one:
    exactly the events whose windows the proactive trigger chained into one firing. Stops at a gap
    longer than that, or ``lookback`` before ``last``.
    """
    keys = sorted(set(keys))
    if not keys:
        return {}
    gap = dt.timedelta(seconds=debounce_seconds)
    burst: dict[str, dt.datetime] = {}
    previous = last
    with _client(client) as events:
        for event in _pages(events, _materialization_filter(keys, last - lookback, last, distinct=False)):
            occurred = event.occurred.astimezone(dt.UTC)
            if previous - occurred > gap:
                break
            burst.setdefault(event.resource.id, occurred)
            previous = occurred
    return burst


def _client(client: Any) -> AbstractContextManager[Any]:
    """A given client as is, else a new sync Prefect client for the ``with`` block."""
    if client is not None:
        return nullcontext(client)
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


# --- Tableau content as assets -----------------------------------------------------------------------


class ContentRefreshFailed(RuntimeError):
    """A content's refresh did not succeed: raised by its materializing task, so that Prefect emits
    ``prefect.asset.materialization.failed`` for its asset."""


@dataclass(frozen=True)
class ContentAsset:
    """A refreshed data source or workbook to record as a Prefect asset.

    ``tables``: the asset keys of its upstream tables (the asset's dependencies); ``status``: how its
    refresh ended ('succeeded' or why not); ``metadata``: the materialization event's payload.
    """

    kind: str
    luid: str
    name: str
    url: str
    owner: str
    tables: tuple[str, ...]
    status: str
    metadata: dict[str, Any]


def materialize_content(server_url: str, site: str, content: ContentAsset) -> Any:
    """Materialize ``content`` as the asset ``content_key(...)`` in the current flow run: a
    ``@materialize`` task run with its upstream tables as ``asset_deps`` and its name, Tableau URL and
    owner as ``AssetProperties``. Prefect emits ``prefect.asset.materialization.succeeded`` (payload:
    ``content.metadata``), or ``...failed`` when the refresh did not succeed (the task run fails with
    ``ContentRefreshFailed``; its state is returned, not raised).

    Returns:
        The task run's final state.
    """
    from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize
    from prefect.cache_policies import NO_CACHE

    asset = Asset(
        key=content_key(server_url, site, content.kind, content.luid),
        properties=AssetProperties(
            name=content.name,
            url=content.url or None,
            owners=[content.owner] if content.owner else None,
            description=f"Tableau {'data source' if content.kind == 'datasource' else 'workbook'}",
        ),
    )

    @materialize(
        asset,
        asset_deps=list(content.tables),
        by="tableau",
        name=f"tableau-{content.kind}-asset",
        task_run_name=f"{content.kind} {content.name}",
        cache_policy=NO_CACHE,
        retries=0,
    )
    def record_refresh() -> str:
        add_asset_metadata(asset, content.metadata)
        if content.status != "succeeded":
            raise ContentRefreshFailed(f"refresh of {content.kind} {content.name!r}: {content.status}")
        return content.status

    return record_refresh(return_state=True)
