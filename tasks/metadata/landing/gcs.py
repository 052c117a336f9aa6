"""``GcsLanding``: a landing directory in a Google Cloud Storage bucket (see ``tasks.metadata.landing``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.metadata.landing.base import _TEXT_CONTENT_TYPE, Reason, _clean_key, _join, _Target

if TYPE_CHECKING:
    from prefect_gcp.cloud_storage import GcsBucket


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
