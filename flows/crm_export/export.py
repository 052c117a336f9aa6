"""The weekly CRM export: one BigQuery shard of users → the CRM, on Dataflow (or Beam locally).

    resolve the shard → read the API key → launch (adopt / skip / submit) → poll → summary artifact

A rerun launches again, which adopts the job of the same name, so a shard is never paid for twice.
The flow does not retry (its tasks retry transient errors); it fails unless every record read was
accepted or dead-lettered.
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
from tasks.crm_export.jobs import RUN_LABEL, JobInfo, JobState
from tasks.crm_export.tasks import (
    CrmSettings,
    RunnerSettings,
    Source,
    export_metrics,
    launch_export_job,
    poll_export_job,
    read_crm_api_key,
    resolve_export_shard,
)

PIPELINE = "crm-export"  # the default pipeline name: job names are crm-export-YYYYMMDD


class PollSettings(BaseModel):
    """How the poll task waits. The timeout must cover FlexRS queueing (up to 6 h) plus the run."""

    interval_seconds: float = Field(default=60.0, gt=0)
    timeout_seconds: float = Field(default=8 * 3600.0, gt=0)


class ExportSummary(BaseModel):
    """What one run of the export did: the flow's result, shown as its ``crm-export`` artifact.

    ``launch``: what the launch did (``tasks.crm_export.jobs.LaunchResult``). ``records_*``, ``batches``,
    ``retries``, ``http_status`` (responses by HTTP status): the job's counters
    (``pipelines.crm_export.accounting.Counters``). ``batch_size``: records per batch posted.
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
    records_read: int
    records_accepted: int
    records_rejected: int
    records_malformed: int
    records_dead_lettered: int
    batches: int
    batch_size: Distribution | None
    retries: int
    http_status: dict[int, int]
    duration_seconds: float
    records_per_second: int | None
    dead_letter_prefix: str
    estimated_cost: CostEstimate | None


@flow(name="crm-export", persist_result=True)
def crm_export(
    source: Source,
    crm: CrmSettings,
    runner: RunnerSettings,
    dead_letter_location: str,
    shard_date: dt.date | None = None,
    force: bool = False,
    poll: PollSettings | None = None,
    prices: DataflowPrices | None = None,
    pipeline_name: str = PIPELINE,
) -> ExportSummary:
    """Export one shard of the user table to the CRM; returns the summary the artifact shows.

    ``shard_date``: the shard to export (default: the latest existing). ``force``: export again even
    if a job of this shard is already DONE. ``dead_letter_location``: a directory or gs:// prefix;
    each job writes ``<location>/<job name>[-force-<flow run id>]/dead-letter-*.jsonl``.
    ``pipeline_name``: the job name's prefix; give each export of one project and region its own.
    Raises ``ShardNotFoundError``, ``SecretBlockNotFoundError``, ``JobFailedError``,
    ``JobPollTimeoutError`` or ``AccountingError``.
    """
    logger = get_run_logger()
    poll = poll or PollSettings()
    prices = prices or DataflowPrices()
    shard = resolve_export_shard(source, shard_date)
    name = job_name(pipeline_name, shard)
    # A resubmission after a FAILED job reuses the idempotency namespace, so batches the CRM already
    # took are not applied twice; a forced export gets its own, or the CRM would ignore it as a replay.
    namespace = f"{name}-force-{flow_run.id}" if force else name
    dead_letter_prefix = f"{dead_letter_location.rstrip('/')}/{namespace}/dead-letter"
    pipeline_args = [
        *source.pipeline_args(shard),
        *crm.pipeline_args(),
        f"--dead_letter_prefix={dead_letter_prefix}",
        f"--idempotency_namespace={namespace}",
    ]
    labels = {
        "pipeline": pipeline_name,
        "shard-date": f"{shard:%Y-%m-%d}",
        RUN_LABEL: str(flow_run.id),
    }
    api_key = read_crm_api_key(crm.api_key_block)
    launched = launch_export_job(runner, name, pipeline_args, labels, api_key, force)
    if launched.action == "skipped":
        logger.info(
            "Shard %s was already exported by job %s; pass force=True to export it again",
            shard,
            launched.job_id,
        )
    started = dt.datetime.now(dt.UTC)
    job = poll_export_job(runner, launched.job_id, poll.interval_seconds, poll.timeout_seconds)
    metrics = export_metrics(runner, job.id)
    summary = _summary(shard, launched.action, job, metrics, dead_letter_prefix, prices, started)
    create_markdown_artifact(key="crm-export", markdown=_markdown(summary), description=f"CRM export {name}")
    check_accounting(metrics.counters)
    return summary


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
        records_read=counters.records_read,
        records_accepted=counters.records_accepted,
        records_rejected=counters.records_rejected,
        records_malformed=counters.records_malformed,
        records_dead_lettered=counters.records_dead_lettered,
        batches=counters.batches,
        batch_size=metrics.batch_size,
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
        ("Records read", f"{summary.records_read:,}"),
        ("Accepted by the CRM", f"{summary.records_accepted:,}"),
        (
            "Dead-lettered",
            f"{summary.records_dead_lettered:,} (rejected by the CRM {summary.records_rejected:,}, "
            f"malformed {summary.records_malformed:,})",
        ),
        ("Batches", f"{summary.batches:,}"),
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
