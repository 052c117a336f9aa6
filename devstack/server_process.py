"""A local server in its own process group on a free loopback port: the lifecycle moto's server and
Azurite share (start, wait until it answers, stop the whole group, never leave a process behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from devstack.prefect_server import free_port


class ServerProcess:
    """Base of ``MotoServer``, ``Azurite``, ``PostgresServer`` and ``RedisServer``: subclasses give
    ``name``, ``url`` and ``_answers()``.

    ``_launch(argv)`` starts the process (as another ``user`` if given, e.g. a server that refuses
    root) with its output in a temporary log and waits until ``_answers()`` is true, raising
    ``RuntimeError`` with the log if it exits or stays silent for ``startup_timeout_seconds``.
    ``stop()`` sends ``stop_signal`` (SIGTERM unless a subclass says otherwise) to the group,
    SIGKILL after 10 s; idempotent.
    """

    name = "server"
    url = ""
    stop_signal = signal.SIGTERM

    def __init__(self, startup_timeout_seconds: float):
        self.startup_timeout_seconds = startup_timeout_seconds
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def _workdir(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name)

    def _answers(self) -> bool:
        """True once the server serves requests (it may raise ``OSError``/HTTP errors before)."""
        raise NotImplementedError

    def _prepare(self) -> None:
        if self._process is not None:
            raise RuntimeError(f"{self.name} on {self.url} is already running")
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.name.split()[0].lower()}-")

    def _launch(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> None:
        log_path = self._workdir / "server.log"
        with open(log_path, "wb") as log:
            self._process = subprocess.Popen(
                list(argv),
                env=None if env is None else dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals it and any children
                user=user,
                group=user,
                extra_groups=[] if user else None,
                cwd=cwd,
            )
        try:
            self._wait_until_ready(log_path)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, log_path: Path) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_seconds
        while time.monotonic() < deadline and self._process.poll() is None:
            try:
                if self._answers():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.1)
        log = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(
            f"{self.name} did not answer on {self.url} within {self.startup_timeout_seconds} s "
            f"(exit code {self._process.poll()}); its output:\n{log}"
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                # also after the leader exited: children it left
                os.killpg(process.pid, self.stop_signal)
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:  # the group is gone already
                process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError
