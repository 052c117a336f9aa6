"""Run a real Redis server (Debian's ``redis-server`` package, installed by ``make``) on a free
loopback port, in memory only, for the multi-host stack."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import redis

from devstack.server_process import ServerProcess


class RedisNotInstalledError(RuntimeError):
    """No ``redis-server`` binary was found."""


def find_redis_server() -> Path:
    """``$REDIS_SERVER``, else ``redis-server`` on the PATH.

    Raises:
        RedisNotInstalledError: neither exists; says how to install it.
    """
    found = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not found or not Path(found).is_file():
        raise RedisNotInstalledError(
            "redis-server not found (looked at $REDIS_SERVER and the PATH). Run `make services` "
            "(Debian's redis-server package, as root), or set REDIS_SERVER to its path."
        )
    return Path(found)


class RedisServer(ServerProcess):
    """``redis-server`` on ``127.0.0.1:<port>`` without persistence (no RDB snapshots, no AOF); a
    context manager that stops it on exit.

    Attributes:
        host, port: where it listens (``127.0.0.1`` and a free port).
        url: ``redis://127.0.0.1:<port>`` (append ``/<db>`` for a database number).
        pid: of the running server (None when stopped).
    """

    name = "Redis"

    def __init__(self, *, startup_timeout_seconds: float = 30.0) -> None:
        self.binary = find_redis_server()
        super().__init__(startup_timeout_seconds)
        self.host = "127.0.0.1"
        self.url = f"redis://{self.host}:{self.port}"

    def start(self) -> RedisServer:
        self._prepare()
        argv = [
            str(self.binary),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._workdir),
            "--daemonize",
            "no",
        ]
        self._launch(argv, cwd=self._workdir)
        return self

    def client(self, db: int = 0) -> redis.Redis:
        """A redis-py client of database ``db``."""
        return redis.Redis(host=self.host, port=self.port, db=db, socket_timeout=5)

    def _answers(self) -> bool:
        with self.client() as client:
            return bool(client.ping())
