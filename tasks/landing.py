"""Landing targets: where the metadata collectors put their extract files (design.md §5, issue 4 §3).

A landing target is a directory (the *landing directory*) inside some storage: an S3 bucket
(``S3Landing``), an Azure Blob container (``AzureBlobLanding``), a GCS bucket (``GcsLanding``) or a
local directory (``LocalLanding``). Each follows ``LandingTarget``:

- ``upload(local_path, name)`` writes ``<landing_dir>/<name>``, then reads the stored object's size back
  and compares it with the local file's (bytes). It returns a ``LandedFile`` only when they are equal,
  and raises ``LandingError`` otherwise; the collector publishes its HWM only after every file of the
  run came back verified.
- ``read_text(key)`` / ``write_text(key, text)``: small UTF-8 files addressed from the target's root,
  e.g. ``<source>_hwm.txt`` next to the landing directory (``tasks.hwm.hwm_file_key``).
  ``read_text`` returns None when there is no such file.
- ``describe()``: where the landing directory is, e.g. ``s3://bucket/catalog/athena/landing``.

Keys and names are ``/``-separated paths relative to the target's root: the ``bucket_folder`` of the
S3Bucket/GcsBucket block, the container, or the local root directory. Empty and ``.`` segments are
dropped (so leading and trailing slashes do not matter); ``..`` and ``\\`` are refused (``ValueError``).

Objects are stored as they are: a ``.csv.gz`` gets ``Content-Type: application/gzip`` and no
``Content-Encoding``, so that no client or service (e.g. GCS decompressive transcoding) hands out the
decompressed bytes instead of the file.

Failures of the storage (permission, credentials, missing bucket/container/directory, connection,
verification) raise ``LandingError``, naming the target, the file, the cause and what to do. No message
contains a SAS token or a key: Azure errors, whose text carries request URLs with the SAS, are scrubbed
and raised without their cause chained.

``dry_run`` is the caller's business: it does not call a target at all.
"""

from __future__ import annotations

import mimetypes
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient
    from prefect_aws import S3Bucket
    from prefect_gcp.cloud_storage import GcsBucket

#: What went wrong, for callers that react differently (e.g. retry on "connection").
Reason = Literal["permission", "credentials", "not_found", "connection", "verification", "error"]

_COPY_BUFFER_BYTES = 1024 * 1024
_TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class LandedFile:
    """A file stored in a landing directory and verified.

    Attributes:
        name: its name inside the landing directory, as passed to ``upload``.
        uri: where it is, without credentials: ``s3://bucket/key``, ``gs://bucket/key``,
            ``https://account.blob.core.windows.net/container/key`` or ``file:///path``.
        bytes: its size in bytes (local file = stored object).
    """

    name: str
    uri: str
    bytes: int


class LandingError(RuntimeError):
    """Storing, verifying or reading a file in a landing target failed.

    The message says what was attempted on which object, why it failed and what to do; it never holds a
    SAS token or a key.

    Attributes:
        target: the target's ``describe()``.
        file: the file's name (upload) or key (``read_text``/``write_text``).
        reason: ``"permission"``, ``"credentials"``, ``"not_found"``, ``"connection"``,
            ``"verification"`` or ``"error"``.
    """

    def __init__(self, message: str, *, target: str, file: str, reason: Reason):
        super().__init__(message)
        self.target = target
        self.file = file
        self.reason = reason


@runtime_checkable
class LandingTarget(Protocol):
    """A landing directory in some storage; see the module docstring."""

    #: the landing directory, relative to the target's root, e.g. ``catalog/athena/landing``.
    landing_dir: str

    def upload(self, local_path: Path, name: str) -> LandedFile:
        """Write ``local_path`` to ``<landing_dir>/<name>`` (overwriting), then verify it exists with the
        local file's size. Raises ``LandingError``, or ``FileNotFoundError`` if ``local_path`` is missing."""
        ...

    def read_text(self, key: str) -> str | None:
        """The UTF-8 text at ``key`` (from the target's root), or None if there is no such file."""
        ...

    def write_text(self, key: str, text: str) -> None:
        """Write ``text`` (UTF-8) to ``key`` (from the target's root), overwriting."""
        ...

    def describe(self) -> str:
        """Where the landing directory is, e.g. ``s3://bucket/catalog/athena/landing``."""
        ...


# --- keys ------------------------------------------------------------------------------------------


def _clean_key(key: str, what: str, *, allow_empty: bool = False) -> str:
    """``key`` without empty and ``.`` segments; ValueError for ``..``, backslashes or (unless allowed) nothing."""
    if "\\" in key:
        raise ValueError(f"{what} {key!r}: separate path segments with '/', not '\\'")
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{what} {key!r} must not contain '..': keys stay inside the landing target")
    if not parts and not allow_empty:
        raise ValueError(f"{what} must name a file, got {key!r}")
    return "/".join(parts)


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def _content_type(name: str) -> str:
    kind, encoding = mimetypes.guess_type(name)
    if encoding == "gzip":
        return "application/gzip"
    if encoding:
        return "application/octet-stream"
    return kind or "application/octet-stream"


# --- the shared protocol -----------------------------------------------------------------------------


class _Target:
    """Upload-then-verify and error translation shared by the targets.

    A subclass implements the storage calls on keys relative to the target's root (``_put_file``,
    ``_stored_size``, ``_get_text``, ``_put_text``), ``_uri(key)``, and the error mapping
    (``_service_errors``, ``_explain``).
    """

    #: chain the storage client's exception as ``__cause__`` (False where its text may carry a secret).
    _chain_cause = True

    def __init__(self, landing_dir: str):
        self.landing_dir = _clean_key(landing_dir, "landing_dir", allow_empty=True)

    # storage calls, implemented per target
    def _uri(self, key: str) -> str:
        raise NotImplementedError

    def _put_file(self, local_path: Path, key: str, content_type: str) -> None:
        raise NotImplementedError

    def _stored_size(self, key: str) -> int | None:
        raise NotImplementedError

    def _get_text(self, key: str) -> str | None:
        raise NotImplementedError

    def _put_text(self, key: str, text: str) -> None:
        raise NotImplementedError

    def _service_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _explain(self, exc: BaseException) -> tuple[Reason, str, str]:
        """(reason, what went wrong, what to do) for a storage exception; never containing a secret."""
        raise NotImplementedError

    # the protocol
    def describe(self) -> str:
        return self._uri(self.landing_dir)

    def upload(self, local_path: Path, name: str) -> LandedFile:
        key = _join(self.landing_dir, _clean_key(name, "name"))
        local_path = Path(local_path)
        size = local_path.stat().st_size
        uri = self._uri(key)
        try:
            self._put_file(local_path, key, _content_type(key))
            stored = self._stored_size(key)
        except LandingError:
            raise
        except self._service_errors() as exc:
            raise self._error(exc, f"upload {local_path} to {uri}", name) from (
                exc if self._chain_cause else None
            )
        if stored is None:
            raise LandingError(
                f"Uploaded {local_path} to {uri}, but it is not there when checked right after the upload. "
                "Look for a lifecycle rule or another process removing files from the landing directory, "
                "then rerun the collector (it uploads the same window again).",
                target=self.describe(),
                file=name,
                reason="verification",
            )
        if stored != size:
            raise LandingError(
                f"Uploaded {local_path} ({size} bytes) to {uri}, but the stored file has {stored} bytes: "
                "the upload was cut short or another writer replaced the file. Rerun the collector (it "
                "uploads the same window again); make sure one collector at a time writes this landing "
                "directory.",
                target=self.describe(),
                file=name,
                reason="verification",
            )
        return LandedFile(name=name, uri=uri, bytes=size)

    def read_text(self, key: str) -> str | None:
        key = _clean_key(key, "key")
        return self._call(lambda: self._get_text(key), f"read {self._uri(key)}", key)

    def write_text(self, key: str, text: str) -> None:
        key = _clean_key(key, "key")
        self._call(lambda: self._put_text(key, text), f"write {self._uri(key)}", key)

    def _call(self, operation: Callable[[], Any], action: str, key: str) -> Any:
        try:
            return operation()
        except LandingError:
            raise
        except self._service_errors() as exc:
            raise self._error(exc, action, key) from (exc if self._chain_cause else None)

    def _error(self, exc: BaseException, action: str, file: str) -> LandingError:
        reason, problem, todo = self._explain(exc)
        return LandingError(
            f"Could not {action}: {problem}. {todo}", target=self.describe(), file=file, reason=reason
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


# --- S3 ----------------------------------------------------------------------------------------------

# S3 error codes of refused credentials (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html).
_S3_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
}


class S3Landing(_Target):
    """A landing directory in an S3 bucket, through a prefect-aws ``S3Bucket`` block.

    Keys are under the block's ``bucket_folder``. The client is the block's S3 client (boto3), so its
    credentials, region, endpoint and retries are those of the block's ``AwsCredentials`` (endpoint and
    retries: its ``aws_client_parameters``). Upload: boto3's managed transfer (``upload_file``, multipart
    above 8 MiB); verification: ``HeadObject``'s ``ContentLength``.

    IAM permissions: ``s3:PutObject`` and ``s3:GetObject`` on ``arn:aws:s3:::<bucket>/<folder>/*``, and
    ``s3:ListBucket`` on the bucket: without it S3 answers 403, not 404, for a missing key (AWS, GetObject
    "Permissions"), and a first run without HWM file fails instead of starting from the look-back.
    """

    def __init__(self, bucket: S3Bucket, landing_dir: str):
        super().__init__(landing_dir)
        self.bucket = bucket
        self._root = _clean_key(bucket.bucket_folder or "", "bucket_folder", allow_empty=True)
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The block's boto3 S3 client (created on first use)."""
        if self._client is None:
            self._client = self.bucket.credentials.get_client("s3")
        return self._client

    def _object_key(self, key: str) -> str:
        return _join(self._root, key)

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket.bucket_name}/{self._object_key(key)}"

    def _put_file(self, local_path: Path, key: str, content_type: str) -> None:
        self.client.upload_file(
            str(local_path),
            self.bucket.bucket_name,
            self._object_key(key),
            ExtraArgs={"ContentType": content_type},
        )

    def _stored_size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket.bucket_name, Key=self._object_key(key))
        except ClientError as exc:
            if _s3_status(exc) == 404 and _s3_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return int(head["ContentLength"])

    def _get_text(self, key: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket.bucket_name, Key=self._object_key(key))
        except ClientError as exc:
            if _s3_code(exc) == "NoSuchKey":
                return None
            raise
        return response["Body"].read().decode("utf-8")

    def _put_text(self, key: str, text: str) -> None:
        self.client.put_object(
            Bucket=self.bucket.bucket_name,
            Key=self._object_key(key),
            Body=text.encode("utf-8"),
            ContentType=_TEXT_CONTENT_TYPE,
        )

    def _service_errors(self) -> tuple[type[BaseException], ...]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        return (ClientError, BotoCoreError, Boto3Error)

    def _explain(self, exc: BaseException) -> tuple[Reason, str, str]:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError | BotoCoreError):
            exc = exc.__context__  # upload_file wraps the ClientError it met (boto3/s3/transfer.py)
        block = "the S3Bucket block's AwsCredentials"
        if isinstance(exc, ClientError):
            code, status = _s3_code(exc), _s3_status(exc)
            detail = f"{code}, HTTP {status}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": ")
            if code in _S3_CREDENTIAL_CODES:
                return (
                    "credentials",
                    f"the AWS credentials were refused ({detail})",
                    f"Check the keys, session token, profile or role of {block}.",
                )
            if code == "NoSuchBucket":
                return (
                    "not_found",
                    f"the bucket {self.bucket.bucket_name!r} does not exist ({detail})",
                    "Create it, or fix bucket_name of the S3Bucket block (and the region/endpoint of its credentials).",
                )
            if status == 403 or code in {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}:
                resource = f"arn:aws:s3:::{self.bucket.bucket_name}/{_join(self._root, '*')}"
                return (
                    "permission",
                    f"access denied ({detail})",
                    f"Give the AWS identity of {block} s3:PutObject and s3:GetObject on {resource} and "
                    f"s3:ListBucket on arn:aws:s3:::{self.bucket.bucket_name}; check the bucket policy, and for "
                    "SSE-KMS buckets kms:GenerateDataKey and kms:Decrypt on the bucket's key.",
                )
            return "error", f"S3 answered {detail}", "See S3's error code reference for this code."
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return (
                "credentials",
                f"no usable AWS credentials ({exc})",
                f"Set the keys, profile or role of {block}.",
            )
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            endpoint = getattr(getattr(self._client, "meta", None), "endpoint_url", "S3")
            return (
                "connection",
                f"cannot reach {endpoint} ({exc})",
                "Check the network path to S3 (proxy, VPC endpoint, and endpoint_url in the aws_client_parameters "
                f"of {block}); then rerun (repeating it is safe).",
            )
        return "error", f"{type(exc).__name__}: {exc}", "Check the S3Bucket block's configuration."


def _s3_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _s3_status(exc: Any) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


# --- Azure Blob --------------------------------------------------------------------------------------

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
    ):
        if "?" in account_url:
            raise ValueError(
                "account_url must not have a query string: put the SAS token in the Secret block "
                f"{sas_token_secret!r}, and give the account URL alone (https://<account>.blob.core.windows.net)"
            )
        if not account_url.startswith(("https://", "http://")):
            raise ValueError(
                f"account_url must start with https:// (or http:// for Azurite), got {account_url!r}"
            )
        if not container:
            raise ValueError("container must not be empty")
        super().__init__(landing_dir)
        self.account_url = account_url.rstrip("/")
        self.container = container
        self.sas_token_secret = sas_token_secret
        self.retry_total = retry_total
        self._client: ContainerClient | None = None
        self._sas: str | None = None

    def _container_client(self) -> ContainerClient:
        if self._client is None:
            from azure.storage.blob import ContainerClient

            self._sas = self._load_sas()
            self._client = ContainerClient(
                self.account_url, self.container, credential=self._sas, retry_total=self.retry_total
            )
        return self._client

    def _load_sas(self) -> str:
        from prefect.blocks.system import Secret

        def fail(problem: str) -> LandingError:
            return LandingError(
                f"Could not read the SAS token for {self.describe()}: {problem}. Save a container SAS token with "
                f"permissions rcw (read, create, write) as Secret(value='<token>').save({self.sas_token_secret!r}).",
                target=self.describe(),
                file=self.sas_token_secret,
                reason="credentials",
            )

        try:
            block = Secret.load(self.sas_token_secret, _sync=True)
        except ValueError as exc:
            if "Unable to find block document" not in str(exc):
                raise
            raise fail(
                f"there is no Secret block {self.sas_token_secret!r} in this Prefect workspace"
            ) from None
        value = block.value.get_secret_value()  # the stored string; Secret.get() would parse JSON
        if not isinstance(value, str) or not value.strip():
            raise fail(f"the Secret block {self.sas_token_secret!r} holds no SAS token string")
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


# --- GCS ---------------------------------------------------------------------------------------------


class GcsLanding(_Target):
    """A landing directory in a Google Cloud Storage bucket, through a prefect-gcp ``GcsBucket`` block.

    Keys are under the block's ``bucket_folder``; the client is its ``GcpCredentials``' storage client.
    The bucket is addressed without a ``buckets.get`` call, so object permissions suffice:
    ``roles/storage.objectUser`` on the bucket, or ``storage.objects.create``, ``storage.objects.get``
    and ``storage.objects.delete`` (GCS needs delete to overwrite an object, as a rerun does).

    Args:
        bucket: the ``GcsBucket`` block.
        landing_dir: the landing directory under the block's ``bucket_folder``.
        retry_deadline_seconds: how long google-cloud-storage retries transient failures (connection
            errors, 429, 5xx) of one call; its default is 120 s.
        timeout_seconds: HTTP timeout of one request.

    Upload: ``Blob.upload_from_filename`` (resumable above 8 MiB); verification: ``Bucket.get_blob().size``.
    """

    def __init__(
        self,
        bucket: GcsBucket,
        landing_dir: str,
        *,
        retry_deadline_seconds: float = 120,
        timeout_seconds: float = 60,
    ):
        super().__init__(landing_dir)
        self.bucket = bucket
        self.retry_deadline_seconds = retry_deadline_seconds
        self.timeout_seconds = timeout_seconds
        self._root = _clean_key(bucket.bucket_folder or "", "bucket_folder", allow_empty=True)
        self._bucket: Any = None

    def _gcs_bucket(self) -> Any:
        if self._bucket is None:
            client = self.bucket.gcp_credentials.get_cloud_storage_client()
            self._bucket = client.bucket(self.bucket.bucket)  # no API call (storage.buckets.get not needed)
        return self._bucket

    def _request_options(self) -> dict[str, Any]:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return {
            "timeout": self.timeout_seconds,
            "retry": DEFAULT_RETRY.with_timeout(self.retry_deadline_seconds),
        }

    def _object_key(self, key: str) -> str:
        return _join(self._root, key)

    def _uri(self, key: str) -> str:
        return f"gs://{self.bucket.bucket}/{self._object_key(key)}"

    def _put_file(self, local_path: Path, key: str, content_type: str) -> None:
        blob = self._gcs_bucket().blob(self._object_key(key))
        blob.upload_from_filename(str(local_path), content_type=content_type, **self._request_options())

    def _stored_size(self, key: str) -> int | None:
        blob = self._gcs_bucket().get_blob(self._object_key(key), **self._request_options())
        return None if blob is None or blob.size is None else int(blob.size)

    def _get_text(self, key: str) -> str | None:
        from google.api_core.exceptions import NotFound

        try:
            data = self._gcs_bucket().blob(self._object_key(key)).download_as_bytes(**self._request_options())
        except NotFound as exc:
            if "bucket does not exist" in str(exc).lower():
                raise
            return None
        return data.decode("utf-8")

    def _put_text(self, key: str, text: str) -> None:
        blob = self._gcs_bucket().blob(self._object_key(key))
        blob.upload_from_string(
            text.encode("utf-8"), content_type=_TEXT_CONTENT_TYPE, **self._request_options()
        )

    def _service_errors(self) -> tuple[type[BaseException], ...]:
        import requests
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import GoogleAuthError

        return (GoogleAPIError, GoogleAuthError, requests.RequestException)

    def _explain(self, exc: BaseException) -> tuple[Reason, str, str]:
        import requests
        from google.api_core.exceptions import (
            Forbidden,
            GoogleAPICallError,
            NotFound,
            RetryError,
            Unauthorized,
        )
        from google.auth.exceptions import DefaultCredentialsError, RefreshError, TransportError

        if isinstance(exc, RetryError) and exc.cause is not None:
            exc = exc.cause  # the last failure once the retry deadline passed
        block = "the GcsBucket block's GcpCredentials"
        if isinstance(exc, Forbidden):
            return (
                "permission",
                f"access denied ({exc.code}: {exc.message})",
                f"Give the service account of {block} roles/storage.objectUser on gs://{self.bucket.bucket} "
                "(storage.objects.create, .get and .delete: overwriting needs delete).",
            )
        if isinstance(exc, Unauthorized | DefaultCredentialsError | RefreshError):
            return (
                "credentials",
                f"no valid Google credentials ({type(exc).__name__}: {exc})",
                f"Check the service account info/file of {block}.",
            )
        if isinstance(exc, NotFound):
            return (
                "not_found",
                f"the bucket {self.bucket.bucket!r} does not exist ({exc.code}: {exc.message})",
                "Create it, or fix the bucket name of the GcsBucket block.",
            )
        if isinstance(exc, GoogleAPICallError):
            return (
                "error",
                f"GCS answered {exc.code}: {exc.message}",
                "See Cloud Storage's HTTP status and error code reference.",
            )
        if isinstance(exc, requests.RequestException | TransportError):
            return (
                "connection",
                f"cannot reach Cloud Storage ({type(exc).__name__}: {exc})",
                "Check the network path to storage.googleapis.com (proxy, Private Google Access); then rerun "
                "(repeating it is safe).",
            )
        return "error", f"{type(exc).__name__}: {exc}", "Check the GcsBucket block's configuration."


# --- local directory ---------------------------------------------------------------------------------


class LocalLanding(_Target):
    """A landing directory under a local (or mounted) root directory.

    The root must exist: it is not created, so that an unmounted share fails instead of filling the
    local disk; the landing directory below it is created. Files are written to a hidden temporary file
    (``.<name>.<random>.tmp``) in the same directory, flushed to disk and renamed over the target, so a
    reader never sees a partial file; verification: ``stat().st_size``.
    """

    def __init__(self, root: str | os.PathLike[str], landing_dir: str):
        super().__init__(landing_dir)
        self.root = Path(root).expanduser().absolute()

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def _uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def describe(self) -> str:
        return str(self._path(self.landing_dir))

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise LandingError(
                f"The landing root {self.root} does not exist or is not a directory: create or mount it "
                "(it is not created automatically, so that an unmounted share fails loudly).",
                target=self.describe(),
                file=str(self.root),
                reason="not_found",
            )

    def _write_atomically(self, path: Path, write: Callable[[IO[bytes]], None]) -> None:
        self._check_root()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(temporary, "xb") as out:  # honours the umask, unlike mkstemp's 0600
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename durable
        finally:
            os.close(directory)

    def _put_file(self, local_path: Path, key: str, content_type: str) -> None:
        with open(local_path, "rb") as source:
            self._write_atomically(
                self._path(key), lambda out: shutil.copyfileobj(source, out, _COPY_BUFFER_BYTES)
            )

    def _stored_size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def _get_text(self, key: str) -> str | None:
        self._check_root()
        try:
            return self._path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _put_text(self, key: str, text: str) -> None:
        self._write_atomically(self._path(key), lambda out: out.write(text.encode("utf-8")))

    def _service_errors(self) -> tuple[type[BaseException], ...]:
        return (OSError,)

    def _explain(self, exc: BaseException) -> tuple[Reason, str, str]:
        if isinstance(exc, PermissionError):
            return (
                "permission",
                f"permission denied ({exc})",
                f"Let the user running the flow (uid {os.getuid()}) write to {self.root} and below.",
            )
        return (
            "error",
            f"{type(exc).__name__}: {exc}",
            f"Check the file system under {self.root} (space, mounts).",
        )
