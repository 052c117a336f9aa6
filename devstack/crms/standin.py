"""``HubSpotServer`` and ``BrazeServer``: a CRM stand-in in its own process (``python -m devstack.crms``),
so that it has a CPU and a GIL of its own, and a client for its ``/devstack/*`` endpoints."""

from __future__ import annotations

import dataclasses
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import orjson
import requests

from devstack.crms.__main__ import API_KEY_ENV, LISTENING
from devstack.crms.braze import BrazeConfig
from devstack.crms.hubspot import HubSpotConfig

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class CrmServer:
    """A stand-in subprocess; a context manager. ``start()`` waits up to ``startup_timeout_seconds`` for
    it to listen (``RuntimeError`` with its stderr otherwise); it exits on ``stop()`` or when this
    process dies (it watches its standard input). ``url``: its base URL, no trailing slash."""

    kind: ClassVar[str]

    def __init__(self, api_key: str, config: Any = None, startup_timeout_seconds: float = 30.0):
        self.api_key = api_key
        self.config = config
        self.startup_timeout_seconds = startup_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._http: requests.Session | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"the {self.kind} stand-in is not running")
        return self._url

    def start(self) -> CrmServer:
        if self._process is not None:
            raise RuntimeError(f"the {self.kind} stand-in is already running")
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.kind}-standin-")
        stderr_path = Path(self._tmp.name) / "stderr.log"
        env = {
            **os.environ,
            API_KEY_ENV: self.api_key,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
        }
        config = orjson.dumps(dataclasses.asdict(self.config) if self.config else {}).decode()
        argv = [sys.executable, "-m", "devstack.crms", self.kind, "--port", "0", "--config", config]
        with open(stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                [*argv, "--exit-on-stdin-eof"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        try:
            self._url = self._wait_until_listening(stderr_path)
        except BaseException:
            self.stop()
            raise
        self._http = requests.Session()
        return self

    def _wait_until_listening(self, stderr_path: Path) -> str:
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout_seconds
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not selector.select(remaining):
                    continue
                line = self._process.stdout.readline().decode(errors="replace").strip()
                if not line:
                    break
                if line.startswith(LISTENING):
                    return line.removeprefix(LISTENING)
        self._process.poll()
        raise RuntimeError(
            f"the {self.kind} stand-in did not start within {self.startup_timeout_seconds} s (exit code "
            f"{self._process.returncode}); stderr:\n{stderr_path.read_text(errors='replace')[-4000:]}"
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        assert self._http is not None
        response = self._http.request(method, self.url + path, timeout=30, **kwargs)
        if response.status_code >= 400 and response.status_code != 404:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response

    def stats(self) -> dict[str, Any]:
        """``GET /devstack/stats``: ``requests``, ``status_counts``, ``records_received``/``_accepted``/
        ``_rejected``, ``distinct_users``, ``deliveries``, ``duplicate_deliveries``."""
        return self._call("GET", "/devstack/stats").json()

    def reset(self) -> None:
        """``POST /devstack/reset``: forget contacts and counters, refill the limits (settings stay)."""
        self._call("POST", "/devstack/reset")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """``POST /devstack/config``: change settings (the limits start afresh); returns them all."""
        return self._call("POST", "/devstack/config", json=changes).json()

    def user(self, key: str) -> dict[str, Any] | None:
        """``{"key", "properties", "deliveries"}`` of a stored contact, or None."""
        response = self._call("GET", "/devstack/users/" + quote(key, safe=""))
        return None if response.status_code == 404 else response.json()

    def stop(self) -> None:
        """Terminate the subprocess and wait for it (killed after 10 s); idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._url = None

    def __enter__(self) -> CrmServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
