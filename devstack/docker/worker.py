"""A Docker worker: ``prefect worker start --type docker`` in a subprocess, for the image tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self


class DockerWorker:
    """``prefect worker start --pool POOL --type docker --name NAME``, polling every second, its output in
    ``<home>/worker.log``; a context manager that stops it on exit.

    Args:
        pool: the work pool (type ``docker``; the worker creates it if it is missing).
        home: its ``PREFECT_HOME`` and log.
        env: added to its environment: the Prefect API (``PREFECT_API_URL``) and the engine
            (``DOCKER_HOST``); the worker hands ``PREFECT_API_URL`` to the containers it starts.
        name: the worker's name in the Prefect UI.
    """

    def __init__(self, pool: str, home: Path, env: Mapping[str, str], *, name: str = "docker-worker"):
        self.pool, self.home, self.name = pool, home, name
        self._env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_seconds: float = 120) -> Self:
        """Start the worker and wait until it polls its pool.

        Raises:
            RuntimeError: the worker exited (with the end of its log).
            TimeoutError: it did not poll within ``timeout_seconds`` (it is stopped).
        """
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool, "--type", "docker"]
        env = {
            **os.environ,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            **self._env,
            "PREFECT_HOME": str(self.home),
        }
        with open(self.home / "worker.log", "ab") as log:
            self._process = subprocess.Popen(
                [*argv, "--name", self.name],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_seconds
        while b"started!" not in (self.home / "worker.log").read_bytes():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the Docker worker exited ({self._process.returncode}):\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the Docker worker did not start within {timeout_seconds} s")
            time.sleep(0.3)
        return self

    def log(self) -> str:
        path = self.home / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the worker's process group, SIGKILL 20 s later; idempotent. Containers it started
        live on (as after a worker restart); the test's engine stops them."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
