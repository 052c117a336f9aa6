"""The CRM's block (``crm.block``) and where its key comes from: the block's own secret field, or the
secret block it names (a Prefect ``Secret``, Vault KV v2, or a KMS ciphertext in GCS).

``read_api_key`` runs once per flow run, on the worker that launches the pipeline (through the task
``tasks.crm_export.tasks.read_crm_api_key``); only block slugs are parameters, and the key never
reaches pipeline options, job labels, logs or artifacts.
"""

from __future__ import annotations

import importlib
import logging

from prefect.blocks.system import Secret
from pydantic import SecretStr

from blocks.crm_export.crm import BrazeCrm, CrmBlock, GenericCrmEndpoint, HubSpotCrm
from blocks.loading import BlockNotFoundError, load_block, load_block_by_slug
from blocks.secrets import SecretSourceError, secret_string
from pipelines.crm_export.api_key import ApiKey

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
        "`from blocks import KmsEncryptedGcsSecret; KmsEncryptedGcsSecret(bucket=..., blob=..., kms_key_name=..., gcp_credentials_block=...)"
    ),
}


#: The CRM block types (``blocks.crm_export.crm``) by slug.
CRM_BLOCK_TYPES = {cls.get_block_type_slug(): cls for cls in (HubSpotCrm, BrazeCrm, GenericCrmEndpoint)}
_CRM_CREATE_HINTS = {
    "hubspot-crm": "from blocks import HubSpotCrm; HubSpotCrm(access_token=..., id_property=..., field_map={...})",
    "braze-crm": "from blocks import BrazeCrm; BrazeCrm(rest_endpoint=..., api_key=..., field_map={...})",
    "generic-crm-endpoint": "from blocks import GenericCrmEndpoint; GenericCrmEndpoint(url=..., api_key=...)",
}


class SecretBlockNotFoundError(SecretSourceError, BlockNotFoundError):
    """No block document with the given slug exists in the Prefect workspace (a ``LookupError``)."""


def load_crm_block(block: str) -> CrmBlock:
    """The CRM block ``block`` (``crm.block``): ``<block-type-slug>/<name>``, e.g. ``hubspot-crm/hubspot``.

    Raises ``ValueError`` for a malformed slug, ``blocks.loading.BlockNotFoundError`` (a ``LookupError``)
    naming a missing block and how to create it, ``TypeError`` for a block that is not a CRM block.
    """
    block_type, _, name = block.partition("/")
    create = _CRM_CREATE_HINTS.get(block_type, _CRM_CREATE_HINTS["hubspot-crm"])
    needed_by = f"the CRM export ({block!r}, crm.block, a block of type {', '.join(CRM_BLOCK_TYPES)})"
    hint = (
        f"create it in the UI (after `prefect block register -m blocks`) or in Python, e.g. "
        f"`{create}.save({name!r})`"
    )
    if block_type in CRM_BLOCK_TYPES and name:
        # Loading by the class itself spares ``Block.load``'s import of every installed Prefect
        # collection (prefect-gcp alone takes seconds), which it needs only to find a type by its slug.
        return load_block(CRM_BLOCK_TYPES[block_type], name, needed_by=needed_by, hint=hint)
    loaded = load_block_by_slug(block, needed_by=needed_by, hint=hint)
    if not isinstance(loaded, CrmBlock):
        raise TypeError(
            f"Block {block!r} (crm.block) is a {type(loaded).__name__}, not a CRM block; use one of the types "
            f"{', '.join(CRM_BLOCK_TYPES)}."
        )
    return loaded


def read_api_key(block: str) -> ApiKey:
    """The key of the CRM block ``block`` (``crm.block``): its secret field, or the secret block it names
    (``read_secret_block``).

    Raises what ``load_crm_block`` and ``read_secret_block`` raise, and ``ValueError`` naming the block (never
    quoting the key) when the key is empty or is no bearer token (a trailing newline, a space).
    """
    crm = load_crm_block(block)
    key = crm.key()
    secret_field, block_field = crm.key_fields
    if isinstance(key, SecretStr):
        value, source = key.get_secret_value(), f"{secret_field} of CRM block {block!r}"
    else:
        value = read_secret_block(key, needed_by=f"CRM block {block!r} ({block_field})")
        source = f"secret block {key!r} ({block_field} of CRM block {block!r})"
    try:
        return ApiKey(value)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def read_secret_block(block: str, needed_by: str = "the CRM export") -> str:
    """Load a secret block by slug and return the secret string exactly as stored.

    Args:
        block: block document slug ``<block-type-slug>/<block-name>``, e.g. ``secret/crm-api-key``,
            ``vault-kv-secret/crm-api-key`` or ``kms-encrypted-gcs-secret/crm-api-key``.
        needed_by: who names the block, for the messages, e.g. ``CRM block 'hubspot-crm/hubspot' (access_token_block)``.

    Returns:
        The secret, unchanged. For Prefect's ``Secret`` block that is the raw stored string
        (``blocks.secrets.secret_string``), not ``Secret.get()``, which parses JSON and would turn a key
        "123" into the integer 123. For ``VaultKvSecret`` and ``KmsEncryptedGcsSecret`` it is what their
        ``get()`` returns.

    Raises:
        ValueError: ``block`` is not of the form ``<block-type-slug>/<block-name>``, or the secret is empty.
        SecretBlockNotFoundError: no such block document in the workspace (a ``LookupError``).
        TypeError: the block is not one of the supported secret types, or a ``Secret`` holds a
            non-string (JSON) value.
        SecretSourceError: from the block's ``get()`` (its subclasses in ``blocks.secrets``).
    """
    block_type, _, name = block.partition("/")
    if block_type in _SECRET_BLOCK_MODULES:
        importlib.import_module(_SECRET_BLOCK_MODULES[block_type])
    create = _CREATE_HINTS.get(block_type, _CREATE_HINTS["secret"])
    hint = (
        f"create it in the UI (`prefect block create {block_type}`; our types need `prefect block register -m "
        f"blocks` first) or in Python, e.g. {create}.save({name!r})`"
    )
    try:
        loaded = load_block_by_slug(
            block, needed_by=f"{needed_by}, a block of type {', '.join(SUPPORTED_BLOCK_TYPES)}", hint=hint
        )
    except BlockNotFoundError as exc:
        raise SecretBlockNotFoundError(str(exc)) from None

    if isinstance(loaded, Secret):
        value = secret_string(loaded, name)
    elif type(loaded).get_block_type_slug() in _SECRET_BLOCK_MODULES:
        value = loaded.get()
    else:
        supported = ", ".join(SUPPORTED_BLOCK_TYPES)
        raise TypeError(
            f"Block {block!r} ({needed_by}) is a {type(loaded).__name__}, not a secret block; use one of the "
            f"types {supported}."
        )

    if not value.strip():
        raise ValueError(f"The secret in block {block!r} is empty.")
    logger.info("Read the API key from block %r (%s)", block, type(loaded).__name__)
    return value
