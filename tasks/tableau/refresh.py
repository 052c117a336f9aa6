"""Extract refreshes of Tableau data sources and workbooks: resolve, trigger, wait.

Tableau facts (REST API reference, "Update Data Source Now" / "Update Workbook Now", "Query Job",
"Cancel Job", "Query Jobs"):
- ``POST .../datasources/{id}/refresh`` (or ``workbooks``) answers 202 with a job; an incremental
  refresh can be requested from API 3.25.
- 409093: a refresh of that content is already queued or running (tableauserverclient logs it and
  returns ``None``). 429000: too many refresh requests; Tableau Cloud words the wait in the unit it
  chooses, e.g. "Too many requests for 'api.rest.refresh_extracts'. Please retry after 29 minutes."
  (tableau/server-client-python #952); a ``Retry-After`` header (seconds or an HTTP date), when
  present, is preferred (both read by ``pipelines.retries.retry_after_seconds``).
- ``GET .../jobs/{id}``: ``finishCode`` absent while running; 0 success, 1 failed (reason in
  notes), 2 cancelled, 3 completed (Tableau Bridge). ``PUT .../jobs/{id}`` cancels.
- Tableau Cloud cancels the jobs it cannot run once the site's daily job capacity is spent, with the
  notes "No more non-interactive quota remaining for your site" (Tableau Knowledge Base, "Extract
  Refreshes Are Canceled ... Extract refresh capacity at 100%"); the capacity resets at 24:00 UTC.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from typing import Literal

import tableauserverclient as TSC
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field
from requests import RequestException
from tableauserverclient.server.endpoint.exceptions import ServerResponseError, TableauError

from blocks import run_logger
from pipelines.retries import retry_after_seconds
from tasks.tableau.assets import TableKey
from tasks.tableau.lineage import DownstreamContent, LineageResolution, resolve_downstream
from tasks.tableau.session import TableauAuthError, TableauSession, error_code


def _log() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task run (its lines reach the run's logs in the Prefect UI),
    else this module's."""
    return run_logger(__name__)


ContentKind = Literal["datasource", "workbook"]
TOO_MANY_REQUESTS = "429000"
SUCCESS_FINISH_CODES = frozenset({0, 3})  # 3: completed by Tableau Bridge
FINISH_CODE_NAMES = {0: "succeeded", 1: "failed", 2: "cancelled", 3: "succeeded"}
# Query Jobs: backgroundJob subtitle by content kind, and the statuses of a job still in flight.
_JOB_SUBTITLE = {"datasource": "Data Source", "workbook": "Workbook"}
_IN_FLIGHT = ["Pending", "InProgress"]
_REFRESH_JOB_TYPES = ["refresh_extracts", "increment_extracts"]
# Characters a REST API filter value cannot carry (tableauserverclient quotes none of them).
_UNFILTERABLE = re.compile(r"[,&:\[\]]")
# Notes of a job Tableau Cloud cancelled because the site's daily job capacity is spent.
_QUOTA_NOTES = re.compile(r"no more non-interactive quota", re.IGNORECASE)
QUOTA_EXHAUSTED = "quota exhausted"
THROTTLED = "throttled"
#: A content ``refresh: stale_only`` skipped: no upstream table materialized since its last extract refresh.
UP_TO_DATE = "up to date"


class DomainRefreshError(RuntimeError):
    """One or more refreshes of a domain did not succeed.

    Attributes:
        summary: the run's summary (as ``refresh_domain`` returns on success), or None.
    """

    def __init__(self, message: str, summary: DomainRefreshSummary | None = None):
        super().__init__(message)
        self.summary = summary

    def __reduce__(self):  # keep the summary when Prefect persists the exception as the run's result
        return (type(self), (str(self), self.summary))


class ContentResolutionError(LookupError):
    """Configured content is missing or ambiguous on the Tableau site."""


class ThrottledError(RuntimeError):
    """Tableau answered 429000 with a wait that would pass the domain's deadline."""


@dataclass(frozen=True)
class ResolvedContent:
    """A content's Tableau id, and whether its name is unique among the site's content of its kind;
    its web page (REST ``webpageUrl``); and how the domain came to it: ``listed`` in the
    configuration, and/or downstream of ``tables`` (asset keys of the domain's tables it is built on) in
    Tableau's lineage, with its extract's ``extract_last_refresh`` (Metadata API
    ``extractLastRefreshTime``, UTC) and ``owner`` (user name). ``changed``: in an asset-triggered run,
    those of its tables that changed (what brought it in); None in a whole-domain run."""

    id: str
    project: str
    name_is_unique: bool
    webpage_url: str = ""
    listed: bool = True
    tables: tuple[str, ...] = ()
    extract_last_refresh: datetime | None = None
    owner: str = ""
    changed: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ContentRef:
    """A data source or workbook named as a domain's configuration does: by name, and by project
    (``None``: any project, as long as only one holds content of that name)."""

    kind: ContentKind
    project: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.project or '*'}/{self.name}"


@dataclass
class RefreshJob:
    """One extract refresh this run triggered or adopted, and what became of it.

    ``status`` is 'running' until the job ends, then 'succeeded', 'failed', 'cancelled',
    'quota exhausted' (cancelled by Tableau Cloud: the site's daily job capacity is spent), 'timed out'
    (cancelled by this run at the domain's timeout) or 'throttled' (never started: Tableau's 429000
    wait would have passed the deadline). Times are as Tableau reports them.
    """

    content: ContentRef
    content_id: str
    project: str = ""
    job_id: str | None = None
    adopted: bool = False
    status: str = "running"
    finish_code: int | None = None
    notes: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    poll_interval: float = dataclass_field(default=0.0, repr=False)
    next_poll: float = dataclass_field(default=0.0, repr=False)
    poll_errors: int = dataclass_field(default=0, repr=False)

    @property
    def succeeded(self) -> bool:
        return self.finish_code in SUCCESS_FINISH_CODES

    @property
    def duration_seconds(self) -> float | None:
        """Seconds from start (or creation, if never started) to completion, once finished."""
        begin = self.started_at or self.created_at
        if begin and self.completed_at:
            return (self.completed_at - begin).total_seconds()
        return None


class RefreshRow(BaseModel):
    """One content's refresh as a domain run reports it (a row of its table artifact).

    Times are Tableau's (UTC); ``duration_seconds`` runs from start (or queueing, if never started)
    to completion. ``status``: 'succeeded', 'failed', 'cancelled', 'quota exhausted', 'timed out',
    'throttled' or 'running'.
    """

    content: str
    kind: ContentKind
    project: str
    content_id: str = ""
    url: str = ""
    owner: str = ""
    listed: bool = True
    tables: list[str] = Field(default_factory=list)
    changed_tables: list[str] | None = None
    job_id: str = ""
    adopted: bool = False
    status: str
    finish_code: int | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    notes: str = ""

    @property
    def brought_in_by(self) -> str:
        """What put the content in the run: ``list`` (the configuration) and/or its upstream tables (in an
        asset-triggered run, those that changed)."""
        tables = self.tables if self.changed_tables is None else self.changed_tables
        return ", ".join((["list"] if self.listed else []) + tables)

    @classmethod
    def of(cls, refresh: RefreshJob, resolved: ResolvedContent | None = None) -> RefreshRow:
        return cls(
            content=refresh.content.name,
            kind=refresh.content.kind,
            project=refresh.project,
            content_id=refresh.content_id,
            url=resolved.webpage_url if resolved else "",
            owner=resolved.owner if resolved else "",
            listed=resolved.listed if resolved else True,
            tables=list(resolved.tables) if resolved else [],
            changed_tables=list(resolved.changed) if resolved and resolved.changed is not None else None,
            job_id=refresh.job_id or "",
            adopted=refresh.adopted,
            status=refresh.status,
            finish_code=refresh.finish_code,
            queued_at=refresh.created_at,
            started_at=refresh.started_at,
            finished_at=refresh.completed_at,
            duration_seconds=refresh.duration_seconds,
            notes=refresh.notes,
        )


class DomainRefreshSummary(BaseModel):
    """What a domain run did: the PAT it held (or the connected app it signed in with), how long it
    waited for the PAT or the refresh-capacity slot (seconds), its sign-ins, and one row per content.
    For a domain with ``upstream_tables``: the tables the run resolved lineage for (``changed_tables``:
    those an asset-triggered run was told changed, None for a whole-domain run), those with no extract
    downstream, and the Metadata API requests it took. ``refresh_domain`` returns it; a
    ``DomainRefreshError`` carries it."""

    domain: str
    pat: str = ""
    connected_app: str = ""
    lease_wait_seconds: float
    sign_ins: int
    refreshes: list[RefreshRow]
    changed_tables: list[str] | None = None
    tables_without_extracts: list[str] = Field(default_factory=list)
    lineage_requests: int = 0

    @property
    def failed(self) -> list[RefreshRow]:
        """The rows whose refresh did not succeed (a content skipped as up to date did not fail)."""
        return [row for row in self.refreshes if row.status not in ("succeeded", UP_TO_DATE)]

    @property
    def up_to_date(self) -> list[RefreshRow]:
        """The rows ``refresh: stale_only`` skipped."""
        return [row for row in self.refreshes if row.status == UP_TO_DATE]


class PollPolicy(BaseModel):
    """Polling and back-off settings of the refresh protocol."""

    model_config = ConfigDict(frozen=True)

    initial_interval: float = Field(
        default=5.0, gt=0, description="First poll interval of a job, in seconds."
    )
    max_interval: float = Field(default=60.0, gt=0, description="Longest poll interval, in seconds.")
    backoff: float = Field(
        default=1.5, ge=1, description="Factor applied to a job's interval after each poll."
    )
    rate_limit_default_wait: float = Field(
        default=30.0,
        gt=0,
        description="Wait after a 429000 with neither a Retry-After header nor a hint in its message, in seconds.",
    )
    max_poll_errors: int = Field(
        default=5, ge=1, description="Consecutive failed polls after which a job counts as failed."
    )


def _endpoint(server: TSC.Server, kind: ContentKind):
    return server.datasources if kind == "datasource" else server.workbooks


def resolve_content(session: TableauSession, refs: Iterable[ContentRef]) -> dict[ContentRef, ResolvedContent]:
    """Find the id of each data source / workbook by (project, name).

    Returns:
        content ref -> its Tableau id (LUID) and whether its name is unique on the site.

    Raises:
        ContentResolutionError: one message for every missing or ambiguous name, with the
            candidates Tableau has under that name (in other projects) or in that project.
    """
    resolved: dict[ContentRef, ResolvedContent] = {}
    problems: list[str] = []
    for ref in dict.fromkeys(refs):
        endpoint = _endpoint(session.server, ref.kind)
        same_name = session.call(_list_named, endpoint, ref.name)
        matches = [item for item in same_name if ref.project in (None, item.project_name)]
        if len(matches) == 1:
            resolved[ref] = ResolvedContent(
                id=matches[0].id,
                project=matches[0].project_name,
                name_is_unique=len(same_name) == 1,
                webpage_url=getattr(matches[0], "webpage_url", None) or "",
            )
        elif not matches:
            elsewhere = sorted(f"{item.project_name}/{item.name}" for item in same_name)
            hint = f"; found under that name: {elsewhere}" if elsewhere else "; no content has that name"
            problems.append(f"{ref} not found{hint}")
        else:
            found = sorted(f"{item.project_name}/{item.name} (id {item.id})" for item in matches)
            fix = "name its project" if ref.project is None else "rename one of the projects"
            problems.append(
                f"{ref} is ambiguous: {len(matches)} candidates {found}; {fix} in the domain configuration"
            )
    if problems:
        raise ContentResolutionError("; ".join(problems))
    return resolved


def resolve_lineage_content(
    session: TableauSession, downstream: Iterable[DownstreamContent], changed: Iterable[str] | None = None
) -> dict[ContentRef, ResolvedContent]:
    """The REST API view of content Tableau's lineage found (``tasks.tableau.lineage``): its page, its
    owner, and whether its name is unique on the site (for adopting a refresh in flight, 409093), by
    listing the content of its kind and name and taking the one with its LUID. With ``changed`` (asset
    keys; an asset-triggered run), only the content downstream of one of them.

    A content the REST API does not have (the Metadata API indexes the site asynchronously, so it may
    still list content just deleted) is left out with a warning.
    """
    resolved: dict[ContentRef, ResolvedContent] = {}
    changed = None if changed is None else set(changed)
    for item in downstream:
        if changed is not None and not changed & set(item.tables):
            continue
        ref = ContentRef(item.kind, item.project, item.name)  # type: ignore[arg-type]
        same_name = session.call(_list_named, _endpoint(session.server, ref.kind), item.name)
        match = next((c for c in same_name if c.id == item.luid), None)
        if match is None:
            _log().warning(
                "Lineage names %s (id %s), which the REST API does not have (deleted since the Metadata "
                "API indexed it?): left out",
                ref,
                item.luid,
            )
            continue
        resolved[ContentRef(item.kind, match.project_name, item.name)] = ResolvedContent(  # type: ignore[arg-type]
            id=item.luid,
            project=match.project_name,
            name_is_unique=len(same_name) == 1,
            webpage_url=getattr(match, "webpage_url", None) or "",
            listed=False,
            tables=tuple(item.tables),
            extract_last_refresh=item.extract_last_refresh,
            owner=item.owner or "",
            changed=None if changed is None else tuple(t for t in item.tables if t in changed),
        )
    return resolved


def merge_content(
    listed: dict[ContentRef, ResolvedContent], lineage: dict[ContentRef, ResolvedContent]
) -> dict[ContentRef, ResolvedContent]:
    """The listed content, then the lineage's, one entry per Tableau id (LUID): a listed content that
    lineage also found keeps its configured name and takes the lineage's tables, refresh time and owner."""
    by_id = {content.id: (ref, content) for ref, content in lineage.items()}
    merged: dict[ContentRef, ResolvedContent] = {}
    for ref, content in listed.items():
        found = by_id.pop(content.id, None)
        if found is not None:
            content = dataclasses.replace(
                found[1], listed=True, webpage_url=content.webpage_url or found[1].webpage_url
            )
        merged[ref] = content
    merged.update(by_id.values())
    return merged


def stale_only(
    resolved: dict[ContentRef, ResolvedContent], last_materialized: dict[str, datetime]
) -> tuple[dict[ContentRef, ResolvedContent], list[RefreshJob]]:
    """Split content into what to refresh and what is up to date (``refresh: stale_only``).

    A content is up to date when it has a last extract refresh time (Metadata API
    ``extractLastRefreshTime``) and every one of its upstream tables has a known last materialization
    (``last_materialized``: asset key → the ``occurred`` time of its latest
    ``prefect.asset.materialization.succeeded`` event), all of them before that refresh. Anything
    unknown (no tables, a table never seen materialized, no refresh time) is refreshed: the safe side.

    Returns:
        (content to refresh, one ``RefreshJob`` with status 'up to date' per content skipped).
    """
    refresh: dict[ContentRef, ResolvedContent] = {}
    skipped: list[RefreshJob] = []
    for ref, content in resolved.items():
        times = [last_materialized.get(table) for table in content.tables]
        refreshed = content.extract_last_refresh
        if not times or refreshed is None or any(t is None for t in times):
            refresh[ref] = content
            continue
        latest = max(t for t in times if t is not None)
        if latest >= refreshed:
            refresh[ref] = content
            continue
        note = (
            f"extract refreshed {refreshed:%Y-%m-%d %H:%M:%S} UTC, after its tables' last "
            f"materialization ({latest:%Y-%m-%d %H:%M:%S} UTC)"
        )
        _log().info("Skipped %s: up to date (%s)", ref, note)
        skipped.append(RefreshJob(ref, content.id, project=content.project, status=UP_TO_DATE, notes=note))
    return refresh, skipped


def _list_named(endpoint, name: str) -> list:
    """Content called exactly ``name``; lists everything if the name cannot go into a filter."""
    items = TSC.Pager(endpoint) if _UNFILTERABLE.search(name) else endpoint.filter(name=name)
    return [item for item in items if item.name == name]


def _in_flight_jobs(session: TableauSession, ref: ContentRef) -> list[TSC.BackgroundJobItem]:
    """Query Jobs for queued/running extract refreshes (full or incremental) of the content's name.

    Raises:
        PermissionError: Tableau refused Query Jobs (403), which it allows site administrators.
    """
    options = TSC.RequestOptions()
    options.filter.add(TSC.Filter("jobType", TSC.RequestOptions.Operator.In, _REFRESH_JOB_TYPES))
    options.filter.add(TSC.Filter("status", TSC.RequestOptions.Operator.In, _IN_FLIGHT))
    if not _UNFILTERABLE.search(ref.name):
        options.filter.add(TSC.Filter("title", TSC.RequestOptions.Operator.Equals, ref.name))
    try:
        jobs, _ = session.call(session.server.jobs.get, req_options=options)
    except ServerResponseError as exc:
        if not str(exc.code).startswith("403"):
            raise
        raise PermissionError(
            f"a refresh of {ref} is already queued (409093), and Tableau refused Query Jobs ({exc.code}) "
            "to find it: give the PAT's user a site administrator role so runs can adopt in-flight refreshes"
        ) from None
    return [job for job in jobs if job.title == ref.name and job.subtitle == _JOB_SUBTITLE[ref.kind]]


def trigger_refresh(
    session: TableauSession,
    ref: ContentRef,
    content: ResolvedContent,
    *,
    incremental: bool,
    deadline: float,
    policy: PollPolicy,
    sleep: Callable[[float], None] = time.sleep,
) -> RefreshJob:
    """Start the extract refresh of one data source or workbook, or adopt the one in flight.

    On 409093 the in-flight job is adopted when it can be identified (the site has one content of
    that kind and name, and one in-flight job titled with it); otherwise this waits until the
    content's in-flight jobs end and triggers again. On 429000 it waits the time Tableau asks for, if
    that ends before the deadline.

    Raises:
        ThrottledError: 429000 with a wait (Retry-After header, else the message's "retry after N
            seconds/minutes/hours") that would pass ``deadline`` (``time.monotonic()`` value): no sleep.
        TimeoutError: still blocked by a refresh in flight (409093) at ``deadline``.
        PermissionError: 409093, and Tableau refused Query Jobs to find the job in flight.
        tableauserverclient errors: anything else Tableau refused.
    """
    endpoint = _endpoint(session.server, ref.kind)
    refresh = RefreshJob(content=ref, content_id=content.id, project=content.project)
    while True:
        try:
            job = session.call(endpoint.refresh, content.id, incremental=incremental)
        except ServerResponseError as exc:
            if error_code(exc) != TOO_MANY_REQUESTS:
                raise
            said = " ".join(part for part in (exc.summary, exc.detail) if part)
            wait = retry_after_seconds(
                session.last_retry_after(), said, default=policy.rate_limit_default_wait
            )
            left = deadline - time.monotonic()
            if wait > left:
                raise ThrottledError(
                    f"Tableau throttled refresh requests (429000: {said!r}); waiting {wait:.0f} s would pass the "
                    f"domain's deadline ({max(left, 0):.0f} s left), so the refresh was not started"
                ) from None
            _log().info("Tableau rate-limited the refresh of %s (429000); retrying in %.0f s", ref, wait)
            sleep(wait)
            continue
        if job is not None:  # tableauserverclient (>= 0.42) returns None on 409093
            refresh.job_id = job.id
            refresh.created_at = job.created_at
            _log().info("Triggered refresh of %s: job %s", ref, job.id)
            return refresh
        # 409093: a refresh of this content is already queued or running.
        in_flight = _in_flight_jobs(session, ref)
        if content.name_is_unique and len(in_flight) == 1:
            refresh.job_id, refresh.adopted = in_flight[0].id, True
            refresh.created_at = in_flight[0].created_at
            _log().info("Refresh of %s already in flight (409093): adopted job %s", ref, refresh.job_id)
            return refresh
        _log().info(
            "Refresh of %s already in flight (409093) but its job cannot be told apart (%d candidate(s)); "
            "waiting for it to end, then triggering again",
            ref,
            len(in_flight),
        )
        _sleep_until_deadline(policy.initial_interval, deadline, f"{ref} stayed busy (409093)", sleep)
        while _in_flight_jobs(session, ref):
            _sleep_until_deadline(policy.initial_interval, deadline, f"{ref} stayed busy (409093)", sleep)


def _sleep_until_deadline(seconds: float, deadline: float, what: str, sleep: Callable[[float], None]) -> None:
    if time.monotonic() + seconds > deadline:
        raise TimeoutError(f"Domain timeout reached: {what}")
    sleep(seconds)


def _apply_job(refresh: RefreshJob, job: TSC.JobItem) -> None:
    refresh.created_at = job.created_at or refresh.created_at
    refresh.started_at = job.started_at
    refresh.completed_at = job.completed_at
    if job.finish_code is not None and job.finish_code >= 0:  # tableauserverclient: -1 while running
        refresh.finish_code = job.finish_code
        refresh.status = FINISH_CODE_NAMES.get(job.finish_code, f"finish code {job.finish_code}")
        refresh.notes = "; ".join(note for note in (job.notes or []) if note)
        if job.finish_code == 2 and _QUOTA_NOTES.search(refresh.notes):
            refresh.status = QUOTA_EXHAUSTED
        duration = refresh.duration_seconds
        _log().info(
            "Refresh of %s ended: job %s %s (finish code %d)%s",
            refresh.content,
            refresh.job_id,
            refresh.status,
            job.finish_code,
            "" if duration is None else f" after {duration:.0f} s",
        )


def wait_for_jobs(
    session: TableauSession,
    refreshes: list[RefreshJob],
    *,
    deadline: float,
    policy: PollPolicy,
    max_workers: int = 8,
    rng: random.Random | None = None,
    on_progress: Callable[[list[RefreshJob]], None] | None = None,
) -> list[RefreshJob]:
    """Poll every running job until it ends or ``deadline`` passes; cancel what is left then.

    Jobs are polled concurrently (a thread pool over the one session), each with its own interval
    growing from ``policy.initial_interval`` by ``policy.backoff`` up to ``policy.max_interval``
    (with jitter). Jobs still running at the deadline, or when this is interrupted (flow run
    cancelled, process terminated), are cancelled on Tableau (``PUT .../jobs/{id}``).
    ``on_progress(refreshes)`` is called after every round of polls (e.g. to update a progress artifact).

    Returns:
        ``refreshes``, each with its final status.
    """
    rng = rng or random.Random()
    running = [r for r in refreshes if r.status == "running"]
    for refresh in running:
        refresh.poll_interval = refresh.poll_interval or policy.initial_interval
    try:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="tableau-poll") as pool:
            while running:
                now = time.monotonic()
                if now >= deadline:
                    _cancel(session, running, status="timed out")
                    break
                due = [r for r in running if r.next_poll <= now]
                for refresh, outcome in zip(due, pool.map(lambda r: _poll(session, r), due), strict=True):
                    if isinstance(outcome, Exception):
                        refresh.poll_errors += 1
                        _log().warning(
                            "Polling job %s of %s failed: %s", refresh.job_id, refresh.content, outcome
                        )
                        if refresh.poll_errors >= policy.max_poll_errors:
                            refresh.status = "failed"
                            refresh.notes = f"polling failed {refresh.poll_errors} times in a row: {outcome}"
                    else:
                        refresh.poll_errors = 0
                        _apply_job(refresh, outcome)
                    refresh.poll_interval = min(refresh.poll_interval * policy.backoff, policy.max_interval)
                    refresh.next_poll = now + refresh.poll_interval * rng.uniform(0.8, 1.0)
                running = [r for r in running if r.status == "running"]
                if on_progress is not None:
                    on_progress(refreshes)
                if running:
                    time.sleep(max(0.0, min(min(r.next_poll for r in running), deadline) - time.monotonic()))
    except BaseException:
        _cancel(session, [r for r in running if r.status == "running"], status="cancelled")
        raise
    return refreshes


def _poll(session: TableauSession, refresh: RefreshJob) -> TSC.JobItem | Exception:
    try:
        return session.call(session.server.jobs.get_by_id, refresh.job_id)
    except TableauAuthError:
        raise  # the PAT is compromised or revoked: no poll of this session can succeed
    except Exception as exc:  # counted per job; a run of failures fails that job only
        return exc


def _cancel(session: TableauSession, refreshes: list[RefreshJob], *, status: str) -> None:
    """Cancel each job on Tableau; one that ended meanwhile keeps its own outcome."""
    for refresh in refreshes:
        try:
            session.call(session.server.jobs.cancel, refresh.job_id)
        except Exception as exc:
            try:  # it may have ended meanwhile; a cancel must go on to the next job whatever happens
                _apply_job(refresh, session.call(session.server.jobs.get_by_id, refresh.job_id))
            except Exception:
                pass
            if refresh.status == "running":
                refresh.status, refresh.notes = status, f"cancel request failed: {exc}"
                _log().error(
                    "Could not cancel Tableau job %s of %s: %s", refresh.job_id, refresh.content, exc
                )
            continue
        refresh.status, refresh.notes = status, f"cancelled by this run ({status})"
        _log().warning("Cancelled Tableau job %s of %s (%s)", refresh.job_id, refresh.content, status)


def trigger_refreshes(
    session: TableauSession,
    resolved: dict[ContentRef, ResolvedContent],
    *,
    incremental: bool,
    deadline: float,
    policy: PollPolicy,
) -> list[RefreshJob]:
    """Trigger (or adopt) the refresh of every resolved content, in order.

    A content Tableau refuses (other than 409093/429000) is recorded as failed with Tableau's
    message, and the others go on; so is one still blocked at ``deadline`` ('timed out'). Once Tableau
    throttles with a wait past the deadline, that content and every one not started yet are recorded
    'throttled' without asking again. If this is interrupted (flow run cancelled, process
    terminated), the jobs started so far are cancelled.
    """
    refreshes: list[RefreshJob] = []
    throttled = ""
    try:
        for ref, content in resolved.items():
            if throttled:
                refreshes.append(
                    RefreshJob(ref, content.id, project=content.project, status=THROTTLED, notes=throttled)
                )
                continue
            try:
                refreshes.append(
                    trigger_refresh(
                        session, ref, content, incremental=incremental, deadline=deadline, policy=policy
                    )
                )
            except ThrottledError as exc:
                _log().error("Refresh of %s not started: %s", ref, exc)
                throttled = str(exc)
                refreshes.append(
                    RefreshJob(ref, content.id, project=content.project, status=THROTTLED, notes=throttled)
                )
            except (TableauError, RequestException, PermissionError, TimeoutError) as exc:
                status = "timed out" if isinstance(exc, TimeoutError) else "failed"
                _log().error("Refresh of %s not started: %s", ref, exc)
                refreshes.append(
                    RefreshJob(ref, content.id, project=content.project, status=status, notes=str(exc))
                )
    except BaseException:
        _cancel(session, [r for r in refreshes if r.status == "running"], status="cancelled")
        raise
    return refreshes


# Prefect tasks: thin wrappers, so each step shows in the UI. They take a live session, so
# nothing is cached or persisted.


@task(name="resolve-tableau-content", cache_policy=NO_CACHE)
def resolve_tableau_content(
    session: TableauSession, refs: list[ContentRef]
) -> dict[ContentRef, ResolvedContent]:
    """Task form of :func:`resolve_content`."""
    return resolve_content(session, refs)


@task(name="resolve-tableau-lineage", cache_policy=NO_CACHE)
def resolve_tableau_lineage(session: TableauSession, tables: list[TableKey]) -> LineageResolution:
    """Task form of :func:`tasks.tableau.lineage.resolve_downstream` (the Metadata API, with the run's
    session): the content downstream of ``tables``. Raises ``MetadataApiError`` when the Metadata API is
    off (its message names ``tsm maintenance metadata-services enable``)."""
    return resolve_downstream(session, tables)


@task(name="resolve-tableau-lineage-content", cache_policy=NO_CACHE)
def resolve_tableau_lineage_content(
    session: TableauSession, downstream: list[DownstreamContent], changed: list[str] | None = None
) -> dict[ContentRef, ResolvedContent]:
    """Task form of :func:`resolve_lineage_content`."""
    return resolve_lineage_content(session, downstream, changed)


@task(name="trigger-tableau-refreshes", cache_policy=NO_CACHE)
def trigger_tableau_refreshes(
    session: TableauSession,
    resolved: dict[ContentRef, ResolvedContent],
    *,
    incremental: bool,
    deadline: float,
    policy: PollPolicy,
) -> list[RefreshJob]:
    """Task form of :func:`trigger_refreshes`."""
    return trigger_refreshes(session, resolved, incremental=incremental, deadline=deadline, policy=policy)


@task(name="wait-for-tableau-jobs", cache_policy=NO_CACHE)
def wait_for_tableau_jobs(
    session: TableauSession,
    refreshes: list[RefreshJob],
    *,
    deadline: float,
    policy: PollPolicy,
    on_progress: Callable[[list[RefreshJob]], None] | None = None,
) -> list[RefreshJob]:
    """Task form of :func:`wait_for_jobs`."""
    return wait_for_jobs(session, refreshes, deadline=deadline, policy=policy, on_progress=on_progress)
