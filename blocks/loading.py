"""Blocks loaded with a clear error: a missing block is a ``BlockNotFoundError`` naming it, who needs it
and how to create it. Loaded through their class, which spares Prefect's import of every installed
collection (prefect-gcp alone takes seconds) to find a type by its slug."""

from __future__ import annotations

from typing import TypeVar

import prefect.exceptions
from prefect.blocks.core import Block

B = TypeVar("B", bound=Block)


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
