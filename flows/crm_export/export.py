"""The weekly CRM export: one BigQuery shard of users → the CRM (HubSpot, Braze or a generic JSON batch
endpoint), on Dataflow (or Beam locally), sending only what the CRM does not hold as it is (diff sync
against the sync state: docs/crm-export.md).

    load the CRM's block → resolve the shard → check it (fields, key, rows) → read the key
      → launch (adopt / skip / plan against the sync state and submit) → poll
      → record what the CRM accepted in the sync state → summary artifact → checks

A rerun launches again, which adopts the job of the same name, so a shard is never paid for twice.
The flow does not retry (its tasks retry transient errors); it fails unless every row of the shard was
skipped unchanged, accepted or dead-lettered, the sync state holds what the CRM accepted, and no more
than ``max_dead_letter_ratio`` of the shard's rows were dead-lettered (after the sync state recorded what
the CRM accepted).

A dry run (``dry_run=True``) stops where the side effects begin: it loads the block, resolves and checks
the shard, decides as the launch does and plans the export into a plan table of its own, then reports
what a real run would send (``ExportPlanPreview``) without reading the key, changing the sync state or
its Variable, submitting a job or sending anything to the CRM.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import orjson
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from pipelines.crm_export.accounting import (
    Counters,
    Distribution,
    ExportMetrics,
    check_accounting,
    check_dead_letter_ratio,
)
from pipelines.crm_export.settings import PipelineSettings, job_name
from tasks.crm_export.cost import CostEstimate, DataflowPrices, estimate_cost
from tasks.crm_export.jobs import RUN_LABEL, JobFailedError, JobInfo, JobState, LaunchResult
from tasks.crm_export.sync_state import RecordResult, SyncStateError
from tasks.crm_export.tasks import (
    BigQuerySource,
    CrmSettings,
    ExportPreview,
    PlanRequest,
    RunnerSettings,
    check_export_shard,
    export_metrics,
    launch_export_job,
    load_crm_destination,
    poll_export_job,
    preview_export_job,
    read_crm_api_key,
    record_sync_state,
    release_sync_state,
    resolve_export_shard,
    sending_processes,
)

PIPELINE = "crm-export"  # the default pipeline name: job names are crm-export-YYYYMMDD
#: The job label saying whether a job was a forced export (its dead letters are then its own).
FORCED_LABEL = "forced"
#: The label of a dry run's BigQuery query jobs.
DRY_RUN_LABEL = "dry-run"


class CrmCredentialsError(PermissionError):
    """The CRM refused the key of its block (401/403): the job failed before it sent anything it could lose."""


class CrmSettingsError(ValueError):
    """The CRM refused a setting of the CRM block that every request carries (HubSpot: an ``id_property``
    without unique values), so no request could succeed: the job failed at once, nothing dead-lettered."""


class PollSettings(BaseModel):
    """How the poll task waits. The timeout must cover FlexRS queueing (up to 6 h) plus the run."""

    interval_seconds: float = Field(default=60.0, gt=0)
    timeout_seconds: float = Field(default=8 * 3600.0, gt=0)


class ExportSummary(BaseModel):
    """What one run of the export did: the flow's result, shown as its artifact ``<pipeline_name>`` (``crm-export``).

    ``launch``: what the launch did (``tasks.crm_export.jobs.LaunchResult``). ``sync``: ``full`` or
    ``diff`` (the job's label). ``rows_in_shard``, ``records_unchanged`` (skipped: the CRM holds them as
    they are), ``records_removed_from_source`` (keys the CRM holds that the shard no longer has: never
    deleted), ``records_*`` (``records_not_sent``: the CRM's daily limit was reached first; they go out with
    the next export), ``batches``, ``requests`` (HTTP requests sent), ``requests_isolating`` (of them, the
    halves of batches the CRM refused whole for an input error), ``retries``, ``http_status`` (responses
    by HTTP status), ``dead_letter_reasons`` (dead letters by reason code): the job's counters
    (``pipelines.crm_export.accounting.Counters``); rows in shard = unchanged + accepted + dead-lettered
    + not sent.
    ``batch_size``: records per batch posted. ``sync_state``: the sync state table; ``records_recorded``:
    accepted records this run merged into it (None: not this run's to record); ``out_of_sync``: keys of
    the shard the state does not hold as they are after it (= the dead-lettered ones, duplicates aside).
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
    records_removed_from_source: int
    records_read: int
    records_accepted: int
    records_rejected: int
    records_malformed: int
    records_duplicate: int
    records_dead_lettered: int
    records_not_sent: int
    dead_letter_reasons: dict[str, int]
    batches: int
    batch_size: Distribution | None
    requests: int
    requests_isolating: int
    retries: int
    http_status: dict[int, int]
    sync_state: str
    records_recorded: int | None
    out_of_sync: int | None
    duration_seconds: float
    records_per_second: int | None
    dead_letter_prefix: str
    estimated_cost: CostEstimate | None

    @property
    def adds_up(self) -> bool:
        """Every row of the shard was skipped unchanged, accepted, dead-lettered or not sent."""
        return self.rows_in_shard == (
            self.records_unchanged
            + self.records_accepted
            + self.records_dead_lettered
            + self.records_not_sent
        )


class ExportPlanPreview(BaseModel):
    """What a dry run (``dry_run=True``) found: the flow's result then, shown as its artifact
    ``<pipeline_name>-dry-run``. Nothing was sent to the CRM, no job submitted, the key not read, the sync
    state and its Variable unchanged; the dry run wrote its plan table only.

    ``job_name``: the job a real run would submit, adopt or skip. ``launch``: what a real run would do now:
    ``submit`` (plan, then send), ``adopt`` (a job of that name is running: a real run waits for it and
    sends nothing of its own) or ``skip`` (a DONE job exported the shard; ``force=True`` exports it again);
    ``existing_job_id``: that job (adopt, skip). ``rows_in_shard``: the shard's rows.

    The plan's figures, None unless ``launch`` is ``submit``: ``sync`` (``full`` or ``diff``) and
    ``sync_reason``; ``records_unchanged`` (skipped: the sync state holds them as they are);
    ``records_duplicate`` (rows of a key another row of the shard has: dead-lettered, never sent);
    ``records_removed_from_source`` (keys the state holds that the shard no longer has: never deleted);
    ``plan_table`` (the rows a real run would send, ``project.dataset.table``, kept 30 days).
    ``records_to_send``: records a real run would put in requests (the plan's rows less duplicates; 0
    unless submit); the CRM may still refuse some (an invalid email), and rows the job finds malformed are
    dead-lettered instead. ``requests``: the CRM requests that takes at least, ``records_to_send`` /
    ``batch_size`` rounded up (retries and the halves of requests the CRM refuses whole come on top);
    ``batch_size``: records per request (``batch_size`` capped at the destination's limit: HubSpot 100,
    Braze 75 or ``objects_per_request``). ``sample_request``: the request body the CRM would receive for the
    first few records to send (shaped and mapped by the field map, as the job encodes them; users' values,
    never the key), None when nothing would be sent. ``notes``: what a real run would do first that the dry
    run does not, and rows of the sample the job would dead-letter.
    """

    model_config = ConfigDict(frozen=True)

    dry_run: Literal[True] = True
    shard_date: dt.date
    job_name: str
    launch: Literal["submit", "adopt", "skip"]
    existing_job_id: str | None
    sync: Literal["full", "diff"] | None
    sync_reason: str | None
    sync_state: str
    rows_in_shard: int
    records_unchanged: int | None
    records_duplicate: int | None
    records_removed_from_source: int | None
    records_to_send: int
    requests: int
    batch_size: int
    plan_table: str | None
    sample_request: dict[str, Any] | None
    notes: tuple[str, ...]


@flow(name="crm-export", persist_result=True)
def crm_export(
    source: BigQuerySource,
    crm: CrmSettings,
    runner: RunnerSettings,
    dead_letter_location: str,
    shard_date: dt.date | None = None,
    force: bool = False,
    full_resync: bool = False,
    max_dead_letter_ratio: Annotated[float, Field(ge=0, le=1)] = 0.01,
    poll: PollSettings | None = None,
    prices: DataflowPrices | None = None,
    pipeline_name: str = PIPELINE,
    dry_run: bool = False,
) -> ExportSummary | ExportPlanPreview:
    """Export one shard of the user table to the CRM; returns the summary the artifact shows
    (``ExportPlanPreview`` for a dry run).

    ``crm``: the CRM's block (``crm.block``, e.g. ``hubspot-crm/hubspot``: its API, URL, field map and
    key) and how records are sent. ``shard_date``: the shard to export (default: the latest existing).
    ``force``: export again even if a job of this shard is already DONE. ``full_resync``: send every row,
    not only those the sync state says the CRM does not hold as they are. ``max_dead_letter_ratio``: the
    share of the shard's rows that may be dead-lettered (0 to 1, default 1 %); above it the run fails,
    after its accepted records are recorded, naming the top reasons (``DeadLetterRatioError``). ``dead_letter_location``: a directory or gs:// prefix; each
    job writes ``<location>/<job name>[-force-<flow run id>]/dead-letter-*.jsonl`` and
    ``…/accepted-*.jsonl``. ``pipeline_name``: the job name's prefix, and the name of the sync state
    (``<pipeline>_sync_state`` in ``source.diff_dataset``; its bookkeeping in the Variable
    ``crm_export_<pipeline>``); give each export of one project and region its own. ``dry_run``: check
    and plan as a real run does, then stop and report what it would send (``ExportPlanPreview``, the
    artifact ``<pipeline_name>-dry-run``): the plan is written to ``<pipeline>_plan_YYYYMMDD_dry_run``, and
    nothing else changes (no key read, no job, no change of the sync state or its Variable, nothing sent).
    Raises ``BlockNotFoundError`` (a missing CRM block), ``ShardNotFoundError``, ``ShardFieldError``,
    ``ShardKeyError``, ``ShardEmptyError``, ``SecretBlockNotFoundError``, ``ExportInProgressError``,
    ``CrmCredentialsError``, ``CrmSettingsError``, ``JobFailedError``, ``JobPollTimeoutError``, ``AccountingError``,
    ``SyncStateError`` or ``DeadLetterRatioError``; a dry run raises those a real run raises before its job
    is submitted, ``SecretBlockNotFoundError`` aside (the key is not read).
    """
    poll = poll or PollSettings()
    prices = prices or DataflowPrices()
    settings = crm.pipeline_settings(load_crm_destination(crm.block))
    shard = resolve_export_shard(source, shard_date)
    shard_info = check_export_shard(source, shard, settings, crm.block)
    parallelism = sending_processes(runner, settings)
    name = job_name(pipeline_name, shard)
    namespace = _namespace(name, str(flow_run.id) if force else None)
    work_prefix = _work_prefix(dead_letter_location, namespace)
    labels = _job_labels(pipeline_name, shard, force)
    plan = PlanRequest(
        source=source,
        shard=shard,
        crm=settings,
        key_type=shard_info.key_type,
        full_resync=full_resync,
        pipeline_name=pipeline_name,
        accepted_prefix=f"{work_prefix}/accepted",
    )
    if dry_run:
        preview = preview_export_job(runner, name, force, plan, {**labels, DRY_RUN_LABEL: "true"})
        return _dry_run_report(
            preview, name, shard, shard_info.rows, settings.batch_limit(), plan, pipeline_name
        )
    pipeline_args = _pipeline_args(settings, source, work_prefix, namespace, parallelism)
    launched = _launch(runner, name, pipeline_args, labels, crm.block, force, plan)
    started = dt.datetime.now(dt.UTC)
    job = _wait_for_job(runner, launched.job_id, poll, pipeline_name, settings, crm.block)
    metrics = export_metrics(runner, job.id)
    recorded = record_sync_state(source, shard, settings, shard_info.key_type, pipeline_name, job)
    dead_letter_prefix = _dead_letter_prefix(dead_letter_location, job)
    summary = _summary(
        shard,
        launched.action,
        job,
        metrics,
        recorded,
        source.state_table(pipeline_name),
        dead_letter_prefix,
        prices,
        started,
    )
    create_markdown_artifact(key=pipeline_name, markdown=_markdown(summary), description=f"CRM export {name}")
    if summary.records_not_sent:
        get_run_logger().warning(
            "Not sent: %s records of shard %s: the CRM's daily limit%s was reached. They are not in the sync "
            "state and go out with the next export (after the CRM's daily reset, a run of this shard with "
            "force=True sends them)",
            f"{summary.records_not_sent:,}",
            f"{shard:%Y-%m-%d}",
            f" of {settings.daily_request_limit:,} requests" if settings.daily_request_limit else "",
        )
    _check_export(metrics.counters, recorded, summary, max_dead_letter_ratio)
    return summary


def _job_labels(pipeline_name: str, shard: dt.date, force: bool) -> dict[str, str]:
    """The job's labels: the pipeline, the shard, the flow run that launched it, whether it was forced."""
    return {
        "pipeline": pipeline_name,
        "shard-date": f"{shard:%Y-%m-%d}",
        RUN_LABEL: str(flow_run.id),
        FORCED_LABEL: "true" if force else "false",
    }


def _pipeline_args(
    settings: PipelineSettings, source: BigQuerySource, work_prefix: str, namespace: str, parallelism: int
) -> list[str]:
    """The pipeline's options: the CRM's settings, where the dead letters and accepted records go, the
    idempotency namespace, how many processes send, and the Storage Read API's endpoint if the source
    names one."""
    return [
        *settings.pipeline_args(),
        f"--dead_letter_prefix={work_prefix}/dead-letter",
        f"--accepted_prefix={work_prefix}/accepted",
        f"--idempotency_namespace={namespace}",
        f"--crm_parallelism={parallelism}",
        *(
            [f"--bigquery_storage_endpoint={source.storage_api_endpoint}"]
            if source.storage_api_endpoint
            else []
        ),
    ]


def _launch(
    runner: RunnerSettings,
    name: str,
    pipeline_args: list[str],
    labels: dict[str, str],
    block: str,
    force: bool,
    plan: PlanRequest,
) -> LaunchResult:
    """Read the CRM's key from its block and launch the job (adopt, skip or plan and submit)."""
    api_key = read_crm_api_key(block)
    launched = launch_export_job(runner, name, pipeline_args, labels, api_key, force, plan)
    if launched.action == "skipped":
        get_run_logger().info(
            "Shard %s was already exported by job %s; pass force=True to export it again",
            plan.shard,
            launched.job_id,
        )
    return launched


def _wait_for_job(
    runner: RunnerSettings,
    job_id: str,
    poll: PollSettings,
    pipeline_name: str,
    settings: PipelineSettings,
    block: str,
) -> JobInfo:
    """Poll the job until it is DONE. A job that failed releases the sync state it was planned against;
    one whose key the CRM refused (its counter ``crm_key_refused``) fails the run with
    ``CrmCredentialsError``, one that met a setting the CRM refuses (``crm_settings_refused``) with
    ``CrmSettingsError``, any other with its ``JobFailedError``."""
    try:
        return poll_export_job(
            runner, job_id, poll.interval_seconds, poll.timeout_seconds, f"{pipeline_name}-progress"
        )
    except JobFailedError as failed:
        release_sync_state(pipeline_name, failed.job)
        counters = _failure_counters(runner, failed.job)
        if counters.crm_settings_refused:
            raise CrmSettingsError(_settings_refused(settings, block, failed.job)) from None
        if counters.crm_key_refused:
            raise CrmCredentialsError(
                f"the CRM at {settings.url} refused the key of CRM block {block!r} (crm.block): check the "
                "key (the block's own, or the one in the secret block it names) and its permission to import "
                f"users; job {failed.job.name} failed before any record was accepted with it"
            ) from None
        raise


def _failure_counters(runner: RunnerSettings, job: JobInfo) -> Counters:
    """The failed ``job``'s counters, read from its metrics: whether it counted the CRM's refusal of its key
    (``crm_key_refused``) or of a setting (``crm_settings_refused``). Metrics that cannot be read say
    neither: the job's own failure is then reported."""
    try:
        return export_metrics(runner, job.id).counters
    except Exception as exc:  # noqa: BLE001 - reporting a failure: never replace it with this one
        get_run_logger().warning(
            "Could not read the metrics of the failed job %s (%s): %s", job.name, job.id, exc
        )
        return Counters()


def _settings_refused(settings: PipelineSettings, block: str, job: JobInfo) -> str:
    """The message of ``CrmSettingsError``: which setting of the CRM block, and what qualifies."""
    if settings.destination == "hubspot":
        what = (
            f"HubSpot refused id_property {settings.id_property!r} of CRM block {block!r} (crm.block): it upserts "
            "only by a property with unique values, email or a custom contact property created with unique "
            "values required (hasUniqueValue), such as external_id; set id_property to one"
        )
    else:
        what = f"the CRM at {settings.url} refused a setting of CRM block {block!r} (crm.block)"
    return f"{what}. Job {job.name} failed at the CRM's first refusal; no record was dead-lettered"


def _dead_letter_prefix(dead_letter_location: str, job: JobInfo) -> str:
    """The dead-letter files of ``job`` are ``<prefix>-*.jsonl``: in its own namespace's directory, which a
    forced export names after the flow run that forced it (from the job's labels: the job may be adopted)."""
    forced_by = job.labels.get(RUN_LABEL) if job.labels.get(FORCED_LABEL) == "true" else None
    return f"{_work_prefix(dead_letter_location, _namespace(job.name, forced_by))}/dead-letter"


def _check_export(
    counters: Counters, recorded: RecordResult | None, summary: ExportSummary, max_dead_letter_ratio: float
) -> None:
    """The run's checks, after its summary was published: every row accounted for, the sync state holding
    what the CRM accepted (when this run recorded it), the dead letters within the ratio."""
    check_accounting(counters)
    if recorded is not None:
        _check_in_sync(counters, recorded, summary.sync_state)
    check_dead_letter_ratio(
        counters,
        max_dead_letter_ratio,
        f"the dead letters are {summary.dead_letter_prefix}-*.jsonl; the accepted records are in the sync "
        "state, the dead-lettered ones go out again with the next export",
    )


def _dry_run_report(
    found: ExportPreview,
    name: str,
    shard: dt.date,
    rows_in_shard: int,
    batch_size: int,
    plan: PlanRequest,
    pipeline_name: str,
) -> ExportPlanPreview:
    """The dry run's result from what ``preview_export_job`` found: logged, and the artifact
    ``<pipeline_name>-dry-run``."""
    logger = get_run_logger()
    made = found.plan
    preview = ExportPlanPreview(
        shard_date=shard,
        job_name=name,
        launch=found.launch,
        existing_job_id=found.job.id if found.job else None,
        sync=made.mode if made else None,
        sync_reason=made.reason if made else None,
        sync_state=plan.source.state_table(pipeline_name),
        rows_in_shard=made.rows_in_shard if made else rows_in_shard,
        records_unchanged=made.unchanged if made else None,
        records_duplicate=made.duplicates if made else None,
        records_removed_from_source=made.removed_from_source if made else None,
        records_to_send=made.rows_to_send - made.duplicates if made else 0,
        requests=found.requests,
        batch_size=batch_size,
        plan_table=made.plan_table if made else None,
        sample_request=found.sample,
        notes=found.notes,
    )
    artifact = f"{pipeline_name}-dry-run"
    if made is None:
        logger.info(
            "Dry run of shard %s: a real run would %s job %s (%s) and send nothing of its own%s; nothing was sent, "
            "submitted or recorded",
            f"{shard:%Y-%m-%d}",
            found.launch,
            found.job.name,
            found.job.state.value,
            "" if found.launch == "adopt" else " (force=True exports the shard again)",
        )
    else:
        logger.info(
            "Dry run of shard %s (%s sync: %s): %s rows in the shard; %s records would be sent in %s requests "
            "of up to %s, %s unchanged, %s duplicates dead-lettered, %s keys removed from the source (kept in "
            "the CRM). The rows are in %s; a sample request is in the artifact %s. Nothing was sent to the CRM, "
            "no job submitted, the sync state %s unchanged",
            f"{shard:%Y-%m-%d}",
            made.mode,
            made.reason,
            f"{preview.rows_in_shard:,}",
            f"{preview.records_to_send:,}",
            f"{preview.requests:,}",
            f"{batch_size:,}",
            f"{made.unchanged:,}",
            f"{made.duplicates:,}",
            f"{made.removed_from_source:,}",
            made.plan_table,
            artifact,
            preview.sync_state,
        )
    for note in preview.notes:
        logger.warning("Dry run: %s", note)
    create_markdown_artifact(
        key=artifact, markdown=_preview_markdown(preview), description=f"CRM export {name}, dry run"
    )
    return preview


def _check_in_sync(counters: Counters, recorded: RecordResult, table: str) -> None:
    """After recording: the shard's keys the state does not hold as they are must be exactly the ones
    the CRM did not accept (each key's row dead-lettered for another reason than being a duplicate, or not
    sent)."""
    expected = counters.records_dead_lettered - counters.records_duplicate + counters.records_not_sent
    if recorded.out_of_sync != expected:
        raise SyncStateError(
            f"the sync state {table} does not hold {recorded.out_of_sync:,} keys of the shard as they are, where "
            f"{expected:,} were not accepted by the CRM: what the CRM holds and the state differ; the next "
            "export with full_resync=True rebuilds the state"
        )


def _namespace(job_name: str, forced_by: str | None) -> str:
    """The idempotency namespace (and work directory) of a job: its name, so that a resubmission after a
    FAILED job does not apply again the batches the CRM already took; for a forced export (``forced_by``:
    the forcing flow run's id) a namespace of its own, or the CRM would ignore it as a replay."""
    return f"{job_name}-force-{forced_by}" if forced_by else job_name


def _work_prefix(dead_letter_location: str, namespace: str) -> str:
    """Where a job's dead letters (``<prefix>/dead-letter-*.jsonl``) and accepted records
    (``<prefix>/accepted-*.jsonl``) go."""
    return f"{dead_letter_location.rstrip('/')}/{namespace}"


def _summary(
    shard: dt.date,
    action: Literal["submitted", "adopted", "skipped"],
    job: JobInfo,
    metrics: ExportMetrics,
    recorded: RecordResult | None,
    sync_state: str,
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
        sync=job.labels.get("sync", "full"),
        rows_in_shard=counters.records_read if counters.rows_in_shard is None else counters.rows_in_shard,
        records_unchanged=counters.records_unchanged,
        records_removed_from_source=counters.records_removed_from_source,
        records_read=counters.records_read,
        records_accepted=counters.records_accepted,
        records_rejected=counters.records_rejected,
        records_malformed=counters.records_malformed,
        records_duplicate=counters.records_duplicate,
        records_dead_lettered=counters.records_dead_lettered,
        records_not_sent=counters.records_not_sent,
        dead_letter_reasons=dict(
            sorted(counters.dead_letter_reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        ),
        batches=counters.batches,
        batch_size=metrics.batch_size,
        requests=counters.requests,
        requests_isolating=counters.requests_isolating,
        retries=counters.retries,
        http_status=dict(sorted(counters.http_status.items())),
        sync_state=sync_state,
        records_recorded=recorded.recorded if recorded else None,
        out_of_sync=recorded.out_of_sync if recorded else None,
        duration_seconds=round(duration, 1),
        records_per_second=round(counters.records_read / duration) if duration else None,
        dead_letter_prefix=dead_letter_prefix,
        estimated_cost=estimate_cost(metrics.resources, prices),
    )


def _markdown(summary: ExportSummary) -> str:
    batch = summary.batch_size
    cost = summary.estimated_cost
    reasons = ", ".join(f"{code}: {count:,}" for code, count in summary.dead_letter_reasons.items())
    rows = [
        ("Shard", f"{summary.shard_date:%Y-%m-%d}"),
        ("Job", f"`{summary.job_name}` ({summary.job_id}), {summary.launch}, {summary.state.value}"),
        ("Sync", f"{summary.sync} (sync state `{summary.sync_state}`)"),
        ("Rows in shard", f"{summary.rows_in_shard:,}"),
        ("Skipped unchanged", f"{summary.records_unchanged:,}"),
        ("Removed from the source", f"{summary.records_removed_from_source:,} (kept in the CRM)"),
        ("Records read", f"{summary.records_read:,}"),
        ("Accepted by the CRM", f"{summary.records_accepted:,}"),
        (
            "Dead-lettered",
            f"{summary.records_dead_lettered:,} (rejected by the CRM {summary.records_rejected:,}, "
            f"malformed {summary.records_malformed:,}, duplicate keys {summary.records_duplicate:,})",
        ),
        ("Dead letters by reason", reasons or "-"),
        (
            "Not sent",
            f"{summary.records_not_sent:,}: the CRM's daily limit was reached; they go out with the next export"
            if summary.records_not_sent
            else "0",
        ),
        (
            "Accounting",
            f"{summary.rows_in_shard:,} rows = {summary.records_unchanged:,} unchanged + "
            f"{summary.records_accepted:,} accepted + {summary.records_dead_lettered:,} dead-lettered"
            + (f" + {summary.records_not_sent:,} not sent" if summary.records_not_sent else "")
            + ("" if summary.adds_up else " — DOES NOT ADD UP"),
        ),
        (
            "Sync state",
            f"{summary.records_recorded:,} accepted records recorded; {summary.out_of_sync:,} keys of the shard "
            "not held as they are"
            if summary.records_recorded is not None
            else "not recorded by this run",
        ),
        ("Batches", f"{summary.batches:,}"),
        (
            "Requests sent",
            f"{summary.requests:,}"
            + (
                f" ({summary.requests_isolating:,} isolating inputs of batches refused whole)"
                if summary.requests_isolating
                else ""
            ),
        ),
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
    return _markdown_table(f"CRM export {summary.shard_date:%Y-%m-%d}", rows)


def _preview_markdown(preview: ExportPlanPreview) -> str:
    def figure(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    job = f"`{preview.job_name}` ({preview.existing_job_id})"
    launch = {
        "submit": f"plan the export and submit the job `{preview.job_name}`",
        "adopt": f"adopt the running job {job}: it sends nothing of its own",
        "skip": f"skip the shard, which the job {job} exported; force=True exports it again",
    }[preview.launch]
    rows = [
        ("Shard", f"{preview.shard_date:%Y-%m-%d}"),
        ("A real run would", launch),
        ("Sync", f"{preview.sync} ({preview.sync_reason})" if preview.sync else "-"),
        ("Rows in shard", figure(preview.rows_in_shard)),
        ("Records to send", figure(preview.records_to_send)),
        ("CRM requests", f"{preview.requests:,} (up to {preview.batch_size:,} records each; retries aside)"),
        ("Unchanged (skipped)", figure(preview.records_unchanged)),
        ("Duplicate keys (dead-lettered)", figure(preview.records_duplicate)),
        ("Removed from the source", figure(preview.records_removed_from_source)),
        ("Plan table", f"`{preview.plan_table}`" if preview.plan_table else "-"),
        ("Sync state", f"`{preview.sync_state}`, unchanged"),
        ("Notes", "<br>".join(preview.notes) or "-"),
    ]
    markdown = _markdown_table(f"CRM export {preview.shard_date:%Y-%m-%d}: dry run, nothing sent", rows)
    if preview.sample_request is not None:
        body = orjson.dumps(preview.sample_request, option=orjson.OPT_INDENT_2).decode()
        markdown += f"\n## A sample request, as the CRM would receive it\n\n```json\n{body}\n```\n"
    return markdown


def _markdown_table(title: str, rows: list[tuple[str, str]]) -> str:
    """A markdown artifact: the heading ``title`` and a two-column table of ``rows``."""
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"# {title}\n\n| | |\n|---|---|\n{table}\n"
