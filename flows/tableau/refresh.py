"""Refresh the Tableau content of a business domain through a PAT lease (design.md §3).

``refresh_domain`` is the flow each domain's deployment runs: it leases one PAT of the pool, signs
in once, triggers every refresh of the domain, waits for all of them with that same credential
token, signs out, releases the PAT, publishes a table artifact, and fails (after every refresh
has ended) if any refresh failed, naming them. ``refresh_domains`` runs several domains at once,
for the demo and for back-fills.
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import State

from tasks.tableau.domains import Domain, DomainConfigError, domains_file, load_domain, load_domains
from tasks.tableau.pat_pool import lease_pat, load_pool
from tasks.tableau.refresh import (
    DomainRefreshError,
    PollPolicy,
    RefreshJob,
    resolve_tableau_content,
    trigger_tableau_refreshes,
    wait_for_tableau_jobs,
)
from tasks.tableau.session import TableauSession


def _iso(value) -> str:
    return value.isoformat() if value else ""


def refresh_rows(refreshes: list[RefreshJob]) -> list[dict[str, object]]:
    """The rows of the domain's table artifact: one per content, JSON-ready."""
    return [
        {
            "content": r.content.name,
            "kind": r.content.kind,
            "project": r.project,
            "job_id": r.job_id or "",
            "adopted": r.adopted,
            "status": r.status,
            "finish_code": r.finish_code,
            "queued_at": _iso(r.created_at),
            "started_at": _iso(r.started_at),
            "finished_at": _iso(r.completed_at),
            "duration_seconds": r.duration_seconds,
            "notes": r.notes,
        }
        for r in refreshes
    ]


@flow(name="refresh-tableau-domain", flow_run_name="refresh-{domain}", persist_result=True)
def refresh_domain(
    domain: str,
    config_path: str | None = None,
    poll_policy: PollPolicy | None = None,
) -> dict[str, object]:
    """Refresh every data source and workbook of ``domain`` through one leased PAT.

    Args:
        domain: name of the domain in the domain configuration file.
        config_path: that file; default ``$TABLEAU_DOMAINS_FILE`` or ``tableau_domains.yaml``.
        poll_policy: polling intervals (seconds); default ``PollPolicy()``.

    Returns:
        Summary: domain, PAT block name, lease wait (seconds), sign-ins, and one row per content
        (persisted as the run's result; on failure carried by the ``DomainRefreshError``).

    Raises:
        DomainConfigError: unknown domain, invalid configuration, or incremental refreshes on a
            site older than REST API 3.25 (nothing started).
        BlockNotFoundError: the pool or one of its PAT blocks is missing (nothing started).
        PatPoolError: the pool's global concurrency limits are missing or disabled (nothing started).
        ContentResolutionError: content missing or ambiguous on the site (nothing started).
        TableauAuthError: Tableau refused the PAT (401001).
        DomainRefreshError: after every refresh ended, if any did not succeed.
    """
    logger = get_run_logger()
    config = load_domain(domain, config_path)
    policy = poll_policy or PollPolicy()
    pool, pats = load_pool(config.pat_pool_block, needed_by=f"domain {domain!r}")

    with lease_pat(pool, pool_block_name=config.pat_pool_block) as lease:
        logger.info(
            "Domain %r holds PAT %r (waited %.1f s)", domain, lease.pat_block_name, lease.wait_seconds
        )
        with TableauSession(pool.site, pats[lease.pat_block_name], lease.pat_block_name) as session:
            if config.incremental and not session.server.check_at_least_version("3.25"):
                raise DomainConfigError(
                    f"Domain {domain!r} asks for incremental refreshes, which need REST API 3.25 or later; "
                    f"the site uses {session.server.version}. Set incremental: false or raise the API version."
                )
            deadline = time.monotonic() + config.timeout_seconds
            resolved = resolve_tableau_content(session, config.content())
            refreshes = trigger_tableau_refreshes(
                session, resolved, incremental=config.incremental, deadline=deadline, policy=policy
            )
            refreshes = wait_for_tableau_jobs(session, refreshes, deadline=deadline, policy=policy)
            sign_ins = session.sign_ins

    return _report(config, refreshes, pat=lease.pat_block_name, wait=lease.wait_seconds, sign_ins=sign_ins)


def _report(
    config: Domain, refreshes: list[RefreshJob], *, pat: str, wait: float, sign_ins: int
) -> dict[str, object]:
    rows = refresh_rows(refreshes)
    failed = [r for r in refreshes if not r.succeeded]
    create_table_artifact(
        key=f"tableau-refresh-{config.name}",
        table=rows,
        description=(
            f"Tableau refresh of domain **{config.name}**: {len(refreshes) - len(failed)}/{len(refreshes)} "
            f"succeeded; PAT `{pat}` leased after {wait:.1f} s; {sign_ins} sign-in(s)."
        ),
    )
    summary = {
        "domain": config.name,
        "pat": pat,
        "lease_wait_seconds": wait,
        "sign_ins": sign_ins,
        "refreshes": rows,
    }
    if failed:
        reasons = "; ".join(f"{r.content}: {r.status}" + (f" ({r.notes})" if r.notes else "") for r in failed)
        raise DomainRefreshError(
            f"Domain {config.name!r}: {len(failed)} of {len(refreshes)} refreshes did not succeed: {reasons}",
            summary,
        )
    return summary


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
