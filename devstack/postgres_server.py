"""Run a real PostgreSQL server (Debian's ``postgresql`` package, installed by ``make``) on a free
loopback port, with a throw-away cluster in a temporary directory, for the multi-host stack.

PostgreSQL refuses to run as root ("root execution of the PostgreSQL server is not permitted",
``initdb`` and ``postgres``), so as root the cluster belongs to, and the server runs as, the
``postgres`` system user that Debian's package creates. The cluster trusts loopback connections and
skips fsync: its data is discarded when it stops.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from devstack.server_process import ServerProcess

#: Prefect's self-hosting guide ("How to scale self-hosted Prefect", Requirements): PostgreSQL 14.9 or
#: later for several server instances on one database.
MINIMUM_VERSION = (14, 9)
#: The system user that owns the cluster when we run as root (created by Debian's postgresql-common).
SYSTEM_USER = "postgres"


class PostgresNotInstalledError(RuntimeError):
    """No PostgreSQL server binaries were found, or they are older than ``MINIMUM_VERSION``."""


def find_bindir() -> Path:
    """The directory of ``initdb``, ``postgres`` and ``pg_isready``: ``$POSTGRES_BINDIR``, else the one
    of ``postgres`` on the PATH, else the newest ``/usr/lib/postgresql/<major>/bin`` (Debian's layout).

    Raises:
        PostgresNotInstalledError: none has a ``postgres`` binary; says how to install one.
    """
    candidates = []
    if configured := os.environ.get("POSTGRES_BINDIR"):
        candidates.append(Path(configured))
    if on_path := shutil.which("postgres"):
        candidates.append(Path(on_path).resolve().parent)
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates += [Path(p) for p in debian]
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise PostgresNotInstalledError(
        "PostgreSQL server binaries not found (looked at $POSTGRES_BINDIR, `postgres` on the PATH and "
        "/usr/lib/postgresql/*/bin). Run `make services` (Debian's postgresql package, as root), or "
        "set POSTGRES_BINDIR to the directory of initdb and postgres."
    )


def server_version(bindir: Path) -> tuple[int, int]:
    """(major, minor) of ``bindir/postgres --version`` (e.g. "postgres (PostgreSQL) 15.18 (Debian ...)")."""
    out = subprocess.run(
        [bindir / "postgres", "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)\.(\d+)", out)
    if not match:
        raise PostgresNotInstalledError(f"cannot read the version of {bindir / 'postgres'}: {out.strip()!r}")
    return int(match[1]), int(match[2])


class PostgresServer(ServerProcess):
    """A PostgreSQL cluster in a temporary directory, served on ``127.0.0.1:<port>``; a context manager
    that stops the server (fast shutdown) and deletes the cluster on exit.

    Args:
        database: a database created once the server answers (superuser ``postgres``, no password).
        startup_timeout_seconds: how long ``start()`` waits for the server to accept connections.

    Attributes:
        url: the SQLAlchemy URL of ``database`` for asyncpg,
            ``postgresql+asyncpg://postgres@127.0.0.1:<port>/<database>`` (what Prefect's
            ``PREFECT_API_DATABASE_CONNECTION_URL`` takes).
        version: (major, minor) of the server.
        port, pid: of the running server (``pid`` is None when stopped).

    Raises (from ``start()``):
        PostgresNotInstalledError: no server binaries, or older than 14.9.
        RuntimeError: ``initdb`` failed, or the server exited or did not answer in time (with its log).
    """

    name = "PostgreSQL"
    # "Fast Shutdown"; SIGTERM is "Smart Shutdown", which waits for every client to disconnect
    # (PostgreSQL documentation, "Shutting Down the Server").
    stop_signal = signal.SIGINT

    def __init__(self, *, database: str = "prefect", startup_timeout_seconds: float = 60.0) -> None:
        self.database = database
        self.bindir = find_bindir()
        self.version = server_version(self.bindir)
        if self.version < MINIMUM_VERSION:
            raise PostgresNotInstalledError(
                f"PostgreSQL {self.version[0]}.{self.version[1]} in {self.bindir} is older than "
                f"{MINIMUM_VERSION[0]}.{MINIMUM_VERSION[1]}, which Prefect needs for several servers on one database."
            )
        super().__init__(startup_timeout_seconds)
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        self._prepare()
        user = SYSTEM_USER if os.geteuid() == 0 else None
        data, sockets = self._workdir / "data", self._workdir / "sockets"
        for directory in (data, sockets):
            directory.mkdir(mode=0o700)
            if user:
                shutil.chown(directory, user, user)
        if user:
            self._workdir.chmod(0o711)  # the postgres user must reach its directories, not list ours
        initdb = subprocess.run(
            [self.bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            user=user,
            cwd=self._workdir,
        )
        if initdb.returncode:
            self.stop()
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}{initdb.stderr}")
        argv = [
            self.bindir / "postgres",
            "-D",
            data,
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            sockets,
            # A throw-away test cluster: no durability needed, and enough connections for several
            # Prefect servers (each pools connections) and their clients.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        ]
        self._launch([str(a) for a in argv], user=user, cwd=self._workdir)
        created = subprocess.run(
            [
                self.bindir / "createdb",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                self.database,
            ],
            capture_output=True,
            text=True,
        )
        if created.returncode:
            self.stop()
            raise RuntimeError(f"createdb {self.database} failed: {created.stderr}")
        return self

    def _answers(self) -> bool:
        ready = subprocess.run(
            [self.bindir / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
            capture_output=True,
        )
        return ready.returncode == 0
