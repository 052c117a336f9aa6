"""The Tableau site a job signs in to."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, field_validator, model_validator

from blocks import run_logger
from pipelines.transport import (
    ALLOW_INSECURE_TRANSPORT_DESCRIPTION,
    check_transport,
    url_without_credentials,
    warn_insecure_transport,
)

#: Tableau's logo (its GitHub organisation's avatar, 250 × 250), for every Tableau block.
TABLEAU_LOGO_URL = "https://github.com/tableau.png?size=250"


class TableauSite(Block):
    """Where a Tableau site lives: server URL, site content URL and REST API version.

    A plaintext ``http://`` server URL, or ``verify_ssl`` false, is refused for a host that is not
    loopback unless ``allow_insecure_transport`` is true: the sign-in sends a PAT's secret or a
    connected app's JWT to it. With the flag, ``http_options()`` — the options of the REST client made
    for the site — logs a warning naming the block and the server URL each time it is called.

    Raises:
        ValueError (a ``pydantic.ValidationError``): ``server_url`` is not an http(s) URL, or the transport
            to a host that is not loopback is insecure and ``allow_insecure_transport`` is false.
    """

    _block_type_name = "Tableau Site"
    _description = "Connection settings of a Tableau Server or Tableau Cloud site."
    _logo_url = TABLEAU_LOGO_URL
    _documentation_url = "https://help.tableau.com/current/api/rest_api/en-us/REST/rest_api_concepts_auth.htm"

    server_url: str = Field(
        description="Base URL of Tableau Server or the Tableau Cloud pod, e.g. https://10ax.online.tableau.com. "
        "http:// only for a loopback host (a local stand-in), unless allow_insecure_transport is true.",
    )
    site_content_url: str = Field(
        default="",
        description="The site's content URL (the part after /site/ in the browser); empty for the default site.",
    )
    api_version: str | None = Field(
        default=None,
        description="REST API version to use, e.g. '3.25'. Empty: ask the server (GET /serverInfo) for its highest.",
    )
    verify_ssl: bool = Field(
        default=True,
        description="Verify the server's TLS certificate. Off only for a loopback host, unless "
        "allow_insecure_transport is true.",
    )
    request_timeout_seconds: float = Field(
        default=60, gt=0, description="Timeout of one REST request, in seconds."
    )
    allow_insecure_transport: bool = Field(default=False, description=ALLOW_INSECURE_TRANSPORT_DESCRIPTION)

    @field_validator("server_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"server_url must start with http:// or https://, got {url_without_credentials(value)!r}"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check(self) -> TableauSite:
        self._check_transport()
        return self

    def http_options(self) -> dict[str, Any]:
        """The HTTP options of a REST client (a tableauserverclient ``Server``) for this site:
        ``{"verify": verify_ssl, "timeout": request_timeout_seconds}``, for ``Server.add_http_options``.

        Call it each time such a client is made: when ``allow_insecure_transport`` let an insecure
        transport through, it logs a warning naming the block and the server URL.

        Raises:
            ValueError: ``server_url`` or ``verify_ssl`` was changed after the block was built to an
                insecure transport that ``allow_insecure_transport`` does not accept.
        """
        if self._check_transport():
            name = (
                None if getattr(self, "_is_anonymous", False) else getattr(self, "_block_document_name", None)
            )
            warn_insecure_transport(
                self.server_url,
                owner=f"Tableau Site block {name!r}" if name else "Tableau Site block (unnamed)",
                verify=self.verify_ssl,
                logger=run_logger(__name__),
            )
        return {"verify": self.verify_ssl, "timeout": self.request_timeout_seconds}

    def _check_transport(self) -> str | None:
        return check_transport(
            self.server_url,
            owner="Tableau Site",
            field="server_url",
            allow_insecure=self.allow_insecure_transport,
            verify=self.verify_ssl,
            verify_field="verify_ssl",
        )
