"""Response bodies of the stand-in, shaped by Tableau's REST API 3.29 schema (ts-api_3_29.xsd).

Element order follows the schema's sequences; times are simulated, as `YYYY-MM-DDTHH:MM:SSZ`.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

from devstack.tableau.config import (
    DEFAULT_PROJECT,
    DEFAULT_PROJECT_DESCRIPTION,
    Config,
    Connection,
    ContentKind,
    ContentSpec,
    project_id,
    schedule_id,
    url_name,
)
from devstack.tableau.errors import ApiError
from devstack.tableau.query import Page
from devstack.tableau.state import SCHEDULE_START_SECONDS, Job, RefreshTask, Session, SiteUser

NAMESPACE = "http://tableau.com/api"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
_SCHEMA_LOCATION = f"{NAMESPACE} https://help.tableau.com/samples/en-us/rest_api/ts-api_3_29.xsd"
CONTENT_TYPE = "application/xml;charset=utf-8"


def job_type(job: Job) -> str:
    """Query Jobs ``jobType`` of an extract refresh: full ``refresh_extracts``, incremental ``increment_extracts``."""
    return "increment_extracts" if job.incremental else "refresh_extracts"


@dataclass(frozen=True)
class SiteView:
    """What item elements need from the site: where it is browsed, who owns its content, and when
    the content was published (simulated unix seconds)."""

    base_url: str
    content_url: str
    owner_id: str
    published_at: float

    def webpage_url(self, kind: str, item_id: str) -> str:
        site = f"site/{self.content_url}/" if self.content_url else ""
        return f"{self.base_url}/#/{site}{kind}s/{item_id}"


def timestamp(simulated: float) -> str:
    """An xs:dateTime as Tableau writes it, e.g. 2026-03-05T22:05:32Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(simulated))


def _el(
    tag: str, attrs: dict[str, object] | None = None, *children: ET.Element, text: str | None = None
) -> ET.Element:
    element = ET.Element(tag, {k: str(v) for k, v in (attrs or {}).items() if v is not None})
    element.extend(children)
    element.text = text
    return element


def document(*children: ET.Element) -> bytes:
    """`<tsResponse>` with Tableau's namespace and schema location around `children`."""
    root = _el(
        "tsResponse",
        {"xmlns": NAMESPACE, "xmlns:xsi": _XSI, "xsi:schemaLocation": _SCHEMA_LOCATION},
        *children,
    )
    return b"<?xml version='1.0' encoding='UTF-8'?>" + ET.tostring(root, encoding="unicode").encode("utf-8")


def error(e: ApiError) -> bytes:
    return document(
        _el("error", {"code": e.code}, _el("summary", text=e.summary), _el("detail", text=e.detail))
    )


def server_info(config: Config) -> bytes:
    """Server Info. The schema types restApiVersion with the build-number pattern, but Tableau sends
    the API version ("3.29") there and tableauserverclient uses it as the URL version: so do we."""
    return document(
        _el(
            "serverInfo",
            None,
            _el("productVersion", {"build": config.build_number}, text=config.product_version),
            _el("prepConductorVersion", text=config.build_number),
            _el("restApiVersion", text=config.api_version),
            _el("platform", text="linux"),
            _el(
                "serverSettings",
                None,
                _el("oAuthEnabled", text="true"),
                _el("sheetImageMaxAgeFloor", text="1"),
                _el("sheetImageMaxAgeCeiling", text="60"),
                _el("offlineInteractionSupportedPhase", text="0"),
            ),
        )
    )


def credentials(session: Session, site_id: str, content_url: str) -> bytes:
    """Sign In: the credentials token with the site and the signed-in user."""
    return document(
        _el(
            "credentials",
            {"token": session.token},
            _el("site", {"id": site_id, "contentUrl": content_url}),
            _el("user", {"id": session.user_id}),
        )
    )


def _listing(page: Page, tag: str, items: Iterable[ET.Element]) -> bytes:
    pagination = _el(
        "pagination", {"pageNumber": page.number, "pageSize": page.size, "totalAvailable": page.total}
    )
    return document(pagination, _el(tag, None, *items))


def projects(names: Iterable[str], page: Page, site: SiteView) -> bytes:
    """Query Projects: top-level projects owned by the site's owner."""
    return _listing(page, "projects", (_project(name, site) for name in names))


def _project(name: str, site: SiteView) -> ET.Element:
    attrs = {
        "id": project_id(name),
        "name": name,
        "description": DEFAULT_PROJECT_DESCRIPTION if name == DEFAULT_PROJECT else "",
        "contentPermissions": "ManagedByOwner",
        "createdAt": timestamp(site.published_at),
        "updatedAt": timestamp(site.published_at),
        "topLevelProject": "true",
        "writeable": "true",
    }
    return _el("project", attrs, _el("owner", {"id": site.owner_id}))


def contents(kind: ContentKind, specs: Iterable[ContentSpec], page: Page, site: SiteView) -> bytes:
    """Query Data Sources / Query Workbooks."""
    return _listing(page, f"{kind}s", (_content(spec, site) for spec in specs))


def content(spec: ContentSpec, site: SiteView) -> bytes:
    """Query Data Source / Query Workbook."""
    return document(_content(spec, site))


def _content(spec: ContentSpec, site: SiteView) -> ET.Element:
    attrs: dict[str, object] = {
        "id": spec.id,
        "name": spec.name,
        "description": spec.description,
        "contentUrl": spec.content_url,
        "webpageUrl": site.webpage_url(spec.kind, spec.id),
        "size": 1,
        "createdAt": timestamp(site.published_at),
        "updatedAt": timestamp(site.published_at),
        "encryptExtracts": "false",
        "hasExtracts": "false" if spec.has_extracts is False else "true",
    }
    if spec.kind == "datasource":
        # An extract's type is "hyper"; a live data source's is its connection's.
        kind = "hyper" if spec.has_extracts or not spec.connections else spec.connections[0].type
        attrs |= {"type": kind, "isCertified": "false", "useRemoteQueryAgent": "false"}
    else:
        attrs |= {"showTabs": "false", "defaultViewId": spec.view_id(spec.views[0]) if spec.views else None}
    return _el(
        spec.kind,
        attrs,
        _el("project", {"id": spec.project_id, "name": spec.project}),
        _el("owner", {"id": site.owner_id}),
        _el("tags", None, *(_el("tag", {"label": label}) for label in spec.tags)),
    )


def site(config: Config, site_id: str) -> bytes:
    """Query Site: the site by id, name or content URL."""
    return document(_site(config, site_id))


def sites(config: Config, site_id: str, page: Page) -> bytes:
    """Query Sites: the sites the user can reach (the stand-in hosts one)."""
    return _listing(page, "sites", [_site(config, site_id)])


def _site(config: Config, site_id: str) -> ET.Element:
    attrs = {
        "id": site_id,
        "name": config.site_name,
        "contentUrl": config.site_content_url,
        "adminMode": "ContentAndUsers",
        "state": "Active",
        "disableSubscriptions": "false",
        "revisionHistoryEnabled": "true",
        "subscribeOthersEnabled": "true",
    }
    return _el("site", attrs)


def views(items: Iterable[tuple[ContentSpec, str]], page: Page, site: SiteView) -> bytes:
    """Query Views for Site, as Tableau sends it and tableauserverclient pages it: `<pagination>` then
    `<views>` (the 3.29 schema admits views only without pagination). A view's content URL is
    `<workbook content URL>/sheets/<view URL name>`."""
    return _listing(page, "views", (_view(workbook, name, site) for workbook, name in items))


def _view(workbook: ContentSpec, name: str, site: SiteView) -> ET.Element:
    attrs = {
        "id": workbook.view_id(name),
        "name": name,
        "contentUrl": f"{workbook.content_url}/sheets/{url_name(name)}",
        "createdAt": timestamp(site.published_at),
        "updatedAt": timestamp(site.published_at),
        "sheetType": "view",
        "viewUrlName": url_name(name),
    }
    return _el(
        "view",
        attrs,
        _el("workbook", {"id": workbook.id}),
        _el("owner", {"id": site.owner_id}),
        _el("project", {"id": workbook.project_id, "name": workbook.project}),
        _el("tags"),
    )


def connections(spec: ContentSpec) -> bytes:
    """Query Data Source Connections: type, server, port and user name; never a password."""
    items = (_connection(spec, index, c) for index, c in enumerate(spec.connections or ()))
    return document(_el("connections", None, *items))


def _connection(spec: ContentSpec, index: int, connection: Connection) -> ET.Element:
    attrs = {
        "id": spec.connection_id(index),
        "type": connection.type,
        "embedPassword": str(connection.embed_password).lower(),
        "serverAddress": connection.server_address,
        "serverPort": connection.server_port,
        "userName": connection.username,
    }
    return _el("connection", attrs)


def users(items: Iterable[SiteUser], page: Page) -> bytes:
    """Query Users on Site (tableauserverclient asks for `fields=_all_`): lastLogin once signed in."""
    return _listing(page, "users", (_user(user) for user in items))


def _user(user: SiteUser) -> ET.Element:
    attrs = {
        "id": user.id,
        "name": user.name,
        "fullName": user.full_name or None,
        "email": user.email or None,
        "siteRole": user.site_role,
        "authSetting": "ServerDefault",
        "lastLogin": None if user.last_login is None else timestamp(user.last_login),
        "externalAuthUserId": "",
        "language": "en",
        "locale": "en_US",
    }
    return _el("user", attrs)


def refresh_tasks(tasks: Iterable[RefreshTask], site: SiteView) -> bytes:
    """List Extract Refresh Tasks in Site: every task in one response, without pagination (the method
    takes no paging parameters). `type` is what Tableau Server sends (tableauserverclient's TaskItem
    maps RefreshExtractTask to extractRefresh); the schedule carries both Tableau Server's attributes
    (id, name, state, ...) and Tableau Cloud's frequencyDetails."""
    return document(_el("tasks", None, *(_el("task", None, _refresh_task(task, site)) for task in tasks)))


def _refresh_task(task: RefreshTask, site: SiteView) -> ET.Element:
    spec = task.content
    attrs = {
        "id": spec.refresh_task_id,
        "priority": 50,
        "consecutiveFailedCount": task.consecutive_failed_count,
        "type": "RefreshExtractTask",
        "incremental": "false",
    }
    return _el("extractRefresh", attrs, _schedule(task, site), _el(spec.kind, {"id": spec.id}))


_WEEK_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _schedule(task: RefreshTask, site: SiteView) -> ET.Element:
    """The task's schedule: one shared schedule per frequency, starting at 06:00 UTC every day
    ("Daily") or on Mondays ("Weekly"). Daily lists all seven week days: the schema's interval hours
    stop at 12, so Tableau Cloud's `hours="24"` would not validate."""
    frequency = task.content.refresh_schedule
    start = time.strftime("%H:%M:%S", time.gmtime(SCHEDULE_START_SECONDS))
    days = _WEEK_DAYS[:1] if frequency == "Weekly" else _WEEK_DAYS
    attrs = {
        "id": schedule_id(frequency),
        "name": f"{frequency} refresh at {start[:5]} UTC",
        "state": "Active",
        "priority": 50,
        "createdAt": timestamp(site.published_at),
        "updatedAt": timestamp(site.published_at),
        "type": "Extract",
        "frequency": frequency,
        "nextRunAt": timestamp(task.next_run_at),
        "executionOrder": "Parallel",
    }
    intervals = _el("intervals", None, *(_el("interval", {"weekDay": day}) for day in days))
    return _el("schedule", attrs, _el("frequencyDetails", {"start": start}, intervals))


def _extract_refresh_job(job: Job) -> ET.Element:
    """`<extractRefreshJob>`: notes (required, first) then the refreshed data source or workbook."""
    target = _el(job.content.kind, {"id": job.content.id, "name": job.content.name})
    return _el("extractRefreshJob", None, _el("notes", text=job.notes or None), target)


def refresh_job(job: Job) -> bytes:
    """Update Data Source Now / Update Workbook Now (202): the job just queued."""
    attrs = {
        "id": job.id,
        "mode": "Asynchronous",
        "type": "RefreshExtract",
        "createdAt": timestamp(job.created_at),
    }
    return document(_el("job", attrs, _extract_refresh_job(job)))


def job(job: Job) -> bytes:
    """Query Job: startedAt once started; completedAt and finishCode once finished."""
    attrs = {
        "id": job.id,
        "mode": "Asynchronous",
        "type": "RefreshExtract",
        "progress": job.progress,
        "createdAt": timestamp(job.created_at),
        "updatedAt": timestamp(job.updated_at),
        "startedAt": None if job.started_at is None else timestamp(job.started_at),
        "completedAt": None if job.completed_at is None else timestamp(job.completed_at),
        "finishCode": job.finish_code,
    }
    return document(_el("job", attrs, _extract_refresh_job(job)))


def background_jobs(jobs: Iterable[Job], page: Page) -> bytes:
    """Query Jobs, as Tableau sends it and tableauserverclient pages it: `<pagination>` then
    `<backgroundJobs>`. (The 3.29 schema admits backgroundJobs only without pagination.)"""
    return _listing(page, "backgroundJobs", (_background_job(j) for j in jobs))


def _background_job(job: Job) -> ET.Element:
    attrs = {
        "id": job.id,
        "status": job.status,
        "createdAt": timestamp(job.created_at),
        "startedAt": None if job.started_at is None else timestamp(job.started_at),
        "endedAt": None if job.completed_at is None else timestamp(job.completed_at),
        "priority": 50,
        "jobType": job_type(job),
        "title": job.title,
        "subtitle": job.subtitle,
    }
    return _el("backgroundJob", attrs)
