"""Run Azurite's Blob service (the Azure Storage emulator, from npm) on a free loopback port.

Azurite is installed by ``make sync`` (``npm ci --prefix devstack/azurite``) from
``devstack/azurite/package-lock.json``: version 3.33.0, the last line that runs on Node 20 (3.37 needs
Node >= 22). It serves the single well-known development account ``devstoreaccount1``
path-style: ``http://127.0.0.1:<port>/devstoreaccount1/<container>/<blob>``. ``--skipApiVersionCheck``
lets the newer azure-storage-blob clients (whose ``x-ms-version`` Azurite 3.33 does not know yet) in;
``--loose`` ignores headers it does not implement.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from devstack.server_process import ServerProcess

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

AZURITE_DIR = Path(__file__).resolve().parent / "azurite"
AZURITE_BLOB = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"

#: Azurite's fixed development account and key (public, documented: "Use the Azurite emulator for local
#: Azure Storage development", learn.microsoft.com, section "Well-known storage account and key").
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite(ServerProcess):
    """``azurite-blob`` in a subprocess (its own process group); a context manager that stops it on exit.

    Args:
        location: directory for Azurite's data (blobs and metadata); None: a temporary directory removed
            by ``stop()``.
        startup_timeout_seconds: how long ``start()`` waits for the Blob service to answer.

    Attributes:
        account_url: ``http://127.0.0.1:<port>/devstoreaccount1`` (no trailing slash).
        account_name, account_key: the well-known development account (``ACCOUNT_NAME``, ``ACCOUNT_KEY``).
        port, pid: of the running service (``pid`` is None when stopped).
    """

    name = "Azurite"

    account_name = ACCOUNT_NAME
    account_key = ACCOUNT_KEY

    def __init__(self, location: Path | None = None, *, startup_timeout_seconds: float = 30.0) -> None:
        self.location = location
        super().__init__(startup_timeout_seconds)
        self.account_url = f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"
        self.url = self.account_url

    @property
    def connection_string(self) -> str:
        """A connection string with the account key (for setting up containers, not for the code under test)."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.account_url};"
        )

    def service_client(self) -> BlobServiceClient:
        """A ``BlobServiceClient`` authorised with the account key (full access)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(
            self.account_url, credential={"account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY}
        )

    def sas_token(
        self,
        container: str,
        permissions: str = "rcw",
        expiry: datetime | timedelta = timedelta(hours=1),
    ) -> str:
        """A container SAS token (no leading ``?``) signed with the development account key.

        Args:
            container: the container it grants access to.
            permissions: ``ContainerSasPermissions`` letters, e.g. ``"r"`` (read only), ``"rcw"`` (read,
                create, write: what a landing target needs), ``"racwdl"``.
            expiry: when it stops working: an aware ``datetime``, or a ``timedelta`` from now.
        """
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        if isinstance(expiry, timedelta):
            expiry = datetime.now(UTC) + expiry
        return generate_container_sas(
            ACCOUNT_NAME,
            container,
            account_key=ACCOUNT_KEY,
            permission=ContainerSasPermissions.from_string(permissions),
            expiry=expiry,
        )

    def start(self) -> Azurite:
        """Launch Azurite and wait until its Blob service answers HTTP.

        Raises ``RuntimeError`` if Azurite is not installed (run ``make sync``), Node.js is missing, or
        the service exits or stays silent (its output is in the message).
        """
        if not AZURITE_BLOB.exists():
            raise RuntimeError(
                f"Azurite is not installed ({AZURITE_BLOB} is missing): run `make sync`, or "
                "`npm ci --prefix devstack/azurite`"
            )
        if shutil.which("node") is None:
            raise RuntimeError("Azurite needs Node.js (20 or newer) on PATH; `node` was not found")
        self._prepare()
        location = self.location or self._workdir / "data"
        location.mkdir(parents=True, exist_ok=True)
        argv = [
            str(AZURITE_BLOB),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(location),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
        ]
        self._launch(argv)
        return self

    def _answers(self) -> bool:
        # Any HTTP answer (an anonymous List Containers gets 403) means the service is up.
        httpx.get(f"{self.account_url}?comp=list", timeout=2)
        return True
