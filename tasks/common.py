"""What the tasks of every job need: blocks loaded with a clear error (by their class, which spares
Prefect's import of every installed collection), secrets read from where teams keep them, progress
artifacts, once-per-flow-run caching, UTC times."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Literal, TypeVar
from uuid import UUID

import prefect.exceptions
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect.cache_policies import RUN_ID, TASK_SOURCE
from pydantic import BaseModel, ConfigDict, Field, model_validator

B = TypeVar("B", bound=Block)
logger = logging.getLogger(__name__)

#: Cache policy of a task whose result must stay the same for the whole flow run, retries included
#: (the shard a CRM export exports, the window a collection extracts): its source and the flow run id,
#: not its inputs. The task needs ``persist_result=True``.
ONCE_PER_FLOW_RUN = TASK_SOURCE + RUN_ID


class BlockNotFoundError(LookupError):
    """A block a job needs does not exist in the Prefect workspace; the message names it and who needs it."""


def _not_found(exc: ValueError) -> bool:
    # Block.load raises ValueError("Unable to find block document named ...") from ObjectNotFound.
    return isinstance(exc.__cause__, prefect.exceptions.ObjectNotFound)


def load_block(block_type: type[B], name: str, *, needed_by: str, hint: str = "") -> B:
    """``block_type.load(name)``, with an error that says what is missing and how to create it.

    Args:
        block_type: the block class, e.g. ``TableauPatPool`` or prefect-aws ``S3Bucket``.
        name: the block document's name.
        needed_by: who needs it, for the message, e.g. ``"domain 'sales'"`` or
            ``"source 'athena-prod' (field landing.s3_bucket_block)"``.
        hint: how to create it; default ``<Type>(...).save('<name>')`` or the UI.

    Raises:
        BlockNotFoundError: no block of that type and name (a ``LookupError``).
        ValueError: the block exists but does not validate against ``block_type`` (pydantic's message).
    """
    try:
        return block_type.load(name, _sync=True)
    except ValueError as exc:
        if not _not_found(exc):
            raise
        type_name = block_type.get_block_type_name()
        how = (
            hint
            or f"create it in the Prefect UI (Blocks > {type_name}) or with {block_type.__name__}(...).save({name!r})"
        )
        raise BlockNotFoundError(
            f"{type_name} block {name!r}, needed by {needed_by}, does not exist in this Prefect workspace: "
            f"{how}, or fix the name."
        ) from None


def imported_block_type(block_type_slug: str) -> type[Block] | None:
    """The imported block class that defines the block type ``block_type_slug`` (e.g. ``Secret`` for
    ``"secret"``), or None when no imported class does (or, ambiguously, several).

    A class defines its type when its slug differs from its base's: subclasses that keep the slug
    (a generic ``Secret[str]``) are the same type.
    """
    found, seen, pending = set(), set(), [Block]
    while pending:
        for cls in pending.pop().__subclasses__():
            if cls in seen:
                continue
            seen.add(cls)
            pending.append(cls)
            slug = cls.get_block_type_slug()
            if slug == block_type_slug and not any(
                issubclass(base, Block) and base.get_block_type_slug() == slug for base in cls.__bases__
            ):
                found.add(cls)
    return found.pop() if len(found) == 1 else None


def load_block_by_slug(slug: str, *, needed_by: str, hint: str = "") -> Block:
    """Load a block by its document slug ``<block-type-slug>/<block-name>`` (e.g. ``secret/crm-api-key``).

    A type already imported (``imported_block_type``; ``blocks`` imports the project's on first use) is
    loaded through its class. For any other type it is ``Block.load(slug)``, which first imports every
    installed Prefect collection (prefect-gcp alone takes seconds) to find the type. Raises ``ValueError``
    for a malformed slug and ``BlockNotFoundError`` as ``load_block``.
    """
    block_type, _, name = slug.partition("/")
    if not block_type or not name:
        raise ValueError(
            f"{needed_by}: {slug!r} is not a block document slug '<block-type-slug>/<block-name>', "
            "e.g. 'secret/crm-api-key'"
        )
    cls = imported_block_type(block_type)
    try:
        return cls.load(name, _sync=True) if cls is not None else Block.load(slug, _sync=True)
    except ValueError as exc:
        if not _not_found(exc):
            raise
        how = hint or f"create it in the Prefect UI (`prefect block create {block_type}`)"
        raise BlockNotFoundError(
            f"Block {slug!r} (type {block_type!r}, name {name!r}), needed by {needed_by}, does not exist in "
            f"this Prefect workspace: {how}, or fix the name."
        ) from None


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


# --- Secrets where teams keep them -------------------------------------------------------------------

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


# --- Progress a person can watch -------------------------------------------------------------------

_ARTIFACT_KEY = re.compile(r"^[a-z0-9-]+$")


class ProgressReport:
    """A Prefect progress artifact (the UI shows a bar: ``done / total`` in percent) that a polling loop
    updates as work ends, with a one-line description.

    Call :meth:`update` as often as the loop polls: the artifact is written only when the figures or
    the note change. A failure to reach the Prefect API is logged as a warning and never fails the
    job. Outside a flow run the artifact is created all the same (not linked to a run).

        progress = ProgressReport("tableau-refresh-sales-progress", total=10, unit="refreshes")
        progress.update(3, note="7 running")        # 30 %
        progress.update(0, total=None, note="JOB_STATE_RUNNING; 1,234 records read")  # total unknown: 0 %

    Args:
        key: the artifact's key (lowercase letters, digits and '-'); its history is the runs' progress.
        total: how much there is to do, or None while unknown.
        unit: what ``done`` and ``total`` count, for the description ("refreshes", "records").
        title: the description's start, e.g. "Tableau refresh of domain **sales**".

    Raises:
        ValueError: ``key`` is not a valid artifact key.
    """

    def __init__(self, key: str, *, total: float | None, unit: str, title: str = "") -> None:
        if not _ARTIFACT_KEY.match(key):
            raise ValueError(f"artifact key {key!r} may hold only lowercase letters, digits and '-'")
        self.key, self.total, self.unit, self.title = key, total, unit, title
        self.done: float = 0
        self.note = ""
        self.artifact_id: UUID | None = None
        self._written: tuple[float, str] | None = None
        self.update(0)

    @property
    def percent(self) -> float:
        """``done / total`` in percent (0 while the total is unknown or 0), at most 100."""
        return min(100.0, 100.0 * self.done / self.total) if self.total else 0.0

    def description(self) -> str:
        figures = f"{self.done:,g} of {self.total:,g} {self.unit}" if self.total is not None else ""
        parts = [part for part in (self.title, figures, self.note) if part]
        return "; ".join(parts) or self.unit

    def update(
        self, done: float, *, total: float | None | Literal["unchanged"] = "unchanged", note: str = ""
    ) -> None:
        """Record ``done`` (and a new ``total`` if given) and write the artifact if anything changed."""
        self.done = done
        if total != "unchanged":
            self.total = total
        self.note = note
        state = (round(self.percent, 1), self.description())
        if state == self._written:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    progress=state[0], key=self.key, description=state[1], _sync=True
                )
            else:
                update_progress_artifact(
                    self.artifact_id, progress=state[0], description=state[1], _sync=True
                )
        except Exception as exc:  # progress is for people; the job goes on without it
            logger.warning("Could not write progress artifact %r: %s", self.key, exc)
            return
        self._written = state


def to_utc(value: dt.datetime | float | None) -> dt.datetime | None:
    """An aware UTC ``datetime`` from an aware or naive (taken as UTC) datetime or epoch seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
