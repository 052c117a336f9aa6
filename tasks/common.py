"""What the tasks of every job need: blocks loaded with a clear error, once-per-flow-run caching, UTC times."""

from __future__ import annotations

import datetime as dt
from typing import TypeVar

import prefect.exceptions
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect.cache_policies import RUN_ID, TASK_SOURCE

B = TypeVar("B", bound=Block)

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


def load_block_by_slug(slug: str, *, needed_by: str, hint: str = "") -> Block:
    """Load a block by its document slug ``<block-type-slug>/<block-name>`` (e.g. ``secret/crm-api-key``).

    The block's type must be importable already (``prefect block register`` types are imported by
    ``blocks``). Raises ``ValueError`` for a malformed slug and ``BlockNotFoundError`` as ``load_block``.
    """
    block_type, _, name = slug.partition("/")
    if not block_type or not name:
        raise ValueError(
            f"{needed_by}: {slug!r} is not a block document slug '<block-type-slug>/<block-name>', "
            "e.g. 'secret/crm-api-key'"
        )
    try:
        return Block.load(slug, _sync=True)
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


def to_utc(value: dt.datetime | float | None) -> dt.datetime | None:
    """An aware UTC ``datetime`` from an aware or naive (taken as UTC) datetime or epoch seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
