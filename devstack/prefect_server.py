"""Run a real ``prefect server start`` on a free loopback port, for the demo and the tests: on SQLite
(the default), or on PostgreSQL with Redis as teams run it on several hosts.

On SQLite the server keeps its database and concurrency leases under a private directory (filesystem
lease storage, so a server restart does not strand held slots). On PostgreSQL + Redis
(``PostgresRedisBackend``) it is configured as Prefect's self-hosting guide says ("How to scale
self-hosted Prefect": database URL, Redis messaging broker and cache, causal ordering, lease storage,
Docket); several API servers (``services=False``) and one ``PrefectServices`` process can then share
the database. Either way the lease-expiry service (the repossessor) runs every
``repossessor_loop_seconds``, which the Prefect test harness does not.

A new SQLite server starts from a copy of a database that already holds Prefect's schema
(``sqlite_schema()``): running every migration took ~10 s of a ~19 s start here.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
#: Where ``sqlite_schema()`` keeps its databases (ignored by git).
SCHEMA_CACHE = Path(__file__).resolve().parent / ".cache"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class PostgresRedisBackend:
    """A server's database on PostgreSQL and its messaging, event ordering, concurrency lease storage
    and Docket on Redis (prefect-redis), as "How to scale self-hosted Prefect" configures them.

    Attributes:
        database_url: ``postgresql+asyncpg://user[:password]@host:port/database``.
        redis_host, redis_port: the Redis server.
        messaging_db: Redis database of the messaging broker, cache, ordering and lease storage.
        docket_db: Redis database of Docket, which coordinates the background services (the guide
            suggests its own database number).
    """

    database_url: str
    redis_host: str
    redis_port: int
    messaging_db: int = 0
    docket_db: int = 1

    def server_env(self) -> dict[str, str]:
        """The server settings (environment variables) of every API server and services process."""
        return {
            "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url,
            # Several processes share the database: migrations run once, before any starts (migrate()).
            "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
            "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
            "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
            "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
            "PREFECT_REDIS_MESSAGING_HOST": self.redis_host,
            "PREFECT_REDIS_MESSAGING_PORT": str(self.redis_port),
            "PREFECT_REDIS_MESSAGING_DB": str(self.messaging_db),
            "PREFECT_SERVER_DOCKET_URL": f"redis://{self.redis_host}:{self.redis_port}/{self.docket_db}",
        }


def _server_env(
    home: Path,
    backend: PostgresRedisBackend | None,
    repossessor_loop_seconds: float,
    settings: Mapping[str, str],
) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": str(repossessor_loop_seconds),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    if backend is None:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] = LEASE_STORAGE
    else:
        env.update(backend.server_env())
    env.update(settings)
    env.pop("PREFECT_API_URL", None)
    return env


def migrate(backend: PostgresRedisBackend, timeout_seconds: float = 300) -> None:
    """Create or upgrade Prefect's schema in the backend's database (``prefect server database
    upgrade -y``), once, before the servers that share it start.

    Raises:
        RuntimeError: the upgrade failed, with its output.
    """
    with tempfile.TemporaryDirectory(prefix="prefect-migrate-") as home:
        _upgrade(_server_env(Path(home), backend, 5.0, {}), timeout_seconds)


def sqlite_schema(timeout_seconds: float = 300) -> Path:
    """A SQLite database file holding Prefect's schema at the installed Prefect version, made once by
    ``prefect server database upgrade -y`` and kept in ``SCHEMA_CACHE`` (``prefect-<version>.db``).
    Copy it; never write to it. Two processes making it at once both succeed (the last rename wins).

    Raises:
        RuntimeError: the upgrade failed, with its output.
    """
    cached = SCHEMA_CACHE / f"prefect-{importlib.metadata.version('prefect')}.db"
    if cached.exists():
        return cached
    SCHEMA_CACHE.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="schema-", dir=SCHEMA_CACHE) as home:
        _upgrade(_server_env(Path(home), None, 5.0, {}), timeout_seconds)
        database = Path(home) / "prefect.db"
        # One self-contained file that a reader leaves alone: out of write-ahead-log mode (a server
        # puts its own copy back in it), or even a read-only reader would add -wal and -shm files.
        with contextlib.closing(sqlite3.connect(database)) as connection:
            connection.execute("PRAGMA journal_mode=DELETE")
        os.replace(database, cached)
    return cached


def _upgrade(env: Mapping[str, str], timeout_seconds: float) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
    )
    if done.returncode:
        raise RuntimeError(
            f"prefect server database upgrade failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )


class _PrefectProcess:
    """A Prefect server process in its own process group, its output in ``<home>/server.log``."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None,
        *,
        repossessor_loop_seconds: float,
        backend: PostgresRedisBackend | None,
        settings: Mapping[str, str] | None,
    ):
        self._tmp = None if home else tempfile.TemporaryDirectory(prefix="prefect-server-")
        self.home = Path(home or self._tmp.name)
        self.backend = backend
        self._repossessor_loop_seconds = repossessor_loop_seconds
        self._settings = dict(settings or {})
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _spawn(self, argv: list[str], defaults: Mapping[str, str]) -> None:
        """Start ``python -m prefect <argv>``; ``defaults`` are settings that ``settings`` may override."""
        env = _server_env(
            self.home, self.backend, self._repossessor_loop_seconds, {**defaults, **self._settings}
        )
        self.home.mkdir(parents=True, exist_ok=True)
        if self.backend is None and not (self.home / "prefect.db").exists():
            shutil.copyfile(sqlite_schema(), self.home / "prefect.db")
        self._log = open(self.home / "server.log", "wb")  # closed in stop()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "prefect", *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _exited(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            log = (self.home / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self} exited with {self._process.returncode}; its log:\n{log}")

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

    def _ready(self) -> bool:
        """True once the process serves (a subclass says how to tell)."""
        raise NotImplementedError

    def wait_until_ready(self, timeout_seconds: float = 120) -> Self:
        """Wait until the process is ready (``_ready()``), looking every 0.5 s.

        Raises:
            RuntimeError: it exited (with its log).
            TimeoutError: it was not ready within ``timeout_seconds`` (it is stopped).
        """
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            self._exited()
            if self._ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"{self} was not ready within {timeout_seconds} s")

    def start(self, timeout_seconds: float = 120) -> Self:
        """``launch()``, then ``wait_until_ready()``; stopped again if that fails."""
        self.launch()
        try:
            return self.wait_until_ready(timeout_seconds)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class PrefectServer(_PrefectProcess):
    """``prefect server start`` in a subprocess; a context manager that stops it on exit.

    Args:
        home: directory of its ``PREFECT_HOME``, log (``server.log``) and, on SQLite, database and
            leases; None: a temporary directory removed by ``stop()``.
        repossessor_loop_seconds: how often the server frees the slots of expired leases.
        backend: None for SQLite with filesystem lease storage; a ``PostgresRedisBackend`` for
            PostgreSQL + Redis (whose schema ``migrate()`` must have created first).
        services: False runs an API server only (``--no-services``), one of several replicas whose
            background services run in a ``PrefectServices`` process.
        settings: further server settings (environment variables), e.g. loop intervals.

    Attributes:
        api_url: the server's API URL (``http://127.0.0.1:<port>/api``), once started.
        home: the directory holding its log and, on SQLite, its database and leases.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        repossessor_loop_seconds: float = 5.0,
        backend: PostgresRedisBackend | None = None,
        services: bool = True,
        settings: Mapping[str, str] | None = None,
    ):
        super().__init__(
            home, repossessor_loop_seconds=repossessor_loop_seconds, backend=backend, settings=settings
        )
        self.services = services
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.ui_url = f"http://127.0.0.1:{self.port}"

    def __str__(self) -> str:
        return f"prefect server on {self.api_url}"

    def client_env(self) -> dict[str, str]:
        """Environment variables that point a Prefect client at this server."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home / "client")}

    def launch(self) -> PrefectServer:
        """Start the process without waiting for it to answer (``wait_until_ready()`` does)."""
        argv = ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        if not self.services:
            argv.append("--no-services")
        # The UI asks /ui-settings where the API is; the default (http://127.0.0.1:4200/api) is not
        # this server on its free port, and every page would say "Can't connect to Server API".
        self._spawn(argv, {"PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": self.api_url})
        return self

    def _ready(self) -> bool:
        """``/api/health`` answers 200."""
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class PrefectServices(_PrefectProcess):
    """``prefect server services start``: the background services (scheduler, triggers of automations,
    repossessor, ...) of API servers started with ``services=False``, in one process; a context
    manager that stops it on exit. Same arguments as ``PrefectServer`` but ``services``."""

    #: What the process prints as it starts its services (prefect.cli.server, ``start_services``).
    READY_LINE = b"Starting services"

    def __str__(self) -> str:
        return f"prefect server services ({self.home})"

    def launch(self) -> PrefectServices:
        self._spawn(["server", "services", "start"], {})
        return self

    def _ready(self) -> bool:
        """The process said its services started."""
        return self.READY_LINE in (self.home / "server.log").read_bytes()
