"""The Tableau refresh flows: ``refresh_domain`` (one domain, through one leased PAT or a connected app;
each domain's deployment runs it) and ``refresh_domains`` (several at once, for back-fills). The
protocol is in docs/architecture.md, "Tableau refresh"."""

from __future__ import annotations

import contextvars
import datetime as dt
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import State

from tasks.common import ProgressReport
from tasks.tableau.connected_app import hold_refresh_capacity, load_connected_app
from tasks.tableau.domains import Domain, DomainConfigError, domains_file, load_domain, load_domains
from tasks.tableau.pat_pool import lease_pat, load_pool
from tasks.tableau.refresh import (
    QUOTA_EXHAUSTED,
    DomainRefreshError,
    DomainRefreshSummary,
    PollPolicy,
    RefreshJob,
    RefreshRow,
    resolve_tableau_content,
    trigger_tableau_refreshes,
    wait_for_tableau_jobs,
)
from tasks.tableau.session import ConnectedAppCredentials, TableauSession


def _clock(value: dt.datetime | None) -> str:
    return f"{value:%H:%M:%S}" if value else ""


def artifact_rows(summary: DomainRefreshSummary) -> list[dict[str, object]]:
    """The rows of the domain's table artifact, one per content: what and how it ended first, then
    times of day (UTC; the date is in the description), notes, finish code and Tableau job id."""
    return [
        {
            "content": f"{row.kind} {row.project}/{row.content}",
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
) -> DomainRefreshSummary:
    """Refresh every data source and workbook of ``domain``, through one leased PAT or, if the domain
    names a connected app, with the app's own JWT session while holding a slot of its refresh capacity.

    A progress artifact ``tableau-refresh-<domain>-progress`` shows the refreshes finished of the total
    while the run waits; the table artifact ``tableau-refresh-<domain>`` lists them at the end.

    Args:
        domain: name of the domain in the domain configuration file.
        config_path: that file; default ``$TABLEAU_DOMAINS_FILE`` or ``tableau_domains.yaml``.
        poll_policy: polling intervals (seconds); default ``PollPolicy()``.

    Returns:
        The run's summary: PAT block name (or connected app block name), wait for the PAT or the
        capacity slot (seconds), sign-ins, one row per content (persisted as the run's result; on
        failure carried by the ``DomainRefreshError``).

    Raises:
        DomainConfigError: unknown domain, invalid configuration, or incremental refreshes on a
            site older than REST API 3.25 (nothing started).
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

    if config.connected_app_block:
        name = config.connected_app_block
        app = load_connected_app(name, needed_by=f"domain {domain!r}")
        with hold_refresh_capacity(app, block_name=name) as wait:
            logger.info(
                "Domain %r holds a slot of %r (waited %.1f s)", domain, app.concurrency_limit_name, wait
            )
            with TableauSession(app.site, ConnectedAppCredentials(app, name)) as session:
                refreshes = _refresh(session, config, policy)
                sign_ins = session.sign_ins
        held = {"connected_app": name, "lease_wait_seconds": wait}
    else:
        pool, pats = load_pool(config.pat_pool_block, needed_by=f"domain {domain!r}")
        with lease_pat(pool, pool_block_name=config.pat_pool_block) as lease:
            logger.info(
                "Domain %r holds PAT %r (waited %.1f s)", domain, lease.pat_block_name, lease.wait_seconds
            )
            with TableauSession(pool.site, pats[lease.pat_block_name], lease.pat_block_name) as session:
                refreshes = _refresh(session, config, policy)
                sign_ins = session.sign_ins
        held = {"pat": lease.pat_block_name, "lease_wait_seconds": lease.wait_seconds}

    summary = DomainRefreshSummary(
        domain=domain, sign_ins=sign_ins, refreshes=[RefreshRow.of(r) for r in refreshes], **held
    )
    _report(summary)
    return summary


def _refresh(session: TableauSession, config: Domain, policy: PollPolicy) -> list[RefreshJob]:
    """Resolve, trigger and wait, with the progress artifact of the domain's run."""
    if config.incremental and not session.server.check_at_least_version("3.25"):
        raise DomainConfigError(
            f"Domain {config.name!r} asks for incremental refreshes, which need REST API 3.25 or later; "
            f"the site uses {session.server.version}. Set incremental: false or raise the API version."
        )
    deadline = time.monotonic() + config.timeout_seconds
    resolved = resolve_tableau_content(session, config.content())
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
    return refreshes


def report_progress(progress: ProgressReport, refreshes: list[RefreshJob]) -> None:
    """Update the progress artifact: refreshes finished of the total, and how many ended how."""
    statuses = Counter(r.status for r in refreshes)
    finished = sum(n for status, n in statuses.items() if status != "running")
    note = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    progress.update(finished, note=note)


def _day(summary: DomainRefreshSummary) -> str:
    queued = [row.queued_at for row in summary.refreshes if row.queued_at]
    return f" on {min(queued):%Y-%m-%d}" if queued else ""


def _report(summary: DomainRefreshSummary) -> None:
    """Publish the table artifact; raise ``DomainRefreshError`` naming every refresh that did not succeed."""
    failed, total = summary.failed, len(summary.refreshes)
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
            f"Tableau refresh of domain **{summary.domain}**: {total - len(failed)}/{total} succeeded; "
            f"{held}; {summary.sign_ins} sign-in(s). Times UTC{_day(summary)}."
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
