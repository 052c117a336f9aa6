"""The Tableau site a job signs in to: a field of the PAT pool and of the connected app blocks.

The site is a plain pydantic model, not a block of its own: a block that nests another block makes
Prefect resolve the nested block's type when it loads, and Prefect does that by importing every
installed collection first (prefect-gcp alone takes seconds), in every flow-run process.

Blocks saved before the site became a field (issue 25) hold their site as a ``Tableau Site`` block
(a reference to a Site block document, or a site saved with them). They still load, with the site's
values; ``python -m deployments.bootstrap ... --fix`` re-saves them with the site as a field
(``saved_as_site_block`` finds them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from blocks import run_logger
from pipelines.transport import (
    ALLOW_INSECURE_TRANSPORT_DESCRIPTION,
    check_transport,
    url_without_credentials,
    warn_insecure_transport,
)

#: Tableau's logo (its GitHub organisation's avatar, 250 × 250), for every Tableau block.
TABLEAU_LOGO_URL = "https://github.com/tableau.png?size=250"

#: The block type slug a site was saved under when it was a block of its own (before issue 25).
SITE_BLOCK_TYPE_SLUG = "tableau-site"


class TableauSite(BaseModel):
    """Where a Tableau site lives: server URL, site content URL and REST API version.

    The ``site`` field of a ``TableauPatPool`` or a ``TableauConnectedApp`` block (not a block itself):
    ``TableauPatPool(site=TableauSite(server_url=..., site_content_url=...), ...)``.

    A plaintext ``http://`` server URL, or ``verify_ssl`` false, is refused for a host that is not
    loopback unless ``allow_insecure_transport`` is true: the sign-in sends a PAT's secret or a
    connected app's JWT to it. With the flag, ``http_options()`` — the options of the REST client made
    for the site — logs a warning naming who uses the site and the server URL each time it is called.

    Raises:
        ValueError (a ``pydantic.ValidationError``, which never quotes the input): ``server_url`` is not
            an http(s) URL or carries ``user:password@``, the transport to a host that is not loopback is
            insecure and ``allow_insecure_transport`` is false, or an unknown field is given.
    """

    #: Errors never quote the input: a password pasted into server_url stays out of them.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

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
        if "@" in urlsplit(value).netloc:
            raise ValueError(
                f"server_url {url_without_credentials(value)!r} must not carry user:password@ (left out here): "
                "runs sign in with a PAT or a connected app's JWT, and the URL is shown wherever the site is "
                "(the block, logs, messages). Remove them"
            )
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check(self) -> TableauSite:
        self._check_transport()
        return self

    def http_options(self, owner: str = "Tableau site") -> dict[str, Any]:
        """The HTTP options of a REST client (a tableauserverclient ``Server``) for this site:
        ``{"verify": verify_ssl, "timeout": request_timeout_seconds}``, for ``Server.add_http_options``.

        Call it each time such a client is made: when ``allow_insecure_transport`` let an insecure
        transport through, it logs a warning naming ``owner`` (who connects, e.g. "Tableau site of PAT
        block 'pat-1'") and the server URL.

        Raises:
            ValueError: ``server_url`` or ``verify_ssl`` was changed after the site was built to an
                insecure transport that ``allow_insecure_transport`` does not accept.
        """
        if self._check_transport():
            warn_insecure_transport(
                self.server_url, owner=owner, verify=self.verify_ssl, logger=run_logger(__name__)
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


def saved_as_site_block(data: Any, references: Mapping[str, Any] | None = None) -> bool:
    """True when a block document — its ``data`` and ``block_document_references`` — holds its ``site``
    as a ``Tableau Site`` block, as blocks saved before the site became a field do: a reference to a
    Site block document (Prefect's API returns the referenced data in ``data``), or a site saved with
    the block, which keeps its ``block_type_slug``."""
    if references and "site" in references:
        return True
    site = data.get("site") if isinstance(data, dict) else None
    return isinstance(site, dict) and site.get("block_type_slug") == SITE_BLOCK_TYPE_SLUG


def site_field_from_old_shape(data: Any, *, block_type: str, block_option: str) -> Any:
    """``data`` with a site saved as a ``Tableau Site`` block, with the block (its ``block_type_slug``),
    taken as the site field; other data unchanged. For the ``mode="before"`` validator of a block with a
    ``site`` field: such a block loads as it is, and a warning (the run's log) says how to re-save it in
    the current shape: ``python -m deployments.bootstrap <block_option> <name> --fix``.

    A block that refers to a separate Site block document needs nothing here (its data holds the
    referenced block's values without the slug) and loads without the warning; the bootstrap finds it
    from its document's references.
    """
    if not saved_as_site_block(data):
        return data
    site = {key: value for key, value in data["site"].items() if key != "block_type_slug"}
    run_logger(__name__).warning(
        "A %s block (site %r of %s) was saved when the Tableau site was a block of its own; it loads as "
        "it is. Re-save it in the current shape: python -m deployments.bootstrap %s <its name> --fix",
        block_type,
        site.get("site_content_url", ""),
        url_without_credentials(str(site.get("server_url", ""))),
        block_option,
    )
    return {**data, "site": site}
