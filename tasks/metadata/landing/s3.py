"""``S3Landing``: a landing directory in an S3 bucket (see ``tasks.metadata.landing``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.metadata.landing.base import _TEXT_CONTENT_TYPE, Reason, _clean_key, _join, _Target

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

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
