"""Where the CRM API key comes from: a Prefect ``Secret`` block, Vault KV v2, or a KMS ciphertext in GCS.

``read_api_key`` runs once per flow run, on the worker that launches the pipeline (through the task
``tasks.crm_export.tasks.read_crm_api_key``); only the block's slug is a parameter, and the key never
reaches pipeline options, job labels, logs or artifacts.
"""

from __future__ import annotations

import importlib
import logging

from prefect.blocks.system import Secret

from blocks.crm_export.secret_errors import SecretSourceError
from tasks.common import BlockNotFoundError, load_block_by_slug, secret_string

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


class SecretBlockNotFoundError(SecretSourceError, BlockNotFoundError):
    """No block document with the given slug exists in the Prefect workspace (a ``LookupError``)."""


def read_api_key(block: str) -> str:
    """Load a secret block by slug and return the secret string exactly as stored.

    Args:
        block: block document slug ``<block-type-slug>/<block-name>``, e.g. ``secret/crm-api-key``,
            ``vault-kv-secret/crm-api-key`` or ``kms-encrypted-gcs-secret/crm-api-key``.

    Returns:
        The secret, unchanged. For Prefect's ``Secret`` block that is the raw stored string
        (``tasks.common.secret_string``), not ``Secret.get()``, which parses JSON and would turn a key
        "123" into the integer 123. For ``VaultKvSecret`` and ``KmsEncryptedGcsSecret`` it is what their
        ``get()`` returns.

    Raises:
        ValueError: ``block`` is not of the form ``<block-type-slug>/<block-name>``, or the secret is empty.
        SecretBlockNotFoundError: no such block document in the workspace (a ``LookupError``).
        TypeError: the block is not one of the supported secret types, or a ``Secret`` holds a
            non-string (JSON) value.
        SecretSourceError: from the block's ``get()`` (see ``blocks.crm_export.secret_errors``).
    """
    block_type, _, name = block.partition("/")
    if block_type in _SECRET_BLOCK_MODULES:
        importlib.import_module(_SECRET_BLOCK_MODULES[block_type])
    needed_by = f"the CRM export (crm.api_key_block; a block of type {', '.join(SUPPORTED_BLOCK_TYPES)})"
    create = _CREATE_HINTS.get(block_type, _CREATE_HINTS["secret"])
    hint = (
        f"create it in the UI (`prefect block create {block_type}`; our types need `prefect block register -m "
        f"blocks` first) or in Python, e.g. {create}.save({name!r})`"
    )
    try:
        loaded = load_block_by_slug(block, needed_by=needed_by, hint=hint)
    except BlockNotFoundError as exc:
        raise SecretBlockNotFoundError(str(exc)) from None

    if isinstance(loaded, Secret):
        value = secret_string(loaded, name)
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
