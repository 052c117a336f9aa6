"""Configuration of the metadata collectors: one entry per source in ``metadata_sources.yaml``.

The file's shape and an example: docs/metadata-collectors.md ("Configuration"). Secrets are never in
it: blocks are named instead. The file is read strictly (``tasks.config_files``): duplicate and
unknown keys are errors that name the line and the key path; a source's name is its key. Each source's
deployment (``metadata-<source>``, with the entry's ``schedule``) is written into ``prefect.yaml`` by
``python -m deployments.metadata``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator

from pipelines.transport import check_transport, plaintext_to_another_host, url_without_credentials
from tasks.config_files import ConfigFileError, StrictModel, load_yaml_mapping, name_key

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = PROJECT_ROOT / "metadata_sources.yaml"
FILE_ENV_VAR = "METADATA_SOURCES_FILE"
_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"


class SourceConfigError(ConfigFileError):
    """The sources file is missing or not valid (the message names the file, the line and the key path),
    or lacks the requested source (the message lists those it has). A ``ValueError``."""


SourceName = name_key(
    _NAME_PATTERN,
    "source name",
    "use lowercase letters, digits, '-' and '_', starting with a letter or digit (it names the files, the "
    "HWM and the artifact), e.g. 'athena-prod'",
)


def _check_landing_dir(landing_dir: str) -> str:
    """A path under the landing target: '/'-separated, no '..' (the landing target refuses both when a
    run builds it; here the file's error names the line)."""
    if "\\" in landing_dir:
        raise ValueError(f"landing_dir {landing_dir!r}: separate path segments with '/', not '\\'")
    if ".." in landing_dir.split("/"):
        raise ValueError(
            f"landing_dir {landing_dir!r} must not contain '..': the files and the HWM stay inside the landing "
            "target; give a path under it, e.g. catalog/athena/landing"
        )
    return landing_dir


#: The landing directory of every landing kind, under the target's root (bucket, container, directory).
LandingDir = Annotated[str, AfterValidator(_check_landing_dir)]


class AthenaExtractorConfig(StrictModel):
    """Amazon Athena and the Glue Data Catalog (``tasks.metadata.extractors.athena``)."""

    kind: Literal["athena"]
    aws_credentials_block: str = Field(min_length=1, description="name of a prefect-aws AwsCredentials block")
    region: str = Field(min_length=1, description="AWS region of Athena and Glue, e.g. eu-west-1")
    output_location: str = Field(
        pattern=r"^s3://", description="results bucket of information_schema queries"
    )
    workgroups: list[str] | None = Field(default=None, description="workgroups to read; empty: all")
    role_arn: str | None = Field(default=None, description="role to assume for the extraction")
    endpoint_url: str | None = Field(
        default=None,
        description="AWS endpoint override (a VPC endpoint, https://; a local emulator, http:// on loopback only)",
    )
    history_days: int = Field(default=45, ge=1, le=45, description="Athena keeps 45 days of query history")
    openlineage_job_namespace: str | None = Field(
        default=None,
        min_length=1,
        description="OpenLineage job namespace of the queries' runs: the scheduler's name; default: the source's name",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint_url(cls, url: str | None) -> str | None:
        """An ``http(s)://host`` URL without credentials, query or fragment; plaintext to loopback only
        (the requests carry the AWS signature and, with temporary credentials, the session token)."""
        if url is None:
            return url
        parts = urlsplit(url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or "@" in parts.netloc
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                f"endpoint_url {url_without_credentials(url)!r} (shown without user:password@, query string and "
                "fragment) must be an endpoint's URL alone, https://host[:port], e.g. "
                "https://athena.eu-west-1.amazonaws.com or a VPC endpoint's; the credentials go in the "
                "AwsCredentials block"
            )
        if plaintext_to_another_host(url):
            raise ValueError(
                f"endpoint_url {url!r} is plaintext http:// to {parts.hostname}, which is not a loopback host: "
                "the AWS requests, their signature and session token included, would cross the network "
                "unencrypted. Use https:// (AWS and its VPC endpoints take it); http:// is for an emulator "
                "on this machine (localhost, 127.0.0.1) only"
            )
        return url


class TableauExtractorConfig(StrictModel):
    """Tableau, through a PAT leased from the same pool as the refresh flows (``tasks.metadata.extractors.tableau``)."""

    kind: Literal["tableau"]
    pat_pool_block: str = Field(min_length=1, description="name of the Tableau PAT Pool block")
    lineage: bool = Field(
        default=True,
        description="also read lineage through the Metadata API (on Tableau Server it must be enabled)",
    )
    openlineage_job_namespace: str | None = Field(
        default=None,
        min_length=1,
        description="OpenLineage job namespace of the data sources' and workbooks' runs: the scheduler's name; default: the source's name",
    )


class S3LandingConfig(StrictModel):
    kind: Literal["s3"]
    s3_bucket_block: str = Field(min_length=1, description="name of a prefect-aws S3Bucket block")
    landing_dir: LandingDir


class AzureBlobLandingConfig(StrictModel):
    kind: Literal["azure_blob"]
    account_url: str = Field(description="https://<account>.blob.core.windows.net (no SAS here)")
    container: str = Field(min_length=1, description="the blob container")
    sas_token_secret: str = Field(min_length=1, description="name of the Secret block holding the SAS token")
    landing_dir: LandingDir
    allow_insecure_transport: bool = Field(
        default=False,
        description="accept a plaintext http:// account_url on a host that is not loopback (warned on every use)",
    )

    @model_validator(mode="after")
    def _secure_transport(self) -> AzureBlobLandingConfig:
        check_transport(
            self.account_url,
            owner="Azure Blob landing",
            field="landing.account_url",
            allow_insecure=self.allow_insecure_transport,
        )
        return self

    @field_validator("account_url")
    @classmethod
    def _no_sas_in_the_url(cls, url: str) -> str:
        # The message shows the URL without its query string: a SAS token pasted there stays out of it.
        if not url.startswith(("https://", "http://")) or "?" in url or "@" in urlsplit(url).netloc:
            raise ValueError(
                f"account_url {url_without_credentials(url)!r} (shown without query string) must be the "
                "account's URL alone, e.g. https://<account>.blob.core.windows.net: the SAS token goes in "
                "the Secret block named by sas_token_secret"
            )
        return url


class GcsLandingConfig(StrictModel):
    kind: Literal["gcs"]
    gcs_bucket_block: str = Field(min_length=1, description="name of a prefect-gcp GcsBucket block")
    landing_dir: LandingDir


class LocalLandingConfig(StrictModel):
    kind: Literal["local"]
    root: Path = Field(description="an existing directory (e.g. a mounted share)")
    landing_dir: LandingDir


class HwmConfig(StrictModel):
    """Where the high-water mark is kept and how the window is planned."""

    store: Literal["variable", "file"] = Field(
        default="variable",
        description="a Prefect Variable hwm_<source>, or <source>_hwm.txt next to the landing dir",
    )
    lag_minutes: float = Field(
        default=60, ge=0, allow_inf_nan=False, description="end = now - lag: what is still changing is left"
    )
    initial_lookback_days: float = Field(
        default=1, gt=0, allow_inf_nan=False, description="the first window's length"
    )

    @property
    def lag(self) -> timedelta:
        return timedelta(minutes=self.lag_minutes)

    @property
    def initial_lookback(self) -> timedelta:
        return timedelta(days=self.initial_lookback_days)


DEFAULT_CRON = "0 2 * * *"


class ScheduleConfig(StrictModel):
    """The schedule of the source's deployment ``metadata-<source>`` in ``prefect.yaml`` (written by
    ``python -m deployments.metadata``): a Prefect cron schedule, by default daily at 02:00 UTC, active."""

    cron: str = Field(
        default=DEFAULT_CRON,
        description="when the deployment runs: a cron expression (five fields), default '0 2 * * *' (02:00 daily)",
    )
    timezone: str = Field(
        default="UTC", description="the IANA time zone of the cron expression, e.g. UTC or Europe/Paris"
    )
    active: bool = Field(
        default=True,
        description="false deploys the schedule paused (no scheduled runs until it is resumed or set true)",
    )

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, cron: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule  # the check `prefect deploy` makes

        try:
            CronSchedule(cron=cron, timezone="UTC")
        except ValidationError:
            raise ValueError(
                f"cron {cron!r} is not a cron expression Prefect takes: give five fields, minute hour "
                f"day-of-month month day-of-week, e.g. {DEFAULT_CRON!r} (02:00 daily)"
            ) from None
        return cron

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, timezone: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=DEFAULT_CRON, timezone=timezone)
        except ValidationError:
            raise ValueError(
                f"timezone {timezone!r} is not an IANA time zone Prefect knows: use a tz database name, "
                "e.g. UTC or Europe/Paris"
            ) from None
        return timezone


ExtractorConfig = Annotated[AthenaExtractorConfig | TableauExtractorConfig, Field(discriminator="kind")]
LandingConfig = Annotated[
    S3LandingConfig | AzureBlobLandingConfig | GcsLandingConfig | LocalLandingConfig,
    Field(discriminator="kind"),
]


class SourceEntry(StrictModel):
    """One entry under ``sources:``, keyed by the source's name: what to extract, where files land,
    how the window is kept."""

    refused_keys: ClassVar[dict[str, str]] = {
        "name": "a source's name is its key under 'sources:' (the HWM and the files are named after it); "
        "remove 'name:' (to rename the source, rename its key)."
    }

    extractor: ExtractorConfig = Field(description="what to read: kind athena or tableau")
    landing: LandingConfig = Field(description="where the files land: kind s3, azure_blob, gcs or local")
    hwm: HwmConfig = HwmConfig()
    compress: bool = Field(default=True, description="gzip the CSV files")
    mask: bool = Field(default=True, description="replace literals in SQL text by placeholders")
    schedule: ScheduleConfig = Field(
        default=ScheduleConfig(),
        description="the schedule of the deployment metadata-<source>: cron (default '0 2 * * *', daily), "
        "timezone (default UTC), active (default true; false: deployed paused)",
    )


class SourceConfig(SourceEntry):
    """One metadata source, named: its entry and its key under ``sources:``."""

    name: str = Field(pattern=_NAME_PATTERN)


class SourcesFile(StrictModel):
    """The whole file: ``sources``, name → entry."""

    sources: dict[SourceName, SourceEntry] = Field(description="one entry per source, keyed by its name")


def sources_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The sources file to read: ``path``, else ``$METADATA_SOURCES_FILE``, else the default."""
    return Path(path or os.environ.get(FILE_ENV_VAR) or DEFAULT_FILE)


def load_sources(path: str | os.PathLike[str] | None = None) -> dict[str, SourceConfig]:
    """Every configured source: name → ``SourceConfig``, in file order.

    Raises:
        SourceConfigError: the file is missing, not YAML, holds a duplicate or unknown key (``name``
            among them) or an invalid value; the message names the file, the line and the key path.
    """
    file = sources_file(path)
    document = load_yaml_mapping(
        file,
        what="Metadata sources file",
        error=SourceConfigError,
        missing_hint=f"create it, or point {FILE_ENV_VAR} or the flow's sources_file at it",
    )
    parsed = document.validate(SourcesFile)
    return {
        name: SourceConfig(name=name, **{field: getattr(entry, field) for field in SourceEntry.model_fields})
        for name, entry in parsed.sources.items()
    }


def load_source(name: str, path: str | os.PathLike[str] | None = None) -> SourceConfig:
    """One source.

    Raises:
        SourceConfigError: the source is not in the file (the message lists those that are), or the
            file is not valid (``load_sources``).
    """
    sources = load_sources(path)
    if name not in sources:
        known = ", ".join(sorted(sources)) or "none"
        raise SourceConfigError(
            f"unknown metadata source {name!r} in {sources_file(path)}; configured sources: {known}. "
            "Add an entry under 'sources:' or fix the flow's 'source' parameter."
        )
    return sources[name]
