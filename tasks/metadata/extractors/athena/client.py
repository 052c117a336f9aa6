"""boto3 sessions and clients of one Athena source, and AWS errors translated into the extractor's errors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from tasks.metadata.extracts import ExtractorConnectionError

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials

_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]")
#: The IAM action of an operation is ``<service>:<operation>``, except these (and Athena's, the default).
_IAM_ACTIONS = {
    "GetDatabases": "glue:GetDatabases",
    "GetTables": "glue:GetTables",
    "HeadBucket": "s3:ListBucket",
    "AssumeRole": "sts:AssumeRole",
}

# Error codes (AWS "Common Errors" of each service; S3 HeadBucket has no body, only the status code).
CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "IncompleteSignature",
    }
)
DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403", "Forbidden"}
)
NO_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})


class AthenaExtractionError(RuntimeError):
    """Extraction failed for a reason other than credentials or permission: a query failed or timed out,
    query executions stayed unprocessed, a configured catalog or workgroup does not exist."""


def aws_error(exc: ClientError) -> tuple[str, str]:
    """(code, message) of an AWS error as botocore parsed it (``Error.Code``, ``Error.Message``)."""
    error = exc.response.get("Error", {})
    return str(error.get("Code", "")), str(error.get("Message", ""))


def translate(exc: ClientError | BotoCoreError, source: str, doing: str) -> Exception:
    """``exc`` as ``ExtractorConnectionError`` (credentials, permission: naming the IAM action) or
    ``AthenaExtractionError``, naming the source, what was being done and AWS's message."""
    if isinstance(exc, BotoCoreError):
        return AthenaExtractionError(f"Athena source {source!r}: {doing} failed: {exc}")
    code, message = aws_error(exc)
    operation = exc.operation_name
    if code in CREDENTIAL_CODES:
        return ExtractorConnectionError(
            f"Athena source {source!r}: {doing}: AWS rejected the credentials ({operation}: {code}: "
            f"{message}); check its AwsCredentials block (or role_arn)"
        )
    if code in DENIED_CODES:
        action = _IAM_ACTIONS.get(operation, f"athena:{operation}")
        return ExtractorConnectionError(
            f"Athena source {source!r}: {doing}: {operation} was refused ({code}: {message}); "
            f"grant {action} to the collector's identity"
        )
    return AthenaExtractionError(f"Athena source {source!r}: {doing}: {operation} failed ({code}: {message})")


@contextmanager
def aws_errors(source: str, doing: str) -> Iterator[None]:
    """AWS errors inside become ``translate``'s errors."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, source, doing) from exc


def guarded(source: str, entity: str, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """``rows``, with AWS errors raised while they are produced translated (``translate``)."""
    try:
        yield from rows
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, source, f"extracting {entity}") from exc


class AwsClients:
    """The boto3 clients of one source: the ``AwsCredentials`` block's session, or an assumed role's.

    Args:
        source: the source's name, in messages and the role session name ``analytics-flows-<source>``.
        credentials: prefect-aws ``AwsCredentials``; its ``aws_client_parameters`` apply to every client.
        region: the AWS region of every client.
        role_arn: a role to assume with STS (``sts:AssumeRole``) before any other call.
        endpoint_url: one endpoint for every AWS service; overrides the block's.

    Every client uses botocore's ``standard`` retry mode (throttling and transient errors, exponential
    back-off, 8 attempts).
    """

    def __init__(
        self,
        source: str,
        credentials: AwsCredentials,
        region: str,
        role_arn: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self.source = source
        self.credentials = credentials
        self.region = region
        self.role_arn = role_arn
        self.endpoint_url = endpoint_url
        self.role_session_name = _SESSION_NAME_UNSAFE.sub("-", f"analytics-flows-{source}")[:64]
        self._sessions: dict[str, boto3.Session] = {}
        self._clients: dict[str, Any] = {}

    def _client_kwargs(self) -> dict[str, Any]:
        params = self.credentials.aws_client_parameters.get_params_override()
        if self.endpoint_url:
            params["endpoint_url"] = self.endpoint_url
        config = Config(retries={"mode": "standard", "max_attempts": 8})
        params["config"] = config.merge(params["config"]) if "config" in params else config
        return {**params, "region_name": self.region}

    def _base_session(self) -> boto3.Session:
        if "base" not in self._sessions:
            self._sessions["base"] = self.credentials.get_boto3_session()
        return self._sessions["base"]

    def session(self) -> boto3.Session:
        """The session every client uses: the block's, or the assumed role's (``ExtractorConnectionError``
        if the role cannot be assumed)."""
        if "effective" in self._sessions:
            return self._sessions["effective"]
        session = self._base_session()
        if self.role_arn:
            sts = session.client("sts", **self._client_kwargs())
            try:
                credentials = sts.assume_role(RoleArn=self.role_arn, RoleSessionName=self.role_session_name)[
                    "Credentials"
                ]
            except ClientError as exc:
                code, message = aws_error(exc)
                raise ExtractorConnectionError(
                    f"Athena source {self.source!r}: cannot assume role {self.role_arn} "
                    f"({code}: {message}). The identity of the AwsCredentials block needs sts:AssumeRole on "
                    "that role, and the role's trust policy must allow that identity."
                ) from exc
            except BotoCoreError as exc:
                raise self.unreachable("STS", exc) from exc
            session = boto3.Session(
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"],
                region_name=self.region,
            )
        self._sessions["effective"] = session
        return session

    def client(self, name: str) -> Any:
        """The boto3 client of service ``name`` (``athena``, ``glue``, ``s3``, ``sts``), made once."""
        if name not in self._clients:
            self._clients[name] = self.session().client(name, **self._client_kwargs())
        return self._clients[name]

    def unreachable(self, service: str, exc: BaseException) -> ExtractorConnectionError:
        where = self.endpoint_url or f"the {self.region} endpoint"
        return ExtractorConnectionError(
            f"Athena source {self.source!r}: cannot reach AWS {service} at {where}: {exc}"
        )

    def check_credentials(self) -> str:
        """The ARN of the block's identity (``sts:GetCallerIdentity``, before any role is assumed).

        Raises ``ExtractorConnectionError``: no credentials, rejected credentials, STS unreachable.
        """
        try:
            sts = self._base_session().client("sts", **self._client_kwargs())
            return sts.get_caller_identity()["Arn"]
        except NoCredentialsError as exc:
            raise ExtractorConnectionError(
                f"Athena source {self.source!r}: no AWS credentials: set aws_access_key_id and "
                "aws_secret_access_key (or profile_name) in its AwsCredentials block, or provide them in the "
                "environment of the worker"
            ) from exc
        except ClientError as exc:
            code, message = aws_error(exc)
            raise ExtractorConnectionError(
                f"Athena source {self.source!r}: AWS rejected the credentials of its AwsCredentials block "
                f"(sts:GetCallerIdentity: {code}: {message}); check the access key id, secret and session "
                "token, and whether the key is active"
            ) from exc
        except BotoCoreError as exc:
            raise self.unreachable("STS", exc) from exc
