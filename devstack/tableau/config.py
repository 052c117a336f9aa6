"""Seed configuration of the Tableau stand-in: one site, its credentials (PATs, users, connected apps),
projects and extract content (data sources with their connections and extract-refresh schedule,
workbooks with their views), its refresh rate limit and daily job capacity.

Loaded from a YAML or JSON file, or from a mapping; every key but the content lists has a default.
Ids are deterministic (uuid5), so tests and demos can name content by id without asking the server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "devstack:tableau")

ContentKind = Literal["datasource", "workbook"]
RefreshFrequency = Literal["Daily", "Weekly"]
RetryAfterUnit = Literal["seconds", "minutes", "hours"]

# Site roles a user may have (schema siteRoleType, less the server-only ones).
SITE_ROLES = (
    "Creator",
    "Explorer",
    "ExplorerCanPublish",
    "SiteAdministratorCreator",
    "SiteAdministratorExplorer",
    "Unlicensed",
    "Viewer",
)
# Views of a workbook that declares none, and the frequencies an extract-refresh schedule may have.
DEFAULT_VIEWS = ("Overview", "Details")
REFRESH_FREQUENCIES = ("Daily", "Weekly")

# The project Tableau creates with every site, and its description (Tableau Server, "Use Projects").
DEFAULT_PROJECT = "default"
DEFAULT_PROJECT_DESCRIPTION = "The default project that was automatically created by Tableau."


def _luid(*parts: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(parts)))


def site_id(content_url: str) -> str:
    """The site's id (a Tableau LUID) for a site content URL ("" is the default site)."""
    return _luid("site", content_url)


def project_id(name: str) -> str:
    """The id of the top-level project `name`."""
    return _luid("project", name)


def user_id(name: str) -> str:
    """The id of user `name`; a personal access token signs in as the user named like the token."""
    return _luid("user", name)


def content_id(kind: ContentKind, project: str, name: str) -> str:
    """The id of a data source or workbook, from its kind, project and name."""
    return _luid(kind, project, name)


def view_id(project: str, workbook: str, name: str) -> str:
    """The id of view `name` of a workbook."""
    return _luid("view", project, workbook, name)


def schedule_id(frequency: str) -> str:
    """The id of the site's shared extract-refresh schedule of that frequency."""
    return _luid("schedule", frequency)


def url_name(name: str) -> str:
    """A content URL segment as Tableau derives it from a name: letters, digits, '-' and '_' only."""
    return "".join(c for c in name if c.isalnum() or c in "-_")


@dataclass(frozen=True)
class RateLimit:
    """Limit on extract-refresh requests per site: at most `max_requests` per sliding window of
    `per_seconds` real seconds (0 = no limit); a refused request (Tableau REST API error 429000) is told
    to retry after `retry_after_seconds`, worded in `retry_after_unit` as Tableau Cloud words it
    ("Please retry after 29 minutes.", rounded up), with a Retry-After header (seconds) if
    `retry_after_header`."""

    max_requests: int = 0
    per_seconds: float = 60.0
    retry_after_seconds: int = 5
    retry_after_unit: RetryAfterUnit = "seconds"
    retry_after_header: bool = True

    def __post_init__(self) -> None:
        if self.retry_after_unit not in ("seconds", "minutes", "hours"):
            raise ValueError("retry_after_unit must be seconds, minutes or hours")


@dataclass(frozen=True)
class ConnectedAppSecret:
    """A secret of a connected app: its id (the JWT header's kid) and value (signs the JWT, HS256)."""

    id: str
    value: str


@dataclass(frozen=True)
class ConnectedApp:
    """A connected app with direct trust: its client id (the JWT's iss), secrets, and whether enabled."""

    client_id: str
    secrets: tuple[ConnectedAppSecret, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class Pat:
    """A personal access token: its name and secret."""

    name: str
    secret: str


@dataclass(frozen=True)
class User:
    """A site user who signs in with name and password (Query Users on Site lists them, and the users
    named like the personal access tokens)."""

    name: str
    password: str
    site_role: str = "SiteAdministratorCreator"
    full_name: str = ""
    email: str = ""

    def __post_init__(self) -> None:
        if self.site_role not in SITE_ROLES:
            raise ValueError(f"user {self.name!r}: site_role must be one of {SITE_ROLES}")


@dataclass(frozen=True)
class Connection:
    """A data source's connection to its database (Query Data Source Connections); no password."""

    type: str = "postgres"
    server_address: str = "postgres.example.internal"
    server_port: int = 5432
    username: str = "tableau_reader"
    embed_password: bool = True


@dataclass(frozen=True)
class ContentSpec:
    """A data source or workbook whose extract can be refreshed.

    `duration_seconds` (simulated seconds) is fixed, or a `[low, high]` range drawn uniformly from the
    seeded generator each time a job starts. A job ends with `finish_code` if set (3 emulates a job
    completed by Tableau Bridge), else 1 with `fail_notes` as its notes if those are set, else 0.

    Data sources only: `connections` (default: one Postgres connection), `refresh_schedule`, the
    frequency of its extract-refresh task (None: no task), and `has_extracts` (default true; false: a
    live connection, REST `hasExtracts="false"` and the Metadata API's `hasExtracts: false`). Workbooks
    only: `views`, the names of its views (default `DEFAULT_VIEWS`); which of a workbook's embedded
    data sources have extracts is the Metadata API's seed (`metadata_api.workbooks`).
    """

    kind: ContentKind
    project: str
    name: str
    description: str = ""
    duration_seconds: float | tuple[float, float] = 60.0
    fail_notes: str | None = None
    finish_code: int | None = None
    tags: tuple[str, ...] = ()
    connections: tuple[Connection, ...] | None = None
    refresh_schedule: RefreshFrequency | None = "Daily"
    views: tuple[str, ...] | None = None
    has_extracts: bool | None = None

    def __post_init__(self) -> None:
        if self.kind == "workbook" and self.has_extracts is not None:
            raise ValueError(
                f"workbook {self.name!r}: has_extracts is a data source's; a workbook's extracts are its "
                "embedded data sources' (metadata_api.workbooks.<project/name>.embedded)"
            )
        if self.kind == "datasource" and self.has_extracts is None:
            object.__setattr__(self, "has_extracts", True)
        if self.kind == "workbook" and self.connections is not None:
            raise ValueError(f"workbook {self.name!r}: only data sources declare connections")
        if self.kind == "datasource" and self.views is not None:
            raise ValueError(f"data source {self.name!r}: only workbooks have views")
        if self.refresh_schedule not in (None, *REFRESH_FREQUENCIES):
            raise ValueError(
                f"{self.kind} {self.name!r}: refresh_schedule must be one of {REFRESH_FREQUENCIES}"
            )
        if self.kind == "datasource" and self.connections is None:
            object.__setattr__(self, "connections", (Connection(),))
        if self.kind == "workbook" and self.views is None:
            object.__setattr__(self, "views", DEFAULT_VIEWS)
        if self.views is not None and len(set(self.views)) != len(self.views):
            raise ValueError(f"workbook {self.name!r}: duplicate view names {list(self.views)}")

    @property
    def id(self) -> str:
        return content_id(self.kind, self.project, self.name)

    @property
    def content_url(self) -> str:
        return url_name(self.name)

    @property
    def has_refresh_task(self) -> bool:
        """Data sources with a `refresh_schedule` have a scheduled extract-refresh task."""
        return self.kind == "datasource" and self.refresh_schedule is not None

    @property
    def refresh_task_id(self) -> str:
        return _luid("task", self.kind, self.project, self.name)

    def connection_id(self, index: int) -> str:
        return _luid("connection", self.project, self.name, str(index))

    def view_id(self, name: str) -> str:
        return view_id(self.project, self.name, name)

    @property
    def project_id(self) -> str:
        return project_id(self.project)

    @property
    def key(self) -> str:
        """`kind:project/name`, the key of this content in the audit."""
        return f"{self.kind}:{self.project}/{self.name}"


def instant_seconds(value: Any) -> float | None:
    """An ISO 8601 instant with its offset (or an aware ``datetime``, as YAML reads an unquoted
    timestamp) as unix seconds; None for anything else (no offset, not a date)."""
    if isinstance(value, dt.datetime):
        instant = value
    else:
        try:
            instant = dt.datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return instant.timestamp() if instant.tzinfo is not None else None


@dataclass(frozen=True)
class Config:
    """The stand-in's site; `projects` lists Tableau's "default" project first, then the declared
    ones, then those only the content names. Times: `time_scale` simulated seconds pass per real second,
    from `clock_start` (an ISO 8601 instant with its offset; default: the real time at start);
    `session_ttl_seconds` is the idle timeout in simulated seconds (Tableau Server default: 240 min).
    `daily_job_capacity_seconds`: Tableau Cloud's daily job capacity in simulated backgrounder seconds
    per UTC day (None: unlimited); a job that would start once it is spent is cancelled with Tableau's
    quota notes. `connected_apps` may sign in as any of `users` (the JWT's sub)."""

    site_content_url: str = "analytics"
    api_version: str = "3.29"
    product_version: str = "2026.2.0"
    seed: int = 42
    time_scale: float = 1.0
    clock_start: str | None = None
    session_ttl_seconds: float = 14400.0
    backgrounder_slots: int = 4
    refresh_rate_limit: RateLimit = field(default_factory=RateLimit)
    daily_job_capacity_seconds: float | None = None
    pats: tuple[Pat, ...] = (Pat("pat-1", "s3cret-1"),)
    users: tuple[User, ...] = (User("admin", "pw"),)
    connected_apps: tuple[ConnectedApp, ...] = ()
    projects: tuple[str, ...] = ()
    datasources: tuple[ContentSpec, ...] = ()
    workbooks: tuple[ContentSpec, ...] = ()
    # The Metadata API's settings and seeded lineage (devstack.tableau.metadata_api.MetadataApiConfig).
    metadata_api: Mapping[str, Any] | None = None

    def clock_start_seconds(self) -> float | None:
        """`clock_start` as unix seconds (None: the real time at start); `ValueError` names the field."""
        if self.clock_start is None:
            return None
        start = instant_seconds(self.clock_start)
        if start is None:
            raise ValueError(
                f"clock_start {self.clock_start!r}: give an ISO 8601 instant with its offset, e.g. "
                "2026-06-01T12:00:00+00:00"
            )
        return start

    def __post_init__(self) -> None:
        if self.time_scale <= 0 or self.session_ttl_seconds <= 0 or self.backgrounder_slots < 1:
            raise ValueError("time_scale and session_ttl_seconds must be > 0, backgrounder_slots >= 1")
        self.clock_start_seconds()  # raises for an invalid clock_start
        seen: set[str] = set()
        for spec in self.content:
            if spec.key in seen:
                raise ValueError(f"duplicate content {spec.key}: Tableau names are unique per project")
            seen.add(spec.key)
        # Every Tableau site has the "default" project; projects named only by content exist too.
        projects = dict.fromkeys([DEFAULT_PROJECT, *self.projects, *(spec.project for spec in self.content)])
        object.__setattr__(self, "projects", tuple(projects))

    @property
    def content(self) -> tuple[ContentSpec, ...]:
        return self.datasources + self.workbooks

    @property
    def site_name(self) -> str:
        """The site's name: its content URL, or "Default" for the default site (as Tableau names it)."""
        return self.site_content_url or "Default"

    @property
    def build_number(self) -> str:
        """The productVersion build attribute, shaped like Tableau's ("20262.26.0101.0000" for
        2026.2.x; the schema's pattern is [0-9]{5}.[0-9]{2}.[0-9]{4}.[0-9]{4})."""
        year, minor = self.product_version.split(".")[:2]
        return f"{year}{minor}.{year[-2:]}.0101.0000"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build a config from parsed YAML/JSON; unknown keys are errors (they are typos)."""
        values = _known(cls, data, "config")
        if "refresh_rate_limit" in values:
            values["refresh_rate_limit"] = RateLimit(
                **_known(RateLimit, values["refresh_rate_limit"], "rate limit")
            )
        if "pats" in values:
            values["pats"] = tuple(Pat(**_known(Pat, p, "pat")) for p in values["pats"])
        if "users" in values:
            values["users"] = tuple(User(**_known(User, u, "user")) for u in values["users"])
        if "connected_apps" in values:
            values["connected_apps"] = tuple(_connected_app(a) for a in values["connected_apps"])
        if isinstance(values.get("clock_start"), dt.datetime):  # YAML reads an unquoted timestamp as one
            values["clock_start"] = values["clock_start"].isoformat()
        if "projects" in values:
            values["projects"] = tuple(values["projects"])
        for kind in ("datasource", "workbook"):
            if f"{kind}s" in values:
                values[f"{kind}s"] = tuple(_content(kind, item) for item in values[f"{kind}s"])
        return cls(**values)


def _known(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; known: {sorted(names)}")
    return dict(data)


def _connected_app(item: Mapping[str, Any]) -> ConnectedApp:
    values = _known(ConnectedApp, item, "connected app")
    values["secrets"] = tuple(
        ConnectedAppSecret(**_known(ConnectedAppSecret, x, "connected app secret"))
        for x in values.get("secrets", ())
    )
    return ConnectedApp(**values)


def _content(kind: ContentKind, item: Mapping[str, Any]) -> ContentSpec:
    if "kind" in item:
        raise ValueError(f"{kind} {item.get('name')!r}: the list it is in gives its kind")
    values = _known(ContentSpec, item, kind)
    duration = values.get("duration_seconds", 60.0)
    if isinstance(duration, list | tuple):
        low, high = (float(x) for x in duration)
        if not 0 <= low <= high:
            raise ValueError(f"{kind} {item.get('name')!r}: duration range must be 0 <= low <= high")
        values["duration_seconds"] = (low, high)
    elif float(duration) >= 0:
        values["duration_seconds"] = float(duration)
    else:
        raise ValueError(f"{kind} {item.get('name')!r}: duration_seconds must be >= 0")
    if values.get("finish_code") not in (None, 0, 1, 3):
        raise ValueError(f"{kind} {item.get('name')!r}: finish_code must be 0, 1 or 3 (2 means cancelled)")
    values["tags"] = tuple(values.get("tags", ()))
    if values.get("connections") is not None:
        values["connections"] = tuple(
            Connection(**_known(Connection, c, "connection")) for c in values["connections"]
        )
    if values.get("views") is not None:
        values["views"] = tuple(values["views"])
    return ContentSpec(kind=kind, **values)


def load_config(source: str | Path | Mapping[str, Any]) -> Config:
    """Load the seed config from a mapping, or from a file (`.json` as JSON, anything else as YAML)."""
    if isinstance(source, Mapping):
        return Config.from_dict(source)
    path = Path(source)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return Config.from_dict(data or {})
