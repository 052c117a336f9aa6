"""``HubSpotServer`` and ``BrazeServer``: a CRM stand-in in its own process (``python -m devstack.crms``),
so that it has a CPU and a GIL of its own, and a client for its ``/devstack/*`` endpoints."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from devstack.crm.standin import CrmProcess
from devstack.crms.braze import BrazeConfig
from devstack.crms.hubspot import HubSpotConfig


class CrmServer(CrmProcess):
    """A HubSpot or Braze stand-in subprocess (``python -m devstack.crms <kind>``); its lifecycle is
    ``CrmProcess``'s. ``config``: the stand-in's settings (a ``HubSpotConfig`` or ``BrazeConfig``)."""

    kind: ClassVar[str]

    def __init__(self, api_key: str, config: Any = None, startup_timeout_seconds: float = 30.0):
        super().__init__(api_key, startup_timeout_seconds=startup_timeout_seconds)
        self.config = config

    @property
    def label(self) -> str:
        return self.kind

    def _argv(self, workdir: Path) -> list[str]:
        config = orjson.dumps(dataclasses.asdict(self.config) if self.config else {}).decode()
        return [sys.executable, "-m", "devstack.crms", self.kind, "--port", "0", "--config", config]

    def configure(self, **changes: Any) -> dict[str, Any]:
        """``POST /devstack/config``: change settings (the limits start afresh); returns them all."""
        return self._call("POST", "/devstack/config", json=changes).json()

    def user(self, key: str) -> dict[str, Any] | None:
        """``{"key", "properties", "deliveries"}`` of a stored contact, or None."""
        response = self._call("GET", "/devstack/users/" + quote(key, safe=""))
        return None if response.status_code == 404 else response.json()


class HubSpotServer(CrmServer):
    """The HubSpot stand-in (``devstack.crms.hubspot``); ``api_key`` is the private app's access token,
    ``config`` a ``HubSpotConfig``. ``url`` is the API base (``hubspot.HubSpot(host=url)``)."""

    kind = "hubspot"

    def __init__(self, api_key: str, config: HubSpotConfig | None = None, **kwargs: Any):
        super().__init__(api_key, config, **kwargs)


class BrazeServer(CrmServer):
    """The Braze stand-in (``devstack.crms.braze``); ``api_key`` is the REST API key, ``config`` a
    ``BrazeConfig``. ``url`` is the REST endpoint (``url + "/users/track"``)."""

    kind = "braze"

    def __init__(self, api_key: str, config: BrazeConfig | None = None, **kwargs: Any):
        super().__init__(api_key, config, **kwargs)
