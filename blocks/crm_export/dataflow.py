"""The ``Dataflow Options`` block: where and how a Beam job runs on Dataflow (``DataflowRunner`` flags).

Nothing secret belongs here: every flag becomes job metadata. ``gcp_credentials_block`` names the GCP
Credentials block the launcher lists and polls jobs with (empty: the process's Application Default
Credentials, ADC); Beam submits with ADC. The block names its credentials rather than nesting them, so
it can be created and saved where there are no GCP credentials at all: they are resolved when used
(``resolve_gcp_credentials``, which the KMS Encrypted GCS Secret block uses too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import google.auth
from google.auth.exceptions import DefaultCredentialsError
from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from blocks.loading import load_block
from pipelines.crm_export.settings import validate_job_name, validate_labels

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

#: Where a relative ``setup_file`` is taken from: this repository's root.
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

# Beam's own checks (apache_beam/options/pipeline_options_validator.py): a GCS path is gs://BUCKET/OBJECT
# with a bucket of [a-z0-9][-_a-z0-9.]+[a-z0-9]; if both temp and staging locations fail them, Beam
# silently creates and uses a default bucket instead, so the block rejects them up front.
_GCS_PATH = re.compile(r"gs://(?P<bucket>[a-z0-9][-_a-z0-9.]{1,220}[a-z0-9])/[^\r\n]*")
_PROJECT_ID = re.compile(r"[a-z][-a-z0-9:.]+[a-z0-9]")  # Beam's PROJECT_ID_PATTERN (allows domain:project)
_KMS_KEY = re.compile(r"projects/[^/\s]+/locations/[^/\s]+/keyRings/[\w-]{1,63}/cryptoKeys/[\w-]{1,63}")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
# https://cloud.google.com/dataflow/docs/guides/specifying-networks#subnetwork_parameter
_SUBNETWORK = re.compile(
    r"(?:https://www\.googleapis\.com/compute/v1/projects/[^/\s]+/)?regions/(?P<region>[^/\s]+)/subnetworks/[^/\s]+"
)
_NETWORK = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_SERVICE_ACCOUNT = re.compile(r"[^@\s]+@[^@\s]+\.gserviceaccount\.com")

#: The fields checked against a pattern: the pattern, and the message of a value that does not match it.
_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "api_key_kms_key": (
        _KMS_KEY,
        "{value!r} is not a Cloud KMS key name: projects/P/locations/L/keyRings/R/cryptoKeys/K",
    ),
    "project": (_PROJECT_ID, "{value!r} is not a GCP project ID (lowercase letters, digits and '-')"),
    "region": (_REGION, "{value!r} is not a Dataflow region such as 'europe-west1' or 'us-central1'"),
    "temp_location": (
        _GCS_PATH,
        "{value!r} is not a gs://BUCKET/PATH URL (Beam would otherwise fall back to a default bucket)",
    ),
    "service_account_email": (
        _SERVICE_ACCOUNT,
        "{value!r} is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)",
    ),
    "network": (_NETWORK, "network {value!r}: give the VPC network's name, not a URL"),
    "subnetwork": (
        _SUBNETWORK,
        "subnetwork {value!r}: use 'regions/REGION/subnetworks/NAME' or "
        "'https://www.googleapis.com/compute/v1/projects/PROJECT/regions/REGION/subnetworks/NAME'",
    ),
}
_FORMATS["staging_location"] = _FORMATS["temp_location"]

#: The OAuth scope prefect-gcp's GcpCredentials gives a service account key's credentials; ADC get it too.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# How a process gets ADC (google-auth's own message, quoted after it, links Google's set-up page).
_ADC_HOW = (
    "GOOGLE_APPLICATION_CREDENTIALS pointing at a service account key file, the attached service account "
    "of a VM, or `gcloud auth application-default login`"
)


def resolve_gcp_credentials(
    block_name: str | None, *, owner: str, field: str
) -> tuple[Credentials, str | None]:
    """The Google credentials a block names, and their project, resolved now (not when the block is created).

    Args:
        block_name: name of a prefect-gcp ``GcpCredentials`` block; None: the process's Application Default
            Credentials (ADC, ``google.auth.default``).
        owner: the block that names them, for the messages, e.g. ``"Dataflow Options block 'crm-export'"``.
        field: the owner's field holding ``block_name``, e.g. ``"gcp_credentials_block"``.

    Returns:
        ``(credentials, project)``: ``google.auth.credentials.Credentials`` (scope cloud-platform for a key or
        ADC; a GcpCredentials block without a key gives ADC as prefect-gcp does), and the project ID of those
        credentials or None: the block's ``project`` (prefect-gcp fills it in from the key, or ADC, when the
        block is created or loaded), else its key's ``project_id``; for ADC the project ``google.auth.default``
        finds (``GOOGLE_CLOUD_PROJECT``, the key file's, gcloud's, the metadata server's).

    Raises:
        blocks.loading.BlockNotFoundError: no GCP Credentials block ``block_name`` (a ``LookupError``).
        google.auth.exceptions.DefaultCredentialsError: ADC are needed (no block named, or the block holds
            no service account key) and this process has none; the message names the owner, the field and
            what to do.
    """
    if not block_name:
        try:
            credentials, project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        except DefaultCredentialsError as exc:
            raise DefaultCredentialsError(
                f"{owner} has no {field} and this process has no Application Default Credentials ({exc}). "
                f"Set {field} to the name of a GCP Credentials block, or give the process ADC: {_ADC_HOW}."
            ) from None
        return credentials, project

    from prefect_gcp.credentials import GcpCredentials  # slow to import: only when a block is named

    try:
        # Loading a key-less block already looks for ADC (prefect-gcp's block_initialization runs on load).
        block = load_block(GcpCredentials, block_name, needed_by=f"{owner} (field {field})")
        credentials = block.get_credentials_from_service_account()
    except DefaultCredentialsError as exc:
        raise DefaultCredentialsError(
            f"GCP Credentials block {block_name!r} ({field} of {owner}) holds no service account key, so it "
            f"stands for Application Default Credentials, and this process has none ({exc}). Give the block a "
            f"service account key (service_account_info or service_account_file), or give the process ADC: "
            f"{_ADC_HOW}."
        ) from None
    return credentials, block.project or getattr(credentials, "project_id", None)


def check_credentials_block_name(field: str, value: str | None) -> str | None:
    """The value of ``field``, which names a GCP Credentials block: surrounding spaces dropped, empty → None.

    Raises ``ValueError`` for a block document slug ('gcp-credentials/NAME'), naming the name to give instead.
    """
    value = (value or "").strip() or None
    if value is not None and "/" in value:
        raise ValueError(
            f"{field} {value!r}: give the GCP Credentials block's name (e.g. {value.rsplit('/', 1)[-1]!r}), "
            "not a block document slug"
        )
    return value


def refuse_former_field(data: Any, former: str, instead: str) -> Any:
    """A pydantic ``mode="before"`` model validator: refuse ``former``, a field the block no longer has.

    Prefect blocks allow unknown fields, so a document saved before the change (or old code) would otherwise
    load with the field silently ignored, and the block would run with other credentials than it was saved with.
    """
    if isinstance(data, dict) and former in data:
        raise ValueError(f"{former}: this block no longer takes it; {instead}")
    return data


class DataflowOptions(Block):
    """The Dataflow runner settings of a Beam job: project, region, locations, FlexRS, identity, network, workers.

    ``pipeline_args(job_name, labels)`` gives the ``DataflowRunner`` flags; ``project_id()`` the project jobs
    run in; ``credentials()`` the credentials the launcher uses, resolved when called. Units:
    ``max_num_workers`` is a count of VMs. Paths are ``gs://bucket/path`` URLs, except ``setup_file`` (a local
    path on the machine that submits the job).
    """

    _block_type_name = "Dataflow Options"
    _description = (
        "Dataflow runner settings of a Beam job (project, region, temp/staging locations, FlexRS, worker "
        "service account, network, labels, the workers' package). No secrets: every value is job metadata."
    )
    _documentation_url = "https://cloud.google.com/dataflow/docs/reference/pipeline-options"
    # Google Cloud's logo, as prefect-gcp's blocks show it.
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/10424e311932e31c477ac2b9ef3d53cefbaad708-250x250.png"
    # Validation errors would otherwise quote the raw input: a document saved with the former nested
    # gcp_credentials holds a service account key.
    model_config = ConfigDict(hide_input_in_errors=True)

    gcp_credentials_block: str | None = Field(
        default=None,
        title="GCP Credentials Block",
        description=(
            "Name of the GCP Credentials block the launcher lists, reads and polls jobs and encrypts the CRM key "
            "with; its project is the default project. Empty: the process's Application Default Credentials. "
            "Beam submits with Application Default Credentials either way."
        ),
    )
    project: str | None = Field(
        default=None,
        description="Project the jobs run in. Empty: the project of the credentials (gcp_credentials_block's or ADC's).",
    )
    region: str = Field(
        description="Dataflow regional endpoint the jobs run in and are listed from, e.g. 'europe-west1'.",
    )
    temp_location: str = Field(
        description="gs:// path for temporary files of the jobs (e.g. BigQuery export files), e.g. gs://bucket/tmp.",
    )
    staging_location: str | None = Field(
        default=None,
        description="gs:// path the job's package and pipeline are staged to. Empty: the temp location.",
    )
    flexrs_goal: Literal["COST_OPTIMIZED", "SPEED_OPTIMIZED"] | None = Field(
        default="COST_OPTIMIZED",
        description=(
            "Flexible Resource Scheduling for batch jobs. COST_OPTIMIZED: cheaper, but the job may wait in "
            "JOB_STATE_QUEUED for up to 6 hours before it starts. Empty: no FlexRS."
        ),
    )
    service_account_email: str | None = Field(
        default=None,
        description="Service account the worker VMs run as. Empty: the Compute Engine default service account.",
    )
    network: str | None = Field(
        default=None, description="VPC network of the workers, by name (not URL). Empty: Dataflow's default."
    )
    subnetwork: str | None = Field(
        default=None,
        description=(
            "Subnetwork of the workers: 'regions/REGION/subnetworks/NAME', or the full URL "
            "'https://www.googleapis.com/compute/v1/projects/HOST_PROJECT/regions/REGION/subnetworks/NAME' "
            "(required for Shared VPC). Must be in the block's region."
        ),
    )
    use_public_ips: bool = Field(
        default=False,
        description=(
            "Give workers public IP addresses. Off: the subnetwork needs Private Google Access, and workers "
            "reach PyPI (to build the workers' package) only through Cloud NAT or a mirror, or use "
            "sdk_container_image with the package installed."
        ),
    )
    machine_type: str | None = Field(
        default=None, description="Compute Engine machine type of the workers, e.g. 'n1-standard-2'."
    )
    max_num_workers: int | None = Field(
        default=None,
        ge=1,
        description="Upper bound of autoscaling, in worker VMs. Empty: Dataflow's default.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels of every job (cost attribution); the launcher adds per-run labels, which win.",
    )
    api_key_kms_key: str = Field(
        description=(
            "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) the launcher encrypts the CRM API key "
            "with before the job is built: the job graph Dataflow stages to GCS holds only the ciphertext, and "
            "the workers decrypt it. The flow's identity needs roles/cloudkms.cryptoKeyEncrypter on the key, "
            "the worker service account roles/cloudkms.cryptoKeyDecrypter."
        ),
    )
    setup_file: str = Field(
        default="pipelines/setup.py",
        description=(
            "setup.py of the package the workers install (--setup_file). A relative path is taken from the "
            "repository root; the file must exist where the flow runs."
        ),
    )
    sdk_container_image: str | None = Field(
        default=None,
        description="Custom worker container image (Artifact Registry URL). Empty: Beam's image.",
    )
    experiments: list[str] = Field(
        default_factory=list, description="Dataflow/Beam experiments (--experiments), one per entry."
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_nested_credentials(cls, data: Any) -> Any:
        return refuse_former_field(
            data,
            "gcp_credentials",
            "save the credentials as a GCP Credentials block of their own and give its name in "
            "gcp_credentials_block (empty: the process's Application Default Credentials), then save this block again",
        )

    @field_validator("gcp_credentials_block")
    @classmethod
    def _check_gcp_credentials_block(cls, value: str | None) -> str | None:
        return check_credentials_block_name("gcp_credentials_block", value)

    @field_validator(*_FORMATS)
    @classmethod
    def _check_format(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern, message = _FORMATS[info.field_name]
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(message.format(value=value))
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_labels(value)

    @field_validator("experiments")
    @classmethod
    def _check_experiments(cls, value: list[str]) -> list[str]:
        bad = [e for e in value if not e or "," in e or e != e.strip()]
        if bad:
            raise ValueError(f"experiments {bad}: one non-empty experiment per entry, without commas")
        return value

    @model_validator(mode="after")
    def _check_subnetwork_region(self) -> DataflowOptions:
        if self.subnetwork:
            match = _SUBNETWORK.fullmatch(self.subnetwork)
            if match and match["region"] != self.region:
                raise ValueError(
                    f"subnetwork {self.subnetwork!r} is in {match['region']}, but the workers run in "
                    f"{self.region}: Dataflow needs a subnetwork of the job's region"
                )
        return self

    # -- derived values ----------------------------------------------------------------------------

    def _block_label(self) -> str:
        name = getattr(self, "_block_document_name", None)
        return f"Dataflow Options block {name!r}" if name else "this Dataflow Options block (unsaved)"

    def credentials(self) -> tuple[Credentials, str]:
        """The credentials the launcher calls Dataflow and Cloud KMS with, and the project jobs run in.

        Resolved at each call (``resolve_gcp_credentials``): the GCP Credentials block ``gcp_credentials_block``
        is loaded from the Prefect API, or the process's Application Default Credentials are looked up.

        Returns:
            ``(google.auth.credentials.Credentials, project ID)``; the project as ``project_id()`` gives it.

        Raises:
            blocks.loading.BlockNotFoundError: no GCP Credentials block of that name.
            google.auth.exceptions.DefaultCredentialsError: ADC are needed and this process has none (the
                message names this block, the field and what to do).
            ValueError: no project can be found (the message names this block and what to set).
        """
        credentials, project = resolve_gcp_credentials(
            self.gcp_credentials_block, owner=self._block_label(), field="gcp_credentials_block"
        )
        project = self.project or project
        if not project:
            if self.gcp_credentials_block:
                where = f"the project of its GCP Credentials block {self.gcp_credentials_block!r} (gcp_credentials_block)"
            else:
                where = (
                    "a project for the process's Application Default Credentials (GOOGLE_CLOUD_PROJECT, or "
                    "`gcloud config set project`; its gcp_credentials_block is empty)"
                )
            raise ValueError(f"{self._block_label()} has no GCP project: set its 'project', or {where}")
        return credentials, project

    def project_id(self) -> str:
        """The project jobs run in: ``project``, else the project of the credentials (``credentials()``): the
        GCP Credentials block's, or that of the process's Application Default Credentials.

        Raises what ``credentials()`` raises when ``project`` is empty (no credentials are looked up otherwise).
        """
        if self.project:
            return self.project
        return self.credentials()[1]

    def setup_file_path(self) -> Path:
        """``setup_file`` as an absolute path (relative ones from the repository root).

        Raises ``FileNotFoundError`` if it does not exist on this machine (e.g. the block was saved with
        another machine's checkout path).
        """
        path = Path(self.setup_file)
        if not path.is_absolute():
            path = REPOSITORY_ROOT / path
        if not path.is_file():
            raise FileNotFoundError(
                f"{self._block_label()}: setup_file {str(path)!r} does not exist here; point it at this "
                "checkout's pipelines/setup.py (a relative path is taken from the repository root)"
            )
        return path

    def sending_processes(self) -> int | None:
        """The job's SDK processes at most: ``max_num_workers`` × the vCPUs of ``machine_type`` (Dataflow runs
        one Python SDK process per vCPU; default machine n1-standard-1); None without ``max_num_workers``.
        A CRM's rate limit is shared among them (docs/crm-export.md, "Pacing")."""
        if self.max_num_workers is None:
            return None
        return self.max_num_workers * machine_vcpus(self.machine_type or "n1-standard-1")

    def pipeline_args(self, job_name: str, labels: Mapping[str, str]) -> list[str]:
        """Beam's ``DataflowRunner`` flags for a job named ``job_name`` with ``labels`` on top of the block's.

        Returns e.g. ``["--runner=DataflowRunner", "--project=P", "--region=R", "--temp_location=gs://…",
        "--job_name=N", "--flexrs_goal=COST_OPTIMIZED", "--no_use_public_ips", "--setup_file=/…/setup.py",
        "--no_save_main_session", "--labels=k=v", …]``: one ``--labels`` flag per label (the given labels
        win over the block's), one ``--experiments`` flag per experiment; unset fields give no flag.
        ``--no_save_main_session``: the pipeline's code is the installed ``pipelines`` package, so the
        submitting process's ``__main__`` (Prefect's) is not pickled and staged.

        Raises ``ValueError`` for an invalid job name or labels, ``FileNotFoundError`` for a missing setup file.
        """
        validate_job_name(job_name)
        merged = validate_labels({**self.labels, **labels})
        args = [
            "--runner=DataflowRunner",
            f"--project={self.project_id()}",
            f"--region={self.region}",
            f"--temp_location={self.temp_location}",
        ]
        if self.staging_location:
            args.append(f"--staging_location={self.staging_location}")
        args.append(f"--job_name={job_name}")
        if self.flexrs_goal:
            args.append(f"--flexrs_goal={self.flexrs_goal}")
        if self.service_account_email:
            args.append(f"--service_account_email={self.service_account_email}")
        if self.network:
            args.append(f"--network={self.network}")
        if self.subnetwork:
            args.append(f"--subnetwork={self.subnetwork}")
        args.append("--use_public_ips" if self.use_public_ips else "--no_use_public_ips")
        if self.machine_type:
            args.append(f"--worker_machine_type={self.machine_type}")
        if self.max_num_workers is not None:
            args.append(f"--max_num_workers={self.max_num_workers}")
        args.append(f"--setup_file={self.setup_file_path()}")
        args.append("--no_save_main_session")
        if self.sdk_container_image:
            args.append(f"--sdk_container_image={self.sdk_container_image}")
        args.extend(f"--experiments={experiment}" for experiment in self.experiments)
        args.extend(f"--labels={key}={value}" for key, value in sorted(merged.items()))
        return args


def machine_vcpus(machine_type: str) -> int:
    """The vCPUs of a Compute Engine machine type: ``n1-standard-4`` → 4, ``custom-4-16384`` and
    ``n2-custom-4-16384`` → 4, a shared-core type (``e2-medium``, ``e2-small``, ``f1-micro``) → 1."""
    if match := re.fullmatch(r"(?:[a-z0-9]+-)?custom-(\d+)-\d+(?:-ext)?", machine_type):
        return int(match.group(1))
    if match := re.fullmatch(r"[a-z0-9]+-[a-z]+-(\d+)(?:-[a-z0-9]+)?", machine_type):
        return int(match.group(1))
    return 1
