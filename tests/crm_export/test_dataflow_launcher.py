"""``DataflowLauncher`` and the ``Dataflow Options`` block, offline.

- A fake Dataflow service that behaves as the documented API does (server-side name filter, ``filter=ALL``
  ordering, small pages through the client library's own pagers, FlexRS jobs queued for several polls,
  one *active* job per name while a finished job's name can be reused) drives ``launch_job``/``poll_job``.
- ``job_metrics`` parses a ``JobMetrics`` response shaped as the API's; ``estimate_cost`` is checked
  against the bill of a measured GroupByKey job (docs/benchmarks.md, "Dataflow cost").
- The real export is built with ``DataflowRunner --dry_run=True`` and its ``Job`` request is completed
  by Beam's own ``create_job_description`` with staging captured in memory: no network, no credentials.
- The workers' package (``--setup_file``) is built and installed as Beam and the workers do.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import socket
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    WorkerOptions,
)
from apache_beam.runners.dataflow.internal.apiclient import DataflowJobAlreadyExistsError
from google.api_core import exceptions as google_exceptions
from google.cloud import dataflow_v1beta3 as dataflow
from google.cloud.dataflow_v1beta3.services.jobs_v1_beta3 import pagers as jobs_pagers
from google.cloud.dataflow_v1beta3.services.messages_v1_beta3 import pagers as messages_pagers
from prefect_gcp.credentials import GcpCredentials
from pydantic import ValidationError

from blocks.crm_export.dataflow import DataflowOptions
from pipelines.crm_export.accounting import Counters, Distribution, ExportMetrics
from pipelines.crm_export.api_key import ApiKey, KmsEncryptedApiKey
from tasks.crm_export.cost import DataflowPrices, estimate_cost
from tasks.crm_export.jobs import (
    JobFailedError,
    JobPollTimeoutError,
    JobSpec,
    JobState,
    LaunchResult,
    launch_job,
    poll_job,
)
from tasks.crm_export.launchers.dataflow import DataflowLauncher

REPO = Path(__file__).resolve().parents[2]
SETUP_FILE = REPO / "pipelines" / "setup.py"  # the default setup_file, taken from the repository root
PROJECT = "analytics-prod"
REGION = "europe-west1"
JOB_NAME = "crm-export-20261116"
SECRET = "sk-test-SECRET"
KMS_KEY = f"projects/{PROJECT}/locations/europe/keyRings/dataflow/cryptoKeys/crm-api-key"
S = dataflow.JobState  # the API's enum

ACTIVE_STATES = {
    S.JOB_STATE_STOPPED,
    S.JOB_STATE_RUNNING,
    S.JOB_STATE_DRAINING,
    S.JOB_STATE_PENDING,
    S.JOB_STATE_CANCELLING,
    S.JOB_STATE_QUEUED,
    S.JOB_STATE_RESOURCE_CLEANING_UP,
}

#: Message importance, least to most important. The enum's numbers are not in this order (BASIC is 5,
#: WARNING 3, ERROR 4): https://cloud.google.com/dataflow/docs/reference/rest/v1b3/JobMessageImportance
IMPORTANCE_ORDER = [
    dataflow.JobMessageImportance.JOB_MESSAGE_IMPORTANCE_UNKNOWN,
    dataflow.JobMessageImportance.JOB_MESSAGE_DEBUG,
    dataflow.JobMessageImportance.JOB_MESSAGE_DETAILED,
    dataflow.JobMessageImportance.JOB_MESSAGE_BASIC,
    dataflow.JobMessageImportance.JOB_MESSAGE_WARNING,
    dataflow.JobMessageImportance.JOB_MESSAGE_ERROR,
]


# --- credentials and the block ------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def make_credentials(private_key_pem: str) -> Callable[..., str]:
    """Save a GCP Credentials block with a made-up service account key (parsed locally, never sent anywhere)
    to the session's Prefect server; return its name, for ``gcp_credentials_block``."""

    def make(project_id: str | None = PROJECT) -> str:
        info = {
            "type": "service_account",
            "private_key_id": "0123456789abcdef",
            "private_key": private_key_pem,
            "client_email": "prefect-flows@analytics-prod.iam.gserviceaccount.com",
            "client_id": "100000000000000000001",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
        if project_id:
            info["project_id"] = project_id
        name = f"gcp-dataflow-{uuid.uuid4().hex[:8]}"
        GcpCredentials(service_account_info=info).save(name)
        return name

    return make


@pytest.fixture(scope="module")
def make_options(make_credentials) -> Callable[..., DataflowOptions]:
    credentials_block = make_credentials()

    def make(**overrides: Any) -> DataflowOptions:
        fields: dict[str, Any] = {
            "gcp_credentials_block": credentials_block,
            "region": REGION,
            "temp_location": "gs://analytics-dataflow/tmp",
            "staging_location": "gs://analytics-dataflow/staging",
            "service_account_email": "dataflow-worker@analytics-prod.iam.gserviceaccount.com",
            "network": "analytics-vpc",
            "subnetwork": f"regions/{REGION}/subnetworks/dataflow",
            "machine_type": "n1-standard-2",
            "max_num_workers": 20,
            "labels": {"team": "data-platform", "shard-date": "block-default"},
            "api_key_kms_key": KMS_KEY,
        }
        fields.update(overrides)
        return DataflowOptions(**fields)

    return make


def test_pipeline_args_are_beams_flags(make_options) -> None:
    options = make_options()
    args = options.pipeline_args(JOB_NAME, {"flow-run-id": "0b7c", "shard-date": "20261116"})
    assert args == [
        "--runner=DataflowRunner",
        f"--project={PROJECT}",
        f"--region={REGION}",
        "--temp_location=gs://analytics-dataflow/tmp",
        "--staging_location=gs://analytics-dataflow/staging",
        f"--job_name={JOB_NAME}",
        "--flexrs_goal=COST_OPTIMIZED",
        "--service_account_email=dataflow-worker@analytics-prod.iam.gserviceaccount.com",
        "--network=analytics-vpc",
        f"--subnetwork=regions/{REGION}/subnetworks/dataflow",
        "--no_use_public_ips",
        "--worker_machine_type=n1-standard-2",
        "--max_num_workers=20",
        f"--setup_file={SETUP_FILE}",
        "--no_save_main_session",
        "--labels=flow-run-id=0b7c",
        "--labels=shard-date=20261116",  # the given label wins over the block's
        "--labels=team=data-platform",
    ]
    # Beam reads them as meant.
    parsed = PipelineOptions(args)
    cloud = parsed.view_as(GoogleCloudOptions)
    workers = parsed.view_as(WorkerOptions)
    assert (cloud.project, cloud.region, cloud.job_name, cloud.flexrs_goal) == (
        PROJECT,
        REGION,
        JOB_NAME,
        "COST_OPTIMIZED",
    )
    assert cloud.labels == ["flow-run-id=0b7c", "shard-date=20261116", "team=data-platform"]
    assert (workers.use_public_ips, workers.machine_type, workers.max_num_workers) == (
        False,
        "n1-standard-2",
        20,
    )
    assert parsed.view_as(SetupOptions).setup_file == str(REPO / "pipelines" / "setup.py")
    assert parsed.view_as(SetupOptions).save_main_session is False


def test_pipeline_args_optional_fields(make_options) -> None:
    options = make_options(
        staging_location=None,
        flexrs_goal=None,
        service_account_email=None,
        network=None,
        subnetwork=None,
        machine_type=None,
        max_num_workers=None,
        use_public_ips=True,
        labels={},
        setup_file="pipelines/setup.py",  # relative: from the repository root
        sdk_container_image="europe-docker.pkg.dev/analytics-prod/beam/crm-export:1",
        experiments=["use_runner_v2", "min_cpu_platform=Intel Skylake"],
    )
    args = options.pipeline_args(JOB_NAME, {})
    assert args == [
        "--runner=DataflowRunner",
        f"--project={PROJECT}",
        f"--region={REGION}",
        "--temp_location=gs://analytics-dataflow/tmp",
        f"--job_name={JOB_NAME}",
        "--use_public_ips",
        f"--setup_file={SETUP_FILE}",
        "--no_save_main_session",
        "--sdk_container_image=europe-docker.pkg.dev/analytics-prod/beam/crm-export:1",
        "--experiments=use_runner_v2",
        "--experiments=min_cpu_platform=Intel Skylake",
    ]
    assert PipelineOptions(args).view_as(WorkerOptions).use_public_ips is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temp_location", "gs://b/tmp", "gs://BUCKET/PATH"),  # bucket names have at least 3 characters
        ("temp_location", "gs://analytics-dataflow", "gs://BUCKET/PATH"),
        ("temp_location", "/tmp/dataflow", "gs://BUCKET/PATH"),
        ("staging_location", "s3://analytics-dataflow/staging", "gs://BUCKET/PATH"),
        ("labels", {"Team": "data"}, "invalid Dataflow labels"),
        ("labels", {"team": "Data Platform"}, "invalid Dataflow labels"),
        ("labels", {f"l{i}": "x" for i in range(65)}, "at most 64"),
        ("subnetwork", "dataflow", "regions/REGION/subnetworks/NAME"),
        ("subnetwork", "regions/us-central1/subnetworks/dataflow", "is in us-central1"),
        ("network", "https://www.googleapis.com/compute/v1/projects/p/global/networks/vpc", "not a URL"),
        ("project", "Analytics_Prod", "not a GCP project ID"),
        ("region", "europe", "not a Dataflow region"),
        ("service_account_email", "worker@example.com", "service account"),
        ("flexrs_goal", "CHEAP", "COST_OPTIMIZED"),
        ("max_num_workers", 0, "greater than or equal to 1"),
        ("experiments", ["a,b"], "without commas"),
    ],
)
def test_block_rejects_invalid_settings(make_options, field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_options(**{field: value})


def test_shared_vpc_subnetwork_url_is_accepted(make_options) -> None:
    url = f"https://www.googleapis.com/compute/v1/projects/network-host/regions/{REGION}/subnetworks/dataflow"
    assert make_options(subnetwork=url).subnetwork == url


def test_pipeline_args_reject_bad_names_labels_and_missing_setup_file(make_options, tmp_path: Path) -> None:
    options = make_options()
    with pytest.raises(ValueError, match="not a valid Dataflow job name"):
        options.pipeline_args("CRM_export", {})
    with pytest.raises(ValueError, match="invalid Dataflow labels"):
        options.pipeline_args(JOB_NAME, {"flow_run": "Not Valid"})
    elsewhere = make_options(setup_file=str(tmp_path / "checkout-of-another-machine" / "setup.py"))
    with pytest.raises(FileNotFoundError, match="does not exist here"):
        elsewhere.pipeline_args(JOB_NAME, {})


def test_project_id_falls_back_to_the_credentials_and_names_the_block(make_options, make_credentials) -> None:
    assert make_options(project="analytics-other").project_id() == "analytics-other"
    assert make_options().project_id() == PROJECT  # from the service account key's project
    projectless_block = make_credentials(project_id=None)
    no_project = make_options(gcp_credentials_block=projectless_block)
    with pytest.raises(ValueError, match=r"unsaved\) has no GCP project") as caught:
        no_project.project_id()
    assert f"GCP Credentials block {projectless_block!r} (gcp_credentials_block)" in str(caught.value)
    # Saved and loaded through the Prefect API, the error names the block.
    name = f"dataflow-{uuid.uuid4().hex[:8]}"
    no_project.save(name)
    loaded = DataflowOptions.load(name)
    assert loaded.labels == no_project.labels
    assert loaded.region == REGION
    with pytest.raises(ValueError, match=f"Dataflow Options block '{name}' has no GCP project"):
        loaded.project_id()


# --- a fake Dataflow service ------------------------------------------------------------------------


class FakeDataflow:
    """The Dataflow API of one project, as ``JobsV1Beta3Client``, ``MessagesV1Beta3Client`` and
    ``MetricsV1Beta3Client`` present it (same methods, requests, responses and pagers).

    - ``jobs.list``: jobs of the request's project and location; the ``name`` filter is applied by the
      server (unless ``honour_name_filter`` is off, as for ``jobs.aggregated``); ``filter=ALL`` returns
      active jobs first (by creation), then terminated ones (most recently terminated first); pages of
      ``page_size`` jobs, continued with ``next_page_token``.
    - ``jobs.get``: advances the job one step along its lifecycle (a list of states, the last one sticks).
    - ``create_job``: one *active* job per name: creating another returns the active one (whose
      ``client_request_id`` is not the caller's); once it is terminal the name is free again.
    - ``messages.list``: messages of at least ``minimum_importance``, newest first, paged.
    """

    def __init__(
        self, project: str = PROJECT, region: str = REGION, page_size: int = 3, honour_name_filter=True
    ):
        self.project = project
        self.region = region
        self.page_size = page_size
        self.honour_name_filter = honour_name_filter
        self.jobs: dict[str, dataflow.Job] = {}
        self.lifecycles: dict[str, list[S]] = {}
        self.terminated_at: dict[str, int] = {}
        self.messages: dict[str, list[dataflow.JobMessage]] = {}
        self.metrics: dict[str, dataflow.JobMetrics] = {}
        self.pages_served = 0
        self.get_calls = 0
        self.before_create: Callable[[], None] | None = None
        self._tick = 0
        self._epoch = dt.datetime(2026, 11, 17, 2, 0, tzinfo=dt.UTC)

    def _now(self) -> dt.datetime:
        self._tick += 1
        return self._epoch + dt.timedelta(minutes=self._tick)

    # -- setting up the world ----------------------------------------------------------------------

    def add_job(self, name: str, *lifecycle: S, labels: dict[str, str] | None = None) -> str:
        job_id = f"2026-11-17_02_{len(self.jobs):02d}_00-{uuid.uuid4().int % 10**19}"
        self.jobs[job_id] = dataflow.Job(
            id=job_id,
            project_id=self.project,
            location=self.region,
            name=name,
            type_=dataflow.JobType.JOB_TYPE_BATCH,
            current_state=lifecycle[0],
            create_time=self._now(),
            current_state_time=self._now(),
            labels=labels or {},
            client_request_id=uuid.uuid4().hex,
        )
        self.lifecycles[job_id] = list(lifecycle[1:])
        self._note_state(job_id)
        return job_id

    def add_message(self, job_id: str, importance: dataflow.JobMessageImportance, text: str) -> None:
        self.messages.setdefault(job_id, []).append(
            dataflow.JobMessage(
                id=str(len(self.messages.get(job_id, []))),
                time=self._now(),
                message_text=text,
                message_importance=importance,
            )
        )

    def _note_state(self, job_id: str) -> None:
        if self.jobs[job_id].current_state not in ACTIVE_STATES:
            self.terminated_at.setdefault(job_id, self._tick)

    def _check_scope(self, request: Any) -> None:
        if (request.project_id, request.location) != (self.project, self.region):
            raise google_exceptions.NotFound(
                f"no such project/location {request.project_id}/{request.location}"
            )

    # -- JobsV1Beta3Client ---------------------------------------------------------------------

    def create_job(self, request: dataflow.CreateJobRequest, **_: Any) -> dataflow.Job:
        self._check_scope(request)
        if self.before_create:
            self.before_create()
        for job in self.jobs.values():
            if job.name == request.job.name and job.current_state in ACTIVE_STATES:
                return job  # the documented behaviour: the existing active job comes back
        # A FlexRS job: queued for a while, then runs, then done.
        job_id = self.add_job(
            request.job.name,
            S.JOB_STATE_QUEUED,
            *[S.JOB_STATE_QUEUED] * 3,
            *[S.JOB_STATE_RUNNING] * 2,
            S.JOB_STATE_DONE,
            labels=dict(request.job.labels),
        )
        self.jobs[job_id].client_request_id = request.job.client_request_id
        return self.jobs[job_id]

    def list_jobs(self, request: dataflow.ListJobsRequest, **kwargs: Any) -> jobs_pagers.ListJobsPager:
        assert request.filter == dataflow.ListJobsRequest.Filter.ALL
        return jobs_pagers.ListJobsPager(
            self._list_jobs_page, request, self._list_jobs_page(request), **kwargs
        )

    def _list_jobs_page(self, request: dataflow.ListJobsRequest, **_: Any) -> dataflow.ListJobsResponse:
        self._check_scope(request)
        self.pages_served += 1
        jobs = [
            job
            for job in self.jobs.values()
            if not (self.honour_name_filter and request.name) or job.name == request.name
        ]
        active = sorted((j for j in jobs if j.current_state in ACTIVE_STATES), key=lambda j: j.create_time)
        done = sorted(
            (j for j in jobs if j.current_state not in ACTIVE_STATES),
            key=lambda j: self.terminated_at[j.id],
            reverse=True,
        )
        ordered = active + done
        size = min(request.page_size or self.page_size, self.page_size)
        start = int(request.page_token or 0)
        page = ordered[start : start + size]
        more = start + size < len(ordered)
        return dataflow.ListJobsResponse(jobs=page, next_page_token=str(start + size) if more else "")

    def get_job(self, request: dataflow.GetJobRequest, **_: Any) -> dataflow.Job:
        self._check_scope(request)
        self.get_calls += 1
        if request.job_id not in self.jobs:
            raise google_exceptions.NotFound(f"Job {request.job_id} not found")
        job = self.jobs[request.job_id]
        steps = self.lifecycles[request.job_id]
        if steps:
            job.current_state = steps.pop(0)
            job.current_state_time = self._now()
            self._note_state(job.id)
        return job

    # -- MessagesV1Beta3Client -------------------------------------------------------------------

    def list_job_messages(self, request: dataflow.ListJobMessagesRequest, **kwargs: Any):
        return messages_pagers.ListJobMessagesPager(
            self._list_messages_page, request, self._list_messages_page(request), **kwargs
        )

    def _list_messages_page(self, request: dataflow.ListJobMessagesRequest, **_: Any):
        self._check_scope(request)
        wanted = [
            m
            for m in self.messages.get(request.job_id, [])
            if IMPORTANCE_ORDER.index(m.message_importance)
            >= IMPORTANCE_ORDER.index(request.minimum_importance)
        ]
        wanted.sort(key=lambda m: m.time, reverse=True)
        start = int(request.page_token or 0)
        more = start + 2 < len(wanted)
        return dataflow.ListJobMessagesResponse(
            job_messages=wanted[start : start + 2], next_page_token=str(start + 2) if more else ""
        )

    # -- MetricsV1Beta3Client --------------------------------------------------------------------

    def get_job_metrics(self, request: dataflow.GetJobMetricsRequest, **_: Any) -> dataflow.JobMetrics:
        self._check_scope(request)
        return self.metrics.get(request.job_id, dataflow.JobMetrics())


class FakeKms:
    """KMS ``encrypt``/``decrypt`` as the API answers them (CRC32C fields included); the "ciphertext"
    is the plaintext XOR-ed and tagged with the key, so a wrong key fails like KMS's InvalidArgument."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    @staticmethod
    def _xor(data: bytes) -> bytes:
        return bytes(b ^ 0x5A for b in data)

    def encrypt(self, request: dict[str, Any]) -> Any:
        import google_crc32c
        from google.cloud import kms

        self.requests.append(request)
        assert request["plaintext_crc32c"] == google_crc32c.value(request["plaintext"])
        ciphertext = request["name"].encode() + b"|" + self._xor(request["plaintext"])
        return kms.EncryptResponse(
            name=request["name"],
            ciphertext=ciphertext,
            ciphertext_crc32c=google_crc32c.value(ciphertext),
            verified_plaintext_crc32c=True,
        )

    def decrypt(self, request: dict[str, Any]) -> Any:
        import google_crc32c
        from google.api_core import exceptions
        from google.cloud import kms

        key, _, body = request["ciphertext"].partition(b"|")
        if key.decode() != request["name"]:
            raise exceptions.InvalidArgument("Decryption failed: the ciphertext is invalid.")
        plaintext = self._xor(body)
        return kms.DecryptResponse(plaintext=plaintext, plaintext_crc32c=google_crc32c.value(plaintext))


class OfflineLauncher(DataflowLauncher):
    """``DataflowLauncher`` whose Beam run step submits to the fake service the way Beam's
    ``DataflowApplicationClient.submit_job_description`` does: a ``jobs.create`` with the job name,
    labels and a fresh ``client_request_id``; a response with another request id means "an active job
    of that name exists" → ``DataflowJobAlreadyExistsError``. It records the options it was given."""

    def __init__(self, options: DataflowOptions, service: FakeDataflow):
        self.kms = FakeKms()
        super().__init__(
            options, jobs_client=service, messages_client=service, metrics_client=service, kms_client=self.kms
        )
        self.service = service
        self.submitted: list[PipelineOptions] = []
        self.worker_keys: list[KmsEncryptedApiKey] = []

    def _run_pipeline(self, options: PipelineOptions, api_key: KmsEncryptedApiKey) -> str:
        self.submitted.append(options)
        self.worker_keys.append(api_key)
        cloud = options.view_as(GoogleCloudOptions)
        request = dataflow.CreateJobRequest(
            project_id=cloud.project,
            location=cloud.region,
            job=dataflow.Job(
                name=cloud.job_name,
                labels=dict(label.split("=", 1) for label in cloud.labels or []),
                client_request_id=uuid.uuid4().hex,
            ),
        )
        response = self.service.create_job(request)
        if response.client_request_id != request.job.client_request_id:
            raise DataflowJobAlreadyExistsError(
                f"There is already active job named {response.name} with id: {response.id}."
            )
        return response.id


@pytest.fixture
def service() -> FakeDataflow:
    return FakeDataflow()


@pytest.fixture
def launcher(make_options, service: FakeDataflow) -> OfflineLauncher:
    return OfflineLauncher(make_options(), service)


def make_spec(name: str = JOB_NAME) -> JobSpec:
    return JobSpec(
        name=name,
        pipeline_args=(
            "--input_table=analytics-prod:crm.users_20261116",
            "--crm_url=https://crm.example.com/v1/users/batch",
            "--dead_letter_prefix=gs://analytics-dataflow/dead-letter/crm-export-20261116/part",
            f"--idempotency_namespace={name}",
        ),
        labels={"flow-run-id": "7f3d2c1b", "shard-date": "20261116"},
        api_key=ApiKey(SECRET),
    )


class FakeClock:
    """``sleep``/``clock`` for ``poll_job``: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


# --- launch ---------------------------------------------------------------------------------------


def assert_no_secret(options: PipelineOptions) -> None:
    everything = json.dumps(options.get_all_options(retain_unknown_options=True), default=str)
    assert SECRET not in everything
    assert all(SECRET not in label for label in options.view_as(GoogleCloudOptions).labels or [])


def test_no_job_yet_submits(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    result = launch_job(launcher, make_spec())
    assert result.action == "submitted"
    assert result.job_name == JOB_NAME
    job = service.jobs[result.job_id]
    assert job.name == JOB_NAME
    assert job.current_state == S.JOB_STATE_QUEUED
    assert dict(job.labels) == {"team": "data-platform", "flow-run-id": "7f3d2c1b", "shard-date": "20261116"}
    (options,) = launcher.submitted
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.job_name, cloud.project, cloud.region) == (JOB_NAME, PROJECT, REGION)
    assert options.get_all_options()["input_table"] == "analytics-prod:crm.users_20261116"
    assert_no_secret(options)


def test_the_job_gets_the_api_key_only_as_a_kms_ciphertext(launcher: OfflineLauncher) -> None:
    import pickle

    launch_job(launcher, make_spec())
    (worker_key,) = launcher.worker_keys
    assert isinstance(worker_key, KmsEncryptedApiKey)
    assert worker_key.kms_key_name == KMS_KEY
    assert launcher.kms.requests[0]["name"] == KMS_KEY
    pickled = pickle.dumps(worker_key)  # what Beam stages with PostBatchesFn
    assert SECRET.encode() not in pickled
    assert SECRET not in repr(worker_key)
    on_worker = pickle.loads(pickled)
    on_worker._client = lambda: launcher.kms  # the worker's KMS client (its service account)
    assert on_worker.get_secret_value() == SECRET
    assert SECRET.encode() not in pickle.dumps(on_worker)  # a decrypted copy pickles without the value


def test_a_kms_refusal_names_the_key_and_the_role(launcher: OfflineLauncher) -> None:
    from google.api_core import exceptions

    def refuse(request: dict[str, Any]) -> Any:
        raise exceptions.PermissionDenied("Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied")

    launcher.kms.encrypt = refuse
    with pytest.raises(PermissionError, match="roles/cloudkms.cryptoKeyEncrypter") as failure:
        launch_job(launcher, make_spec())
    assert KMS_KEY in str(failure.value)
    assert launcher.submitted == []


@pytest.mark.parametrize("state", [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_PENDING])
def test_active_job_is_adopted_without_submitting(
    launcher: OfflineLauncher, service: FakeDataflow, state
) -> None:
    service.add_job(JOB_NAME, S.JOB_STATE_FAILED)  # an earlier attempt
    active = service.add_job(JOB_NAME, state)
    result = launch_job(launcher, make_spec())
    assert (result.action, result.job_id) == ("adopted", active)
    assert launcher.submitted == []


def test_done_job_is_skipped_unless_forced(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    done = service.add_job(JOB_NAME, S.JOB_STATE_DONE)
    assert launch_job(launcher, make_spec()) == LaunchResult(done, JOB_NAME, "skipped")
    assert launcher.submitted == []

    forced = launch_job(launcher, make_spec(), force=True)
    assert forced.action == "submitted"
    assert forced.job_id != done
    # Dataflow lets a finished job's name be reused: both jobs now carry it.
    assert sorted(job.id for job in launcher.list_jobs(JOB_NAME)) == sorted([done, forced.job_id])
    # ...and the forced one, being active, is what a retried launch adopts.
    assert launch_job(launcher, make_spec(), force=True) == LaunchResult(forced.job_id, JOB_NAME, "adopted")


def test_a_retried_forced_run_does_not_export_twice(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    service.add_job(JOB_NAME, S.JOB_STATE_DONE, labels={"prefect-flow-run-id": "an-earlier-run"})
    spec = make_spec()
    spec = JobSpec(
        spec.name, spec.pipeline_args, {**spec.labels, "prefect-flow-run-id": "this-run"}, spec.api_key
    )
    forced = launch_job(launcher, spec, force=True)
    assert forced.action == "submitted"
    while launcher.get_job(forced.job_id).state is not JobState.DONE:  # the forced export runs to its end
        pass
    # The same flow run, retried after a later step failed: its own DONE job counts, nothing is submitted.
    assert launch_job(launcher, spec, force=True) == LaunchResult(forced.job_id, JOB_NAME, "skipped")
    assert len(launcher.submitted) == 1


def test_only_failed_or_cancelled_jobs_submit_a_new_one(
    launcher: OfflineLauncher, service: FakeDataflow
) -> None:
    old = {service.add_job(JOB_NAME, S.JOB_STATE_FAILED), service.add_job(JOB_NAME, S.JOB_STATE_CANCELLED)}
    result = launch_job(launcher, make_spec())
    assert result.action == "submitted"
    assert result.job_id not in old
    assert len(launcher.submitted) == 1


def test_submit_refused_for_an_active_name_lists_again_and_adopts(
    launcher: OfflineLauncher, service: FakeDataflow
) -> None:
    # Another run of the flow submits the same export between our list and our submit.
    raced: list[str] = []

    def another_flow_run_submits() -> None:
        if not raced:
            raced.append(service.add_job(JOB_NAME, S.JOB_STATE_QUEUED))

    service.before_create = another_flow_run_submits
    result = launch_job(launcher, make_spec())
    assert (result.action, result.job_id) == ("adopted", raced[0])
    assert [job.name for job in service.jobs.values()] == [JOB_NAME]  # no second job
    assert len(launcher.submitted) == 1


def test_the_match_on_page_three_is_found(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    done = service.add_job(JOB_NAME, S.JOB_STATE_DONE)  # terminated first: listed last
    for i in range(7):  # forced re-runs that failed since
        service.add_job(JOB_NAME, S.JOB_STATE_FAILED if i % 2 else S.JOB_STATE_CANCELLED)
    jobs = launcher.list_jobs(JOB_NAME)
    assert service.pages_served == 3  # 8 jobs, 3 per page
    assert len(jobs) == 8
    assert jobs[-1].id == done
    result = launch_job(launcher, make_spec())
    assert (result.action, result.job_id) == ("skipped", done)
    assert launcher.submitted == []


def test_only_exact_name_matches_count_even_if_the_filter_is_not_applied(make_options) -> None:
    service = FakeDataflow(honour_name_filter=False)
    launcher = OfflineLauncher(make_options(), service)
    service.add_job("crm-export-20261109", S.JOB_STATE_RUNNING)
    service.add_job(f"{JOB_NAME}-backfill", S.JOB_STATE_QUEUED)
    assert launcher.list_jobs(JOB_NAME) == []
    assert launch_job(launcher, make_spec()).action == "submitted"


def test_job_info_from_the_api(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    job_id = service.add_job(JOB_NAME, S.JOB_STATE_QUEUED, labels={"shard-date": "20261116"})
    info = launcher.get_job(job_id)
    assert (info.id, info.name, info.state, dict(info.labels)) == (
        job_id,
        JOB_NAME,
        JobState.QUEUED,
        {"shard-date": "20261116"},
    )
    assert info.create_time is not None
    assert info.create_time.utcoffset() == dt.timedelta(0)
    assert info.state_time is not None
    assert info.state_time > info.create_time
    # A paused job is not terminal: launch adopts it, poll keeps waiting.
    paused = service.add_job(JOB_NAME, S.JOB_STATE_PAUSED)
    assert launcher.get_job(paused).state is JobState.PAUSED
    assert not launcher.get_job(paused).terminal


def test_unknown_job_id_is_a_lookup_error(launcher: OfflineLauncher) -> None:
    with pytest.raises(
        LookupError, match=rf"no job 2026-01-01_00_00_00-1 in project {PROJECT}, region {REGION}"
    ):
        launcher.get_job("2026-01-01_00_00_00-1")


def test_default_clients_use_the_blocks_credentials(make_options) -> None:
    launcher = DataflowLauncher(make_options())
    assert isinstance(launcher.jobs_client, dataflow.JobsV1Beta3Client)
    assert isinstance(launcher.messages_client, dataflow.MessagesV1Beta3Client)
    assert isinstance(launcher.metrics_client, dataflow.MetricsV1Beta3Client)
    credentials = launcher.jobs_client._transport._credentials
    assert credentials.service_account_email == "prefect-flows@analytics-prod.iam.gserviceaccount.com"
    assert (launcher.project, launcher.region) == (PROJECT, REGION)
    # The KMS client's, resolved with the others.
    assert launcher._google_credentials().service_account_email == credentials.service_account_email


# --- poll -----------------------------------------------------------------------------------------


def test_flexrs_job_queued_for_hours_then_done(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    job_id = service.add_job(
        JOB_NAME, S.JOB_STATE_QUEUED, *[S.JOB_STATE_QUEUED] * 20, S.JOB_STATE_RUNNING, S.JOB_STATE_DONE
    )
    time = FakeClock()
    polled: list[JobState] = []
    job = poll_job(
        launcher,
        job_id,
        interval_seconds=600,
        sleep=time.sleep,
        clock=time.clock,
        on_poll=lambda j: polled.append(j.state),
    )
    assert job.state is JobState.DONE
    assert job.id == job_id
    assert service.get_calls == 22
    assert time.sleeps == [600] * 21  # 3.5 h queued, then running
    assert polled == [JobState.QUEUED] * 20 + [JobState.RUNNING, JobState.DONE]  # each poll, for progress


def test_failed_job_raises_with_its_error_messages(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    job_id = service.add_job(JOB_NAME, S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_FAILED)
    importance = dataflow.JobMessageImportance
    service.add_message(job_id, importance.JOB_MESSAGE_BASIC, "Worker pool started.")
    service.add_message(
        job_id, importance.JOB_MESSAGE_ERROR, "CrmRejectedCredentialsError: the CRM answered 401"
    )
    service.add_message(job_id, importance.JOB_MESSAGE_WARNING, "Autoscaling: reduced workers to 1")
    service.add_message(
        job_id, importance.JOB_MESSAGE_ERROR, "Workflow failed. Causes: S05:PostToCrm failed."
    )
    service.add_message(job_id, importance.JOB_MESSAGE_DETAILED, "Cleaning up.")
    time = FakeClock()
    with pytest.raises(JobFailedError) as failure:
        poll_job(launcher, job_id, interval_seconds=60, sleep=time.sleep, clock=time.clock)
    assert failure.value.job.state is JobState.FAILED
    assert failure.value.errors == [
        "CrmRejectedCredentialsError: the CRM answered 401",
        "Workflow failed. Causes: S05:PostToCrm failed.",
    ]
    assert "Workflow failed" in str(failure.value)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (S.JOB_STATE_CANCELLED, JobState.CANCELLED),
        (S.JOB_STATE_UPDATED, JobState.UPDATED),
        (S.JOB_STATE_DRAINED, JobState.DRAINED),
    ],
)
def test_other_terminal_states_fail(
    launcher: OfflineLauncher, service: FakeDataflow, state, expected
) -> None:
    job_id = service.add_job(JOB_NAME, S.JOB_STATE_RUNNING, state)
    time = FakeClock()
    with pytest.raises(JobFailedError) as failure:
        poll_job(launcher, job_id, interval_seconds=60, sleep=time.sleep, clock=time.clock)
    assert failure.value.job.state is expected
    assert failure.value.errors == []


def test_poll_timeout_leaves_the_job_running(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    job_id = service.add_job(JOB_NAME, *[S.JOB_STATE_QUEUED] * 100)
    time = FakeClock()
    with pytest.raises(JobPollTimeoutError, match="still JOB_STATE_QUEUED"):
        poll_job(
            launcher,
            job_id,
            interval_seconds=600,
            timeout_seconds=6 * 3600,
            sleep=time.sleep,
            clock=time.clock,
        )
    assert time.now == 6 * 3600
    # The next launch adopts it.
    assert launch_job(launcher, make_spec()).job_id == job_id


def test_unreadable_messages_do_not_hide_the_failure(
    launcher: OfflineLauncher, service: FakeDataflow
) -> None:
    job_id = service.add_job(JOB_NAME, S.JOB_STATE_FAILED)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise google_exceptions.PermissionDenied("dataflow.messages.list denied")

    service.list_job_messages = broken  # type: ignore[method-assign]
    with pytest.raises(JobFailedError, match="reported no error message"):
        poll_job(launcher, job_id, sleep=lambda s: None)


# --- metrics and cost ---------------------------------------------------------------------------------


def user_metric(
    name: str, step: str, *, tentative: bool = False, namespace: str = "crm_export", **value: Any
):
    context = {"namespace": namespace, "step": step}
    if tentative:
        context["tentative"] = "true"
    return dataflow.MetricUpdate(
        name=dataflow.MetricStructuredName(origin="user", name=name, context=context), **value
    )


def service_metric(name: str, value: float, original_name: str, *, tentative: bool = False):
    context = {"original_name": original_name}
    if tentative:
        context["tentative"] = "true"
    return dataflow.MetricUpdate(
        name=dataflow.MetricStructuredName(origin="dataflow/v1b3", name=name, context=context), scalar=value
    )


GROUPBYKEY_JOB_RESOURCES = {  # a measured GroupByKey job: 87 M records, 15 minutes
    "TotalVcpuTime": 8.019 * 3600,  # vCPU-seconds
    "TotalMemoryUsage": 30.073 * 1024 * 3600,  # MB-seconds
    "TotalPdUsage": 100.242 * 3600,  # GB-seconds
    "TotalSsdUsage": 0.0,
    "TotalShuffleDataProcessed": 12.33,  # GB
}


def test_job_metrics_from_the_api_response(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    job_id = service.add_job(JOB_NAME, S.JOB_STATE_DONE)
    metrics = [
        user_metric("records_read", "ParseRows", scalar=87_000_000),
        user_metric("records_read", "ParseRows", tentative=True, scalar=87_000_120),
        user_metric("records_dead_lettered", "ParseRows", scalar=3),
        user_metric("records_dead_lettered", "ShapeBatch", scalar=9),
        user_metric("records_dead_lettered", "PostToCrm", scalar=12),
        user_metric("records_dead_lettered", "PostToCrm", tentative=True, scalar=14),
        user_metric("records_malformed", "ParseRows", scalar=3),
        user_metric("records_malformed", "ShapeBatch", scalar=9),
        user_metric("records_sent", "PostToCrm", scalar=86_999_988),
        user_metric("records_accepted", "PostToCrm", scalar=86_999_976),
        user_metric("records_rejected", "PostToCrm", scalar=12),
        user_metric("batches", "PostToCrm", scalar=17_400),
        user_metric("retries", "PostToCrm", scalar=41),
        user_metric("http_200", "PostToCrm", scalar=17_400),
        user_metric("http_429", "PostToCrm", scalar=41),
        user_metric(
            "batch_size",
            "PostToCrm",
            distribution={"count": 17_400, "sum": 86_999_988, "min": 4_988, "max": 5_000, "mean": 4_999},
        ),
        user_metric(
            "batch_size",
            "PostToCrm",
            tentative=True,
            distribution={"count": 17_401, "sum": 87_004_988, "min": 4_988, "max": 5_000, "mean": 4_999},
        ),
        user_metric("batch_size_MAX", "PostToCrm", scalar=5_000),  # the service's UI copy of the distribution
        user_metric("records_read", "ReadFromBigQuery", namespace="BigQuerySource", scalar=87_000_000),
        service_metric("TotalVcpuTime", GROUPBYKEY_JOB_RESOURCES["TotalVcpuTime"], "Service-cpu_num_seconds"),
        service_metric(
            "TotalMemoryUsage", GROUPBYKEY_JOB_RESOURCES["TotalMemoryUsage"], "Service-mem_mb_seconds"
        ),
        service_metric("TotalPdUsage", GROUPBYKEY_JOB_RESOURCES["TotalPdUsage"], "Service-pd_gb_seconds"),
        service_metric("TotalPdUsage", 1.0, "Service-pd_gb_seconds", tentative=True),
        service_metric("TotalSsdUsage", 0, "Service-pd_ssd_gb_seconds"),
        service_metric("TotalShuffleDataProcessed", 12.33, "Service-shuffle_service_actual_gb"),
        service_metric("BillableShuffleDataProcessed", 6.165, "Service-shuffle_service_chargeable_gb"),
        service_metric("TotalStreamingDataProcessed", 0, "Service-streaming_service_gb"),
        service_metric("CurrentVcpuCount", 8, "Service-cpu_num"),
        dataflow.MetricUpdate(
            name=dataflow.MetricStructuredName(
                origin="dataflow/v1b3", name="ElementCount", context={"original_name": "s2-out0-ElementCount"}
            ),
            scalar=87_000_000,
        ),
    ]
    service.metrics[job_id] = dataflow.JobMetrics(metrics=metrics)

    result = launcher.job_metrics(job_id)
    assert result.counters == Counters(
        records_read=87_000_000,
        records_malformed=12,
        records_sent=86_999_988,
        records_accepted=86_999_976,
        records_rejected=12,
        records_dead_lettered=24,
        batches=17_400,
        retries=41,
        http_status={200: 17_400, 429: 41},
    )
    assert result.batch_size == Distribution(count=17_400, sum=86_999_988, min=4_988, max=5_000)
    assert result.batch_size.mean == pytest.approx(86_999_988 / 17_400)
    assert result.resources == {
        **{name: pytest.approx(value) for name, value in GROUPBYKEY_JOB_RESOURCES.items()},
        "BillableShuffleDataProcessed": pytest.approx(6.165),
        "TotalStreamingDataProcessed": 0.0,
    }
    counters = result.counters
    assert counters.records_read == counters.records_accepted + counters.records_dead_lettered

    cost = estimate_cost(result.resources, DataflowPrices())
    assert cost is not None
    assert cost.shuffle_gb == pytest.approx(6.165)  # billed on the billable volume


def test_job_metrics_of_a_job_that_reported_nothing(launcher: OfflineLauncher, service: FakeDataflow) -> None:
    job_id = service.add_job(JOB_NAME, S.JOB_STATE_QUEUED)
    assert launcher.job_metrics(job_id) == ExportMetrics(Counters(), None, {})
    assert estimate_cost({}, DataflowPrices()) is None


def test_job_metrics_of_a_failed_job_read_the_refused_key_from_its_attempted_value(
    launcher: OfflineLauncher, service: FakeDataflow
) -> None:
    # The bundles that met the refusal failed (four attempts of the work item): nothing of them was
    # committed, so crm_key_refused comes as an attempted (tentative) value only.
    job_id = service.add_job(JOB_NAME, S.JOB_STATE_FAILED)
    metrics = [
        user_metric("records_read", "ParseRows", scalar=0),
        user_metric("records_read", "ParseRows", tentative=True, scalar=400),
        user_metric("crm_key_refused", "PostToCrm", scalar=0),
        user_metric("crm_key_refused", "PostToCrm", tentative=True, scalar=4),
    ]
    service.metrics[job_id] = dataflow.JobMetrics(metrics=metrics)
    assert launcher.job_metrics(job_id).counters == Counters(crm_key_refused=4)


def test_cost_of_the_measured_groupbykey_job() -> None:
    cost = estimate_cost(GROUPBYKEY_JOB_RESOURCES, DataflowPrices())
    assert cost is not None
    assert cost.vcpu_hours == pytest.approx(8.019)
    assert cost.memory_gb_hours == pytest.approx(30.073)
    assert cost.pd_gb_hours == pytest.approx(100.242)
    assert cost.ssd_gb_hours == 0
    assert cost.shuffle_gb == pytest.approx(12.33)
    prices = DataflowPrices()
    # Its bill's lines: $0.284 + $0.075 + $0.005 + $0.136 = $0.50
    assert cost.vcpu_hours * prices.vcpu_hour == pytest.approx(0.284, abs=5e-4)
    assert cost.memory_gb_hours * prices.memory_gb_hour == pytest.approx(0.075, abs=5e-4)
    assert cost.pd_gb_hours * prices.pd_gb_hour == pytest.approx(0.005, abs=5e-4)
    assert cost.shuffle_gb * prices.shuffle_gb == pytest.approx(0.136, abs=5e-4)
    assert cost.usd == pytest.approx(0.50, abs=0.005)
    assert estimate_cost(GROUPBYKEY_JOB_RESOURCES, DataflowPrices(vcpu_hour=0.056)).usd > cost.usd


# --- the real job, built offline ------------------------------------------------------------------


@pytest.fixture
def no_egg_info_left() -> Iterator[None]:
    """Building the workers' sdist leaves ``pipelines/*.egg-info`` behind: remove it."""
    yield
    for path in (REPO / "pipelines").glob("*.egg-info"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection or name lookup beyond this machine (subprocesses are not covered)."""
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo
    local = {"localhost", "127.0.0.1", "::1"}

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in local:
            raise OSError(f"network access in an offline test: {address}")
        return real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in local and host is not None:
            raise OSError(f"name lookup in an offline test: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_dry_run_builds_the_real_job_offline(
    make_options, monkeypatch: pytest.MonkeyPatch, no_network: None, no_egg_info_left: None
) -> None:
    import apache_beam as beam
    from apache_beam.runners.dataflow.internal import apiclient

    from pipelines.crm_export.pipeline import build_pipeline

    options = make_options()
    spec = make_spec()
    # --dry_run: DataflowRunner builds the Job and returns it instead of calling jobs.create.
    # --no_auth: no Application Default Credentials lookup (it retries with backoff when there are none).
    args = [
        *options.pipeline_args(spec.name, spec.labels),
        *spec.pipeline_args,
        "--dry_run=True",
        "--no_auth",
    ]
    pipeline_options = PipelineOptions(args)
    pipeline = beam.Pipeline(options=pipeline_options)
    build_pipeline(pipeline, OfflineLauncher(options, FakeDataflow()).encrypt_for_workers(spec.api_key))
    result = pipeline.run()
    job = result.job
    assert job.proto.name == JOB_NAME
    assert job.proto.type_ == dataflow.JobType.JOB_TYPE_BATCH
    assert dict(job.proto.labels) == {
        "team": "data-platform",
        "flow-run-id": "7f3d2c1b",
        "shard-date": "20261116",
    }

    # A dry run stops before the job's environment is made (that step stages files to GCS). Complete
    # the request with Beam's own create_job_description, keeping the staged files in memory.
    staged: dict[str, bytes] = {}

    def stage_in_memory(
        self: Any, location: str, name: str, stream_or_path: Any, *args: Any, **kwargs: Any
    ) -> None:
        if isinstance(stream_or_path, str):
            staged[name] = Path(stream_or_path).read_bytes()
        else:
            staged[name] = stream_or_path.read()

    monkeypatch.setattr(apiclient.DataflowApplicationClient, "stage_file_with_retry", stage_in_memory)
    apiclient.DataflowApplicationClient(job.options, job.root_staging_location).create_job_description(job)

    environment = job.proto.environment
    assert (
        environment.flex_resource_scheduling_goal == dataflow.FlexResourceSchedulingGoal.FLEXRS_COST_OPTIMIZED
    )
    assert environment.service_account_email == "dataflow-worker@analytics-prod.iam.gserviceaccount.com"
    assert environment.temp_storage_prefix.startswith(
        f"storage.googleapis.com/analytics-dataflow/tmp/{JOB_NAME}."
    )
    (pool,) = environment.worker_pools
    assert pool.network == "analytics-vpc"
    assert pool.subnetwork == f"regions/{REGION}/subnetworks/dataflow"
    assert pool.ip_configuration == dataflow.WorkerIPAddressConfiguration.WORKER_IP_PRIVATE
    assert pool.machine_type == "n1-standard-2"
    assert pool.autoscaling_settings.max_num_workers == 20
    packages = {package.name: package.location for package in pool.packages}
    assert packages["workflow.tar.gz"].startswith(
        f"storage.googleapis.com/analytics-dataflow/staging/{JOB_NAME}."
    )
    assert "pickled_main_session" not in staged  # --no_save_main_session
    sdk_options = dict(environment.sdk_pipeline_options["options"])
    assert sdk_options["project"] == PROJECT
    assert sdk_options["setup_file"] == str(SETUP_FILE)
    assert sdk_options["staging_location"].startswith(f"gs://analytics-dataflow/staging/{JOB_NAME}.")

    # The workers' package is the sdist of pipelines/setup.py.
    with tarfile.open(fileobj=io.BytesIO(staged["workflow.tar.gz"])) as sdist:
        names = {Path(*Path(member).parts[1:]).as_posix() for member in sdist.getnames()}
    assert {
        "crm_export/pipeline.py",
        "crm_export/post_batches.py",
        "crm_export/users.py",
        "setup.py",
    } <= names

    # The API key is nowhere in the job request, the options, the labels or the staged files (the job
    # graph holds the pickled PostBatchesFn: only the KMS ciphertext is in it).
    assert "pipeline.pb" in staged or any(name.endswith(".pb") for name in staged)
    assert all(SECRET.encode() not in blob for blob in staged.values())
    assert SECRET not in str(environment)
    assert SECRET not in str(job.proto)
    assert_no_secret(pipeline_options)
    assert all(SECRET not in f"{key}={value}" for key, value in job.proto.labels.items())


def _install_command(sdist: Path, target: Path) -> list[str]:
    """``pip install --no-deps --target``, offline: pip is in the project's environment (dev group) and
    the build backend comes from it too."""
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--target",
        str(target),
        str(sdist),
    ]


def test_workers_package_builds_and_installs(tmp_path: Path, no_egg_info_left: None) -> None:
    dist = tmp_path / "dist"
    # The command Beam's stager runs for --setup_file (apache_beam/runners/portability/stager.py).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--no-isolation",
            "--sdist",
            "--outdir",
            str(dist),
            str(REPO / "pipelines"),
        ],
        cwd=REPO / "pipelines",
        check=True,
        capture_output=True,
    )
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    root = sdist.name.removesuffix(".tar.gz")
    # package_dir={"pipelines": "."}: the package's modules are at the root of the sdist.
    assert {
        f"{root}/{module}"
        for module in (
            "__init__.py",
            "setup.py",
            "crm_export/__init__.py",
            "crm_export/accounting.py",
            "crm_export/api_key.py",
            "crm_export/pipeline.py",
            "crm_export/post_batches.py",
            "crm_export/settings.py",
            "crm_export/users.py",
        )
    } <= names

    target = tmp_path / "site"
    subprocess.run(_install_command(sdist, target), check=True, capture_output=True)
    for module in (
        "__init__.py",
        "crm_export/__init__.py",
        "crm_export/pipeline.py",
        "crm_export/post_batches.py",
    ):
        assert (target / "pipelines" / module).is_file()
