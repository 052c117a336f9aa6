"""A Docker engine for the image tests: the one already running, or Debian's ``dockerd`` started here.

The engine started here runs as root with no iptables rules and no default bridge: its containers use
the host's network (``network_mode: host``), which is how they reach the local stack on 127.0.0.1. Its
storage driver is ``overlay2`` where the kernel lets it mount overlay file systems, else ``vfs``, which
needs nothing but copies an image's whole file system for every container and build step (measured
here under load: 2 min to create and remove one container of the 630 MB image, against seconds). Its data root (images, build cache) is
kept under ``state_dir`` between runs on one machine, so that a second run reuses the base image and
the unchanged layers; nothing relies on it being there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

#: Where the started engine keeps its socket, data root and log (``ANALYTICS_FLOWS_DOCKER_STATE``).
DEFAULT_STATE_DIR = Path(os.environ.get("ANALYTICS_FLOWS_DOCKER_STATE", "/tmp/analytics-flows-docker"))
#: The engine a machine runs by itself (Docker's default socket).
SYSTEM_SOCKET = "unix:///var/run/docker.sock"
#: The storage drivers tried, in order: the first one ``dockerd`` starts with is used.
STORAGE_DRIVERS = ("overlay2", "vfs")


class DockerEngineError(RuntimeError):
    """No Docker engine answers and none can be started here."""


def answers(base_url: str, timeout: float = 5.0) -> bool:
    """True when a Docker engine answers ``/_ping`` at ``base_url`` (``unix:///…`` or ``tcp://…``)."""
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except (docker.errors.DockerException, OSError):
        return False
    finally:
        client.close()


class DockerEngine:
    """The Docker engine of the image tests; a context manager.

    ``start()`` uses ``$DOCKER_HOST`` or the system's engine if one answers, and otherwise starts
    ``dockerd --storage-driver=<driver> --iptables=false --bridge=none`` with its data root, exec root,
    pid file and socket under ``state_dir``, trying ``STORAGE_DRIVERS`` in order; ``stop()`` stops
    the engine only if it started it.

    Attributes:
        base_url: the engine's address (``DOCKER_HOST`` form), once started.
        started_here: whether ``start()`` started it (and ``stop()`` will stop it).
        storage_driver: the driver of the engine started here (None for an engine found running).
        state_dir: where a started engine keeps its state; its log is ``<state_dir>/dockerd.log``.
    """

    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR):
        self.state_dir = state_dir
        self.base_url: str | None = None
        self.started_here = False
        self.storage_driver: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket_url(self) -> str:
        """The socket of an engine started here."""
        return f"unix://{self.state_dir / 'docker.sock'}"

    def env(self) -> dict[str, str]:
        """``DOCKER_HOST`` for clients of this engine (docker-py, the docker CLI, a Prefect worker)."""
        assert self.base_url, "start() the engine first"
        return {"DOCKER_HOST": self.base_url}

    def client(self, timeout: float = 600):
        """A docker-py client of this engine (``docker.DockerClient``); close it after use."""
        import docker

        assert self.base_url, "start() the engine first"
        return docker.DockerClient(base_url=self.base_url, timeout=timeout)

    def start(self, timeout_seconds: float = 60) -> Self:
        """Use the running engine, or start one (see the class).

        Raises:
            DockerEngineError: no engine answers and ``dockerd`` is not installed (``make test-image``
                installs Debian's ``docker.io``), or the started one exited or did not answer within
                ``timeout_seconds`` (the message holds the end of its log).
        """
        for candidate in (os.environ.get("DOCKER_HOST"), self.socket_url, SYSTEM_SOCKET):
            if candidate and answers(candidate):
                self.base_url = candidate
                return self
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerEngineError(
                "no Docker engine answers and dockerd is not installed: run `make test-image`, which "
                "installs Debian's docker.io, or set DOCKER_HOST to a running engine"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        failures = []
        for driver in STORAGE_DRIVERS:
            failure = self._start_dockerd(dockerd, driver, timeout_seconds)
            if failure is None:
                self.base_url, self.storage_driver = self.socket_url, driver
                return self
            failures.append(failure)
        raise DockerEngineError("dockerd did not start:\n" + "\n".join(failures))

    def _start_dockerd(self, dockerd: str, driver: str, timeout_seconds: float) -> str | None:
        """Start ``dockerd`` with ``driver`` and wait until it answers: None, or why it did not (the
        command and the end of its log; it is stopped)."""
        log_path = self.state_dir / "dockerd.log"
        (self.state_dir / "docker.sock").unlink(missing_ok=True)
        argv = [
            dockerd,
            f"--storage-driver={driver}",
            "--iptables=false",
            "--bridge=none",
            f"--data-root={self.state_dir / 'data'}",
            f"--exec-root={self.state_dir / 'exec'}",
            f"--pidfile={self.state_dir / 'dockerd.pid'}",
            f"--host={self.socket_url}",
        ]
        with open(log_path, "ab") as log:
            offset = log.tell()
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started_here = True
        deadline = time.monotonic() + timeout_seconds
        while not answers(self.socket_url, timeout=2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                with open(log_path, "rb") as log:
                    log.seek(offset)
                    tail = log.read().decode(errors="replace")[-2000:]
                self.stop()
                return f"{' '.join(argv)}: its log ends:\n{tail}"
            time.sleep(0.3)
        return None

    def stop(self, timeout_seconds: float = 60) -> None:
        """Stop the engine if ``start()`` started it (SIGTERM: it stops its containers and its
        containerd first; SIGKILL after ``timeout_seconds``); idempotent."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None
        self.started_here = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
