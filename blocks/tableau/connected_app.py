"""A Tableau connected app with direct trust: a run signs in with a JWT it signs with the app's secret.

Tableau facts ("Configure Connected Apps with Direct Trust", "Access Scopes for Connected Apps",
help.tableau.com): the JWT is signed HS256 with a secret of the app; its header carries ``kid`` (the
secret id) and ``iss`` (the client id); its claims are ``iss`` (client id), ``sub`` (the user to sign
in as), ``aud`` = "tableau", ``jti`` (unique), ``exp`` (at most 10 minutes ahead) and ``scp`` (the
scopes the session may use). A connected app's sessions are independent of each other: unlike a PAT,
signing in again does not end an earlier session, so runs need no lease of a credential.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from blocks.secrets import SecretSource, check_one_secret, held_or_read
from blocks.tableau.pat import MIN_LEASE_DURATION_SECONDS
from blocks.tableau.site import TABLEAU_LOGO_URL, TableauSite, site_field_from_old_shape

#: Tableau refuses a JWT whose ``exp`` is more than 10 minutes ahead (Troubleshoot Connected Apps, 16).
MAX_TOKEN_LIFETIME_SECONDS = 600

#: Scopes of a domain refresh, per REST method's "JWT Access Scope" (REST API reference):
#: Query Data Sources / Query Workbooks -> tableau:content:read; Update Data Source Now / Update
#: Workbook Now -> tableau:tasks:run; Query Job / Query Jobs -> tableau:jobs:read (JWT support for
#: jobs from REST API 3.25, tableau/server-client-python #1581); Cancel Job -> tableau:jobs:update.
REFRESH_SCOPES = ("tableau:content:read", "tableau:tasks:run", "tableau:jobs:read", "tableau:jobs:update")
#: Scopes the metadata collector's reads would need through a connected app (it signs in with a PAT
#: pool today): content (sites, projects, workbooks, views, data sources
#: and their connections, and the Metadata API, "How to Authenticate": scp "tableau:content:read"),
#: Query Users on Site -> tableau:users:read, List Extract Refresh Tasks -> tableau:tasks:read.
COLLECTOR_SCOPES = ("tableau:content:read", "tableau:users:read", "tableau:tasks:read")


class TableauConnectedApp(Block):
    """A connected app (direct trust) of one Tableau site, the user its runs sign in as, their scopes,
    and the global concurrency limit that bounds how many domain runs refresh through it at once."""

    _block_type_name = "Tableau Connected App"
    _description = (
        "A Tableau connected app with direct trust: each run signs in with its own short-lived JWT, so "
        "runs share no session. A global concurrency limit bounds how many refresh at once."
    )
    model_config = ConfigDict(hide_input_in_errors=True)  # a pasted secret stays out of errors
    _logo_url = TABLEAU_LOGO_URL
    _documentation_url = "https://help.tableau.com/current/server/en-us/connected_apps_direct.htm"

    site: TableauSite = Field(description="The Tableau site the connected app belongs to.")
    client_id: str = Field(min_length=1, description="The connected app's client ID (the JWT's iss).")
    secret_id: str = Field(min_length=1, description="The ID of the app's secret that signs (the JWT's kid).")
    secret_value: SecretStr | None = Field(
        default=None, description="The secret's value; leave empty to read it from secret_value_source."
    )
    secret_value_source: SecretSource | None = Field(
        default=None,
        description="Where the secret's value lives instead (Prefect Secret, AwsSecret or SSM parameter).",
    )
    username: str = Field(
        min_length=1,
        description="The Tableau user the runs sign in as (the JWT's sub; Tableau Cloud: an email).",
    )
    scopes: list[str] = Field(
        default_factory=lambda: list(REFRESH_SCOPES),
        min_length=1,
        description="The JWT's scp: what the sessions may do. The refresh needs "
        + ", ".join(REFRESH_SCOPES)
        + " (the metadata collector, which signs in with a PAT pool today, would need "
        + ", ".join(COLLECTOR_SCOPES)
        + ").",
    )
    token_lifetime_seconds: float = Field(
        default=300,
        ge=30,
        le=MAX_TOKEN_LIFETIME_SECONDS,
        description="How long a JWT is valid for signing in, in seconds (Tableau: at most 600).",
    )
    concurrency_limit_name: str = Field(
        default="tableau-refresh-capacity",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="The global concurrency limit every domain run through this app holds a slot of.",
    )
    refresh_capacity: int = Field(
        default=4,
        ge=1,
        description="Domain runs that may refresh at once (the limit's slots): the site's refresh capacity.",
    )
    lease_duration_seconds: float = Field(
        default=300,
        ge=MIN_LEASE_DURATION_SECONDS,
        description="Lease of a held slot, renewed in the background; a crashed run's slot frees after it.",
    )
    acquire_timeout_seconds: float = Field(
        default=3600, gt=0, description="How long a run waits for a free slot before it fails, in seconds."
    )

    @model_validator(mode="before")
    @classmethod
    def _site_saved_as_a_block(cls, data: Any) -> Any:
        return site_field_from_old_shape(
            data, block_type="Tableau Connected App", block_option="--connected-app-block"
        )

    @field_validator("scopes")
    @classmethod
    def _scopes_are_tableau_scopes(cls, scopes: list[str]) -> list[str]:
        bad = [s for s in scopes if len(s.split(":")) != 3 or not s.startswith("tableau:")]
        if bad:
            raise ValueError(
                f"scopes look like tableau:<resource>:<action>, e.g. tableau:tasks:run; got {bad}"
            )
        return scopes

    @model_validator(mode="after")
    def _one_secret(self) -> TableauConnectedApp:
        fields = ("secret_value", "secret_value_source")
        check_one_secret(
            self.secret_value,
            self.secret_value_source,
            owner=f"connected app {self.client_id!r}",
            fields=fields,
        )
        return self

    def read_secret(self, block_name: str = "") -> str:
        """The secret's value: the block's own, or read now from ``secret_value_source``.

        Raises:
            BlockNotFoundError, SecretSourceError: the source cannot be read (``blocks.secrets.read_secret``).
        """
        label = (
            f"Tableau Connected App block {block_name!r}"
            if block_name
            else f"connected app {self.client_id!r}"
        )
        return held_or_read(
            self.secret_value, self.secret_value_source, needed_by=f"{label} (secret_value_source)"
        )
