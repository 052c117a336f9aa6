"""Secrets where teams keep them (a Prefect ``Secret``, a prefect-aws ``AwsSecret``, an SSM parameter),
read when needed, and the errors of every secret store the blocks read (these, Vault, Cloud KMS):
``SecretSourceError`` and its subclasses."""

from __future__ import annotations

import json
from typing import Literal

from prefect.blocks.system import Secret
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from blocks.loading import load_block


def secret_string(secret: Secret, name: str) -> str:
    """The string a Prefect ``Secret`` block holds, exactly as stored.

    ``Secret.get()`` parses JSON, so a stored "123" would come back as the integer 123; this reads the
    raw value. Raises ``TypeError`` (naming the block, never the value) if the block holds JSON that is
    not a string.
    """
    value = secret.value.get_secret_value()
    if not isinstance(value, str):
        raise TypeError(
            f"Secret block {name!r} holds a {type(value).__name__}, not a string: save it as "
            f"Secret(value='<the secret>').save({name!r}, overwrite=True)."
        )
    return value


SecretKind = Literal["secret", "aws-secret", "ssm-parameter"]


class SecretSourceError(Exception):
    """A secret could not be read from where it is kept (a Prefect ``Secret``, an ``AwsSecret``, an SSM
    parameter, Vault, Cloud KMS). The message names the source and what to do, never the value, a
    Vault token, a service account JWT or an AppRole secret ID. Each subclass is also the matching
    built-in error."""


class SecretAccessDeniedError(SecretSourceError, PermissionError):
    """The secret store refused the secret to this identity (AWS AccessDeniedException, Vault 403,
    KMS/GCS PERMISSION_DENIED)."""


class SecretAuthError(SecretSourceError, PermissionError):
    """Authenticating to Vault failed (login refused, or no Kubernetes service account token to log in with)."""


class SecretNotFoundError(SecretSourceError, LookupError):
    """Nothing at the configured place: no AWS secret or SSM parameter, no Vault secret (or version) at
    the path, no GCS object, no KMS key."""


class SecretKeyError(SecretSourceError, KeyError):
    """The secret exists but has no such key (a JSON secret, a Vault secret); the message lists the key
    names it has where the store tells them (never values)."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class SecretTypeError(SecretSourceError, TypeError):
    """The secret's value is not a string (a token or an API key is a string)."""


class SecretUnavailableError(SecretSourceError, ConnectionError):
    """The secret store cannot answer now (Vault sealed, not initialised, down or unreachable); retry later."""


class SecretIntegrityError(SecretSourceError, ValueError):
    """Cloud KMS returned a plaintext whose CRC32C does not match the checksum it sent with it."""


class SecretDecryptionError(SecretSourceError, ValueError):
    """The ciphertext could not be decrypted with the configured KMS key, or the plaintext is not UTF-8 text."""


class SecretSource(BaseModel):
    """Where a secret lives, for a block that does not hold it itself; read each time it is needed.

    - ``secret``: a Prefect ``Secret`` block named ``block`` (its raw string);
    - ``aws-secret``: a prefect-aws ``AwsSecret`` block named ``block`` (AWS Secrets Manager);
    - ``ssm-parameter``: the AWS Systems Manager Parameter Store parameter ``parameter``, read with
      ``WithDecryption`` (SecureString) through the prefect-aws ``AwsCredentials`` block ``block``.

    ``json_key``: the secret is a JSON object and the value is under this key (Secrets Manager secrets
    are often ``{"name": ..., "secret": ...}``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SecretKind = Field(description="secret, aws-secret or ssm-parameter.")
    block: str = Field(
        min_length=1,
        description="The Secret or AwsSecret block holding the secret; for ssm-parameter the AwsCredentials block.",
    )
    parameter: str | None = Field(
        default=None,
        min_length=1,
        description="ssm-parameter only: the parameter's name, e.g. /tableau/pat-1.",
    )
    json_key: str | None = Field(
        default=None, min_length=1, description="The key of the value if the secret is a JSON object."
    )

    @model_validator(mode="after")
    def _parameter_for_ssm_only(self) -> SecretSource:
        if (self.kind == "ssm-parameter") != (self.parameter is not None):
            raise ValueError("'parameter' is required for kind ssm-parameter, and only for it")
        return self

    def __str__(self) -> str:
        where = f" parameter {self.parameter!r}" if self.parameter else ""
        key = f" key {self.json_key!r}" if self.json_key else ""
        return f"{self.kind} {self.block!r}{where}{key}"


#: AWS error codes (Secrets Manager GetSecretValue, SSM GetParameter API references) → the error raised.
_AWS_ERROR_CODES = {
    "ResourceNotFoundException": SecretNotFoundError,
    "ParameterNotFound": SecretNotFoundError,
    "ParameterVersionNotFound": SecretNotFoundError,
    "AccessDeniedException": SecretAccessDeniedError,
}


def _aws_secret_error(exc: Exception) -> type[SecretSourceError]:
    return _AWS_ERROR_CODES.get(exc.response["Error"].get("Code"), SecretSourceError)


def read_secret(source: SecretSource, *, needed_by: str) -> str:
    """The secret string ``source`` points at, read now (a rotated secret is picked up at the next read).

    prefect-aws and boto3 are imported only for the AWS kinds. Nothing here logs the value.

    Raises:
        BlockNotFoundError: the Secret, AwsSecret or AwsCredentials block does not exist.
        SecretNotFoundError, SecretAccessDeniedError, SecretSourceError: AWS has no such secret or
            parameter, refused it, or answered another error (AWS's error code in the message).
        SecretKeyError: ``json_key`` is not in it. SecretTypeError: the value there is not a string.
    """
    if source.kind == "secret":
        value = secret_string(load_block(Secret, source.block, needed_by=needed_by), source.block)
    elif source.kind == "aws-secret":
        from botocore.exceptions import ClientError
        from prefect_aws.secrets_manager import AwsSecret

        block = load_block(AwsSecret, source.block, needed_by=needed_by)
        try:
            raw = block.read_secret(_sync=True)
        except ClientError as exc:
            raise _aws_secret_error(exc)(
                f"{needed_by}: AWS Secrets Manager refused secret {block.secret_name!r} of AwsSecret block "
                f"{source.block!r} ({exc.response['Error'].get('Code')}): check that it exists in that region "
                "and that the block's credentials may read it (secretsmanager:GetSecretValue)."
            ) from None
        value = raw.decode() if isinstance(raw, bytes) else raw
    else:
        from botocore.exceptions import ClientError
        from prefect_aws import AwsCredentials

        credentials = load_block(AwsCredentials, source.block, needed_by=needed_by)
        try:
            answer = credentials.get_client("ssm").get_parameter(Name=source.parameter, WithDecryption=True)
        except ClientError as exc:
            raise _aws_secret_error(exc)(
                f"{needed_by}: SSM parameter {source.parameter!r} could not be read with AwsCredentials block "
                f"{source.block!r} ({exc.response['Error'].get('Code')}): check its name and region, and that "
                "the credentials may read it (ssm:GetParameter, and kms:Decrypt for a SecureString)."
            ) from None
        value = answer["Parameter"]["Value"]
    if source.json_key is None:
        return value
    try:
        found = json.loads(value)[source.json_key]
    except (ValueError, TypeError, KeyError):
        raise SecretKeyError(
            f"{needed_by}: the secret of {source} is not a JSON object with key {source.json_key!r}."
        ) from None
    if not isinstance(found, str):
        raise SecretTypeError(f"{needed_by}: {source} holds a {type(found).__name__}, not a string.")
    return found


def check_one_secret(
    value: object | None, source: SecretSource | None, *, owner: str, fields: tuple[str, str]
) -> None:
    """For a block holding a secret either itself (``fields[0]``) or as a ``SecretSource`` (``fields[1]``).

    Raises ``ValueError`` naming ``owner`` unless exactly one of the two is set.
    """
    if (value is None) == (source is None):
        raise ValueError(f"{owner}: set exactly one of {fields[0]} and {fields[1]}")


def held_or_read(value: SecretStr | None, source: SecretSource | None, *, needed_by: str) -> str:
    """The secret ``value`` holds, else the one ``source`` names, read now (``read_secret``).

    Raises ``BlockNotFoundError`` or ``SecretSourceError`` when the source cannot be read.
    """
    if value is not None:
        return value.get_secret_value()
    if source is None:
        raise ValueError(f"{needed_by}: no secret and no source of one")
    return read_secret(source, needed_by=needed_by)
