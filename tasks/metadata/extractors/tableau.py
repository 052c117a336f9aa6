"""``TableauExtractor``: the metadata of the site a Tableau PAT pool signs in to, as ``Extract``s.

It leases one PAT of the refresh pool for the whole run: the REST API's content, then the lineage of
the Metadata API with the same credential token. What it extracts and the API facts it relies on:
docs/metadata-collectors.md ("Tableau"), docs/metadata-lineage.md; the columns: docs/metadata-extracts.md.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import tableauserverclient as TSC
from tableauserverclient.server.endpoint.exceptions import TableauError

from blocks.loading import BlockNotFoundError
from tasks.common import to_utc
from tasks.metadata.extracts import Extract, ExtractorConnectionError
from tasks.metadata.lineage import tableau as lineage
from tasks.metadata.lineage.metadata_api import MetadataApiClient, MetadataApiError
from tasks.tableau.pat_pool import (
    PatLeaseTimeoutError,
    PatPoolError,
    lease_pat,
    load_pool,
)
from tasks.tableau.session import TableauAuthError, TableauSession, error_code

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PAGE_SIZE = 1000  # Tableau REST API, "Paginating Results"

SITE_COLUMNS = ("site_id", "name", "content_url", "state", "admin_mode")
PROJECT_COLUMNS = (
    "project_id",
    "name",
    "description",
    "parent_project_id",
    "top_level_project",
    "owner_id",
    "content_permissions",
)
WORKBOOK_COLUMNS = (
    "workbook_id",
    "name",
    "description",
    "content_url",
    "webpage_url",
    "project_id",
    "project_name",
    "owner_id",
    "default_view_id",
    "show_tabs",
    "tags",
    "created_at",
    "updated_at",
)
VIEW_COLUMNS = (
    "view_id",
    "name",
    "content_url",
    "sheet_type",
    "workbook_id",
    "workbook_name",
    "project_id",
    "project_name",
    "owner_id",
    "tags",
    "created_at",
    "updated_at",
)
DATASOURCE_COLUMNS = (
    "datasource_id",
    "name",
    "description",
    "content_url",
    "webpage_url",
    "datasource_type",
    "project_id",
    "project_name",
    "owner_id",
    "has_extracts",
    "certified",
    "certification_note",
    "tags",
    "created_at",
    "updated_at",
)
CONNECTION_COLUMNS = (
    "connection_id",
    "datasource_id",
    "datasource_name",
    "connection_type",
    "server_address",
    "server_port",
    "username",
    "embed_password",
)
USER_COLUMNS = ("user_id", "name", "full_name", "email", "site_role", "auth_setting", "last_login")
TASK_COLUMNS = (
    "task_id",
    "target_type",
    "target_id",
    "target_name",
    "priority",
    "consecutive_failed_count",
    "schedule_id",
    "schedule_name",
    "schedule_state",
    "schedule_frequency",
    "schedule_interval",
    "schedule_start_time",
    "schedule_next_run_at",
)


def _port(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


class TableauExtractor:
    """Metadata of one Tableau site, read through a PAT leased from a Tableau PAT Pool block.

    Args:
        source: the collector's source name (e.g. ``tableau-prod``), for messages and logs.
        pool_block: name of the ``TableauPatPool`` block; its site is the site extracted.
        page_size: items per page of the paginated REST methods, 1 to 1000.
        lineage: also read lineage through the Metadata API (``tasks.metadata.lineage.tableau``).
        metadata_page_size: ``first`` of the Metadata API pages (halved on NODE_LIMIT_EXCEEDED).

    After ``run``: ``problems`` lists what the Metadata API could not answer (a partial result: the run
    lands nothing), ``lineage_counts`` the lineage figures.
    """

    #: Metadata API retries of TIME_LIMIT_EXCEEDED/RATE_EXCEEDED and the first back-off (seconds).
    metadata_retries = 5
    metadata_backoff_seconds = 2.0

    def __init__(
        self,
        source: str,
        pool_block: str,
        page_size: int = 100,
        lineage: bool = True,
        metadata_page_size: int = 100,
        job_namespace: str | None = None,
    ) -> None:
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE} (Tableau's limit), got {page_size}")
        self.source = source
        self.pool_block = pool_block
        self.page_size = page_size
        self.lineage = lineage
        self.metadata_page_size = metadata_page_size
        self.job_namespace = job_namespace or source  # OpenLineage: the scheduler's; default the source
        self.problems: list[str] = []
        self.lineage_counts: dict[str, int] = {}

    def test_connection(self) -> None:
        """Lease a PAT, sign in, read the site and one page of its users, sign out, release.

        Raises:
            ExtractorConnectionError: naming the missing block, the pool's limits, the busy pool, the
                refused PAT (401001), the unreachable server or the missing permission.
        """
        described = f"Tableau collector {self.source!r} (PAT pool block {self.pool_block!r})"
        try:
            pool, pats = load_pool(self.pool_block, needed_by=f"Tableau collector {self.source!r}")
        except BlockNotFoundError as exc:
            raise ExtractorConnectionError(f"{described}: {exc}") from None
        site = f"site {pool.site.site_content_url!r} of {pool.site.server_url}"
        try:
            with (
                lease_pat(pool, pool_block_name=self.pool_block) as lease,
                TableauSession(pool.site, pats[lease.pat_block_name], lease.pat_block_name) as session,
            ):
                server = session.server
                session.call(server.sites.get_by_id, server.site_id)
                session.call(server.users.get, TSC.RequestOptions(pagesize=1))
                if self.lineage:
                    self._metadata_client(session).connection("workbooksConnection", "id")
        except MetadataApiError as exc:
            raise ExtractorConnectionError(f"{described}, {site}: {exc}") from None
        except (PatPoolError, PatLeaseTimeoutError, TableauAuthError) as exc:
            raise ExtractorConnectionError(f"{described}, {site}: {exc}") from None
        except requests.RequestException as exc:
            raise ExtractorConnectionError(
                f"{described}: cannot reach {site}: {exc}. Check the site's server_url in the PAT pool block."
            ) from None
        except TableauError as exc:
            hint = (
                " The PAT's user needs a site administrator role (Site Administrator Explorer is enough) "
                "to read the site's users and every extract-refresh task."
                if str(error_code(exc)).startswith("403")
                else ""
            )
            raise ExtractorConnectionError(f"{described}, {site}: Tableau answered {exc}.{hint}") from None

    def run(self, start_hwm: dt.datetime, end_hwm: dt.datetime) -> list[Extract]:
        """Snapshot every entity of the site (the window is not used; see the module docstring).

        Returns:
            One ``Extract`` per entity, in the module docstring's order, rows as lists.

        Raises:
            BlockNotFoundError, PatPoolError, PatLeaseTimeoutError: from loading and leasing the PAT pool.
            TableauAuthError: the PAT was refused (401001) or is used outside the pool.
            MetadataApiError: the Metadata API is disabled (the message says how to enable it) or refused.
            tableauserverclient errors (``TableauError``), requests.RequestException: any other failure.
        """
        pool, pats = load_pool(self.pool_block, needed_by=f"Tableau collector {self.source!r}")
        self.problems = []
        with (
            lease_pat(pool, pool_block_name=self.pool_block) as lease,
            TableauSession(pool.site, pats[lease.pat_block_name], lease.pat_block_name) as session,
        ):
            extracts = self._extract(session)
            if self.lineage:
                found = lineage.collect(
                    self._metadata_client(session),
                    pool.site.server_url,
                    pool.site.site_content_url,
                    end_hwm,
                    job_namespace=self.job_namespace,
                )
                extracts += found.extracts
                self.problems = found.problems
                self.lineage_counts = found.counts
            sign_ins = session.sign_ins
        logger.info(
            "Tableau collector %r: %s with PAT %r (%d sign-in(s), lease waited %.1f s)",
            self.source,
            ", ".join(f"{len(e.rows)} {e.entity}" for e in extracts),
            lease.pat_block_name,
            sign_ins,
            lease.wait_seconds,
        )
        return extracts

    def _metadata_client(self, session: TableauSession) -> MetadataApiClient:
        return MetadataApiClient(
            session,
            page_size=self.metadata_page_size,
            retries=self.metadata_retries,
            backoff_seconds=self.metadata_backoff_seconds,
        )

    # -- extraction -----------------------------------------------------------------------------

    def _all(self, session: TableauSession, get: Callable[..., tuple[list[T], Any]]) -> list[T]:
        """Every item of a list method, page by page; each page through ``session.call`` (401002)."""
        pager = TSC.Pager(
            lambda options: session.call(get, options), TSC.RequestOptions(pagesize=self.page_size)
        )
        return list(pager)

    def _extract(self, session: TableauSession) -> list[Extract]:
        server = session.server
        site = session.call(server.sites.get_by_id, server.site_id)
        projects = self._all(session, server.projects.get)
        workbooks = self._all(session, server.workbooks.get)
        views = self._all(session, server.views.get)
        datasources = self._all(session, server.datasources.get)
        connections = [(ds, c) for ds in datasources for c in session.call(self._connections, server, ds)]
        users = self._all(session, server.users.get)
        tasks = self._all(session, server.tasks.get)

        project_names = {p.id: p.name for p in projects}
        workbooks_by_id = {w.id: w for w in workbooks}
        targets = {("workbook", w.id): w.name for w in workbooks} | {
            ("datasource", d.id): d.name for d in datasources
        }
        return [
            Extract(
                "sites", SITE_COLUMNS, [(site.id, site.name, site.content_url, site.state, site.admin_mode)]
            ),
            Extract("projects", PROJECT_COLUMNS, [_project_row(p) for p in projects]),
            Extract("workbooks", WORKBOOK_COLUMNS, [_content_row(w, WORKBOOK_COLUMNS) for w in workbooks]),
            Extract("views", VIEW_COLUMNS, [_view_row(v, workbooks_by_id, project_names) for v in views]),
            Extract(
                "datasources", DATASOURCE_COLUMNS, [_content_row(d, DATASOURCE_COLUMNS) for d in datasources]
            ),
            Extract(
                "datasource_connections", CONNECTION_COLUMNS, [_connection_row(d, c) for d, c in connections]
            ),
            Extract("users", USER_COLUMNS, [_user_row(u) for u in users]),
            Extract("extract_refresh_tasks", TASK_COLUMNS, [_task_row(t, targets) for t in tasks]),
        ]

    @staticmethod
    def _connections(server: TSC.Server, datasource: TSC.DatasourceItem) -> list[TSC.ConnectionItem]:
        """Query Data Source Connections (tableauserverclient fetches when ``connections`` is read)."""
        server.datasources.populate_connections(datasource)
        return list(datasource.connections)


def _project_row(p: TSC.ProjectItem) -> tuple[Any, ...]:
    return (p.id, p.name, p.description, p.parent_id, p.top_level_project, p.owner_id, p.content_permissions)


def _content_row(item: TSC.WorkbookItem | TSC.DatasourceItem, columns: tuple[str, ...]) -> tuple[Any, ...]:
    """A workbook's or a data source's row of the extract ``columns``: the first column is the item's
    ``id``, ``tags`` its tags sorted, ``*_at`` its times in UTC, every other its attribute of that name."""

    def value(column: str) -> Any:
        if column == columns[0]:
            return item.id
        if column == "tags":
            return sorted(item.tags)
        if column.endswith("_at"):
            return to_utc(getattr(item, column))
        return getattr(item, column)

    return tuple(value(column) for column in columns)


def _view_row(
    v: TSC.ViewItem, workbooks: dict[str, TSC.WorkbookItem], project_names: dict[str, str]
) -> tuple[Any, ...]:
    workbook = workbooks.get(v.workbook_id)
    project_id = v.project_id or (workbook.project_id if workbook else None)
    return (
        v.id,
        v.name,
        v.content_url,
        v.sheet_type,
        v.workbook_id,
        workbook.name if workbook else None,
        project_id,
        project_names.get(project_id),
        v.owner_id,
        sorted(v.tags),
        to_utc(v.created_at),
        to_utc(v.updated_at),
    )


def _connection_row(d: TSC.DatasourceItem, c: TSC.ConnectionItem) -> tuple[Any, ...]:
    return (
        c.id,
        d.id,
        d.name,
        c.connection_type,
        c.server_address,
        _port(c.server_port),
        c.username,
        c.embed_password,
    )


def _user_row(u: TSC.UserItem) -> tuple[Any, ...]:
    return (u.id, u.name, u.fullname, u.email, u.site_role, u.auth_setting, to_utc(u.last_login))


def _task_row(t: TSC.TaskItem, targets: dict[tuple[str, str], str]) -> tuple[Any, ...]:
    target_type, target_id = (t.target.type, t.target.id) if t.target else (None, None)
    schedule = t.schedule_item
    interval = schedule.interval_item if schedule else None
    return (
        t.id,
        target_type,
        target_id,
        targets.get((target_type, target_id)),
        t.priority if t.priority >= 0 else None,  # tableauserverclient reads a missing priority as -1
        t.consecutive_failed_count,
        schedule.id if schedule else None,
        schedule.name if schedule else None,
        schedule.state if schedule else None,
        getattr(interval, "_frequency", None),  # the interval class's frequency (Daily, Weekly, ...)
        list(getattr(interval, "interval", ()) or ()) if interval else None,
        interval.start_time.isoformat() if interval else None,
        to_utc(schedule.next_run_at) if schedule else None,
    )
