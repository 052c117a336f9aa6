"""The Tableau site a job signs in to."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, field_validator


class TableauSite(Block):
    """Where a Tableau site lives: server URL, site content URL and REST API version."""

    _block_type_name = "Tableau Site"
    _description = "Connection settings of a Tableau Server or Tableau Cloud site."

    server_url: str = Field(
        description="Base URL of Tableau Server or the Tableau Cloud pod, e.g. https://10ax.online.tableau.com.",
    )
    site_content_url: str = Field(
        default="",
        description="The site's content URL (the part after /site/ in the browser); empty for the default site.",
    )
    api_version: str | None = Field(
        default=None,
        description="REST API version to use, e.g. '3.25'. Empty: ask the server (GET /serverInfo) for its highest.",
    )
    verify_ssl: bool = Field(default=True, description="Verify the server's TLS certificate.")
    request_timeout_seconds: float = Field(
        default=60, gt=0, description="Timeout of one REST request, in seconds."
    )

    @field_validator("server_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"server_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")
