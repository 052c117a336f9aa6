"""``AzureBlobLanding``: a landing directory in an Azure Blob Storage container (see ``tasks.metadata.landing``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from blocks import run_logger
from blocks.loading import BlockNotFoundError, load_block
from blocks.secrets import secret_string
from pipelines.transport import check_transport, url_without_credentials, warn_insecure_transport
from tasks.metadata.landing.base import _TEXT_CONTENT_TYPE, LandingError, Reason, _Target

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

# Azure Storage 403 error codes (https://learn.microsoft.com/rest/api/storageservices/common-rest-api-error-codes):
# the SAS lacks a permission (or resource/service type) the operation needs ...
_AZURE_PERMISSION_MISMATCH = {
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "InsufficientAccountPermissions",
}
# ... or the request was refused as a whole: network rules, HTTPS only, or (Azurite 3.33, which answers
# AuthorizationFailure where Azure answers AuthenticationFailed) an expired or badly signed SAS.
_AZURE_REFUSED = {"AuthorizationFailure", "AuthorizationSourceIPMismatch", "AuthorizationProtocolMismatch"}
_SAS_SIGNATURE = re.compile(r"(sig=)[^&\s'\"]+", re.IGNORECASE)


class AzureBlobLanding(_Target):
    """A landing directory in an Azure Blob Storage container, authorised with a SAS token.

    Args:
        account_url: the Blob endpoint, e.g. ``https://<account>.blob.core.windows.net`` (Azurite:
            ``http://127.0.0.1:10000/devstoreaccount1``), without a SAS.
        container: the container's name.
        sas_token_secret: name of the Prefect ``Secret`` block holding the SAS token (container or account
            SAS, with or without the leading ``?``). It needs the permissions read, create and write
            (``sp=rcw``); it is read on first use and never logged or put in a message.
        landing_dir: the landing directory inside the container.
        retry_total: retries of a failed request by azure-storage-blob (exponential back-off starting at
            15 s: with 3, an unreachable endpoint fails after about one minute).
        allow_insecure_transport: accept a plaintext ``http://`` account URL on a host that is not loopback
            (the SAS token then crosses the network unencrypted); a warning naming the target and the URL
            is logged each time the client is made. Loopback hosts (Azurite on this machine) never need it.

    Raises:
        ValueError: ``account_url`` has a query string or ``user:password@``, is not http(s), or is
            ``http://`` to a host that is not loopback without ``allow_insecure_transport``; ``container``
            is empty.

    Upload: ``upload_blob(overwrite=True)`` (block blob, in blocks above 64 MiB); verification:
    ``get_blob_properties().size``.
    """

    _chain_cause = False  # azure-core's exceptions carry the request URL with the SAS in their text

    def __init__(
        self,
        account_url: str,
        container: str,
        sas_token_secret: str,
        landing_dir: str,
        *,
        retry_total: int = 3,
        allow_insecure_transport: bool = False,
    ):
        if "?" in account_url:
            raise ValueError(
                "account_url must not have a query string: put the SAS token in the Secret block "
                f"{sas_token_secret!r}, and give the account URL alone (https://<account>.blob.core.windows.net)"
            )
        if not account_url.startswith(("https://", "http://")):
            raise ValueError(
                "account_url must start with https:// (or http:// for Azurite on this machine), got "
                f"{url_without_credentials(account_url)!r}"
            )
        if "@" in urlsplit(account_url).netloc:
            raise ValueError(
                f"account_url {url_without_credentials(account_url)!r} must not carry user:password@ (shown "
                "without it): Azure Blob Storage takes the SAS token, which goes in the Secret block "
                f"{sas_token_secret!r}"
            )
        if not container:
            raise ValueError("container must not be empty")
        super().__init__(landing_dir)
        self.account_url = account_url.rstrip("/")
        self.container = container
        self.sas_token_secret = sas_token_secret
        self.retry_total = retry_total
        self.allow_insecure_transport = allow_insecure_transport
        self._check_transport()
        self._client: ContainerClient | None = None
        self._sas: str | None = None

    def _check_transport(self) -> str | None:
        return check_transport(
            self.account_url,
            owner="Azure Blob landing target",
            field="account_url",
            allow_insecure=self.allow_insecure_transport,
        )

    def _container_client(self) -> ContainerClient:
        if self._client is None:
            from azure.storage.blob import ContainerClient

            # The rule of pipelines.transport where the client is made, whoever built this target.
            if self._check_transport():
                warn_insecure_transport(
                    self.account_url, owner=f"Landing target {self.describe()}", logger=run_logger(__name__)
                )
            self._sas = self._load_sas()
            self._client = ContainerClient(
                self.account_url, self.container, credential=self._sas, retry_total=self.retry_total
            )
        return self._client

    def _load_sas(self) -> str:
        from prefect.blocks.system import Secret

        name = self.sas_token_secret
        save = f"Secret(value='<token>').save({name!r})"

        def fail(problem: str) -> LandingError:
            return LandingError(
                f"Could not read the SAS token for {self.describe()}: {problem} The token needs the "
                "permissions rcw (read, create, write) on the container.",
                target=self.describe(),
                file=name,
                reason="credentials",
            )

        try:
            block = load_block(
                Secret,
                name,
                needed_by=f"the landing target {self.describe()} (field sas_token_secret)",
                hint=f"save a container SAS token as {save}",
            )
            value = secret_string(block, name)
        except (BlockNotFoundError, TypeError) as exc:
            raise fail(str(exc)) from None
        if not value.strip():
            raise fail(f"Secret block {name!r} holds an empty string: save the SAS token as {save}.")
        return value.strip().lstrip("?")

    def _uri(self, key: str) -> str:
        return (
            f"{self.account_url}/{quote(self.container)}/{quote(key)}"
            if key
            else f"{self.account_url}/{quote(self.container)}"
        )

    def _put_file(self, local_path: Path, key: str, content_type: str) -> None:
        from azure.storage.blob import ContentSettings

        with open(local_path, "rb") as data:
            self._container_client().upload_blob(
                key, data, overwrite=True, content_settings=ContentSettings(content_type=content_type)
            )

    def _stored_size(self, key: str) -> int | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            properties = self._container_client().get_blob_client(key).get_blob_properties()
        except ResourceNotFoundError as exc:
            if _azure_code(exc) == "BlobNotFound":
                return None
            raise
        return int(properties.size)

    def _get_text(self, key: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = self._container_client().download_blob(key).readall()
        except ResourceNotFoundError as exc:
            if _azure_code(exc) == "BlobNotFound":
                return None
            raise
        return data.decode("utf-8")

    def _put_text(self, key: str, text: str) -> None:
        from azure.storage.blob import ContentSettings

        self._container_client().upload_blob(
            key,
            text.encode("utf-8"),
            overwrite=True,
            content_settings=ContentSettings(content_type=_TEXT_CONTENT_TYPE),
        )

    def _service_errors(self) -> tuple[type[BaseException], ...]:
        from azure.core.exceptions import AzureError

        return (AzureError,)

    def _scrub(self, text: str) -> str:
        if self._sas:
            text = text.replace(self._sas, "<SAS token>")
        return _SAS_SIGNATURE.sub(r"\1<redacted>", text)

    def _explain(self, exc: BaseException) -> tuple[Reason, str, str]:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        secret = f"the Secret block {self.sas_token_secret!r}"
        renew = (
            f"Make a SAS token for the container {self.container!r} with permissions rcw (read, create, write) "
            f"and a future expiry, and save it in {secret}."
        )
        if isinstance(exc, HttpResponseError):
            code, status = _azure_code(exc), exc.status_code
            first_line = self._scrub((exc.message or "").splitlines()[0] if exc.message else "")
            detail = f"{code or 'no error code'}, HTTP {status}: {first_line}".rstrip(": ")
            if isinstance(exc, ClientAuthenticationError) or code in {
                "AuthenticationFailed",
                "InvalidAuthenticationInfo",
            }:
                return (
                    "credentials",
                    f"the SAS token in {secret} was not accepted: expired, not yet valid, revoked, or for "
                    f"another account or container ({detail})",
                    renew,
                )
            if code in _AZURE_PERMISSION_MISMATCH:
                return (
                    "permission",
                    f"the SAS token in {secret} does not grant this operation ({detail})",
                    renew,
                )
            if code in _AZURE_REFUSED or status == 403:
                return (
                    "permission",
                    f"the request was refused: the SAS token in {secret} may be expired or badly signed, or the "
                    f"storage account's network rules (firewall, HTTPS only) refuse this host ({detail})",
                    renew + " Check the storage account's networking settings too.",
                )
            if code == "ContainerNotFound":
                return (
                    "not_found",
                    f"the container {self.container!r} does not exist at {self.account_url} ({detail})",
                    "Create it, or fix the container name / account URL of this landing target.",
                )
            return (
                "error",
                f"Azure Storage answered {detail}",
                "See Azure Storage's error code reference for this code.",
            )
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return (
                "connection",
                f"cannot reach {self.account_url} ({type(exc).__name__}: {self._scrub(str(exc))})",
                "Check the account URL and the network path (proxy, private endpoint, DNS); then rerun "
                "(repeating it is safe).",
            )
        return (
            "error",
            f"{type(exc).__name__}: {self._scrub(str(exc))}",
            "Check the landing target's configuration.",
        )


def _azure_code(exc: Any) -> str | None:
    code = getattr(exc, "error_code", None)
    return None if code is None else str(getattr(code, "value", code))
