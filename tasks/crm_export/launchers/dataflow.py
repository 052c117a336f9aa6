"""A ``JobLauncher`` on the Dataflow service: list/get jobs, submit with Beam, read errors and metrics.

The REST methods it calls, and its retries: docs/crm-export.md, "Dataflow".
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dataflow.internal.apiclient import DataflowJobAlreadyExistsError
from google.api_core import exceptions as google_exceptions
from google.api_core import retry as retries
from google.cloud import dataflow_v1beta3 as dataflow

from blocks.crm_export.dataflow import DataflowOptions
from pipelines.crm_export.accounting import (
    ATTEMPTED_COUNTERS,
    NAMESPACE,
    Counters,
    Distribution,
    ExportMetrics,
)
from pipelines.crm_export.api_key import ApiKey, KmsEncryptedApiKey
from pipelines.crm_export.pipeline import build_pipeline
from tasks.common import to_utc
from tasks.crm_export import cost
from tasks.crm_export.jobs import JobAlreadyExistsError, JobInfo, JobSpec, JobState

logger = logging.getLogger(__name__)

#: Origin of user (Beam ``Metrics``) metrics and of Dataflow's own service metrics in ``MetricStructuredName``.
USER_ORIGIN = "user"
SERVICE_ORIGIN = "dataflow/v1b3"

#: Job-level service metrics of the resources a job used (units: see ``tasks.crm_export.cost``).
RESOURCE_METRICS = (*cost.RESOURCE_METRICS, "TotalStreamingDataProcessed")

# The service also presents a distribution as four scalars NAME_MIN/_MAX/_MEAN/_COUNT (for its UI);
# Beam's own DataflowMetrics skips them, and so does this module.
_DISTRIBUTION_PART_SUFFIXES = ("_MIN", "_MAX", "_MEAN", "_COUNT")

_READ_RETRY = retries.Retry(
    predicate=retries.if_exception_type(
        google_exceptions.ServiceUnavailable,
        google_exceptions.InternalServerError,
        google_exceptions.TooManyRequests,
        google_exceptions.ResourceExhausted,
        google_exceptions.DeadlineExceeded,
    ),
    initial=1.0,
    maximum=30.0,
    multiplier=2.0,
    timeout=300.0,
)
_CALL_TIMEOUT = 60.0


class DataflowLauncher:
    """Run and watch Beam jobs on Dataflow in ``options.project_id()``/``options.region``.

    ``jobs_client``, ``messages_client``, ``metrics_client``, ``kms_client``: ``JobsV1Beta3Client``,
    ``MessagesV1Beta3Client``, ``MetricsV1Beta3Client`` and KMS's ``KeyManagementServiceClient`` (or
    objects with the same methods); by default built with ``options.credentials()`` (the GCP Credentials block
    the options name, else Application Default Credentials), resolved here, or for the KMS client when the
    first key is encrypted. Raises what ``options.credentials()`` raises (e.g.
    ``google.auth.exceptions.DefaultCredentialsError`` naming the block when there are no credentials).
    """

    def __init__(
        self,
        options: DataflowOptions,
        jobs_client: Any = None,
        messages_client: Any = None,
        metrics_client: Any = None,
        kms_client: Any = None,
    ):
        self._kms_client = kms_client
        self._credentials: Any = None
        self.options = options
        self.region = options.region
        if jobs_client is None or messages_client is None or metrics_client is None:
            credentials, self.project = options.credentials()
            self._credentials = credentials
            jobs_client = jobs_client or dataflow.JobsV1Beta3Client(credentials=credentials)
            messages_client = messages_client or dataflow.MessagesV1Beta3Client(credentials=credentials)
            metrics_client = metrics_client or dataflow.MetricsV1Beta3Client(credentials=credentials)
        else:
            self.project = options.project_id()
        self.jobs_client = jobs_client
        self.messages_client = messages_client
        self.metrics_client = metrics_client

    def _google_credentials(self) -> Any:
        """The options' credentials (``DataflowOptions.credentials()``), resolved once."""
        if self._credentials is None:
            self._credentials, _ = self.options.credentials()
        return self._credentials

    def _where(self, job_id: str) -> str:
        return f"job {job_id} in project {self.project}, region {self.region}"

    # -- JobLauncher -----------------------------------------------------------------------------

    def list_jobs(self, job_name: str) -> list[JobInfo]:
        """Every job named exactly ``job_name`` in the project and region, any state, over all pages.

        Raises ``google.api_core.exceptions.GoogleAPICallError`` if the service keeps failing.
        """
        request = dataflow.ListJobsRequest(
            project_id=self.project,
            location=self.region,
            name=job_name,
            filter=dataflow.ListJobsRequest.Filter.ALL,
        )
        pager = self.jobs_client.list_jobs(request=request, retry=_READ_RETRY, timeout=_CALL_TIMEOUT)
        # The name filter is the service's; keep exact matches anyway (a filter that is ignored or
        # matches loosely must not make launch adopt someone else's job).
        return [_job_info(job) for job in pager if job.name == job_name]

    def get_job(self, job_id: str) -> JobInfo:
        """The job's current state (``JOB_VIEW_SUMMARY``). Raises ``LookupError`` if the service has no such job."""
        request = dataflow.GetJobRequest(
            project_id=self.project,
            location=self.region,
            job_id=job_id,
            view=dataflow.JobView.JOB_VIEW_SUMMARY,
        )
        try:
            job = self.jobs_client.get_job(request=request, retry=_READ_RETRY, timeout=_CALL_TIMEOUT)
        except google_exceptions.NotFound as exc:
            raise LookupError(f"Dataflow has no {self._where(job_id)}: {exc.message}") from None
        return _job_info(job)

    def submit(self, spec: JobSpec) -> str:
        """Submit the export as a Dataflow job named ``spec.name``; return its id without waiting.

        Options: ``options.pipeline_args(spec.name, spec.labels)`` then ``spec.pipeline_args``. The API
        key goes to the pipeline as an argument of ``build_pipeline``, never into options or labels.
        Raises ``JobAlreadyExistsError`` if an active job already has the name.
        """
        args = [*self.options.pipeline_args(spec.name, spec.labels), *spec.pipeline_args]
        worker_key = self.encrypt_for_workers(spec.api_key)
        try:
            return self._run_pipeline(PipelineOptions(args), worker_key)
        except DataflowJobAlreadyExistsError as exc:
            raise JobAlreadyExistsError(
                f"an active Dataflow job is already named {spec.name}: {exc}"
            ) from exc

    def encrypt_for_workers(self, api_key: ApiKey) -> KmsEncryptedApiKey:
        """Encrypt the API key with ``options.api_key_kms_key`` (KMS ``encrypt``, CRC32C-checked).

        ``PostBatchesFn`` is pickled into the job graph that Beam stages to GCS; only this ciphertext goes
        there, and the workers decrypt it (https://cloud.google.com/kms/docs/encrypt-decrypt).
        Raises ``PermissionError`` naming the key and the role when KMS refuses.
        """
        import google_crc32c

        if self._kms_client is None:
            from google.cloud import kms

            self._kms_client = kms.KeyManagementServiceClient(credentials=self._google_credentials())
        plaintext = api_key.get_secret_value().encode()
        key = self.options.api_key_kms_key
        try:
            response = self._kms_client.encrypt(
                request={
                    "name": key,
                    "plaintext": plaintext,
                    "plaintext_crc32c": google_crc32c.value(plaintext),
                }
            )
        except google_exceptions.PermissionDenied as exc:
            raise PermissionError(
                f"KMS refused to encrypt with {key} (DataflowOptions.api_key_kms_key): the flow's identity needs "
                f"roles/cloudkms.cryptoKeyEncrypter on it ({exc.message})"
            ) from None
        if not response.verified_plaintext_crc32c or google_crc32c.value(response.ciphertext) != (
            response.ciphertext_crc32c
        ):
            raise ValueError(f"the KMS encrypt response for {key} failed its CRC32C checks; try again")
        return KmsEncryptedApiKey(response.ciphertext, key)

    def _run_pipeline(self, options: PipelineOptions, api_key: KmsEncryptedApiKey) -> str:
        """Build the export on ``options`` and start it with Beam's ``DataflowRunner``; return the job id.

        The one step that talks to Dataflow through Beam (staging, ``jobs.create``); it does not wait.
        """
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, api_key)
        result = pipeline.run()
        return result.job_id()

    def job_errors(self, job_id: str) -> list[str]:
        """The job's error messages (importance ``JOB_MESSAGE_ERROR``), oldest first, from all pages.

        Empty if the job has none or they cannot be read (logged): this runs while a failure is being
        reported, and must not replace it with its own.
        """
        request = dataflow.ListJobMessagesRequest(
            project_id=self.project,
            location=self.region,
            job_id=job_id,
            minimum_importance=dataflow.JobMessageImportance.JOB_MESSAGE_ERROR,
        )
        try:
            pager = self.messages_client.list_job_messages(
                request=request, retry=_READ_RETRY, timeout=_CALL_TIMEOUT
            )
            # ERROR is the highest importance; the enum's numbers are not in importance order
            # (BASIC is 5, ERROR 4), so compare by name, not with >=.
            messages = [
                message
                for message in pager
                if message.message_importance == dataflow.JobMessageImportance.JOB_MESSAGE_ERROR
            ]
        except (google_exceptions.GoogleAPICallError, google_exceptions.RetryError) as exc:
            logger.warning("Could not read the error messages of %s: %s", self._where(job_id), exc)
            return []
        epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
        messages.sort(key=lambda message: (message.time or epoch, message.id))
        return [message.message_text for message in messages]

    def job_metrics(self, job_id: str) -> ExportMetrics:
        """The export's counters, its ``batch_size`` distribution and the job's resource usage.

        Counters are the committed values of the user metrics in namespace
        ``pipelines.crm_export.accounting.NAMESPACE``, summed over steps; ``resources`` holds the service
        metrics of ``RESOURCE_METRICS`` the job reported (units: ``tasks.crm_export.cost``).
        Raises ``google.api_core.exceptions.GoogleAPICallError`` if the service keeps failing.
        """
        request = dataflow.GetJobMetricsRequest(project_id=self.project, location=self.region, job_id=job_id)
        response = self.metrics_client.get_job_metrics(
            request=request, retry=_READ_RETRY, timeout=_CALL_TIMEOUT
        )
        return parse_job_metrics(response.metrics)


def _job_info(job: dataflow.Job) -> JobInfo:
    """A ``JobInfo`` from the API's ``Job``; a state this code does not know (e.g. a newer one) is UNKNOWN."""
    state_name = getattr(job.current_state, "name", None)
    try:
        state = JobState(state_name)
    except ValueError:
        logger.warning(
            "Job %s (%s) is in state %r, unknown here: treated as not terminal",
            job.name,
            job.id,
            job.current_state,
        )
        state = JobState.UNKNOWN
    return JobInfo(
        id=job.id,
        name=job.name,
        state=state,
        create_time=to_utc(job.create_time),
        labels=dict(job.labels),
        state_time=to_utc(job.current_state_time),
    )


def parse_job_metrics(metrics: Iterable[dataflow.MetricUpdate]) -> ExportMetrics:
    """The API's ``JobMetrics.metrics`` → ``ExportMetrics`` (see ``DataflowLauncher.job_metrics``).

    User metrics have ``name.origin == "user"`` and ``name.context`` ``namespace`` and ``step``; each comes
    twice, committed and ``tentative == "true"`` (attempted): only committed values count, as in
    ``pipelines.crm_export.pipeline.pipeline_metrics``, but for ``ATTEMPTED_COUNTERS``
    (``crm_key_refused``: bundles that fail count it, and their committed values never come). Counters
    are scalars; a distribution is a struct with ``count``/``sum``/``min``/``max`` (and ``mean``). This
    follows Beam's own reader of this API,
    ``apache_beam.runners.dataflow.dataflow_metrics.DataflowMetrics``.
    """
    counts: dict[str, int] = {}
    batch_size: Distribution | None = None
    resources: dict[str, float] = {}
    for metric in metrics:
        name = metric.name
        context = name.context
        attempted = name.origin == USER_ORIGIN and name.name in ATTEMPTED_COUNTERS
        if (context.get("tentative") == "true") != attempted:
            continue
        if name.origin == USER_ORIGIN:
            if context.get("namespace") != NAMESPACE or name.name.endswith(_DISTRIBUTION_PART_SUFFIXES):
                continue
            if metric.distribution is not None:
                value = metric.distribution
                if name.name == "batch_size" and int(value["count"]):
                    part = Distribution(*(int(value[key]) for key in ("count", "sum", "min", "max")))
                    batch_size = part if batch_size is None else batch_size.merged(part)
            elif metric.scalar is not None:
                counts[name.name] = counts.get(name.name, 0) + int(metric.scalar)
        elif name.origin == SERVICE_ORIGIN and name.name in RESOURCE_METRICS and metric.scalar is not None:
            # Job-level totals: one per job; should the service repeat one, the largest is the latest.
            resources[name.name] = max(float(metric.scalar), resources.get(name.name, 0.0))
    return ExportMetrics(Counters.from_names(counts), batch_size, resources)
