"""`CrmStandIn`: runs the stand-in in a subprocess (`python -m devstack.crm`), so that the server has a
CPU and a GIL of its own, and wraps its `/devstack/*` endpoints."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from devstack.crm.faults import FaultConfig
from devstack.crm.server import _USER_PATH, API_KEY_ENV, BATCH_PATH, DEFAULT_MAX_BATCH_SIZE, LISTENING

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class CrmStandIn:
    """The stand-in in a subprocess (`python -m devstack.crm`); a context manager.

    `start()` launches it on a free port and waits up to `startup_timeout_seconds` for it to listen
    (`RuntimeError` if it exits or stays silent; its stderr is in the message). The subprocess exits
    when `stop()` is called or when this process dies (it watches its standard input). The SQLite
    file is `db_path`, or one in a temporary directory removed on `stop()`.

    Attributes: `url` (base URL, no trailing slash), `batch_url` (`url + "/v1/users/batch"`), `pid`.
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
        self.api_key = api_key
        self.db_path = db_path
        self.faults = faults or FaultConfig()
        self.max_batch_size = max_batch_size
        self.startup_timeout_seconds = startup_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._http: requests.Session | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the CRM stand-in is not running")
        return self._url

    @property
    def batch_url(self) -> str:
        return self.url + BATCH_PATH

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> CrmStandIn:
        if self._process is not None:
            raise RuntimeError("the CRM stand-in is already running")
        self._tmp = tempfile.TemporaryDirectory(prefix="crm-standin-")
        db_path = self.db_path or Path(self._tmp.name) / "crm.sqlite3"
        stderr_path = Path(self._tmp.name) / "stderr.log"
        env = {
            **os.environ,
            API_KEY_ENV: self.api_key,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
        }
        argv = [sys.executable, "-m", "devstack.crm", "--port", "0", "--db", str(db_path)]
        argv += [*self.faults.cli_args(), "--max-batch-size", str(self.max_batch_size), "--exit-on-stdin-eof"]
        with open(stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        try:
            self._url = self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        self._http = requests.Session()
        return self

    def _wait_until_listening(self) -> str:
        assert self._process is not None and self._process.stdout is not None and self._tmp is not None
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
        stderr = (Path(self._tmp.name) / "stderr.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(
            f"the CRM stand-in did not start within {self.startup_timeout_seconds} s "
            f"(exit code {self._process.returncode}); stderr:\n{stderr}"
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        assert self._http is not None
        response = self._http.request(method, self.url + path, timeout=30, **kwargs)
        if response.status_code >= 400 and response.status_code != 404:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response

    def stats(self) -> dict[str, Any]:
        """`GET /devstack/stats` (counters, `distinct_users`, `duplicate_deliveries`, `status_counts`)."""
        return self._call("GET", "/devstack/stats").json()

    def reset(self) -> None:
        """`POST /devstack/reset`: forget users, idempotency keys and counters (faults stay)."""
        self._call("POST", "/devstack/reset")

    def configure(self, **faults: Any) -> FaultConfig:
        """`POST /devstack/config` with FaultConfig fields; returns the configuration now in force."""
        self.faults.updated(faults)  # checks names and values before the server does
        self.faults = FaultConfig(**self._call("POST", "/devstack/config", json=faults).json())
        return self.faults

    def user(self, external_id: str) -> dict[str, Any] | None:
        """`{"external_id", "attributes", "deliveries"}` of a stored user, or None if there is none."""
        response = self._call("GET", _USER_PATH + quote(external_id, safe=""))
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

    def __enter__(self) -> CrmStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
