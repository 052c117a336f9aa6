"""The weekly CRM export: one BigQuery shard of users → the CRM (HubSpot, Braze or a generic JSON batch
endpoint), on Dataflow (or Beam locally), sending only what changed since the last DONE export.

    load the CRM's block → resolve the shard → check the field map → read the last export's state and the key
      → launch (adopt / skip / plan full or diff and submit) → poll → summary artifact → record the state

A rerun launches again, which adopts the job of the same name, so a shard is never paid for twice.
The flow does not retry (its tasks retry transient errors); it fails unless every row of the shard was
skipped unchanged, accepted or dead-lettered.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from pipelines.crm_export.accounting import Distribution, ExportMetrics, check_accounting
from pipelines.crm_export.settings import job_name
from tasks.crm_export.cost import CostEstimate, DataflowPrices, estimate_cost
from tasks.crm_export.diff import ExportState, export_fingerprint
from tasks.crm_export.jobs import RUN_LABEL, JobFailedError, JobInfo, JobState
from tasks.crm_export.tasks import (
    CrmSettings,
    PlanRequest,
    RunnerSettings,
    Source,
    check_export_fields,
    export_metrics,
    launch_export_job,
    load_crm_destination,
    poll_export_job,
    read_crm_api_key,
    read_export_state,
    resolve_export_shard,
    write_export_state,
)

PIPELINE = "crm-export"  # the default pipeline name: job names are crm-export-YYYYMMDD
#: The job label saying whether a job was a forced export (its dead letters are then its own).
FORCED_LABEL = "forced"


class CrmCredentialsError(PermissionError):
    """The CRM refused the key of its block (401/403): the job failed before it sent anything it could lose."""


class PollSettings(BaseModel):
    """How the poll task waits. The timeout must cover FlexRS queueing (up to 6 h) plus the run."""

    interval_seconds: float = Field(default=60.0, gt=0)
    timeout_seconds: float = Field(default=8 * 3600.0, gt=0)


class ExportSummary(BaseModel):
    """What one run of the export did: the flow's result, shown as its artifact ``<pipeline_name>`` (``crm-export``).

    ``launch``: what the launch did (``tasks.crm_export.jobs.LaunchResult``). ``sync``: ``full`` or
    ``diff against <shard date>`` (the job's labels). ``rows_in_shard``, ``records_unchanged`` (skipped),
    ``records_*``, ``batches``, ``requests`` (HTTP requests sent), ``retries``, ``http_status`` (responses
    by HTTP status): the job's counters (``pipelines.crm_export.accounting.Counters``); rows in shard =
    unchanged + accepted + dead-lettered. ``batch_size``: records per batch posted.
    ``duration_seconds``: from the job's creation to its final state. ``dead_letter_prefix``: the
    dead-letter files are ``<prefix>-*.jsonl``. ``estimated_cost``: None unless the runner reported
    resource metrics (Dataflow).
    """

    model_config = ConfigDict(frozen=True)

    shard_date: dt.date
    job_name: str
    job_id: str
    launch: Literal["submitted", "adopted", "skipped"]
    state: JobState
    sync: str
    rows_in_shard: int
    records_unchanged: int
    records_read: int
    records_accepted: int
    records_rejected: int
    records_malformed: int
    records_dead_lettered: int
    batches: int
    batch_size: Distribution | None
    requests: int
    retries: int
    http_status: dict[int, int]
    duration_seconds: float
    records_per_second: int | None
    dead_letter_prefix: str
    estimated_cost: CostEstimate | None

    @property
    def adds_up(self) -> bool:
        """Every row of the shard was skipped unchanged, accepted or dead-lettered."""
        return (
            self.rows_in_shard == self.records_unchanged + self.records_accepted + self.records_dead_lettered
        )


@flow(name="crm-export", persist_result=True)
def crm_export(
    source: Source,
    crm: CrmSettings,
    runner: RunnerSettings,
    dead_letter_location: str,
    shard_date: dt.date | None = None,
    force: bool = False,
    full_resync: bool = False,
    poll: PollSettings | None = None,
    prices: DataflowPrices | None = None,
    pipeline_name: str = PIPELINE,
) -> ExportSummary:
    """Export one shard of the user table to the CRM; returns the summary the artifact shows.

    ``crm``: the CRM's block (``crm.block``, e.g. ``hubspot-crm/hubspot``: its API, URL, field map and
    key) and how records are sent. ``shard_date``: the shard to export (default: the latest existing). ``force``: export again even
    if a job of this shard is already DONE. ``full_resync``: send every row, not only what changed since
    the last DONE export (the first export of a pipeline is a full one anyway). ``dead_letter_location``:
    a directory or gs:// prefix; each job writes ``<location>/<job name>[-force-<flow run id>]/dead-letter-*.jsonl``.
    ``pipeline_name``: the job name's prefix and the name of the state variable ``crm_export_<pipeline>``;
    give each export of one project and region its own. Raises ``BlockNotFoundError`` (a missing CRM
    block), ``ShardNotFoundError``, ``ShardFieldError``, ``SecretBlockNotFoundError``, ``CrmCredentialsError``,
    ``JobFailedError``, ``JobPollTimeoutError`` or ``AccountingError``.
    """
    logger = get_run_logger()
    poll = poll or PollSettings()
    prices = prices or DataflowPrices()
    if source.kind == "local" and "://" in dead_letter_location:
        raise ValueError(
            f"dead_letter_location {dead_letter_location!r}: a local source needs a local directory (the diff "
            "plan writes the rows to send there)"
        )
    settings = crm.pipeline_settings(load_crm_destination(crm.block))
    shard = resolve_export_shard(source, shard_date)
    check_export_fields(source, shard, settings, crm.block)
    state = read_export_state(pipeline_name)
    name = job_name(pipeline_name, shard)
    namespace = _namespace(name, str(flow_run.id) if force else None)
    work_prefix = _work_prefix(dead_letter_location, namespace)
    pipeline_args = [
        *settings.pipeline_args(),
        f"--dead_letter_prefix={work_prefix}/dead-letter",
        f"--idempotency_namespace={namespace}",
    ]
    labels = {
        "pipeline": pipeline_name,
        "shard-date": f"{shard:%Y-%m-%d}",
        RUN_LABEL: str(flow_run.id),
        FORCED_LABEL: "true" if force else "false",
    }
    plan = PlanRequest(
        source=source,
        shard=shard,
        crm=settings,
        state=state,
        full_resync=full_resync,
        work_prefix=f"{work_prefix}/plan",
    )
    api_key = read_crm_api_key(crm.block)
    launched = launch_export_job(runner, name, pipeline_args, labels, api_key, force, plan)
    if launched.action == "skipped":
        logger.info(
            "Shard %s was already exported by job %s; pass force=True to export it again",
            shard,
            launched.job_id,
        )
    started = dt.datetime.now(dt.UTC)
    try:
        job = poll_export_job(
            runner, launched.job_id, poll.interval_seconds, poll.timeout_seconds, f"{pipeline_name}-progress"
        )
    except JobFailedError as failed:
        if any("CrmRejectedCredentialsError" in error for error in failed.errors):
            raise CrmCredentialsError(
                f"the CRM at {settings.url} refused the key of CRM block {crm.block!r} (crm.block): check the "
                "key (the block's own, or the one in the secret block it names) and its permission to import "
                f"users; job {failed.job.name} failed before any record was accepted with it"
            ) from None
        raise
    metrics = export_metrics(runner, job.id)
    forced_by = job.labels.get(RUN_LABEL) if job.labels.get(FORCED_LABEL) == "true" else None
    dead_letter_prefix = f"{_work_prefix(dead_letter_location, _namespace(job.name, forced_by))}/dead-letter"
    summary = _summary(shard, launched.action, job, metrics, dead_letter_prefix, prices, started)
    create_markdown_artifact(key=pipeline_name, markdown=_markdown(summary), description=f"CRM export {name}")
    check_accounting(metrics.counters)
    if state is None or shard >= state.shard_date:
        write_export_state(
            pipeline_name,
            ExportState(
                shard_date=shard,
                job_name=job.name,
                job_id=job.id,
                source=source.location(shard),
                dead_letter_prefix=dead_letter_prefix,
                fingerprint=export_fingerprint(settings),
                exported_at=dt.datetime.now(dt.UTC),
            ),
        )
    return summary


def _namespace(job_name: str, forced_by: str | None) -> str:
    """The idempotency namespace (and work directory) of a job: its name, so that a resubmission after a
    FAILED job does not apply again the batches the CRM already took; for a forced export (``forced_by``:
    the forcing flow run's id) a namespace of its own, or the CRM would ignore it as a replay."""
    return f"{job_name}-force-{forced_by}" if forced_by else job_name


def _work_prefix(dead_letter_location: str, namespace: str) -> str:
    """Where a job's dead letters (``<prefix>/dead-letter-*.jsonl``) and diff plan (``<prefix>/plan``) go."""
    return f"{dead_letter_location.rstrip('/')}/{namespace}"


def _sync(job: JobInfo) -> str:
    if job.labels.get("sync") == "diff":
        return f"diff against {job.labels.get('sync-base', '?')}"
    return job.labels.get("sync", "full")


def _summary(
    shard: dt.date,
    action: Literal["submitted", "adopted", "skipped"],
    job: JobInfo,
    metrics: ExportMetrics,
    dead_letter_prefix: str,
    prices: DataflowPrices,
    started: dt.datetime,
) -> ExportSummary:
    counters = metrics.counters
    if job.create_time and job.state_time:
        duration = (job.state_time - job.create_time).total_seconds()
    else:
        duration = (
            metrics.resources.get("wall_seconds") or (dt.datetime.now(dt.UTC) - started).total_seconds()
        )
    return ExportSummary(
        shard_date=shard,
        job_name=job.name,
        job_id=job.id,
        launch=action,
        state=job.state,
        sync=_sync(job),
        rows_in_shard=counters.records_read if counters.rows_in_shard is None else counters.rows_in_shard,
        records_unchanged=counters.records_unchanged,
        records_read=counters.records_read,
        records_accepted=counters.records_accepted,
        records_rejected=counters.records_rejected,
        records_malformed=counters.records_malformed,
        records_dead_lettered=counters.records_dead_lettered,
        batches=counters.batches,
        batch_size=metrics.batch_size,
        requests=counters.requests,
        retries=counters.retries,
        http_status=dict(sorted(counters.http_status.items())),
        duration_seconds=round(duration, 1),
        records_per_second=round(counters.records_read / duration) if duration else None,
        dead_letter_prefix=dead_letter_prefix,
        estimated_cost=estimate_cost(metrics.resources, prices),
    )


def _markdown(summary: ExportSummary) -> str:
    batch = summary.batch_size
    cost = summary.estimated_cost
    rows = [
        ("Shard", f"{summary.shard_date:%Y-%m-%d}"),
        ("Job", f"`{summary.job_name}` ({summary.job_id}), {summary.launch}, {summary.state.value}"),
        ("Sync", summary.sync),
        ("Rows in shard", f"{summary.rows_in_shard:,}"),
        ("Skipped unchanged", f"{summary.records_unchanged:,}"),
        ("Records read", f"{summary.records_read:,}"),
        ("Accepted by the CRM", f"{summary.records_accepted:,}"),
        (
            "Dead-lettered",
            f"{summary.records_dead_lettered:,} (rejected by the CRM {summary.records_rejected:,}, "
            f"malformed {summary.records_malformed:,})",
        ),
        (
            "Accounting",
            f"{summary.rows_in_shard:,} rows = {summary.records_unchanged:,} unchanged + "
            f"{summary.records_accepted:,} accepted + {summary.records_dead_lettered:,} dead-lettered"
            + ("" if summary.adds_up else " — DOES NOT ADD UP"),
        ),
        ("Batches", f"{summary.batches:,}"),
        ("Requests sent", f"{summary.requests:,}"),
        ("Batch size", f"min {batch.min:,}, mean {batch.mean:,.1f}, max {batch.max:,}" if batch else "-"),
        ("Retries", f"{summary.retries:,}"),
        ("HTTP statuses", ", ".join(f"{k}: {v:,}" for k, v in summary.http_status.items()) or "-"),
        ("Duration", f"{summary.duration_seconds:,.1f} s ({summary.records_per_second or 0:,} records/s)"),
        ("Dead letters", f"`{summary.dead_letter_prefix}-*.jsonl`"),
        (
            "Estimated Dataflow cost",
            f"${cost.usd:.2f} ({cost.vcpu_hours:.2f} vCPU-h, {cost.memory_gb_hours:.1f} GB-h memory, "
            f"{cost.shuffle_gb:.2f} GB shuffle)"
            if cost
            else "not reported (local runner)",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"# CRM export {summary.shard_date:%Y-%m-%d}\n\n| | |\n|---|---|\n{table}\n"
