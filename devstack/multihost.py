"""A multi-host deployment on one machine: PostgreSQL, Redis, Prefect API server(s) and background
services on them, and process workers standing for worker hosts, for the multi-host tests and the
benchmark.

Each "host" is a ``prefect worker start --type process`` with its own ``PREFECT_HOME``; the flow
runs it starts are its child processes. ``WorkerHost.kill_host()`` SIGKILLs the worker and its flow
runs, as a host's death does; ``kill_worker()`` kills the worker process alone, as a worker restart
does. Jobs that a flow run detaches into a session of their own (the CRM export's local Beam jobs,
standing for Dataflow jobs) outlive both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

from devstack.postgres_server import PostgresServer
from devstack.prefect_server import PostgresRedisBackend, PrefectServer, PrefectServices, migrate
from devstack.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkerHost:
    """One worker host: ``prefect worker start --pool POOL --type process --name NAME`` (optionally
    polling only ``work_queues``; ``worker_type`` another type, e.g. ``docker``:
    ``devstack.docker.DockerWorker``), its output in ``<home>/worker.log``.

    Attributes:
        name: the worker's name (its host name in the Prefect UI).
        home: its ``PREFECT_HOME`` and log.
        work_queues: the queues it polls (all of its pool's when empty); a restart (``start()``) takes
            them anew, so a restarted host may take over a dead host's queue.
        pid: the worker process (also its process group), None once stopped.
    """

    def __init__(
        self,
        name: str,
        pool: str,
        home: Path,
        env: Mapping[str, str],
        *,
        work_queues: Sequence[str] = (),
        worker_type: str = "process",
    ):
        self.name, self.pool, self.home, self.work_queues = name, pool, home, list(work_queues)
        self.worker_type = worker_type
        self._env = dict(env)
        self._process: subprocess.Popen[bytes] | None = None
        self._orphans: list[int] = []

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, timeout_seconds: float = 120) -> WorkerHost:
        """Start the worker and wait until it polls its pool (``RuntimeError`` with its log if it exits,
        ``TimeoutError`` if it does not poll within ``timeout_seconds``)."""
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            self.pool,
            "--type",
            self.worker_type,
        ]
        argv += ["--name", self.name] + [arg for queue in self.work_queues for arg in ("--work-queue", queue)]
        log = open(self.home / "worker.log", "ab")
        offset = log.tell()  # a restarted worker appends: look for its own "started!"
        try:
            self._process = subprocess.Popen(
                argv,
                env={**os.environ, **self._env, "PREFECT_HOME": str(self.home)},
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # apart from the caller: stop() signals its group
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_seconds
        while b"started!" not in (self.home / "worker.log").read_bytes()[offset:]:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"worker {self.name} exited ({self._process.returncode}):\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"worker {self.name} did not start within {timeout_seconds} s")
            time.sleep(0.3)
        return self

    def log(self) -> str:
        path = self.home / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def flow_run_pids(self) -> list[int]:
        """The live flow-run processes this worker started (its child processes; Linux ``/proc``).

        Prefect's process worker starts each in a session of its own (a process group that its
        cancellation signals), so they are found by parent, not by process group."""
        if self.pid is None:
            return []
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid and fields[0] != "Z":  # fields: state, ppid, ...
                pids.append(int(stat.parent.name))
        return pids

    def kill_host(self) -> list[int]:
        """SIGKILL the worker and the process group of every flow run it started, as a host's death
        does (jobs that a flow run detached into a session of their own live on, as Dataflow jobs do).

        Returns:
            The flow-run processes killed.
        """
        assert self._process is not None
        flow_runs = self.flow_run_pids()
        groups = {os.getpgid(pid) for pid in flow_runs if _exists(pid)}
        self._process.send_signal(signal.SIGKILL)
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._process.wait()
        self._process = None
        return flow_runs

    def kill_worker(self) -> list[int]:
        """SIGKILL the worker process alone; its flow-run processes live on (a worker restart).
        ``start()`` starts a new worker under the same name.

        Returns:
            The flow-run processes left running (``stop()`` ends them if they are still there).
        """
        assert self._process is not None
        flow_runs = self.flow_run_pids()
        self._orphans += flow_runs
        self._process.send_signal(signal.SIGKILL)
        self._process.wait()
        self._process = None
        return flow_runs

    def stop(self) -> None:
        """Stop the worker and the flow-run processes it started or left behind; idempotent."""
        leftovers = self._orphans + self.flow_run_pids()
        self._orphans = []
        if self._process is not None:
            try:
                self._process.send_signal(signal.SIGTERM)
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        for pid in leftovers:
            if _exists(pid):
                try:
                    os.killpg(os.getpgid(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


class MultiHostStack:
    """PostgreSQL and Redis, Prefect's schema migrated once, ``api_replicas`` API servers
    (``--no-services``) and one background-services process on them, and the worker hosts started
    with ``add_host()``; a context manager that stops everything on exit (also on failure).

    Args:
        workdir: directory for the servers' homes and logs and the hosts'; None: a temporary one.
        api_replicas: API servers; clients and hosts use the first unless told otherwise.
        repossessor_loop_seconds: how often the services free the slots of expired leases.
        server_settings: further settings of every server process (loop intervals ...).
        auth_string: ``user:password`` of the servers' basic auth (``PREFECT_SERVER_API_AUTH_STRING``,
            also read by the services process, whose actions call the API in-process); clients and
            hosts send it (``PREFECT_API_AUTH_STRING``, ``client_env()``). None: no auth.

    Attributes:
        postgres, redis, backend, apis, services, hosts: the parts, once started.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        api_replicas: int = 1,
        repossessor_loop_seconds: float = 1.0,
        server_settings: Mapping[str, str] | None = None,
        auth_string: str | None = None,
    ):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="multihost-")
        self.workdir = Path(workdir or self._tmp.name)
        self.api_replicas = api_replicas
        self.repossessor_loop_seconds = repossessor_loop_seconds
        self.server_settings = {"PREFECT_UI_ENABLED": "false", **(server_settings or {})}
        self.auth_string = auth_string
        if auth_string is not None:
            self.server_settings["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
        self.apis: list[PrefectServer] = []
        self.services: PrefectServices | None = None
        self.hosts: list[WorkerHost] = []
        self._stack = ExitStack()

    @property
    def api_url(self) -> str:
        return self.apis[0].api_url

    def client_env(self, replica: int = 0) -> dict[str, str]:
        """Environment variables that point a Prefect client at API server ``replica`` (with the auth
        string, if the stack has one)."""
        env = {"PREFECT_API_URL": self.apis[replica].api_url}
        if self.auth_string is not None:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env

    def start(self) -> MultiHostStack:
        try:
            self.postgres = self._stack.enter_context(PostgresServer())
            self.redis = self._stack.enter_context(RedisServer())
            self.backend = PostgresRedisBackend(self.postgres.url, self.redis.host, self.redis.port)
            migrate(self.backend)
            common = dict(
                backend=self.backend,
                repossessor_loop_seconds=self.repossessor_loop_seconds,
                settings=self.server_settings,
            )
            self.apis = [
                PrefectServer(self.workdir / f"api-{i}", services=False, **common)
                for i in range(self.api_replicas)
            ]
            self.services = PrefectServices(self.workdir / "services", **common)
            for process in (*self.apis, self.services):  # started together, stopped in reverse
                self._stack.callback(process.stop)
                process.launch()
            for process in (*self.apis, self.services):
                process.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def add_host(
        self,
        name: str,
        pool: str,
        *,
        work_queues: Sequence[str] = (),
        replica: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> WorkerHost:
        """Start a worker host polling ``pool`` (only ``work_queues`` if given) through API ``replica``;
        it polls every second. ``env`` is added to its environment (its flow runs inherit it)."""
        host = WorkerHost(
            name,
            pool,
            self.workdir / "hosts" / name,
            {
                **self.client_env(replica),
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PYTHONPATH": str(ROOT),
                **(env or {}),
            },
            work_queues=work_queues,
        )
        self._stack.callback(host.stop)
        self.hosts.append(host)
        return host.start()

    def stop(self) -> None:
        """Stop the hosts, the servers, Redis and PostgreSQL (in that order); idempotent."""
        self._stack.close()
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> MultiHostStack:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
