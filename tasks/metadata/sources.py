"""Configuration of the metadata collectors: one entry per source in ``metadata_sources.yaml``.

The file's shape and an example: docs/metadata-collectors.md ("Configuration"). Secrets are never in
it: blocks are named instead.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = PROJECT_ROOT / "metadata_sources.yaml"
FILE_ENV_VAR = "METADATA_SOURCES_FILE"


class SourceConfigError(ValueError):
    """The sources file is missing or malformed, or lacks the requested source."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AthenaExtractorConfig(_Strict):
    """Amazon Athena and the Glue Data Catalog (``tasks.metadata.extractors.athena``)."""

    kind: Literal["athena"]
    aws_credentials_block: str = Field(description="name of a prefect-aws AwsCredentials block")
    region: str
    output_location: str = Field(
        pattern=r"^s3://", description="results bucket of information_schema queries"
    )
    workgroups: list[str] | None = Field(default=None, description="workgroups to read; empty: all")
    role_arn: str | None = Field(default=None, description="role to assume for the extraction")
    endpoint_url: str | None = Field(
        default=None, description="AWS endpoint override (a VPC endpoint, a local emulator)"
    )
    history_days: int = Field(default=45, ge=1, le=45, description="Athena keeps 45 days of query history")


class TableauExtractorConfig(_Strict):
    """Tableau, through a PAT leased from the same pool as the refresh flows (``tasks.metadata.extractors.tableau``)."""

    kind: Literal["tableau"]
    pat_pool_block: str = Field(description="name of the Tableau PAT Pool block")
    lineage: bool = Field(
        default=True,
        description="also read lineage through the Metadata API (on Tableau Server it must be enabled)",
    )


class S3LandingConfig(_Strict):
    kind: Literal["s3"]
    s3_bucket_block: str = Field(description="name of a prefect-aws S3Bucket block")
    landing_dir: str


class AzureBlobLandingConfig(_Strict):
    kind: Literal["azure_blob"]
    account_url: str = Field(description="https://<account>.blob.core.windows.net (no SAS here)")
    container: str
    sas_token_secret: str = Field(description="name of the Secret block holding the SAS token")
    landing_dir: str


class GcsLandingConfig(_Strict):
    kind: Literal["gcs"]
    gcs_bucket_block: str = Field(description="name of a prefect-gcp GcsBucket block")
    landing_dir: str


class LocalLandingConfig(_Strict):
    kind: Literal["local"]
    root: Path = Field(description="an existing directory (e.g. a mounted share)")
    landing_dir: str


class HwmConfig(_Strict):
    """Where the high-water mark is kept and how the window is planned."""

    store: Literal["variable", "file"] = Field(
        default="variable",
        description="a Prefect Variable hwm_<source>, or <source>_hwm.txt next to the landing dir",
    )
    lag_minutes: float = Field(
        default=60, ge=0, description="end = now - lag: what is still changing is left"
    )
    initial_lookback_days: float = Field(default=1, gt=0, description="the first window's length")

    @property
    def lag(self) -> timedelta:
        return timedelta(minutes=self.lag_minutes)

    @property
    def initial_lookback(self) -> timedelta:
        return timedelta(days=self.initial_lookback_days)


ExtractorConfig = Annotated[AthenaExtractorConfig | TableauExtractorConfig, Field(discriminator="kind")]
LandingConfig = Annotated[
    S3LandingConfig | AzureBlobLandingConfig | GcsLandingConfig | LocalLandingConfig,
    Field(discriminator="kind"),
]


class SourceConfig(_Strict):
    """One metadata source: what to extract, where files land, how the window is kept."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    extractor: ExtractorConfig
    landing: LandingConfig
    hwm: HwmConfig = HwmConfig()
    compress: bool = Field(default=True, description="gzip the CSV files")
    mask: bool = Field(default=True, description="replace literals in SQL text by placeholders")


class SourcesFile(_Strict):
    sources: dict[str, dict]


def sources_file(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(FILE_ENV_VAR) or DEFAULT_FILE)


def load_sources(path: str | os.PathLike[str] | None = None) -> dict[str, SourceConfig]:
    """Every configured source by name. Raises ``SourceConfigError`` naming the file and the problem."""
    file = sources_file(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise SourceConfigError(
            f"no metadata sources file at {file} (set {FILE_ENV_VAR} or sources_file)"
        ) from None
    except yaml.YAMLError as exc:
        raise SourceConfigError(f"{file} is not valid YAML: {exc}") from None
    try:
        entries = SourcesFile.model_validate(raw or {}).sources
        return {name: SourceConfig.model_validate({"name": name, **entry}) for name, entry in entries.items()}
    except ValidationError as exc:
        raise SourceConfigError(f"{file}: {exc}") from None


def load_source(name: str, path: str | os.PathLike[str] | None = None) -> SourceConfig:
    """One source. Raises ``SourceConfigError`` listing the configured names for an unknown one."""
    sources = load_sources(path)
    if name not in sources:
        known = ", ".join(sorted(sources)) or "none"
        raise SourceConfigError(
            f"unknown metadata source {name!r} in {sources_file(path)}; configured sources: {known}"
        )
    return sources[name]
