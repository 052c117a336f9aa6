"""Blocks for the personal access tokens (PATs) of a Tableau site and the pool that leases them.

A ``TableauPatPool`` names its PATs (``TableauPersonalAccessToken`` blocks) and the prefix of the
Prefect global concurrency limits that guard them: ``<prefix>-pool`` (limit = number of PATs) and
``<prefix>-<pat block name>`` (limit 1 each). ``python -m deployments.bootstrap`` creates them.
A PAT's secret is in its block, or where the team keeps it (a Prefect Secret, AWS Secrets Manager,
SSM Parameter Store), read at each sign-in.
"""

from __future__ import annotations

import re
from typing import Any

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from blocks.secrets import SecretSource, check_one_secret, held_or_read
from blocks.tableau.site import TABLEAU_LOGO_URL, TableauSite, site_field_from_old_shape

# Tableau caps PATs per user and device (Tableau Server default: 10 per device).
MAX_PATS_PER_POOL = 10
#: Tableau's page on PATs: one session per PAT at a time, expiry, the cap per user.
PAT_DOCUMENTATION_URL = "https://help.tableau.com/current/server/en-us/security_personal_access_tokens.htm"
# Prefect's server refuses leases shorter than 60 s (POST /v2/concurrency_limits/increment-with-lease).
MIN_LEASE_DURATION_SECONDS = 60

_LIMIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TableauPersonalAccessToken(Block):
    """One personal access token (PAT). Tableau allows one session per PAT at a time."""

    _block_type_name = "Tableau Personal Access Token"
    _description = (
        "A Tableau personal access token. Signing in with it ends the session of any earlier sign-in "
        "with the same PAT (error 401002), so lease it through a Tableau PAT Pool."
    )
    model_config = ConfigDict(hide_input_in_errors=True)  # a pasted secret stays out of errors
    _logo_url = TABLEAU_LOGO_URL
    _documentation_url = PAT_DOCUMENTATION_URL

    token_name: str = Field(description="The PAT's name, as shown in Tableau's account settings.")
    token_secret: SecretStr | None = Field(
        default=None, description="The PAT's secret; leave empty to read it from token_secret_source."
    )
    token_secret_source: SecretSource | None = Field(
        default=None,
        description=(
            "Where the PAT's secret lives instead: a Prefect Secret block (kind secret), a prefect-aws "
            "AwsSecret block (aws-secret) or an SSM parameter read with an AwsCredentials block "
            "(ssm-parameter). Read at each sign-in."
        ),
    )

    @model_validator(mode="after")
    def _one_secret(self) -> TableauPersonalAccessToken:
        fields = ("token_secret", "token_secret_source")
        check_one_secret(
            self.token_secret, self.token_secret_source, owner=f"PAT {self.token_name!r}", fields=fields
        )
        return self

    def read_secret(self, block_name: str = "") -> str:
        """The PAT's secret: the block's own, or read now from ``token_secret_source``.

        Raises:
            BlockNotFoundError, SecretSourceError: the source cannot be read (``blocks.secrets.read_secret``).
        """
        label = f"PAT block {block_name!r}" if block_name else f"PAT {self.token_name!r}"
        return held_or_read(
            self.token_secret, self.token_secret_source, needed_by=f"{label} (token_secret_source)"
        )


class TableauPatPool(Block):
    """A pool of PATs for one Tableau site, leased through Prefect global concurrency limits."""

    _block_type_name = "Tableau PAT Pool"
    _description = (
        "PATs for one Tableau site, each guarded by a global concurrency limit of 1, "
        "plus a pool limit equal to their number."
    )
    model_config = ConfigDict(hide_input_in_errors=True)  # a pasted secret stays out of errors
    _logo_url = TABLEAU_LOGO_URL
    _documentation_url = PAT_DOCUMENTATION_URL

    site: TableauSite = Field(description="The Tableau site the PATs sign in to.")
    pat_block_names: list[str] = Field(
        description=f"Names of the Tableau Personal Access Token blocks in the pool (1 to {MAX_PATS_PER_POOL}).",
    )
    concurrency_limit_prefix: str = Field(
        default="tableau-pat",
        description="Prefix of the global concurrency limits: '<prefix>-pool' and '<prefix>-<PAT block name>'.",
    )
    lease_duration_seconds: float = Field(
        default=300,
        ge=MIN_LEASE_DURATION_SECONDS,
        description=(
            "Lease of a held PAT, renewed in the background; a crashed holder's PAT is free again "
            "at most this many seconds (plus the server's lease-cleanup interval) after the crash."
        ),
    )
    acquire_timeout_seconds: float = Field(
        default=3600, gt=0, description="How long a run waits for a free PAT before it fails, in seconds."
    )

    @model_validator(mode="before")
    @classmethod
    def _site_saved_as_a_block(cls, data: Any) -> Any:
        return site_field_from_old_shape(data, block_type="Tableau PAT Pool", block_option="--pool-block")

    @field_validator("pat_block_names")
    @classmethod
    def _check_pats(cls, names: list[str]) -> list[str]:
        if not 1 <= len(names) <= MAX_PATS_PER_POOL:
            raise ValueError(
                f"a pool holds 1 to {MAX_PATS_PER_POOL} PATs (Tableau caps PATs per user and device), "
                f"got {len(names)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"pat_block_names has duplicates: {names}")
        return names

    @model_validator(mode="after")
    def _check_limit_names(self) -> TableauPatPool:
        for name in [self.pool_limit_name, *self.pat_limit_names().values()]:
            if not _LIMIT_NAME.match(name):
                raise ValueError(
                    f"global concurrency limit name {name!r} is not valid: use letters, digits, '-', '_' or '.'"
                )
        return self

    @property
    def pool_limit_name(self) -> str:
        """Name of the pool's global concurrency limit (limit = number of PATs)."""
        return f"{self.concurrency_limit_prefix}-pool"

    def pat_limit_names(self) -> dict[str, str]:
        """Map each PAT block name to the name of its limit-1 global concurrency limit."""
        return {pat: f"{self.concurrency_limit_prefix}-{pat}" for pat in self.pat_block_names}
