"""Prefect tasks of the CRM export, and the models of the flow's parameters (never secrets: the CRM and
its key are named by their block): the source, ``CrmSettings``, the runner.

The shard is resolved once per flow run; launch and poll are separate tasks that never cache, so a
retry really looks again (docs/crm-export.md, "Launch and poll"); the sync state is planned at launch
and recorded after a DONE job ("Sync state"). A dry run (``preview_export_job``) decides and plans as
the launch does, and stops there. Tasks retry transient errors only.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from google.api_core import exceptions as google_exceptions
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, field_validator, model_validator

from blocks.loading import load_block
from pipelines.crm_export.accounting import ExportMetrics
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.destinations import destination_for
from pipelines.crm_export.settings import (
    DUPLICATE_OF_COLUMN,
    PLAN_COLUMN_PREFIX,
    DestinationSettings,
    PipelineSettings,
    SendSettings,
)
from pipelines.crm_export.users import MalformedRowError, UserShaper
from pipelines.transport import plaintext_to_another_host
from tasks.common import ONCE_PER_FLOW_RUN, ProgressReport
from tasks.crm_export.jobs import (
    JobInfo,
    JobLauncher,
    JobPollTimeoutError,
    JobSpec,
    JobState,
    LaunchResult,
    launch_job,
    newest_job,
    poll_job,
)
from tasks.crm_export.secrets import load_crm_block, read_api_key
from tasks.crm_export.sync_state import (
    PLAN_LABEL,
    DiffSql,
    ExportInProgressError,
    ExportPlan,
    PendingExport,
    RecordedExport,
    RecordResult,
    ShardInfo,
    SyncState,
    check_shard,
    export_fingerprint,
    invalidate,
    plan_export,
    read_state,
    record_accepted,
    record_export,
    sent_fields,
    write_state,
)

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
    """The BigQuery date-sharded table ``{project}.{dataset}.{prefix}_{YYYYMMDD}`` the export reads, and the
    dataset of its sync state (docs/crm-export.md, "Sync state")."""

    kind: Literal["bigquery"] = "bigquery"
    project: str = Field(description="GCP project of the dataset (and of the BigQuery jobs)")
    dataset: str = Field(description="BigQuery dataset holding the shards")
    table_prefix: str = Field(description="shard name before _YYYYMMDD, e.g. crm_users")
    gcp_credentials_block: str | None = Field(
        default=None, description="name of a prefect-gcp GcpCredentials block (default: ADC)"
    )
    diff_dataset: str | None = Field(
        default=None,
        description="dataset of the sync state (<pipeline>_sync_state) and of the plans (the rows each job "
        "sends, <pipeline>_plan_YYYYMMDD, kept 30 days); the flow's identity creates and writes tables "
        "there (default: the shards' dataset)",
    )
    dedupe_order_by: str | None = Field(
        default=None,
        description="when the shard holds a key more than once, the row with the greatest value of this "
        "column is exported (e.g. updated_at) and the others are dead-lettered as duplicates; ties, and "
        "without it: the greatest fingerprint",
    )
    api_endpoint: str | None = Field(
        default=None,
        description="BigQuery REST endpoint, e.g. a Private Service Connect endpoint (default: Google's); "
        "http:// only for an emulator on this machine, reached without credentials",
    )
    storage_api_endpoint: str | None = Field(
        default=None,
        description="BigQuery Storage Read API endpoint the job reads with, host:port or https:// (default: "
        "Beam's ReadFromBigQuery at Google's); http:// only for an emulator on this machine",
    )

    @field_validator("api_endpoint", "storage_api_endpoint")
    @classmethod
    def _plaintext_only_to_loopback(cls, endpoint: str | None, info: Any) -> str | None:
        if endpoint and plaintext_to_another_host(endpoint):
            raise ValueError(
                f"{info.field_name} {endpoint!r}: http:// is for an emulator on this machine (a loopback "
                "host) only; BigQuery and its endpoints take https://"
            )
        return endpoint

    @model_validator(mode="after")
    def _no_credentials_over_plaintext(self) -> BigQuerySource:
        if self.gcp_credentials_block and (self.api_endpoint or "").startswith("http://"):
            raise ValueError(
                f"gcp_credentials_block {self.gcp_credentials_block!r} with the plaintext api_endpoint "
                f"{self.api_endpoint!r}: credentials are never sent over http://; drop one of the two"
            )
        return self

    def table(self, shard: dt.date) -> str:
        """The shard's table, ``project.dataset.table``."""
        return f"{self.project}.{self.dataset}.{self.table_prefix}_{shard:%Y%m%d}"

    def state_table(self, pipeline_name: str) -> str:
        """The pipeline's sync state table, ``project.<diff dataset>.<pipeline>_sync_state``."""
        return f"{self.project}.{self.diff_dataset or self.dataset}.{_table_name(pipeline_name)}_sync_state"

    def plan_table(self, pipeline_name: str, shard: dt.date, dry_run: bool = False) -> str:
        """The table of the rows a job sends, ``project.<diff dataset>.<pipeline>_plan_YYYYMMDD``; with
        ``dry_run``, a dry run's own, ``…_plan_YYYYMMDD_dry_run``, so that it never replaces a job's input."""
        table = f"{self.project}.{self.diff_dataset or self.dataset}.{_table_name(pipeline_name)}_plan_{shard:%Y%m%d}"
        return f"{table}_dry_run" if dry_run else table

    def client(self) -> Any:
        """A google-cloud-bigquery client of ``project``: the GCP Credentials block's credentials, else
        the environment's (ADC); anonymous on a plaintext (emulator) endpoint.

        Raises ``blocks.loading.BlockNotFoundError`` naming a missing credentials block."""
        from google.cloud import bigquery

        credentials, options = None, None
        if self.api_endpoint:
            from google.api_core.client_options import ClientOptions

            options = ClientOptions(api_endpoint=self.api_endpoint)
            if self.api_endpoint.startswith("http://"):
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()
        if self.gcp_credentials_block:
            from prefect_gcp import GcpCredentials

            needed_by = f"BigQuery source {self.project}.{self.dataset} (source.gcp_credentials_block)"
            credentials = load_block(
                GcpCredentials, self.gcp_credentials_block, needed_by=needed_by
            ).get_credentials_from_service_account()
        return bigquery.Client(project=self.project, credentials=credentials, client_options=options)

    def shards(self) -> list[dt.date]:
        """Dates of the existing shards (``tables.list`` of the dataset), oldest first."""
        prefix = f"{self.table_prefix}_"
        dates = []
        for table in self.client().list_tables(f"{self.project}.{self.dataset}"):
            if table.table_id.startswith(prefix) and (date := _shard_date(table.table_id[len(prefix) :])):
                dates.append(date)
        return sorted(dates)

    def where(self) -> str:
        return f"BigQuery dataset {self.project}.{self.dataset} (tables {self.table_prefix}_YYYYMMDD)"


def _table_name(pipeline_name: str) -> str:
    """A pipeline name as part of a BigQuery table name: lowercase letters, digits and ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", pipeline_name.lower()).strip("_")


class CrmSettings(SendSettings):
    """The CRM's block (its API, URL, field map and key) and how records are shaped and sent (``SendSettings``,
    with the settings contract's defaults)."""

    block: str = Field(
        description="the CRM's block, '<block-type-slug>/<name>': hubspot-crm/..., braze-crm/... or "
        "generic-crm-endpoint/... (docs/crm-export.md, 'Choose your CRM')"
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

    def sending_processes(self) -> int:
        """The job's workers at most: ``--direct_num_workers`` of ``runner_args`` (default 1)."""
        for arg in self.runner_args:
            if arg.startswith("--direct_num_workers="):
                return max(1, int(arg.split("=", 1)[1]))
        return 1


RunnerSettings = Annotated[DataflowRunnerSettings | LocalRunnerSettings, Field(discriminator="kind")]


def make_launcher(runner: DataflowRunnerSettings | LocalRunnerSettings) -> JobLauncher:
    """The ``JobLauncher`` for the runner settings.

    Raises ``blocks.loading.BlockNotFoundError`` (a ``LookupError``) naming a missing ``DataflowOptions`` block.
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


def resolve_shard(source: BigQuerySource, shard_date: dt.date | None) -> dt.date:
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
def resolve_export_shard(source: BigQuerySource, shard_date: dt.date | None) -> dt.date:
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
def sending_processes(runner: DataflowRunnerSettings | LocalRunnerSettings, crm: PipelineSettings) -> int:
    """How many processes of the job send to the CRM at once at most, among which its rate limit is shared
    (``--crm_parallelism``). Raises ``ValueError`` for a rate-limited CRM on Dataflow without
    ``max_num_workers`` (Dataflow's default autoscaling bound would leave each worker a crawl)."""
    if isinstance(runner, LocalRunnerSettings):
        return runner.sending_processes()
    from blocks.crm_export.dataflow import DataflowOptions

    options = load_block(
        DataflowOptions, runner.options_block, needed_by="the CRM export (runner.options_block)"
    )
    processes = options.sending_processes()
    if processes is None:
        if crm.rate_limit_requests:
            raise ValueError(
                f"Dataflow Options block {runner.options_block!r} has no max_num_workers: the workers pace their "
                f"requests at their share of the CRM's limit ({crm.rate_limit_requests} per "
                f"{crm.rate_limit_seconds:g} s), so the job needs a bound; set max_num_workers (a CRM-bound "
                "export needs few workers)"
            )
        return 1
    return processes


@task(cache_policy=NO_CACHE, retries=3, retry_condition_fn=retry_if_transient)
def check_export_shard(
    source: BigQuerySource, shard: dt.date, crm: PipelineSettings, block: str
) -> ShardInfo:
    """Fail before anything is launched if the shard lacks the key or a field of the field map of the CRM's
    ``block`` (``ShardFieldError``), its key column is not STRING/INT64 or misses keys (``ShardKeyError``),
    or it is empty (``ShardEmptyError``): ``tasks.crm_export.sync_state.check_shard``."""
    return check_shard(source.client(), source.table(shard), crm, block)


class PlanRequest(BaseModel):
    """What an export's plan needs (``tasks.crm_export.sync_state``): made only when a job is submitted.
    ``accepted_prefix``: where the job writes its accepted records."""

    source: BigQuerySource
    shard: dt.date
    crm: PipelineSettings
    key_type: str
    full_resync: bool
    pipeline_name: str
    accepted_prefix: str


def diff_sql(
    source: BigQuerySource, shard: dt.date, crm: PipelineSettings, key_type: str, pipeline_name: str
) -> DiffSql:
    """The diff sync statements of one export (``tasks.crm_export.sync_state.DiffSql``)."""
    return DiffSql(
        shard=source.table(shard),
        state=source.state_table(pipeline_name),
        key_field=crm.key_field,
        key_type=key_type,
        fields=sent_fields(crm),
        settings=export_fingerprint(crm),
        order_by=source.dedupe_order_by,
        casefold=destination_for(crm).keys_case_insensitive,
    )


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=30, retry_condition_fn=retry_if_transient)
def launch_export_job(
    runner: DataflowRunnerSettings | LocalRunnerSettings,
    name: str,
    pipeline_args: list[str],
    labels: dict[str, str],
    api_key: ApiKey,
    force: bool,
    plan: PlanRequest,
) -> LaunchResult:
    """Adopt, skip or submit the export's job (``tasks.crm_export.jobs.launch_job``); returns what it did.

    Just before a submit (never for an adopted or skipped job) the export is planned against the sync
    state: an earlier export still waiting to be recorded is recorded first (or, if it is still running,
    ``ExportInProgressError``), the rows to send are written to the plan table, the export becomes the
    state's ``pending`` one and its keys leave the state; the job gets the plan table as its input, the
    plan's figures and the labels ``sync`` and ``sync-plan``.
    """
    logger = get_run_logger()
    launcher = make_launcher(runner)
    spec = JobSpec(name=name, pipeline_args=tuple(pipeline_args), labels=labels, api_key=api_key)

    def prepare() -> tuple[list[str], dict[str, str]]:
        client = plan.source.client()
        sql = diff_sql(plan.source, plan.shard, plan.crm, plan.key_type, plan.pipeline_name)
        state = settle_pending(read_state(plan.pipeline_name, logger), launcher, client, sql, logger)
        made = plan_export(
            client,
            sql,
            plan.source.plan_table(plan.pipeline_name, plan.shard),
            state,
            plan.full_resync,
            labels,
        )
        log_plan(made, plan.crm, logger)
        pending = PendingExport(
            plan_id=made.plan_id,
            job_name=name,
            shard_date=plan.shard,
            accepted_prefix=plan.accepted_prefix,
            planned_at=dt.datetime.now(dt.UTC),
        )
        last = state.last_export if state else None
        write_state(
            plan.pipeline_name,
            SyncState(table=sql.state, settings_fingerprint=sql.settings, pending=pending, last_export=last),
        )
        invalidate(client, sql, made)
        return made.pipeline_args(), made.job_labels()

    return launch_job(launcher, spec, force=force, log=logger, prepare=prepare)


def plan_requests(plan: ExportPlan, crm: PipelineSettings) -> int:
    """The CRM requests an export of ``plan`` makes at least: its records to send (the plan's rows less the
    duplicates, which are dead-lettered) over ``crm.batch_limit()`` (the destination's records per
    request), rounded up. Retries, the halves of a request the CRM refuses whole, and a bundle's last,
    partial batch come on top."""
    return -(-(plan.rows_to_send - plan.duplicates) // crm.batch_limit())


def log_plan(plan: ExportPlan, crm: PipelineSettings, log: Any) -> int:
    """Log ``plan``'s figures, and a warning when its requests (``plan_requests``) pass the CRM's daily
    limit; returns those requests."""
    log.info(
        "Export plan: %s (%s); %s of %s rows to send (%s duplicates), %s unchanged, %s keys removed from "
        "the source (kept in the CRM)",
        plan.mode,
        plan.reason,
        f"{plan.rows_to_send:,}",
        f"{plan.rows_in_shard:,}",
        f"{plan.duplicates:,}",
        f"{plan.unchanged:,}",
        f"{plan.removed_from_source:,}",
    )
    requests = plan_requests(plan, crm)
    if crm.daily_request_limit and requests > crm.daily_request_limit:
        log.warning(
            "This export sends at least %s requests, more than the CRM's daily limit of %s: once it is "
            "reached the rows left are not sent, and go out with the next export",
            f"{requests:,}",
            f"{crm.daily_request_limit:,}",
        )
    return requests


#: Records of the sample request a dry run shows (``preview_export_job``).
DRY_RUN_SAMPLE_RECORDS = 3


@dataclass(frozen=True)
class ExportPreview:
    """What a dry run found (``preview_export_job``); nothing was sent, submitted or recorded.

    ``launch``: what a real run would do now (``tasks.crm_export.jobs.launch_job``): ``submit`` (plan and
    send), ``adopt`` (a job of the name is running: a real run waits for it and plans nothing) or ``skip``
    (a DONE job exported the shard; ``force=True`` exports it again). ``job``: that job (adopt, skip).
    ``plan``: the export's plan, written to the dry run's own plan table (submit only). ``requests``:
    ``plan_requests`` (0 unless submit). ``sample``: the request body the CRM would receive for the first
    records of the plan table (``sample_request``; None when nothing would be sent). ``notes``: what a real
    run would do first that a dry run does not, and rows of the sample the job would dead-letter.
    """

    launch: Literal["submit", "adopt", "skip"]
    job: JobInfo | None = None
    plan: ExportPlan | None = None
    requests: int = 0
    sample: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=30, retry_condition_fn=retry_if_transient)
def preview_export_job(
    runner: DataflowRunnerSettings | LocalRunnerSettings,
    name: str,
    force: bool,
    plan: PlanRequest,
    labels: dict[str, str],
) -> ExportPreview:
    """The dry run of ``launch_export_job``: what a real run would do with the job ``name``, and its plan.

    Lists the jobs of ``name`` as the launch does: a running one would be adopted, a DONE one skipped
    (unless ``force``), and then nothing is planned. Otherwise the export is planned against the sync
    state as the launch plans it (``plan_export``), into ``plan.source.plan_table(..., dry_run=True)``,
    the one table a dry run writes: the sync state table is neither created nor changed, the Variable
    ``crm_export_<pipeline>`` not written, no job submitted, the CRM's key not read, nothing sent.
    ``labels``: of the BigQuery query jobs. An export the state still waits for is looked at, not settled:
    a DONE one a real run records first is a note (the records to send then count its keys).

    Raises ``ExportInProgressError`` if that export's job is still running (as a real run would), and
    ``SyncStateError`` if the plan does not add up.
    """
    logger = get_run_logger()
    launcher = make_launcher(runner)
    jobs = launcher.list_jobs(name)
    active = [job for job in jobs if not job.terminal]
    done = [job for job in jobs if job.state is JobState.DONE]
    if active or (done and not force):
        job = newest_job(active or done)
        return ExportPreview(launch="adopt" if active else "skip", job=job)
    state = read_state(plan.pipeline_name, logger)
    notes = []
    if state and state.pending:
        jobs_of_pending = pending_jobs(state.pending, launcher)
        finished = [job for job in jobs_of_pending if job.state is JobState.DONE]
        if finished:
            notes.append(
                f"the sync state waits for job {finished[0].name} ({finished[0].id}) of shard "
                f"{state.pending.shard_date}, DONE but not recorded: a real run records its accepted records "
                "first, so it sends fewer records than counted here (those of its keys the CRM accepted and "
                "that did not change since)"
            )
        else:
            notes.append(
                f"the sync state waits for job {state.pending.job_name}, which did not finish "
                f"({', '.join(job.state.value for job in jobs_of_pending) or 'never submitted'}): a real run "
                "forgets it; the keys it was to send are counted here"
            )
    client = plan.source.client()
    made = plan_export(
        client,
        diff_sql(plan.source, plan.shard, plan.crm, plan.key_type, plan.pipeline_name),
        plan.source.plan_table(plan.pipeline_name, plan.shard, dry_run=True),
        state,
        plan.full_resync,
        labels,
        create_state=False,
    )
    requests = log_plan(made, plan.crm, logger)
    sample, rejected = None, []
    if made.rows_to_send > made.duplicates:
        sample, rejected = sample_request(client, made.plan_table, plan.crm, DRY_RUN_SAMPLE_RECORDS)
    notes += [f"the job would dead-letter the sample's row {reason}" for reason in rejected]
    return ExportPreview(launch="submit", plan=made, requests=requests, sample=sample, notes=tuple(notes))


def sample_request(
    client: Any, plan_table: str, crm: PipelineSettings, records: int
) -> tuple[dict[str, Any] | None, list[str]]:
    """The request body the CRM would receive for the first ``records`` rows of ``plan_table`` the job sends
    (not the duplicates), made as the job's ``ShapeBatch`` makes it: the plan's columns left out, each row
    shaped (``UserShaper``) and the records encoded by the destination (``Destination.encode``: the field
    map applied, HubSpot's inputs, Braze's attributes). The rows are read with ``tabledata.list`` (no
    query, nothing billed).

    Returns the body as a JSON object (None if none of those rows can be sent) and, for each row among them
    the job would dead-letter (malformed, or a record the destination cannot encode), ``'<key>': <reason>``.
    """
    shaper, destination = UserShaper(crm), destination_for(crm)
    shaped, rejected = [], []
    for row in client.list_rows(plan_table, page_size=max(100, records)):
        if row.get(DUPLICATE_OF_COLUMN) is not None:
            continue
        values = {name: value for name, value in row.items() if not name.startswith(PLAN_COLUMN_PREFIX)}
        try:
            shaped.append(shaper(values))
        except MalformedRowError as exc:
            rejected.append(f"{values.get(crm.key_field)!r}: malformed row: {exc}")
        if len(shaped) + len(rejected) >= records:
            break
    if not shaped:
        return None, rejected
    payload, _, unencodable = destination.encode(shaped)
    rejected += [f"{entry['key']!r}: {entry['reason']}" for entry in unencodable]
    return (orjson.loads(payload) if isinstance(payload, bytes) else payload), rejected


def pending_jobs(pending: PendingExport, launcher: JobLauncher) -> list[JobInfo]:
    """The jobs of the export the state waits for (its job name and ``sync-plan`` label), every one terminal.

    Raises ``ExportInProgressError`` if one is still running: a second export now would race it.
    """
    jobs = [
        job for job in launcher.list_jobs(pending.job_name) if job.labels.get(PLAN_LABEL) == pending.plan_id
    ]
    running = [job for job in jobs if not job.terminal]
    if running:
        raise ExportInProgressError(
            f"job {running[0].name} ({running[0].id}) of shard {pending.shard_date} is still "
            f"{running[0].state.value}: a second export now would race it for the same users; wait for it (a "
            "run of its shard adopts it) or cancel it"
        )
    return jobs


def settle_pending(
    state: SyncState | None, launcher: JobLauncher, client: Any, sql: DiffSql, log: Any
) -> SyncState | None:
    """Settle the export the state still waits for before another is planned: record its accepted
    records if its job is DONE (its flow run did not), forget it if its job ended otherwise or was never
    submitted (the keys it was to send are out of the state: they go out with the next export).

    Raises ``ExportInProgressError`` if its job is still running.
    """
    pending = state.pending if state else None
    if pending is None:
        return state
    jobs = pending_jobs(pending, launcher)
    done = [job for job in jobs if job.state is JobState.DONE]
    if done:
        recorded = record_accepted(client, sql, pending.accepted_prefix, pending.shard_date)
        log.info(
            "Recorded job %s (%s)'s %s accepted records in the sync state, which its flow run had not",
            done[0].name,
            done[0].id,
            f"{recorded:,}",
        )
        last = RecordedExport(
            job_name=done[0].name,
            job_id=done[0].id,
            shard_date=pending.shard_date,
            records_recorded=recorded,
            recorded_at=dt.datetime.now(dt.UTC),
        )
    else:
        log.info(
            "Job %s planned at %s did not finish (%s): the keys it was to send are not in the sync state and "
            "go out with this export",
            pending.job_name,
            pending.planned_at,
            ", ".join(job.state.value for job in jobs) or "never submitted",
        )
        last = state.last_export
    return state.model_copy(update={"pending": None, "last_export": last})


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=30, retry_condition_fn=retry_if_transient)
def record_sync_state(
    source: BigQuerySource,
    shard: dt.date,
    crm: PipelineSettings,
    key_type: str,
    pipeline_name: str,
    job: JobInfo,
) -> RecordResult | None:
    """Record the accepted records of the DONE ``job`` in the sync state if it is the state's pending
    export (``tasks.crm_export.sync_state.record_export``); None if it is not: recorded already, or a
    later export was planned since (its keys then go out with that one)."""
    logger = get_run_logger()
    state = read_state(pipeline_name, logger)
    pending = state.pending if state else None
    if pending is None or job.labels.get(PLAN_LABEL) != pending.plan_id:
        if state and state.last_export and state.last_export.job_id == job.id:
            logger.info("Job %s's accepted records are in the sync state already", job.id)
        else:
            logger.warning(
                "Job %s (%s) is not the export the sync state waits for (%s): its accepted records are not "
                "recorded; the keys it sent go out again with the next export",
                job.name,
                job.id,
                f"job {pending.job_name}" if pending else "none",
            )
        return None
    client = source.client()
    result = record_export(
        client, diff_sql(source, shard, crm, key_type, pipeline_name), pending.accepted_prefix, shard
    )
    last = RecordedExport(
        job_name=job.name,
        job_id=job.id,
        shard_date=shard,
        records_recorded=result.recorded,
        recorded_at=dt.datetime.now(dt.UTC),
    )
    write_state(pipeline_name, state.model_copy(update={"pending": None, "last_export": last}))
    logger.info(
        "Recorded %s accepted records of job %s in the sync state %s",
        f"{result.recorded:,}",
        job.id,
        state.table,
    )
    return result


@task(cache_policy=NO_CACHE, retries=3, retry_condition_fn=retry_if_transient)
def release_sync_state(pipeline_name: str, job: JobInfo) -> None:
    """After ``job`` ended other than DONE: the state no longer waits for it (the keys it was to send stay
    out of the state and go out with the next export)."""
    logger = get_run_logger()
    state = read_state(pipeline_name, logger)
    if state and state.pending and job.labels.get(PLAN_LABEL) == state.pending.plan_id:
        write_state(pipeline_name, state.model_copy(update={"pending": None}))
        logger.info(
            "Job %s ended %s: the keys it was to send are not in the sync state and go out with the next export",
            job.id,
            job.state.value,
        )


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
