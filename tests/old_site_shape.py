"""Blocks saved in the shape of before issue 25, when the Tableau site was a block of its own: a PAT pool or
a connected app whose document refers to a ``Tableau Site`` block document. Saved in a subprocess, whose
old-shape classes never reach the test process's block registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

SAVE = """
import json, sys

from prefect.blocks.core import Block

from blocks.tableau import TableauConnectedApp, TableauPatPool


class TableauSite(Block):
    # The site as it was saved before it became a field of the pool and of the app.
    _block_type_name = "Tableau Site"

    server_url: str
    site_content_url: str = ""
    api_version: str | None = None
    verify_ssl: bool = True
    request_timeout_seconds: float = 60
    allow_insecure_transport: bool = False


class OldPool(TableauPatPool):
    site: TableauSite


class OldApp(TableauConnectedApp):
    site: TableauSite


kind, name, site_name, site, fields = sys.argv[1], sys.argv[2], sys.argv[3], *map(json.loads, sys.argv[4:])
site = TableauSite(**site)
if site_name:  # a Site block document the block refers to
    site.save(site_name, overwrite=True)
    site = TableauSite.load(site_name)
(OldPool if kind == "pool" else OldApp)(site=site, **fields).save(name, overwrite=True)
"""


def save_in_old_shape(kind: str, name: str, site_name: str, site: dict[str, Any], **fields: Any) -> None:
    """Save the block ``name`` (a ``TableauPatPool`` for ``kind`` "pool", else a ``TableauConnectedApp``;
    ``fields``: its other fields) with its site (``site``: its fields) as a ``Tableau Site`` block, as
    blocks were saved before the site became a field: a reference to the Site block document
    ``site_name``, saved first, or with an empty ``site_name`` a site saved with the block."""
    subprocess.run(
        [sys.executable, "-c", SAVE, kind, name, site_name, json.dumps(site), json.dumps(fields)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        text=True,
    )


def stored_site(block_type_slug: str, name: str) -> dict[str, Any]:
    """The ``site`` of the block document ``name`` as the Prefect API returns it (a referenced block's
    data carries its ``block_type_slug``)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_block_document_by_name(name, block_type_slug, include_secrets=False).data["site"]
