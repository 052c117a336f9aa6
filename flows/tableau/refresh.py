"""The Tableau refresh flows: ``refresh_domain`` (one domain, through one leased PAT or a connected app;
each domain's deployment runs it) and ``refresh_domains`` (several at once, for back-fills). The
protocol is in docs/architecture.md, "Tableau refresh"; content from lineage, asset triggers, Tableau
assets and stale-only skips in docs/tableau-refresh.md."""

from __future__ import annotations

import contextvars
import datetime as dt
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import State
from pydantic import BaseModel, field_validator

from blocks.tableau import TableauSite
from tasks.common import ProgressReport
from tasks.tableau.assets import (
    ContentAsset,
    last_materializations,
    materialization_burst,
    materialize_content,
)
from tasks.tableau.connected_app import hold_refresh_capacity, load_connected_app
from tasks.tableau.domains import Domain, DomainConfigError, domains_file, load_domain, load_domains
from tasks.tableau.pat_pool import lease_pat, load_pool
from tasks.tableau.refresh import (
    QUOTA_EXHAUSTED,
    UP_TO_DATE,
    ContentRef,
    DomainRefreshError,
    DomainRefreshSummary,
    PollPolicy,
    RefreshJob,
    RefreshRow,
    ResolvedContent,
    merge_content,
    resolve_tableau_content,
    resolve_tableau_lineage,
    resolve_tableau_lineage_content,
    stale_only,
    trigger_tableau_refreshes,
    wait_for_tableau_jobs,
)
from tasks.tableau.session import ConnectedAppCredentials, TableauSession


def _clock(value: dt.datetime | None) -> str:
    return f"{value:%H:%M:%S}" if value else ""


class Materialization(BaseModel):
    """The materialization that started an asset-triggered run: the last of the burst the domain's
    debounced trigger collapsed (``deployments.triggers.MATERIALIZATION_PARAMETER`` fills it from the
    event: its resource id, ``occurred`` and id)."""

    asset_key: str = ""
    occurred: dt.datetime | None = None
    event_id: str = ""

    @field_validator("occurred", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


@dataclass
class _Outcome:
    """What ``_refresh`` did: the refreshes (and skips), the content they were of, and the lineage's
    tables without an extract downstream and its Metadata API requests."""

    refreshes: list[RefreshJob]
    resolved: dict[ContentRef, ResolvedContent]
    tables_without_extracts: list[str]
    lineage_requests: int


def artifact_rows(summary: DomainRefreshSummary) -> list[dict[str, object]]:
    """The rows of the domain's table artifact, one per content: what, what brought it in (``list``:
    the configuration; else the asset keys of its upstream tables) and how it ended first, then times of
    day (UTC; the date is in the description), notes, finish code and Tableau job id."""
    return [
        {
            "content": f"{row.kind} {row.project}/{row.content}",
            "brought in by": row.brought_in_by,
            "status": row.status,
            "queued": _clock(row.queued_at),
            "started": _clock(row.started_at),
            "finished": _clock(row.finished_at),
            "duration (s)": "" if row.duration_seconds is None else round(row.duration_seconds),
            "notes": row.notes,
            "finish code": "" if row.finish_code is None else row.finish_code,
            "job": row.job_id + (" (adopted)" if row.adopted else ""),
        }
        for row in summary.refreshes
    ]


@flow(name="refresh-tableau-domain", flow_run_name="refresh-{domain}", persist_result=True)
def refresh_domain(
    domain: str,
    config_path: str | None = None,
    poll_policy: PollPolicy | None = None,
    materialization: Materialization | None = None,
    changed_tables: list[str] | None = None,
) -> DomainRefreshSummary:
    """Refresh the data sources and workbooks of ``domain``, through one leased PAT or, if the domain
    names a connected app, with the app's own JWT session while holding a slot of its refresh capacity.

    The content is what the domain lists, and what Tableau's lineage (Metadata API) finds downstream
    of its ``upstream_tables``, once per content. A run started by the domain's tables' materializations
    (``materialization``), or told ``changed_tables``, refreshes only the content downstream of the
    tables that changed; any other run (upstream completion, cron, by hand) the whole domain. With
    ``refresh: stale_only`` a content none of whose upstream tables was materialized since its last
    extract refresh is skipped as 'up to date'. Each content refreshed is materialized as a Prefect
    asset (``tableau://<host>/<site>/<kind>/<luid>``, its tables as dependencies; a failed refresh emits
    the failed materialization).

    A progress artifact ``tableau-refresh-<domain>-progress`` shows the refreshes finished of the total
    while the run waits; the table artifact ``tableau-refresh-<domain>`` lists them at the end, with
    what brought each in.

    Args:
        domain: name of the domain in the domain configuration file.
        config_path: that file; default ``$TABLEAU_DOMAINS_FILE`` or ``tableau_domains.yaml``.
        poll_policy: polling intervals (seconds); default ``PollPolicy()``.
        materialization: set by the domain's materialization trigger: the last materialization of the
            burst; the run reads the burst's other materializations from Prefect's events API.
        changed_tables: asset keys of the domain's ``upstream_tables`` that changed (by hand; added to
            what ``materialization`` yields).

    Returns:
        The run's summary: PAT block name (or connected app block name), wait for the PAT or the
        capacity slot (seconds), sign-ins, one row per content (persisted as the run's result; on
        failure carried by the ``DomainRefreshError``).

    Raises:
        DomainConfigError: unknown domain, invalid configuration, ``changed_tables`` not among the
            domain's ``upstream_tables``, or incremental refreshes on a site older than REST API 3.25
            (nothing started).
        MetadataApiError: the domain has ``upstream_tables`` and the Metadata API is off (its message
            names ``tsm maintenance metadata-services enable``) or refuses the user (nothing started).
        LineageResolutionError: the Metadata API answered only part of the lineage (nothing started).
        BlockNotFoundError: the pool, one of its PAT blocks, the connected app or a secret's block is
            missing (nothing started).
        LimitNotReadyError: ``PatPoolError`` or ``RefreshCapacityError``, the pool's or the app's
            global concurrency limits are missing or disabled (nothing started).
        ContentResolutionError: content missing or ambiguous on the site (nothing started).
        TableauAuthError: Tableau refused the PAT or the JWT (401001).
        DomainRefreshError: after every refresh ended, if any did not succeed.
    """
    logger = get_run_logger()
    config = load_domain(domain, config_path)
    policy = poll_policy or PollPolicy()
    changed = _changed_tables(config, materialization, changed_tables)

    if config.connected_app_block:
        name = config.connected_app_block
        app = load_connected_app(name, needed_by=f"domain {domain!r}")
        with hold_refresh_capacity(app, block_name=name) as wait:
            logger.info(
                "Domain %r holds a slot of %r (waited %.1f s)", domain, app.concurrency_limit_name, wait
            )
            with TableauSession(app.site, ConnectedAppCredentials(app, name)) as session:
                outcome = _refresh(session, config, policy, changed)
                sign_ins = session.sign_ins
        site = app.site
        held = {"connected_app": name, "lease_wait_seconds": wait}
    else:
        pool, pats = load_pool(config.pat_pool_block, needed_by=f"domain {domain!r}")
        with lease_pat(pool, pool_block_name=config.pat_pool_block) as lease:
            logger.info(
                "Domain %r holds PAT %r (waited %.1f s)", domain, lease.pat_block_name, lease.wait_seconds
            )
            with TableauSession(pool.site, pats[lease.pat_block_name], lease.pat_block_name) as session:
                outcome = _refresh(session, config, policy, changed)
                sign_ins = session.sign_ins
        site = pool.site
        held = {"pat": lease.pat_block_name, "lease_wait_seconds": lease.wait_seconds}

    summary = DomainRefreshSummary(
        domain=domain,
        sign_ins=sign_ins,
        refreshes=[RefreshRow.of(r, outcome.resolved.get(r.content)) for r in outcome.refreshes],
        changed_tables=changed,
        tables_without_extracts=outcome.tables_without_extracts,
        lineage_requests=outcome.lineage_requests,
        **held,
    )
    _materialize_assets(site, summary)
    _report(summary)
    return summary


def _changed_tables(
    config: Domain, materialization: Materialization | None, changed_tables: list[str] | None
) -> list[str] | None:
    """The domain's tables that changed (an asset-triggered or told run), or None (the whole domain)."""
    if materialization is None and changed_tables is None:
        return None
    unknown = sorted(set(changed_tables or ()) - set(config.upstream_tables))
    if unknown:
        raise DomainConfigError(
            f"changed_tables {unknown} are not upstream_tables of domain {config.name!r} "
            f"({list(config.upstream_tables)}): name tables of the domain, or add them to its upstream_tables"
        )
    changed = set(changed_tables or ())
    logger = get_run_logger()
    if materialization is not None:
        if not materialization.asset_key or materialization.occurred is None:
            logger.warning(
                "Domain %r: started by its materialization trigger without an event (%s): nothing changed. "
                "Is the trigger's for_each set as `python -m deployments.domains` writes it?",
                config.name,
                materialization,
            )
        else:
            burst = materialization_burst(
                config.upstream_tables, materialization.occurred, config.debounce_seconds
            )
            burst.setdefault(materialization.asset_key, materialization.occurred)
            changed |= set(burst)
            logger.info(
                "Domain %r: %d of its tables materialized in the burst ending %s (debounce %.0f s): %s",
                config.name,
                len(burst),
                materialization.occurred.isoformat(),
                config.debounce_seconds,
                ", ".join(sorted(burst)),
            )
    return [key for key in config.upstream_tables if key in changed]


def _refresh(
    session: TableauSession, config: Domain, policy: PollPolicy, changed: list[str] | None
) -> _Outcome:
    """Resolve (the lists and the lineage), skip what is up to date, trigger and wait, with the progress
    artifact of the domain's run."""
    logger = get_run_logger()
    if config.incremental and not session.server.check_at_least_version("3.25"):
        raise DomainConfigError(
            f"Domain {config.name!r} asks for incremental refreshes, which need REST API 3.25 or later; "
            f"the site uses {session.server.version}. Set incremental: false or raise the API version."
        )
    deadline = time.monotonic() + config.timeout_seconds
    # An asset-triggered run refreshes what is downstream of the tables that changed, not the lists.
    listed = resolve_tableau_content(session, config.content()) if changed is None else {}
    lineage: dict[ContentRef, ResolvedContent] = {}
    without_extracts: list[str] = []
    requests = 0
    if config.upstream_tables and changed != []:
        # Every table of the domain (one query all the same): a content's tables are its asset's
        # dependencies and what stale_only compares; an asset-triggered run keeps what a change is under.
        resolution = resolve_tableau_lineage(session, config.tables())
        without_extracts = [
            key for key in resolution.tables_without_extracts if changed is None or key in changed
        ]
        requests = resolution.requests
        for key in without_extracts:
            logger.warning(
                "Domain %r: no extract downstream of %s in Tableau's lineage (no published data source or "
                "workbook extract is built on it): nothing to refresh for it",
                config.name,
                key,
            )
        lineage = resolve_tableau_lineage_content(session, list(resolution.content), changed)
    merged = resolved = merge_content(listed, lineage)
    skipped: list[RefreshJob] = []
    if config.refresh == "stale_only":
        known = last_materializations({t for content in merged.values() for t in content.tables})
        resolved, skipped = stale_only(merged, known)
    progress = ProgressReport(
        f"tableau-refresh-{config.name}-progress",
        total=len(resolved),
        unit="refreshes finished",
        title=f"Tableau refresh of domain **{config.name}**",
    )
    refreshes = trigger_tableau_refreshes(
        session, resolved, incremental=config.incremental, deadline=deadline, policy=policy
    )
    report_progress(progress, refreshes)
    refreshes = wait_for_tableau_jobs(
        session,
        refreshes,
        deadline=deadline,
        policy=policy,
        on_progress=lambda current: report_progress(progress, current),
    )
    report_progress(progress, refreshes)
    return _Outcome(refreshes + skipped, merged, without_extracts, requests)


def _materialize_assets(site: TableauSite, summary: DomainRefreshSummary) -> None:
    """Materialize every content the run refreshed (or failed to) as a Prefect asset; a content skipped
    as up to date is not materialized again."""
    for row in summary.refreshes:
        if row.status == UP_TO_DATE or not row.content_id:
            continue
        metadata = {
            "status": row.status,
            "job_id": row.job_id,
            "finish_code": row.finish_code,
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
            "duration_seconds": row.duration_seconds,
            "project": row.project,
            "brought_in_by": row.brought_in_by,
            "domain": summary.domain,
        }
        if row.notes:
            metadata["notes"] = row.notes
        materialize_content(
            site.server_url,
            site.site_content_url,
            ContentAsset(
                kind=row.kind,
                luid=row.content_id,
                name=row.content,
                url=row.url,
                owner=row.owner,
                tables=tuple(row.tables),
                status=row.status,
                metadata=metadata,
            ),
        )


def report_progress(progress: ProgressReport, refreshes: list[RefreshJob]) -> None:
    """Update the progress artifact: refreshes finished of the total, and how many ended how."""
    statuses = Counter(r.status for r in refreshes)
    finished = sum(n for status, n in statuses.items() if status != "running")
    note = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    progress.update(finished, note=note)


def _day(summary: DomainRefreshSummary) -> str:
    queued = [row.queued_at for row in summary.refreshes if row.queued_at]
    return f" on {min(queued):%Y-%m-%d}" if queued else ""


def _scope(summary: DomainRefreshSummary) -> str:
    """What the run covered, when it was not simply the domain's lists: the skipped, the changed tables,
    the tables with no extract downstream."""
    parts = []
    if summary.up_to_date:
        parts.append(f", {len(summary.up_to_date)} up to date (skipped: refresh stale_only)")
    if summary.changed_tables is not None:
        parts.append(
            f"; asset-triggered: content downstream of {len(summary.changed_tables)} changed table(s) "
            f"({', '.join(summary.changed_tables) or 'none'})"
        )
    if summary.tables_without_extracts:
        parts.append(f"; WARNING no extract downstream of {', '.join(summary.tables_without_extracts)}")
    return "".join(parts)


def _report(summary: DomainRefreshSummary) -> None:
    """Publish the table artifact; raise ``DomainRefreshError`` naming every refresh that did not succeed."""
    failed, up_to_date = summary.failed, summary.up_to_date
    total = len(summary.refreshes) - len(up_to_date)
    if summary.connected_app:
        held = (
            f"connected app `{summary.connected_app}`, capacity slot after {summary.lease_wait_seconds:.1f} s"
        )
    else:
        held = f"PAT `{summary.pat}` leased after {summary.lease_wait_seconds:.1f} s"
    create_table_artifact(
        key=f"tableau-refresh-{summary.domain}",
        table=artifact_rows(summary),
        description=(
            f"Tableau refresh of domain **{summary.domain}**: {total - len(failed)}/{total} succeeded"
            f"{_scope(summary)}; {held}; {summary.sign_ins} sign-in(s). Times UTC{_day(summary)}."
        ),
    )
    if failed:
        reasons = "; ".join(
            f"{r.kind} {r.project}/{r.content}: {r.status}" + (f" ({r.notes})" if r.notes else "")
            for r in failed
        )
        if any(r.status == QUOTA_EXHAUSTED for r in failed):
            reasons += (
                ". Tableau Cloud cancelled the jobs marked quota exhausted because the site's daily job "
                "capacity is spent; it resets at 24:00 UTC. They were not retried"
            )
        raise DomainRefreshError(
            f"Domain {summary.domain!r}: {len(failed)} of {total} refreshes did not succeed: {reasons}",
            summary,
        )


@flow(name="refresh-tableau-domains")
def refresh_domains(
    domains: list[str] | None = None, config_path: str | None = None, poll_policy: PollPolicy | None = None
) -> dict[str, str]:
    """Refresh several domains at once (default: all), each as a ``refresh-tableau-domain`` subflow.

    Returns:
        domain -> final state name of its subflow run. Raises if any domain failed, after all ended.
    """
    names = domains or sorted(load_domains(config_path))
    if not names:
        raise DomainConfigError(f"{domains_file(config_path)} defines no domains: nothing to refresh.")
    for name in names:  # fail on an unknown name before anything starts
        load_domain(name, config_path)

    def run(domain: str) -> State:
        return refresh_domain(domain, config_path, poll_policy, return_state=True)

    # Each thread runs in a copy of this run's context, so that the domains are its subflows.
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {name: pool.submit(contextvars.copy_context().run, run, name) for name in names}
        states = {name: future.result() for name, future in futures.items()}
    failed = {d: s.message for d, s in states.items() if not s.is_completed()}
    if failed:
        raise DomainRefreshError(f"{len(failed)} of {len(names)} domains failed: {failed}")
    return {d: s.name for d, s in states.items()}
