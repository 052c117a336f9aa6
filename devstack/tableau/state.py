"""The simulated Tableau site: sessions, users, content, extract-refresh jobs on a backgrounder and
scheduled extract-refresh tasks, the refresh rate limit and the audit of what clients did. No HTTP
here; one lock guards everything.

Time: jobs and sessions live on a simulated clock that runs `time_scale` times faster than the real
one (simulated unix seconds). The backgrounder advances lazily on every call and from the server's
ticker, and replays every finish and start at its exact simulated instant, so a queued job starts when
a slot frees, not when somebody next looks.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from devstack.tableau import errors
from devstack.tableau.config import Config, ContentKind, ContentSpec, site_id, user_id

# Role of the users named like the personal access tokens (stand-in choice: the pool's PATs belong to
# site administrators, who may list every user and extract-refresh task of the site).
PAT_USER_SITE_ROLE = "SiteAdministratorCreator"
# Extract-refresh schedules run at 06:00 UTC: daily, or weekly on Mondays.
SCHEDULE_START_SECONDS = 6 * 3600
_DAY = 86400

# Query Jobs `status` values (Tableau REST API: Query Jobs; schema backgroundJobType/@status).
PENDING, IN_PROGRESS, SUCCESS, FAILED, CANCELLED = "Pending", "InProgress", "Success", "Failed", "Cancelled"
# Query Job `finishCode` values (Tableau REST API: Query Job): 3 = completed by Tableau Bridge.
FINISH_SUCCESS, FINISH_FAILED, FINISH_CANCELLED, FINISH_BRIDGE = 0, 1, 2, 3
# Notes of a job Tableau Cloud cancels once the site's daily job capacity is spent (Tableau Knowledge
# Base: "Extract Refreshes Are Canceled ... Suspended: Extract refresh capacity at 100%").
QUOTA_NOTES = "No more non-interactive quota remaining for your site"
# A connected app's JWT may expire at most 10 minutes after it is checked (Troubleshoot Connected Apps, 16).
MAX_JWT_LIFETIME_SECONDS = 600
# Connected-app error numbers ("Troubleshoot Connected Apps - Direct Trust", help.tableau.com).
SYSTEM_USER_NOT_FOUND, LOGIN_FAILED, CONNECTED_APP_NOT_FOUND, CONNECTED_APP_SECRET_NOT_FOUND = 5, 16, 126, 127
BAD_JWT, JWT_PARSE_ERROR = 10083, 10084
_REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "jti", "scp")


class SimClock:
    """Simulated unix seconds: `start` (default: the real time at creation) plus real elapsed time ×
    `time_scale`."""

    def __init__(self, time_scale: float, start: float | None = None) -> None:
        self.time_scale = time_scale
        self._origin_real = time.time()
        self._origin_simulated = self._origin_real if start is None else start
        self._origin_monotonic = time.monotonic()

    def now(self) -> float:
        return self._origin_simulated + (time.monotonic() - self._origin_monotonic) * self.time_scale

    def to_real(self, simulated: float) -> float:
        """The real unix time at which the simulated clock shows `simulated`."""
        return self._origin_real + (simulated - self._origin_simulated) / self.time_scale


class SlidingWindowLimiter:
    """At most `max_requests` admissions per sliding window of `per_seconds` real seconds (0 = off)."""

    def __init__(self, max_requests: int, per_seconds: float) -> None:
        self.max_requests = max_requests
        self.per_seconds = per_seconds
        self._admitted: collections.deque[float] = collections.deque()

    def admit(self) -> bool:
        if self.max_requests <= 0:
            return True
        now = time.monotonic()
        while self._admitted and self._admitted[0] <= now - self.per_seconds:
            self._admitted.popleft()
        if len(self._admitted) >= self.max_requests:
            return False
        self._admitted.append(now)
        return True


@dataclass
class Session:
    """A signed-in session. `signed_in_at`/`ended_at` are real unix seconds, `last_used` simulated."""

    token: str
    pat: str | None
    user: str | None
    user_id: str
    signed_in_at: float
    last_used: float
    ended_at: float | None = None
    end_reason: str | None = None  # "signed_out" | "superseded" | "expired"
    connected_app: str | None = None  # the client id, for a JWT sign-in
    scopes: tuple[str, ...] | None = None  # a JWT session's scp; None: not limited (PAT, password)

    @property
    def live(self) -> bool:
        return self.end_reason is None

    def allows(self, scope: str) -> bool:
        """Whether the session's scopes cover `scope` ("tableau:<resource>:<action>"): the scope itself,
        or its resource's wildcard "tableau:<resource>:*" ("Access Scopes for Connected Apps")."""
        if self.scopes is None:
            return True
        resource = scope.rsplit(":", 1)[0]
        return scope in self.scopes or f"{resource}:*" in self.scopes


@dataclass
class Job:
    """An extract-refresh job. All times are simulated unix seconds."""

    id: str
    content: ContentSpec
    incremental: bool
    created_at: float
    updated_at: float
    started_at: float | None = None
    ends_at: float | None = None
    completed_at: float | None = None
    finish_code: int | None = None
    notes: str = ""
    progress: int = 0  # percent, as of the snapshot

    @property
    def title(self) -> str:
        """Query Jobs `title`: the name of the refreshed content."""
        return self.content.name

    @property
    def subtitle(self) -> str:
        """Query Jobs `subtitle`: the kind of the refreshed content."""
        return "Data Source" if self.content.kind == "datasource" else "Workbook"

    @property
    def status(self) -> str:
        """Query Jobs `status`."""
        if self.finish_code is None:
            return PENDING if self.started_at is None else IN_PROGRESS
        return {
            FINISH_SUCCESS: SUCCESS,
            FINISH_FAILED: FAILED,
            FINISH_CANCELLED: CANCELLED,
            FINISH_BRIDGE: SUCCESS,
        }[self.finish_code]

    def snapshot(self, now: float) -> Job:
        """A copy, safe to read outside the lock, with `progress` (percent) as of `now`."""
        if self.finish_code is not None:
            progress = 100
        elif self.started_at is None or self.ends_at is None or self.ends_at <= self.started_at:
            progress = 0
        else:
            progress = min(99, int(100 * (now - self.started_at) / (self.ends_at - self.started_at)))
        return dataclasses.replace(self, progress=progress)


@dataclass(frozen=True)
class SiteUser:
    """A user of the site (Query Users on Site); `last_login` in simulated unix seconds, if ever."""

    id: str
    name: str
    site_role: str
    full_name: str
    email: str
    last_login: float | None


@dataclass(frozen=True)
class RefreshTask:
    """A data source's scheduled extract-refresh task (List Extract Refresh Tasks in Site).

    `consecutive_failed_count`: the content's most recent finished jobs that failed, in a row (stand-in
    choice: every extract refresh of the content counts, scheduled or not). `next_run_at`: simulated
    unix seconds of the schedule's next run.
    """

    content: ContentSpec
    consecutive_failed_count: int
    next_run_at: float


def next_run(frequency: str, now: float) -> float:
    """The first 06:00 UTC after `now` (simulated unix seconds) that is a Monday for "Weekly"."""
    at = now - now % _DAY + SCHEDULE_START_SECONDS
    if at <= now:
        at += _DAY
    while frequency == "Weekly" and time.gmtime(at).tm_wday != 0:
        at += _DAY
    return at


@dataclass
class _Audit:
    sign_ins: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    user_sign_ins: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failed_sign_ins: int = 0
    invalidated_token_requests: int = 0
    expired_token_requests: int = 0
    unauthenticated_requests: int = 0
    jwt_sign_ins: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    refused_jwt_sign_ins: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    out_of_scope_requests: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    quota_cancelled_jobs: int = 0
    rate_limited_requests: int = 0
    conflict_requests: int = 0
    jobs_created: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    max_concurrent_jobs: int = 0


class TableauSite:
    """One Tableau site with its content, sessions and backgrounder; thread-safe.

    Methods raise `errors.ApiError` with the code Tableau would answer. Objects returned are copies.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.site_id = site_id(config.site_content_url)
        self._clock = SimClock(config.time_scale, config.clock_start_seconds())
        self.created_at = self._clock.now()  # createdAt/updatedAt of projects and content
        self.owner_id = user_id(config.users[0].name if config.users else "admin")  # owns all content
        self._lock = threading.Lock()
        self._content = {spec.id: spec for spec in config.content}
        self._reset()

    def _reset(self) -> None:
        limit = self.config.refresh_rate_limit
        self._rng = random.Random(self.config.seed)
        self._limiter = SlidingWindowLimiter(limit.max_requests, limit.per_seconds)
        self._audit = _Audit()
        self._sessions: dict[str, Session] = {}
        self._pat_sessions: dict[str, Session] = {}
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._last_login: dict[str, float] = {}  # user name -> simulated time of the last sign-in
        self._used_jtis: set[str] = set()
        self._capacity_used: dict[int, float] = collections.defaultdict(float)  # UTC day -> job seconds
        # content id -> simulated time of its last successful full / incremental extract refresh
        self._refreshed: dict[str, dict[str, float]] = collections.defaultdict(dict)

    # -- time -----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Bring jobs and sessions up to the simulated now (the server calls this every ~20 ms)."""
        with self._lock:
            self._advance()

    def _advance(self) -> float:
        now = self._clock.now()
        while self._running:
            job = min(self._running, key=lambda j: j.ends_at)
            if job.ends_at > now:
                break
            spec = job.content
            code = spec.finish_code
            if code is None:
                code = FINISH_FAILED if spec.fail_notes else FINISH_SUCCESS
            self._finish(job, job.ends_at, code, spec.fail_notes or "")
            self._start_queued(job.completed_at)
        ttl = self.config.session_ttl_seconds
        for session in self._sessions.values():
            if session.live and now - session.last_used > ttl:
                self._end(session, "expired", self._clock.to_real(session.last_used + ttl))
        return now

    # -- sessions -------------------------------------------------------------------------------

    def sign_in_with_pat(self, name: str, secret: str, content_url: str) -> Session:
        """Sign in with a personal access token. Tableau keeps one session per PAT: this sign-in ends
        the token's previous session, whose requests then get 401002 (REST API reference, "Sign In")."""
        with self._lock:
            self._advance()
            if not any(p.name == name and p.secret == secret for p in self.config.pats):
                self._audit.failed_sign_ins += 1
                raise errors.sign_in_failed()
            self._check_site(content_url)
            session = self._open(pat=name, user=None)
            previous = self._pat_sessions.get(name)
            if previous is not None and previous.live:
                self._end(previous, "superseded", session.signed_in_at)
            self._pat_sessions[name] = session
            self._audit.sign_ins[name] += 1
            return dataclasses.replace(session)

    def sign_in_with_password(self, name: str, password: str, content_url: str) -> Session:
        """Sign in with user name and password; a user may hold several sessions at once."""
        with self._lock:
            self._advance()
            if not any(u.name == name and u.password == password for u in self.config.users):
                self._audit.failed_sign_ins += 1
                raise errors.sign_in_failed()
            self._check_site(content_url)
            session = self._open(pat=None, user=name)
            self._audit.user_sign_ins[name] += 1
            return dataclasses.replace(session)

    def sign_in_with_jwt(self, token: str, content_url: str) -> Session:
        """Sign in with a connected app's JWT (direct trust). Checks, in Tableau's terms ("Configure
        Connected Apps with Direct Trust", "Troubleshoot Connected Apps"): the header names the secret
        (kid) and the app (iss) (else 10083); the app exists and is enabled (126); kid is one of its
        secrets and signs the JWT, HS256 (127); the claims iss, sub, aud, exp, jti and scp are there,
        aud is "tableau", exp is not past and at most 10 minutes ahead, jti was never used before (16;
        for aud and jti the number is a stand-in choice); sub is a user of the site (5). Every refusal
        is 401001 with the number in its detail. JWT times are real (Tableau's own clock), not simulated.
        A connected app's sessions are independent: signing in again ends no earlier session."""
        with self._lock:
            self._advance()
            code = self._check_jwt(token)
            if code is not None:
                self._audit.failed_sign_ins += 1
                self._audit.refused_jwt_sign_ins[str(code)] += 1
                raise errors.jwt_sign_in_failed(code)
            claims = jwt.decode(token, options={"verify_signature": False})
            self._used_jtis.add(claims["jti"])
            self._check_site(content_url)
            scopes = claims["scp"] if isinstance(claims["scp"], list) else str(claims["scp"]).split()
            session = self._open(pat=None, user=claims["sub"])
            session.connected_app, session.scopes = claims["iss"], tuple(scopes)
            self._audit.jwt_sign_ins[claims["iss"]] += 1
            return dataclasses.replace(session)

    def _check_jwt(self, token: str) -> int | None:
        """The connected-app error number that refuses `token`, or None if Tableau would accept it."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            return JWT_PARSE_ERROR
        if not header.get("kid") or not header.get("iss"):
            return BAD_JWT
        app = next(
            (a for a in self.config.connected_apps if a.client_id == header["iss"] and a.enabled), None
        )
        if app is None:
            return CONNECTED_APP_NOT_FOUND
        secret = next((x for x in app.secrets if x.id == header["kid"]), None)
        if secret is None:
            return CONNECTED_APP_SECRET_NOT_FOUND
        try:
            claims = jwt.decode(
                token,
                secret.value,
                algorithms=["HS256"],
                options={"verify_exp": False, "verify_aud": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidSignatureError:
            return CONNECTED_APP_SECRET_NOT_FOUND
        except jwt.InvalidTokenError:
            return JWT_PARSE_ERROR
        now = time.time()
        if (
            any(claims.get(name) in (None, "", []) for name in _REQUIRED_CLAIMS)
            or claims["iss"] != app.client_id
        ):
            return LOGIN_FAILED
        if claims["aud"] != "tableau" or not isinstance(claims["exp"], int | float):
            return LOGIN_FAILED
        if claims["exp"] <= now or claims["exp"] > now + MAX_JWT_LIFETIME_SECONDS:
            return LOGIN_FAILED
        if claims["jti"] in self._used_jtis:
            return LOGIN_FAILED
        if not any(u.name == claims["sub"] for u in self.config.users):
            return SYSTEM_USER_NOT_FOUND
        return None

    def _check_site(self, content_url: str) -> None:
        if content_url != self.config.site_content_url:
            self._audit.failed_sign_ins += 1
            raise errors.sign_in_failed()

    def _open(self, pat: str | None, user: str | None) -> Session:
        token = f"{secrets.token_urlsafe(16)}|{secrets.token_urlsafe(24)}|{self.site_id}"
        session = Session(token, pat, user, user_id(pat or user), time.time(), self._clock.now())
        self._sessions[token] = session
        self._last_login[pat or user] = session.last_used
        return session

    def _end(self, session: Session, reason: str, at: float | None = None) -> None:
        session.end_reason = reason
        session.ended_at = time.time() if at is None else at

    def sign_out(self, token: str | None) -> None:
        """End the session of `token` if it is live. Signing out an unknown or ended token is not an
        error: Sign Out answers 204 either way (stand-in choice)."""
        with self._lock:
            self._advance()
            session = self._sessions.get(token or "")
            if session is not None and session.live:
                self._end(session, "signed_out")

    def authenticate(self, token: str | None, site: str | None = None, scope: str | None = None) -> Session:
        """The live session of `token`, used now (the idle timeout restarts). Raises 401002 for a
        missing, unknown, signed-out, superseded or expired token, or for a JWT session whose scopes do
        not cover `scope` (the method's JWT access scope; None: the method needs none), and 404000 if
        `site` (the site id of the URI) is not this site."""
        with self._lock:
            now = self._advance()
            session = self._sessions.get(token or "")
            if session is None or not session.live:
                reason = session.end_reason if session else None
                if reason == "superseded":
                    self._audit.invalidated_token_requests += 1
                elif reason == "expired":
                    self._audit.expired_token_requests += 1
                else:
                    self._audit.unauthenticated_requests += 1
                raise errors.unauthorized()
            if scope is not None and not session.allows(scope):
                self._audit.out_of_scope_requests[scope] += 1
                raise errors.unauthorized()
            if site is not None and site != self.site_id:
                raise errors.site_not_found(site)
            session.last_used = now
            return dataclasses.replace(session)

    def expire_sessions(self) -> int:
        """End every live session as expired, now (for "token expired mid-poll" tests)."""
        with self._lock:
            self._advance()
            live = [s for s in self._sessions.values() if s.live]
            for session in live:
                self._end(session, "expired")
            return len(live)

    # -- content --------------------------------------------------------------------------------

    def contents(self, kind: ContentKind) -> list[ContentSpec]:
        """The data sources or workbooks of the site, in configuration order."""
        return [spec for spec in self._content.values() if spec.kind == kind]

    def content(self, kind: ContentKind, content_id: str) -> ContentSpec:
        """One data source (else 404011) or workbook (else 404006) by id."""
        spec = self._content.get(content_id)
        if spec is None or spec.kind != kind:
            raise (errors.datasource_not_found if kind == "datasource" else errors.workbook_not_found)(
                content_id
            )
        return spec

    def views(self) -> list[tuple[ContentSpec, str]]:
        """Every view of the site as (workbook, view name), workbooks in configuration order."""
        return [(spec, view) for spec in self.contents("workbook") for view in spec.views or ()]

    def users(self) -> list[SiteUser]:
        """The configured users, then the users named like the personal access tokens (a PAT signs in
        as the user named like it) that are not configured."""
        with self._lock:
            self._advance()
            configured = {u.name for u in self.config.users}
            return [
                SiteUser(
                    user_id(u.name), u.name, u.site_role, u.full_name, u.email, self._last_login.get(u.name)
                )
                for u in self.config.users
            ] + [
                SiteUser(user_id(p.name), p.name, PAT_USER_SITE_ROLE, "", "", self._last_login.get(p.name))
                for p in self.config.pats
                if p.name not in configured
            ]

    def refresh_tasks(self) -> list[RefreshTask]:
        """The extract-refresh task of every data source with a `refresh_schedule`."""
        with self._lock:
            now = self._advance()
            finished = sorted(
                (job for job in self._jobs.values() if job.completed_at is not None),
                key=lambda job: job.completed_at,
            )
            tasks = []
            for spec in self.contents("datasource"):
                if not spec.has_refresh_task:
                    continue
                codes = [job.finish_code for job in finished if job.content == spec]
                failed = len(list(itertools.takewhile(lambda code: code == FINISH_FAILED, reversed(codes))))
                tasks.append(RefreshTask(spec, failed, next_run(spec.refresh_schedule, now)))
            return tasks

    # -- jobs -----------------------------------------------------------------------------------

    def refresh(self, kind: ContentKind, content_id: str, incremental: bool) -> Job:
        """Queue an extract refresh ("Update Data Source Now" / "Update Workbook Now").

        Checks in order: the content exists (404011/404006); the site's refresh rate limit (429000 with
        Retry-After; the refused request creates nothing and does not count); no job of this content is
        queued or running (409093).
        """
        spec = self.content(kind, content_id)
        with self._lock:
            now = self._advance()
            if not self._limiter.admit():
                self._audit.rate_limited_requests += 1
                limit = self.config.refresh_rate_limit
                raise errors.too_many_refreshes(
                    limit.retry_after_seconds, limit.retry_after_unit, limit.retry_after_header
                )
            if any(job.content == spec and job.finish_code is None for job in self._jobs.values()):
                self._audit.conflict_requests += 1
                raise errors.refresh_already_queued(spec.name)
            job = Job(str(uuid.uuid4()), spec, incremental, created_at=now, updated_at=now)
            self._jobs[job.id] = job
            self._audit.jobs_created[spec.key] += 1
            self._queue.append(job)
            self._start_queued(now)
            return job.snapshot(now)

    def _start_queued(self, at: float) -> None:
        """Start queued jobs, first in first out, while a backgrounder slot is free; a job's duration
        is drawn when it starts and counts against the day's job capacity (if set); a job that would
        start once the capacity is spent is cancelled (finishCode 2) with Tableau's quota notes."""
        capacity = self.config.daily_job_capacity_seconds
        while self._queue and len(self._running) < self.config.backgrounder_slots:
            job = self._queue.popleft()
            day = int(at // _DAY)
            if capacity is not None and self._capacity_used[day] >= capacity:
                # Tableau Cloud checks the capacity before it runs a job, never mid-way.
                self._finish(job, at, FINISH_CANCELLED, QUOTA_NOTES)
                self._audit.quota_cancelled_jobs += 1
                continue
            job.started_at = job.updated_at = at
            duration = self._duration(job.content)
            self._capacity_used[day] += duration
            job.ends_at = at + duration
            self._running.append(job)
            self._audit.max_concurrent_jobs = max(self._audit.max_concurrent_jobs, len(self._running))

    def _duration(self, spec: ContentSpec) -> float:
        if isinstance(spec.duration_seconds, tuple):
            return self._rng.uniform(*spec.duration_seconds)
        return spec.duration_seconds

    def _finish(self, job: Job, at: float, finish_code: int, notes: str) -> None:
        if job in self._running:
            self._running.remove(job)
        job.completed_at = job.updated_at = at
        job.finish_code = finish_code
        job.notes = notes
        job.ends_at = None
        if finish_code in (FINISH_SUCCESS, FINISH_BRIDGE):
            self._refreshed[job.content.id]["incremental" if job.incremental else "full"] = at

    def extract_refreshes(self) -> dict[str, tuple[float | None, float | None]]:
        """Content id → simulated unix seconds of its last successful (finish code 0 or 3) full and
        incremental extract refresh job, None for a kind it never had; content never refreshed is
        absent. The Metadata API's ``extractLastRefreshTime`` / ``extractLastIncrementalUpdateTime``."""
        with self._lock:
            self._advance()
            return {
                key: (times.get("full"), times.get("incremental")) for key, times in self._refreshed.items()
            }

    def job(self, job_id: str) -> Job:
        """One job by id (Query Job); unknown ids raise 404000."""
        with self._lock:
            now = self._advance()
            return self._job(job_id).snapshot(now)

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise errors.job_not_found(job_id)
        return job

    def jobs(self) -> list[Job]:
        """Every job of the site, oldest first (Query Jobs)."""
        with self._lock:
            now = self._advance()
            return [job.snapshot(now) for job in self._jobs.values()]

    def cancel(self, job_id: str) -> Job:
        """Cancel Job: a queued or running job ends now with finishCode 2 and frees its slot; a
        finished job cannot be cancelled (409000)."""
        with self._lock:
            now = self._advance()
            job = self._job(job_id)
            if job.finish_code is not None:
                raise errors.job_already_finished(job_id, job.finish_code)
            if job in self._queue:
                self._queue.remove(job)
            self._finish(job, now, FINISH_CANCELLED, "")
            self._start_queued(now)
            return job.snapshot(now)

    # -- audit ----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget sessions, jobs and audit counters and reseed the duration draws; content stays."""
        with self._lock:
            self._reset()

    def audit(self) -> dict[str, Any]:
        """What clients did, as JSON-ready data. The three 401002 counters are disjoint: superseded
        tokens, expired tokens, and everything else (missing, unknown or signed-out tokens)."""
        with self._lock:
            self._advance()
            a = self._audit
            return {
                "sign_ins": dict(a.sign_ins),
                "user_sign_ins": dict(a.user_sign_ins),
                "failed_sign_ins": a.failed_sign_ins,
                "invalidated_token_requests": a.invalidated_token_requests,
                "expired_token_requests": a.expired_token_requests,
                "unauthenticated_requests": a.unauthenticated_requests,
                "jwt_sign_ins": dict(a.jwt_sign_ins),
                "refused_jwt_sign_ins": dict(a.refused_jwt_sign_ins),
                "out_of_scope_requests": dict(a.out_of_scope_requests),
                "quota_cancelled_jobs": a.quota_cancelled_jobs,
                "rate_limited_requests": a.rate_limited_requests,
                "conflict_requests": a.conflict_requests,
                "jobs_created": dict(a.jobs_created),
                "max_concurrent_jobs": a.max_concurrent_jobs,
                "sessions": [
                    {
                        "pat": s.pat,
                        "user": s.user,
                        "connected_app": s.connected_app,
                        "signed_in_at": s.signed_in_at,
                        "ended_at": s.ended_at,
                        "end_reason": s.end_reason,
                    }
                    for s in self._sessions.values()
                ],
                "jobs": [
                    {
                        "id": j.id,
                        "kind": j.content.kind,
                        "project": j.content.project,
                        "name": j.content.name,
                        "incremental": j.incremental,
                        "created_at": j.created_at,
                        "started_at": j.started_at,
                        "completed_at": j.completed_at,
                        "finish_code": j.finish_code,
                        "notes": j.notes,
                    }
                    for j in self._jobs.values()
                ],
            }
