"""The CRM stand-ins in their own process (``python -m devstack.crms``), so that each has a CPU and a
GIL of its own, and a client for their ``/devstack/*`` endpoints: ``CrmStandIn`` (the generic
endpoint), ``HubSpotServer`` and ``BrazeServer``, on ``CrmProcess``."""

from __future__ import annotations

import dataclasses
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import quote

import orjson
import requests

from devstack.crms.braze import BrazeConfig
from devstack.crms.common import API_KEY_ENV, LISTENING
from devstack.crms.generic import BATCH_PATH, DEFAULT_MAX_BATCH_SIZE, FaultConfig
from devstack.crms.hubspot import HubSpotConfig

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class CrmProcess:
    """A CRM stand-in in a subprocess (``python -m devstack.crms <kind>``); a context manager. Base of
    ``CrmStandIn`` (the generic endpoint), ``HubSpotServer`` and ``BrazeServer``: a subclass gives
    ``label`` (for messages) and ``_argv()``.

    ``start()`` launches it on a free port, the key in ``$CRM_STANDIN_API_KEY`` (never in argv, which
    ``ps`` shows), and waits up to ``startup_timeout_seconds`` for it to listen (``RuntimeError`` if it
    exits or stays silent; its stderr is in the message). The subprocess exits when ``stop()`` is
    called or when this process dies (it watches its standard input). ``url``: its base URL, no
    trailing slash.
    """

    label = "CRM"

    def __init__(self, api_key: str, *, startup_timeout_seconds: float = 30.0) -> None:
        self.api_key = api_key
        self.startup_timeout_seconds = startup_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._http: requests.Session | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"the {self.label} stand-in is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _argv(self, workdir: Path) -> list[str]:
        """The stand-in's command line (``--port 0``, without ``--exit-on-stdin-eof``); ``workdir`` is
        removed on ``stop()``."""
        raise NotImplementedError

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError(f"the {self.label} stand-in is already running")
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.label.lower()}-standin-")
        stderr_path = Path(self._tmp.name) / "stderr.log"
        env = {
            **os.environ,
            API_KEY_ENV: self.api_key,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
        }
        argv = [*self._argv(Path(self._tmp.name)), "--exit-on-stdin-eof"]
        with open(stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
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
                if not line:  # end of output: the process exited
                    break
                if line.startswith(LISTENING):
                    return line.removeprefix(LISTENING).rstrip("/")
        self._process.poll()
        raise RuntimeError(
            f"the {self.label} stand-in did not start within {self.startup_timeout_seconds} s (exit code "
            f"{self._process.returncode}); stderr:\n{stderr_path.read_text(errors='replace')[-4000:]}"
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        assert self._http is not None
        response = self._http.request(method, self.url + path, timeout=30, **kwargs)
        if response.status_code >= 400 and response.status_code != 404:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response

    def stats(self) -> dict[str, Any]:
        """``GET /devstack/stats``: ``requests``, ``status_counts``, the records' counters,
        ``distinct_users``, ``duplicate_deliveries``."""
        return self._call("GET", "/devstack/stats").json()

    def reset(self) -> None:
        """``POST /devstack/reset``: forget users and counters (the settings stay)."""
        self._call("POST", "/devstack/reset")

    def user(self, key: str) -> dict[str, Any] | None:
        """A stored user as ``GET /devstack/users/<key>`` answers it, or None if there is none: the
        generic endpoint's ``{"external_id", "attributes", "deliveries"}``, a HubSpot or Braze
        contact's ``{"key", "properties", "deliveries"}``."""
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class CrmStandIn(CrmProcess):
    """The generic batch endpoint's stand-in (``python -m devstack.crms generic``, see ``CrmProcess``).
    Its SQLite file is ``db_path``, or one in a temporary directory removed on ``stop()``.

    Attributes: ``url``, ``batch_url`` (``url + "/v1/users/batch"``), ``pid``.
    """

    def __init__(
        self,
        api_key: str,
        db_path: Path | None = None,
        faults: FaultConfig | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        *,
        startup_timeout_seconds: float = 30.0,
    ) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        super().__init__(api_key, startup_timeout_seconds=startup_timeout_seconds)
        self.db_path = db_path
        self.faults = faults or FaultConfig()
        self.max_batch_size = max_batch_size

    @property
    def batch_url(self) -> str:
        return self.url + BATCH_PATH

    def _argv(self, workdir: Path) -> list[str]:
        db_path = self.db_path or workdir / "crm.sqlite3"
        argv = [sys.executable, "-m", "devstack.crms", "generic", "--port", "0", "--db", str(db_path)]
        return [*argv, *self.faults.cli_args(), "--max-batch-size", str(self.max_batch_size)]

    def configure(self, **faults: Any) -> FaultConfig:
        """`POST /devstack/config` with FaultConfig fields; returns the configuration now in force."""
        self.faults.updated(faults)  # checks names and values before the server does
        self.faults = FaultConfig(**self._call("POST", "/devstack/config", json=faults).json())
        return self.faults

    def users(self) -> dict[str, dict[str, Any]]:
        """Every stored user (`GET /devstack/users`): external_id → `{"external_id", "attributes", "deliveries"}`."""
        return {user["external_id"]: user for user in self._call("GET", "/devstack/users").json()["users"]}


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
