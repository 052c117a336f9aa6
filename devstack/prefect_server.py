"""Run a real ``prefect server start`` (SQLite) on a free loopback port, for the demo and the tests.

The server keeps its database and concurrency leases under a private directory (filesystem lease
storage, so a server restart does not strand held slots) and runs its lease-expiry service
(the repossessor) every ``repossessor_loop_seconds``, which the Prefect test harness does not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrefectServer:
    """``prefect server start`` in a subprocess; a context manager that stops it on exit.

    Attributes:
        api_url: the server's API URL (``http://127.0.0.1:<port>/api``), once started.
        home: the directory holding its database, leases and log (``server.log``).
    """

    def __init__(self, home: str | os.PathLike[str] | None = None, *, repossessor_loop_seconds: float = 5.0):
        self._tmp = None if home else tempfile.TemporaryDirectory(prefix="prefect-server-")
        self.home = Path(home or self._tmp.name)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"
        self._repossessor_loop_seconds = repossessor_loop_seconds
        self._process: subprocess.Popen | None = None

    def client_env(self) -> dict[str, str]:
        """Environment variables that point a Prefect client at this server."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home / "client")}

    def start(self, timeout_seconds: float = 120) -> PrefectServer:
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.home / 'prefect.db'}",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
            "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": str(self._repossessor_loop_seconds),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            # The UI asks /ui-settings where the API is; the default (http://127.0.0.1:4200/api) is not
            # this server on its free port, and every page would say "Can't connect to Server API".
            "PREFECT_UI_API_URL": self.api_url,
        }
        env.pop("PREFECT_API_URL", None)
        self.home.mkdir(parents=True, exist_ok=True)
        self._log = open(self.home / "server.log", "wb")  # closed in stop()
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with {self._process.returncode}; see {self.home / 'server.log'}"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"prefect server did not answer on {self.api_url} within {timeout_seconds} s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        if self._process:
            self._log.close()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
