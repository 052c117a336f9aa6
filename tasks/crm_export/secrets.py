"""Where the CRM API key comes from: a Prefect ``Secret`` block, Vault KV v2, or a KMS ciphertext in GCS.

The CRM export flow calls :func:`read_api_key` once, on the Prefect worker that launches the
pipeline, and hands the key to the pipeline as a Python argument (``build_pipeline(..., api_key)``).
The key is never put in pipeline options, Dataflow job labels, flow or deployment parameters, logs
or artifacts: the flow takes only the block's slug as a parameter.

``read_api_key`` is a plain function; the flow calls it through the task
``tasks.crm_export.tasks.read_crm_api_key``, which neither persists nor caches its result and returns
the key wrapped in an ``ApiKey`` (masked in ``repr``).
"""

from __future__ import annotations

import importlib
import logging

import prefect.exceptions
from prefect.blocks.core import Block
from prefect.blocks.system import Secret

from blocks.crm_export.secret_errors import SecretSourceError

logger = logging.getLogger(__name__)

#: Our secret block types by slug → the module to import so ``Block.load`` can build them.
_SECRET_BLOCK_MODULES = {
    "vault-kv-secret": "blocks.crm_export.vault",
    "kms-encrypted-gcs-secret": "blocks.crm_export.kms_gcs",
}
SUPPORTED_BLOCK_TYPES = ("secret", *_SECRET_BLOCK_MODULES)
_CREATE_HINTS = {
    "secret": "`from prefect.blocks.system import Secret; Secret(value='<key>')",
    "vault-kv-secret": "`from blocks import VaultKvSecret; VaultKvSecret(url=..., path=..., key=..., ...)",
    "kms-encrypted-gcs-secret": (
        "`from blocks import KmsEncryptedGcsSecret; KmsEncryptedGcsSecret(gcs_bucket=..., blob=..., kms_key_name=...)"
    ),
}


class SecretBlockNotFoundError(SecretSourceError, LookupError):
    """No block document with the given slug exists in the Prefect workspace."""


def read_api_key(block: str) -> str:
    """Load a secret block by slug and return the secret string exactly as stored.

    Args:
        block: block document slug ``<block-type-slug>/<block-name>``, e.g. ``secret/crm-api-key``,
            ``vault-kv-secret/crm-api-key`` or ``kms-encrypted-gcs-secret/crm-api-key``.

    Returns:
        The secret, unchanged. For Prefect's ``Secret`` block that is the raw stored string
        (``block.value.get_secret_value()``), not ``Secret.get()``, which parses JSON and would turn a
        key "123" into the integer 123 (design.md §7). For ``VaultKvSecret`` and
        ``KmsEncryptedGcsSecret`` it is what their ``get()`` returns.

    Raises:
        ValueError: ``block`` is not of the form ``<block-type-slug>/<block-name>``, or the secret is empty.
        SecretBlockNotFoundError: no such block document in the workspace (a ``LookupError``).
        TypeError: the block is not one of the supported secret types, or a ``Secret`` holds a
            non-string (JSON) value.
        SecretSourceError: from the block's ``get()`` (see ``blocks.crm_export.secret_errors``).
    """
    block_type, _, name = block.partition("/")
    if not block_type or not name:
        raise ValueError(
            f"block must be a block document slug '<block-type-slug>/<block-name>', e.g. 'secret/crm-api-key', "
            f"'vault-kv-secret/crm-api-key' or 'kms-encrypted-gcs-secret/crm-api-key'; got {block!r}"
        )
    if block_type in _SECRET_BLOCK_MODULES:
        importlib.import_module(_SECRET_BLOCK_MODULES[block_type])
    try:
        loaded = Block.load(block, _sync=True)
    except ValueError as exc:
        if not (
            isinstance(exc.__cause__, prefect.exceptions.ObjectNotFound)
            or str(exc).startswith("Unable to find block document")
        ):
            raise
        raise SecretBlockNotFoundError(
            f"No block {block!r} (type {block_type!r}, name {name!r}) in this Prefect workspace. Create it in "
            f"the UI (`prefect block create {block_type}`; our types need `prefect block register -m blocks` "
            f"first) or in Python, e.g. {_CREATE_HINTS.get(block_type, _CREATE_HINTS['secret'])}.save({name!r})`."
        ) from None

    if isinstance(loaded, Secret):
        value = loaded.value.get_secret_value()
        if not isinstance(value, str):
            raise TypeError(
                f"Secret block {block!r} holds a {type(value).__name__}, not a string; an API key is a string: "
                "save it as Secret(value='<key>')."
            )
    elif type(loaded).get_block_type_slug() in _SECRET_BLOCK_MODULES:
        value = loaded.get()
    else:
        supported = ", ".join(SUPPORTED_BLOCK_TYPES)
        raise TypeError(
            f"Block {block!r} is a {type(loaded).__name__}, not a secret block; use one of the types {supported}."
        )

    if not value.strip():
        raise ValueError(f"The secret in block {block!r} is empty.")
    logger.info("Read the API key from block %r (%s)", block, type(loaded).__name__)
    return value
