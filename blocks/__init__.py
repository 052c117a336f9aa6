"""Prefect block types of analytics-flows.

Register them with ``prefect block register -m blocks``.

The types load on first use (``from blocks import VaultKvSecret`` works as usual): the GCP blocks
import prefect-gcp, which takes ~10 s to import, and a Tableau refresh should not pay for that.
``prefect block register`` lists the module's members, which loads them all.

``TableauSite`` is exported here too but is not a block type: it is the ``site`` field of the Tableau
PAT pool and connected app blocks. ``BLOCK_TYPES`` names the block types.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

#: Block type (and ``TableauSite``, a block's field) → the module defining it.
_MODULES = {
    "TableauSite": "blocks.tableau",
    "TableauPersonalAccessToken": "blocks.tableau",
    "TableauPatPool": "blocks.tableau",
    "TableauConnectedApp": "blocks.tableau",
    "VaultKvSecret": "blocks.crm_export.vault",
    "KmsEncryptedGcsSecret": "blocks.crm_export.kms_gcs",
    "DataflowOptions": "blocks.crm_export.dataflow",
    "HubSpotCrm": "blocks.crm_export.crm",
    "BrazeCrm": "blocks.crm_export.crm",
    "GenericCrmEndpoint": "blocks.crm_export.crm",
}

__all__ = sorted(_MODULES)

#: The names of the block types (``prefect block register -m blocks`` registers them): all but the site.
BLOCK_TYPES = tuple(name for name in __all__ if name != "TableauSite")


def run_logger(fallback: str) -> logging.Logger | logging.LoggerAdapter:
    """The current flow or task run's logger (its records reach the run's logs in the UI); outside a run,
    the standard logger named ``fallback`` (e.g. the calling module's ``__name__``)."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(fallback)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'blocks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})
