"""The HTTP front of the Tableau stand-in: routes REST API requests to the simulated site, served by
Starlette and uvicorn (`asgi_app`, `TableauStandIn`).

`/api/{version}/...` accepts any version (tableauserverclient starts at 2.4 and switches to the
server's restApiVersion). `/devstack/...` are the stand-in's own JSON endpoints, without auth:
`GET /devstack/audit`, `POST /devstack/sessions/expire`, `POST /devstack/reset`.

Each method names its JWT access scope (REST API reference, "JWT Access Scope" of each method; the
sources are given with the scope constants); a connected app's session gets 401002 for a method outside its scopes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route

from devstack.asgi_server import HTTP_SERVER_METHODS, AsgiServer, HttpServerMethods, server_header
from devstack.tableau import errors, query
from devstack.tableau import xml as bodies
from devstack.tableau.config import Config, ContentKind
from devstack.tableau.metadata_api import MetadataApi
from devstack.tableau.state import Job, TableauSite

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.02  # how often the backgrounder advances without requests
AUTH_HEADER = "X-Tableau-Auth"

_API = r"/api/[^/]+"
_SITE = _API + r"/sites/(?P<site>[^/]+)"
_CONTENT = _SITE + r"/(?P<kinds>datasources|workbooks)"

_CONTENT_FIELDS = {"name": lambda spec: spec.name, "projectName": lambda spec: spec.project}
_VIEW_FIELDS = {
    "name": lambda item: item[1],
    "projectName": lambda item: item[0].project,
    "workbookName": lambda item: item[0].name,
}
_USER_FIELDS = {"name": lambda user: user.name, "siteRole": lambda user: user.site_role}
# JWT access scope of each method. Content reads: tableau:content:read ("Access Scopes for Connected
# Apps": the content read scope enables the supported GET methods for content); Update Data Source /
# Workbook Now: tableau:tasks:run; Query Job(s): tableau:jobs:read (REST API 3.25, tableau/
# server-client-python #1581); Query Users on Site: tableau:users:read; List Extract Refresh Tasks:
# tableau:tasks:read (tableau/tableau-mcp, src/server/oauth/scopes.ts). Cancel Job: tableau:jobs:update
# and Query Site(s): tableau:content:read are stand-in choices following the scope naming.
CONTENT_READ, TASKS_RUN, TASKS_READ = "tableau:content:read", "tableau:tasks:run", "tableau:tasks:read"
JOBS_READ, JOBS_UPDATE, USERS_READ = "tableau:jobs:read", "tableau:jobs:update", "tableau:users:read"

_JOB_FIELDS: dict[str, Callable[[Job], str]] = {
    "status": lambda job: job.status,
    "jobType": bodies.job_type,
    "title": lambda job: job.title,
    "subtitle": lambda job: job.subtitle,
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    base_url: str

    @property
    def token(self) -> str | None:
        return self.headers.get(AUTH_HEADER)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


def _xml(body: bytes, status: int = 200) -> Response:
    return Response(status, body, bodies.CONTENT_TYPE)


def _json(data: Any) -> Response:
    return Response(200, json.dumps(data).encode("utf-8"), "application/json")


def _parse(body: bytes) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as e:
        raise errors.bad_request(f"The request body is not well-formed XML: {e}") from None


def _find(root: ET.Element, name: str) -> ET.Element | None:
    """The first element named `name`, with or without Tableau's namespace."""
    return next((el for el in root.iter() if el.tag.rpartition("}")[2] == name), None)


def _kind(kinds: str) -> ContentKind:
    return "datasource" if kinds == "datasources" else "workbook"


class Api:
    """The REST endpoints: each takes a `Request` and returns a `Response`; `ApiError`s become
    `<error>` bodies with their HTTP status."""

    def __init__(self, site: TableauSite) -> None:
        self.site = site
        self.metadata = MetadataApi(site)
        routes: list[tuple[str, str, Callable[..., Response]]] = [
            ("POST", r"/api/metadata/graphql", self.metadata_graphql),
            ("GET", _API + r"/serverInfo", self.server_info),
            ("POST", _API + r"/auth/signin", self.sign_in),
            ("POST", _API + r"/auth/signout", self.sign_out),
            ("GET", _API + r"/sites", self.sites),
            ("GET", _SITE, self.site_info),
            ("GET", _SITE + r"/projects", self.projects),
            ("GET", _SITE + r"/views", self.views),
            ("GET", _SITE + r"/users", self.users),
            ("GET", _SITE + r"/tasks/extractRefreshes", self.refresh_tasks),
            ("GET", _CONTENT, self.contents),
            ("GET", _CONTENT + r"/(?P<item>[^/]+)", self.content),
            ("GET", _SITE + r"/datasources/(?P<item>[^/]+)/connections", self.connections),
            ("POST", _CONTENT + r"/(?P<item>[^/]+)/refresh", self.refresh),
            ("GET", _SITE + r"/jobs", self.jobs),
            ("GET", _SITE + r"/jobs/(?P<job>[^/]+)", self.job),
            ("PUT", _SITE + r"/jobs/(?P<job>[^/]+)", self.cancel_job),
            ("GET", r"/devstack/audit", self.audit),
            ("POST", r"/devstack/sessions/expire", self.expire_sessions),
            ("POST", r"/devstack/reset", self.reset),
        ]
        self._routes = [(method, re.compile(pattern), endpoint) for method, pattern, endpoint in routes]

    def handle(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except errors.ApiError as e:
            return Response(e.status, bodies.error(e), bodies.CONTENT_TYPE, e.headers)
        except Exception:
            logger.exception("%s %s failed", request.method, request.path)
            e = errors.internal_error()
            return Response(e.status, bodies.error(e), bodies.CONTENT_TYPE)

    def _dispatch(self, request: Request) -> Response:
        path_known = False
        for method, pattern, endpoint in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            if method == request.method:
                return endpoint(request, **match.groupdict())
            path_known = True
        raise (
            errors.method_not_allowed(request.method) if path_known else errors.unknown_resource(request.path)
        )

    def _site_view(self, request: Request) -> bodies.SiteView:
        config = self.site.config
        return bodies.SiteView(
            request.base_url, config.site_content_url, self.site.owner_id, self.site.created_at
        )

    # -- Tableau REST API -----------------------------------------------------------------------

    def server_info(self, request: Request) -> Response:
        """Server Info (no auth)."""
        return _xml(bodies.server_info(self.site.config))

    def sign_in(self, request: Request) -> Response:
        """Sign In with a personal access token, a connected app's JWT (`<credentials jwt="...">`, as
        tableauserverclient's JWTAuth sends it) or a user name and password (other credentials: 401001)."""
        credentials = _find(_parse(request.body), "credentials")
        if credentials is None:
            raise errors.bad_request("The request body has no <credentials> element.")
        site = _find(credentials, "site")
        content_url = "" if site is None else site.get("contentUrl", "")
        if credentials.get("personalAccessTokenName") is not None:
            session = self.site.sign_in_with_pat(
                credentials.get("personalAccessTokenName", ""),
                credentials.get("personalAccessTokenSecret", ""),
                content_url,
            )
        elif credentials.get("jwt") is not None:
            session = self.site.sign_in_with_jwt(credentials.get("jwt", ""), content_url)
        elif credentials.get("name") is not None:
            session = self.site.sign_in_with_password(
                credentials.get("name", ""), credentials.get("password", ""), content_url
            )
        else:
            raise errors.sign_in_failed()
        return _xml(bodies.credentials(session, self.site.site_id, self.site.config.site_content_url))

    def sign_out(self, request: Request) -> Response:
        """Sign Out: 204, the session ends."""
        self.site.sign_out(request.token)
        return Response(204)

    def sites(self, request: Request) -> Response:
        """Query Sites: the one site the stand-in hosts."""
        self.site.authenticate(request.token, scope=CONTENT_READ)
        _, page = query.select([self.site.site_id], request.params, {})
        return _xml(bodies.sites(self.site.config, self.site.site_id, page))

    def site_info(self, request: Request, site: str) -> Response:
        """Query Site: by id, or by name or content URL with `key=name` / `key=contentUrl`; only the
        signed-in site (any other: 404000)."""
        self.site.authenticate(request.token, scope=CONTENT_READ)
        config = self.site.config
        key = request.params.get("key", "id")
        mine = {"id": self.site.site_id, "name": config.site_name, "contentUrl": config.site_content_url}
        if key not in mine:
            raise errors.bad_request(f"Invalid key '{key}'; use id, name or contentUrl.")
        if site != mine[key]:
            raise errors.site_not_found(site)
        return _xml(bodies.site(config, self.site.site_id))

    def projects(self, request: Request, site: str) -> Response:
        """Query Projects (filter: name)."""
        self.site.authenticate(request.token, site, CONTENT_READ)
        page_items, page = query.select(
            self.site.config.projects, request.params, {"name": lambda name: name}
        )
        return _xml(bodies.projects(page_items, page, self._site_view(request)))

    def views(self, request: Request, site: str) -> Response:
        """Query Views for Site (filters: name, projectName, workbookName)."""
        self.site.authenticate(request.token, site, CONTENT_READ)
        page_items, page = query.select(self.site.views(), request.params, _VIEW_FIELDS)
        return _xml(bodies.views(page_items, page, self._site_view(request)))

    def users(self, request: Request, site: str) -> Response:
        """Query Users on Site (filters: name, siteRole)."""
        self.site.authenticate(request.token, site, USERS_READ)
        page_items, page = query.select(self.site.users(), request.params, _USER_FIELDS)
        return _xml(bodies.users(page_items, page))

    def refresh_tasks(self, request: Request, site: str) -> Response:
        """List Extract Refresh Tasks in Site: all of them, one response (paging parameters ignored)."""
        self.site.authenticate(request.token, site, TASKS_READ)
        return _xml(bodies.refresh_tasks(self.site.refresh_tasks(), self._site_view(request)))

    def connections(self, request: Request, site: str, item: str) -> Response:
        """Query Data Source Connections."""
        self.site.authenticate(request.token, site, CONTENT_READ)
        return _xml(bodies.connections(self.site.content("datasource", item)))

    def contents(self, request: Request, site: str, kinds: str) -> Response:
        """Query Data Sources / Query Workbooks for Site (filters: name, projectName)."""
        self.site.authenticate(request.token, site, CONTENT_READ)
        kind = _kind(kinds)
        page_items, page = query.select(self.site.contents(kind), request.params, _CONTENT_FIELDS)
        return _xml(bodies.contents(kind, page_items, page, self._site_view(request)))

    def content(self, request: Request, site: str, kinds: str, item: str) -> Response:
        """Query Data Source / Query Workbook."""
        self.site.authenticate(request.token, site, CONTENT_READ)
        return _xml(bodies.content(self.site.content(_kind(kinds), item), self._site_view(request)))

    def refresh(self, request: Request, site: str, kinds: str, item: str) -> Response:
        """Update Data Source Now / Update Workbook Now: 202 with the queued job. From API 3.25 the
        body may ask for an incremental refresh: `<tsRequest><extractRefresh incremental="true"/>`
        (tableauserverclient's RequestFactory.Task.refresh_req); older clients send no body."""
        self.site.authenticate(request.token, site, TASKS_RUN)
        incremental = bool(request.body.strip()) and any(
            el.get("incremental", "").lower() == "true" for el in _parse(request.body).iter()
        )
        return _xml(bodies.refresh_job(self.site.refresh(_kind(kinds), item, incremental)), status=202)

    def jobs(self, request: Request, site: str) -> Response:
        """Query Jobs (filters: status, jobType, title, subtitle)."""
        self.site.authenticate(request.token, site, JOBS_READ)
        page_items, page = query.select(self.site.jobs(), request.params, _JOB_FIELDS)
        return _xml(bodies.background_jobs(page_items, page))

    def job(self, request: Request, site: str, job: str) -> Response:
        """Query Job."""
        self.site.authenticate(request.token, site, JOBS_READ)
        return _xml(bodies.job(self.site.job(job)))

    def cancel_job(self, request: Request, site: str, job: str) -> Response:
        """Cancel Job: 200 with an empty body."""
        self.site.authenticate(request.token, site, JOBS_UPDATE)
        self.site.cancel(job)
        return Response(200)

    def metadata_graphql(self, request: Request) -> Response:
        """The Metadata API (GraphQL; devstack.tableau.metadata_api)."""
        status, document = self.metadata.handle(request.token, request.body)
        return Response(status, json.dumps(document).encode("utf-8"), "application/json")

    # -- stand-in helpers -----------------------------------------------------------------------

    def audit(self, request: Request) -> Response:
        return _json(self.site.audit())

    def expire_sessions(self, request: Request) -> Response:
        return _json({"expired": self.site.expire_sessions()})

    def reset(self, request: Request) -> Response:
        self.site.reset()
        return Response(204)


def asgi_app(api: Api) -> Starlette:
    """The Starlette app of ``api``: every request, whatever its path, goes to ``Api.handle`` (which
    routes it and words its errors as Tableau does), run in the thread pool (the site's lock and the
    Metadata API's GraphQL block). The path and the query are read from the raw request target, as
    ``http.server`` gave them."""

    async def endpoint(request: StarletteRequest) -> StarletteResponse:
        body = await request.body()
        target = request.scope["raw_path"].decode("latin-1")
        if query_string := request.scope["query_string"]:
            target += "?" + query_string.decode("latin-1")
        url = urlsplit(target)
        host = request.headers.get("host") or "{}:{}".format(*request.scope["server"])
        api_request = Request(
            request.method, url.path, dict(parse_qsl(url.query)), request.headers, body, f"http://{host}"
        )
        response = await run_in_threadpool(api.handle, api_request)
        logger.debug('"%s %s" %s %d', request.method, target, response.status, len(response.body))
        return StarletteResponse(
            response.body, response.status, dict(response.headers), response.content_type
        )

    return Starlette(
        routes=[Route("/{path:path}", endpoint, methods=sorted(HTTP_SERVER_METHODS))],
        middleware=[Middleware(HttpServerMethods)],
    )


class TableauStandIn:
    """The stand-in as a server: `start()` binds `host:port` (port 0 picks a free one), serves it with
    uvicorn on a background thread (`devstack.asgi_server`) and advances the backgrounder every
    `TICK_SECONDS`; `url` is its base URL; `stop()` shuts it down. Also a context manager. `site` is
    the simulated site behind it."""

    def __init__(self, config: Config, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.site = TableauSite(config)
        self._address = (host, port)
        self._server: AsgiServer | None = None
        self._ticker: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        return self._server.url

    def start(self) -> TableauStandIn:
        if self._server is not None:
            raise RuntimeError("the stand-in is already running")
        app = asgi_app(Api(self.site))
        self._server = AsgiServer(
            app, *self._address, name="Tableau stand-in", server=server_header("TableauStandIn")
        ).start()
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick, name="tableau-standin-backgrounder", daemon=True)
        self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stopping.wait(TICK_SECONDS):
            self.site.tick()

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.stop()
        if self._ticker is not None:
            self._ticker.join()
        self._server = self._ticker = None

    def __enter__(self) -> TableauStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
