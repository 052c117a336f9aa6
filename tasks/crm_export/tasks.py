"""Prefect tasks of the CRM export, and the models of the flow's parameters (never secrets: the CRM and
its key are named by their block): the source, ``CrmSettings``, the runner.

The shard is resolved once per flow run; launch and poll are separate tasks that never cache, so a
retry really looks again (docs/crm-export.md, "Launch and poll"). Tasks retry transient errors only.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from google.api_core import exceptions as google_exceptions
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from pipelines.crm_export.accounting import ExportMetrics
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.settings import DestinationSettings, PipelineSettings, SendSettings
from tasks.common import ONCE_PER_FLOW_RUN, ProgressReport, load_block
from tasks.crm_export.diff import ExportState, check_shard_fields, plan_export, read_state, write_state
from tasks.crm_export.jobs import (
    JobInfo,
    JobLauncher,
    JobPollTimeoutError,
    JobSpec,
    JobState,
    LaunchResult,
    launch_job,
    poll_job,
)
from tasks.crm_export.secrets import load_crm_block, read_api_key

logger = logging.getLogger(__name__)

#: Errors worth retrying a task for: the network or an API that is briefly unavailable.
TRANSIENT_ERRORS = (
    ConnectionError,
    google_exceptions.ServiceUnavailable,
    google_exceptions.InternalServerError,
    google_exceptions.TooManyRequests,
    google_exceptions.DeadlineExceeded,
)


class ShardNotFoundError(LookupError):
    """The requested shard (or any shard) of the source table does not exist."""


def _shard_date(suffix: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(suffix, "%Y%m%d").date()
    except ValueError:
        return None


class BigQuerySource(BaseModel):
    """The BigQuery date-sharded table ``{project}.{dataset}.{prefix}_{YYYYMMDD}`` the export reads."""

    kind: Literal["bigquery"] = "bigquery"
    project: str = Field(description="GCP project of the dataset")
    dataset: str = Field(description="BigQuery dataset holding the shards")
    table_prefix: str = Field(description="shard name before _YYYYMMDD, e.g. crm_users")
    gcp_credentials_block: str | None = Field(
        default=None, description="name of a prefect-gcp GcpCredentials block (default: ADC)"
    )
    diff_dataset: str | None = Field(
        default=None,
        description="dataset of the diff sync's tables of rows to send, <prefix>_changed_YYYYMMDD, kept 30 days "
        "(default: the shards' dataset)",
    )

    def table(self, shard: dt.date) -> str:
        return f"{self.project}:{self.dataset}.{self.table_prefix}_{shard:%Y%m%d}"

    def location(self, shard: dt.date) -> str:
        """Where the shard is, as the export state records it: its table ``project:dataset.table``."""
        return self.table(shard)

    def _client(self) -> Any:
        from google.cloud import bigquery

        credentials = None
        if self.gcp_credentials_block:
            from prefect_gcp import GcpCredentials

            needed_by = f"BigQuery source {self.project}.{self.dataset} (source.gcp_credentials_block)"
            credentials = load_block(
                GcpCredentials, self.gcp_credentials_block, needed_by=needed_by
            ).get_credentials_from_service_account()
        return bigquery.Client(project=self.project, credentials=credentials)

    def shards(self) -> list[dt.date]:
        """Dates of the existing shards (``tables.list`` of the dataset), oldest first."""
        prefix = f"{self.table_prefix}_"
        dates = []
        for table in self._client().list_tables(f"{self.project}.{self.dataset}"):
            if table.table_id.startswith(prefix) and (date := _shard_date(table.table_id[len(prefix) :])):
                dates.append(date)
        return sorted(dates)

    def where(self) -> str:
        return f"BigQuery dataset {self.project}.{self.dataset} (tables {self.table_prefix}_YYYYMMDD)"

    def columns(self, shard: dt.date) -> list[str]:
        """The shard's columns, a RECORD's fields as dotted names (``tables.get``)."""
        from tasks.crm_export.diff import schema_columns

        return schema_columns(self._client().get_table(self.table(shard).replace(":", ".")).schema)


class LocalSource(BaseModel):
    """Newline-delimited JSON files ``{directory}/{prefix}_{YYYYMMDD}.jsonl`` shaped as the BigQuery rows."""

    kind: Literal["local"] = "local"
    directory: Path = Field(description="directory of the shard files")
    table_prefix: str = Field(description="file name before _YYYYMMDD.jsonl")

    def path(self, shard: dt.date) -> Path:
        return self.directory / f"{self.table_prefix}_{shard:%Y%m%d}.jsonl"

    def location(self, shard: dt.date) -> str:
        """Where the shard is, as the export state records it: its file's absolute path."""
        return str(self.path(shard).resolve())

    def shards(self) -> list[dt.date]:
        prefix = f"{self.table_prefix}_"
        dates = []
        for path in self.directory.glob(f"{prefix}*.jsonl"):
            if date := _shard_date(path.stem[len(prefix) :]):
                dates.append(date)
        return sorted(dates)

    def where(self) -> str:
        return f"directory {self.directory} (files {self.table_prefix}_YYYYMMDD.jsonl)"

    def columns(self, shard: dt.date) -> list[str]:
        """The columns of the shard's first row that is a JSON object."""
        from tasks.crm_export.diff import file_columns

        return file_columns(self.path(shard))


class CrmSettings(SendSettings):
    """The CRM's block (its API, URL, field map and key) and how records are shaped and sent (``SendSettings``,
    with the settings contract's defaults)."""

    block: str = Field(
        description="the CRM's block, '<block-type-slug>/<name>': hubspot-crm/..., braze-crm/... or "
        "generic-crm-endpoint/... (README, 'Choose your CRM')"
    )

    def pipeline_settings(self, destination: DestinationSettings) -> PipelineSettings:
        """Every pipeline setting: the CRM block's ``destination`` settings and these."""
        return PipelineSettings(**destination.model_dump(), **self.model_dump(exclude={"block"}))


class DataflowRunnerSettings(BaseModel):
    """Run on Dataflow with the settings of a ``DataflowOptions`` block."""

    kind: Literal["dataflow"] = "dataflow"
    options_block: str = Field(description="name of the DataflowOptions block")


class LocalRunnerSettings(BaseModel):
    """Run on Beam's local Python runner in a detached process (``tasks.crm_export.launchers.local``)."""

    kind: Literal["local"] = "local"
    registry_dir: Path = Field(description="the local job registry (job records and logs)")
    runner_args: list[str] = Field(
        default_factory=list, description="extra Beam options, e.g. --direct_num_workers=2"
    )


Source = Annotated[BigQuerySource | LocalSource, Field(discriminator="kind")]
RunnerSettings = Annotated[DataflowRunnerSettings | LocalRunnerSettings, Field(discriminator="kind")]


def make_launcher(runner: DataflowRunnerSettings | LocalRunnerSettings) -> JobLauncher:
    """The ``JobLauncher`` for the runner settings.

    Raises ``tasks.common.BlockNotFoundError`` (a ``LookupError``) naming a missing ``DataflowOptions`` block.
    """
    if isinstance(runner, LocalRunnerSettings):
        from tasks.crm_export.launchers.local import LocalLauncher

        return LocalLauncher(runner.registry_dir, tuple(runner.runner_args))
    from blocks.crm_export.dataflow import DataflowOptions
    from tasks.crm_export.launchers.dataflow import DataflowLauncher

    options = load_block(
        DataflowOptions, runner.options_block, needed_by="the CRM export (runner.options_block)"
    )
    return DataflowLauncher(options)


def resolve_shard(source: BigQuerySource | LocalSource, shard_date: dt.date | None) -> dt.date:
    """The shard to export: ``shard_date`` (it must exist), or the latest shard when it is None.

    Raises ``ShardNotFoundError`` naming the source and listing the newest shards.
    """
    shards = source.shards()
    if shard_date is None:
        if not shards:
            raise ShardNotFoundError(f"no shard in {source.where()}: nothing to export")
        return shards[-1]
    if shard_date not in shards:
        newest = ", ".join(f"{d:%Y%m%d}" for d in shards[-5:]) or "none"
        raise ShardNotFoundError(f"no shard {shard_date:%Y%m%d} in {source.where()}; newest shards: {newest}")
    return shard_date


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry on ``TRANSIENT_ERRORS`` only (never a failed job or a poll timeout)."""
    try:
        state.result()
    except JobPollTimeoutError:
        return False
    except TRANSIENT_ERRORS:
        return True
    except Exception:
        return False
    return False


@task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True, retries=3, retry_condition_fn=retry_if_transient)
def resolve_export_shard(source: BigQuerySource | LocalSource, shard_date: dt.date | None) -> dt.date:
    """Prefect task over ``resolve_shard``, cached per flow run: a retried run keeps its shard."""
    return resolve_shard(source, shard_date)


@task(cache_policy=NO_CACHE, retries=3, retry_condition_fn=retry_if_transient)
def load_crm_destination(block: str) -> DestinationSettings:
    """The CRM block's settings (``tasks.crm_export.secrets.load_crm_block``), without its key."""
    return load_crm_block(block).destination_settings()


@task(cache_policy=NO_CACHE, persist_result=False, retries=3, retry_condition_fn=retry_if_transient)
def read_crm_api_key(block: str) -> ApiKey:
    """Read the CRM's key from its block (or the secret block it names); the result is never persisted,
    cached or logged."""
    return read_api_key(block)


@task(cache_policy=NO_CACHE, retries=3, retry_condition_fn=retry_if_transient)
def check_export_fields(
    source: BigQuerySource | LocalSource, shard: dt.date, crm: PipelineSettings, block: str
) -> None:
    """Fail, before anything is sent, if the field map of the CRM's ``block`` or the key names a field the
    shard lacks (``tasks.crm_export.diff.ShardFieldError``)."""
    check_shard_fields(crm, source.columns(shard), f"shard {shard:%Y%m%d} of {source.where()}", block)


@task(cache_policy=NO_CACHE, retries=3, retry_condition_fn=retry_if_transient)
def read_export_state(pipeline_name: str) -> ExportState | None:
    """The pipeline's last DONE export (Prefect Variable ``crm_export_<pipeline>``), None before the first."""
    return read_state(pipeline_name)


@task(cache_policy=NO_CACHE, retries=3, retry_condition_fn=retry_if_transient)
def write_export_state(pipeline_name: str, state: ExportState) -> None:
    """Record a DONE export as the base of the next diff."""
    write_state(pipeline_name, state)


class PlanRequest(BaseModel):
    """What the export's plan needs (``tasks.crm_export.diff.plan_export``): made only when a job is submitted."""

    source: Source
    shard: dt.date
    crm: PipelineSettings
    state: ExportState | None
    full_resync: bool
    work_prefix: str


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=30, retry_condition_fn=retry_if_transient)
def launch_export_job(
    runner: DataflowRunnerSettings | LocalRunnerSettings,
    name: str,
    pipeline_args: list[str],
    labels: dict[str, str],
    api_key: ApiKey,
    force: bool = False,
    plan: PlanRequest | None = None,
) -> LaunchResult:
    """Adopt, skip or submit the export's job (``tasks.crm_export.jobs.launch_job``); returns what it did.

    ``plan``: planned (full or diff) just before a submit, adding the input, the plan's figures and the
    labels ``sync``/``sync-base`` to the job; ``pipeline_args`` then hold no input.
    """
    logger = get_run_logger()
    spec = JobSpec(name=name, pipeline_args=tuple(pipeline_args), labels=labels, api_key=api_key)

    def prepare() -> tuple[list[str], dict[str, str]]:
        made = plan_export(
            plan.source, plan.shard, plan.crm, plan.state, plan.full_resync, plan.work_prefix, labels
        )
        logger.info(
            "Export plan: %s (%s); %s of %s rows to send",
            made.mode,
            made.reason,
            f"{made.rows_to_send:,}",
            f"{made.rows_in_shard:,}",
        )
        return made.pipeline_args(), made.job_labels()

    return launch_job(make_launcher(runner), spec, force=force, log=logger, prepare=prepare if plan else None)


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=60, retry_condition_fn=retry_if_transient)
def poll_export_job(
    runner: DataflowRunnerSettings | LocalRunnerSettings,
    job_id: str,
    interval_seconds: float,
    timeout_seconds: float,
    progress_key: str = "crm-export-progress",
) -> JobInfo:
    """Wait for the job to end (``tasks.crm_export.jobs.poll_job``); fails unless it is DONE.

    While it waits, the progress artifact ``progress_key`` (the flow's: ``<pipeline_name>-progress``) shows the job's state and the records
    read so far where the job's metrics report them while it runs (Dataflow's committed counters; the
    local runner reports them when the job ends).
    """
    launcher = make_launcher(runner)
    progress = ProgressReport(progress_key, total=None, unit="records read", title="CRM export job")

    def report(job: JobInfo) -> None:
        progress.title = f"CRM export job `{job.name}`"
        read = _records_read(launcher, job)
        if job.state is JobState.DONE:
            progress.update(read or 0, total=read or 0, note=job.state.value)
        else:
            note = job.state.value + (f"; {read:,} records read so far" if read else "")
            progress.update(read or 0, note=note)

    return poll_job(launcher, job_id, interval_seconds, timeout_seconds, log=get_run_logger(), on_poll=report)


def _records_read(launcher: Any, job: JobInfo) -> int | None:
    """The job's ``records_read`` counter now, or None if its metrics cannot be read yet (progress only:
    an error here never fails the poll)."""
    if job.state in (JobState.PENDING, JobState.QUEUED):
        return None
    try:
        return launcher.job_metrics(job.id).counters.records_read
    except Exception as exc:
        logger.debug("No metrics of job %s yet: %s", job.id, exc)
        return None


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=30, retry_condition_fn=retry_if_transient)
def export_metrics(runner: DataflowRunnerSettings | LocalRunnerSettings, job_id: str) -> ExportMetrics:
    """The job's counters, ``batch_size`` distribution and resource metrics (``JobLauncher.job_metrics``)."""
    return make_launcher(runner).job_metrics(job_id)
