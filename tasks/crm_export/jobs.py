"""The launch/poll split for Beam jobs: launch adopts or skips before it submits; poll only waits.

One ``JobLauncher`` interface (``launchers.dataflow.DataflowLauncher``, ``launchers.local.LocalLauncher``),
plain functions without Prefect; why the split: docs/crm-export.md, "Launch and poll".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pipelines.crm_export.accounting import ExportMetrics
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.settings import validate_job_name, validate_labels

logger = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    """Dataflow's job states (https://cloud.google.com/dataflow/docs/reference/rest/v1b3/projects.jobs#jobstate)."""

    UNKNOWN = "JOB_STATE_UNKNOWN"
    STOPPED = "JOB_STATE_STOPPED"  # not yet started
    RUNNING = "JOB_STATE_RUNNING"
    DONE = "JOB_STATE_DONE"
    FAILED = "JOB_STATE_FAILED"
    CANCELLED = "JOB_STATE_CANCELLED"
    UPDATED = "JOB_STATE_UPDATED"
    DRAINING = "JOB_STATE_DRAINING"
    DRAINED = "JOB_STATE_DRAINED"
    PENDING = "JOB_STATE_PENDING"
    CANCELLING = "JOB_STATE_CANCELLING"
    QUEUED = "JOB_STATE_QUEUED"  # FlexRS: waiting for resources, up to 6 h
    RESOURCE_CLEANING_UP = "JOB_STATE_RESOURCE_CLEANING_UP"
    PAUSING = "JOB_STATE_PAUSING"
    PAUSED = "JOB_STATE_PAUSED"


#: States a job never leaves. Only DONE is a success.
TERMINAL_STATES = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.UPDATED, JobState.DRAINED}
)


@dataclass(frozen=True)
class JobInfo:
    """A job as a launcher reports it. Times are timezone-aware UTC; ``state_time`` is when the job
    entered its current state (Dataflow's ``currentStateTime``)."""

    id: str
    name: str
    state: JobState
    create_time: dt.datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    state_time: dt.datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class JobSpec:
    """What to submit: the job name, the pipeline's own arguments, labels, and the CRM API key.

    ``pipeline_args`` are ``CrmExportOptions`` flags (no secret: options are job metadata); the key
    reaches the pipeline's ``PostBatchesFn`` as an argument, never as an option or a label.
    """

    name: str
    pipeline_args: tuple[str, ...]
    labels: Mapping[str, str]
    api_key: ApiKey

    def __post_init__(self) -> None:
        validate_job_name(self.name)
        validate_labels(self.labels)


class JobAlreadyExistsError(RuntimeError):
    """A job of this name is already active (Dataflow's ``DataflowJobAlreadyExistsError``)."""


class JobFailedError(RuntimeError):
    """The job ended in a state other than DONE; ``state`` and ``errors`` (the job's error messages) say why."""

    def __init__(self, job: JobInfo, errors: list[str]):
        self.job = job
        self.errors = errors
        detail = "; ".join(errors[-5:]) if errors else "the job reported no error message"
        super().__init__(f"job {job.name} ({job.id}) ended in {job.state.value}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (JobFailedError, (self.job, self.errors))


class JobPollTimeoutError(TimeoutError):
    """The job was still not terminal when the poll's timeout ran out; the job keeps running."""


class JobLauncher(Protocol):
    """Where Beam jobs run. Implementations: ``DataflowLauncher``, ``LocalLauncher``."""

    def list_jobs(self, job_name: str) -> list[JobInfo]:
        """Every job with exactly this name (all pages), any state."""

    def get_job(self, job_id: str) -> JobInfo:
        """The job's current state. Raises ``LookupError`` for an unknown id."""

    def submit(self, spec: JobSpec) -> str:
        """Start the job without waiting for it; returns its id. Raises ``JobAlreadyExistsError``."""

    def job_errors(self, job_id: str) -> list[str]:
        """The job's error messages, oldest first (empty if none or unavailable)."""

    def job_metrics(self, job_id: str) -> ExportMetrics:
        """The job's counters, ``batch_size`` distribution and resource metrics, as reported so far."""


@dataclass(frozen=True)
class LaunchResult:
    """``action``: ``submitted`` (a new job), ``adopted`` (an active job of that name) or
    ``skipped`` (a DONE job of that name: the export already happened)."""

    job_id: str
    job_name: str
    action: Literal["submitted", "adopted", "skipped"]


def newest_job(jobs: list[JobInfo]) -> JobInfo:
    """The job of ``jobs`` (not empty) created last; one without a create time counts as the oldest."""
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return max(jobs, key=lambda job: job.create_time or epoch)


#: The job label naming the flow run that launched a job.
RUN_LABEL = "prefect-flow-run-id"


def launch_job(
    launcher: JobLauncher,
    spec: JobSpec,
    force: bool = False,
    log: Any = logger,
    prepare: Callable[[], tuple[list[str], dict[str, str]]] | None = None,
) -> LaunchResult:
    """Adopt, skip or submit the job named ``spec.name``; never starts a second job of one export.

    - a non-terminal job of that name exists → adopt it (a retried or crashed flow finds its job);
    - a DONE job exists and not ``force`` → skip: the export already happened;
    - with ``force``, a DONE job that this same flow run launched (label ``RUN_LABEL``) → skip too:
      a retried forced run must not export a second time;
    - otherwise (none, or only FAILED/CANCELLED/UPDATED/DRAINED, or ``force``) → submit;
    - the submit is refused because a job of that name became active meanwhile → list again, adopt.
    ``log``: where the decision is logged (the flow run's logger in the Prefect task). ``prepare``: called
    only when a job is about to be submitted (never for an adopted or skipped one); returns pipeline
    arguments and labels added to ``spec`` (the export's plan: what it reads, its figures).
    """
    jobs = launcher.list_jobs(spec.name)
    active = [job for job in jobs if not job.terminal]
    if active:
        job = newest_job(active)
        log.info("Adopting job %s (%s), %s", job.name, job.id, job.state.value)
        return LaunchResult(job.id, job.name, "adopted")
    done = [job for job in jobs if job.state is JobState.DONE]
    run = spec.labels.get(RUN_LABEL)
    if force:
        done = [job for job in done if run is not None and job.labels.get(RUN_LABEL) == run]
    if done:
        job = newest_job(done)
        log.info(
            "Job %s (%s) is already DONE: already exported%s",
            job.name,
            job.id,
            " by this flow run" if force else "; pass force=True to export again",
        )
        return LaunchResult(job.id, job.name, "skipped")
    if prepare is not None:
        args, labels = prepare()
        spec = dataclasses.replace(
            spec, pipeline_args=(*spec.pipeline_args, *args), labels={**spec.labels, **labels}
        )
    try:
        job_id = launcher.submit(spec)
    except JobAlreadyExistsError:
        active = [job for job in launcher.list_jobs(spec.name) if not job.terminal]
        if not active:
            raise
        job = newest_job(active)
        log.info("Job %s became active meanwhile: adopting %s", job.name, job.id)
        return LaunchResult(job.id, job.name, "adopted")
    log.info("Submitted job %s (%s)", spec.name, job_id)
    return LaunchResult(job_id, spec.name, "submitted")


def poll_job(
    launcher: JobLauncher,
    job_id: str,
    interval_seconds: float = 60.0,
    timeout_seconds: float = 8 * 3600.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Any = logger,
    on_poll: Callable[[JobInfo], None] | None = None,
) -> JobInfo:
    """Wait until the job is terminal; return it if DONE.

    ``interval_seconds``: between two ``get_job`` calls. ``timeout_seconds``: the whole wait; the
    default (8 h) allows FlexRS's up-to-6-h queueing plus the run. Raises ``JobFailedError`` (with
    the job's error messages) for FAILED, CANCELLED, UPDATED or DRAINED, and
    ``JobPollTimeoutError`` when the time runs out — the job is left running, and the next launch
    adopts it. ``log``: where state changes are logged. ``on_poll``: called with the job after each
    ``get_job`` (progress reporting).
    """
    deadline = clock() + timeout_seconds
    last_state: JobState | None = None
    while True:
        job = launcher.get_job(job_id)
        if job.state != last_state:
            log.info("Job %s (%s) is %s", job.name, job.id, job.state.value)
            last_state = job.state
        if on_poll is not None:
            on_poll(job)
        if job.state is JobState.DONE:
            return job
        if job.terminal:
            raise JobFailedError(job, launcher.job_errors(job_id))
        remaining = deadline - clock()
        if remaining <= 0:
            raise JobPollTimeoutError(
                f"job {job.name} ({job.id}) is still {job.state.value} after {timeout_seconds:.0f} s; it keeps "
                "running: the next run adopts it"
            )
        sleep(min(interval_seconds, remaining))
