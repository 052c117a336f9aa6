"""Run moto's real server (``python -m moto.server``) on a free loopback port, for the demo and the tests.

One server emulates every AWS service moto implements (S3, Glue, Athena, STS, IAM, ...) on one endpoint;
clients reach it through ``AWS_ENDPOINT_URL`` (``client_env()``) or an explicit ``endpoint_url``. Its state
lives in memory: it is gone when the server stops (``reset()`` empties it while running).

Known gaps of moto 5.2 (design.md §7): no ``batch_get_query_execution``, no ``list_table_metadata``,
``list_query_executions`` oldest first and unpaged, no default ``AwsDataCatalog``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from devstack.prefect_server import free_port

#: moto accepts any key pair unless IAM authorization is enabled (``initial_no_auth_action_count``).
DUMMY_ACCESS_KEY_ID = "testing"
DUMMY_SECRET_ACCESS_KEY = "testing"
DEFAULT_REGION = "us-east-1"


class MotoServer:
    """``python -m moto.server -H 127.0.0.1 -p PORT`` in a subprocess; a context manager that stops it on exit.

    Args:
        region: the region ``client_env()`` hands to clients.
        initial_no_auth_action_count: if set, moto enforces IAM authorization after that many AWS API
            requests (moto's ``INITIAL_NO_AUTH_ACTION_COUNT``): the first requests set up users and
            policies unchecked, later ones need an IAM user's keys and are denied what its policies do
            not allow (``AccessDenied``). ``None`` (the default): everything is allowed.
        startup_timeout_seconds: how long ``start()`` waits for the server to answer.

    Attributes:
        url: the endpoint, ``http://127.0.0.1:<port>`` (no trailing slash).
        port, pid: of the running server (``pid`` is None when stopped).
    """

    def __init__(
        self,
        *,
        region: str = DEFAULT_REGION,
        initial_no_auth_action_count: int | None = None,
        startup_timeout_seconds: float = 60.0,
    ) -> None:
        self.region = region
        self.initial_no_auth_action_count = initial_no_auth_action_count
        self.startup_timeout_seconds = startup_timeout_seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def client_env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and prefect-aws) at this server, with dummy keys."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def start(self) -> MotoServer:
        """Launch the server and wait until it answers (``RuntimeError`` with its log if it exits or stays silent)."""
        if self._process is not None:
            raise RuntimeError(f"the moto server on {self.url} is already running")
        self._tmp = tempfile.TemporaryDirectory(prefix="moto-server-")
        env = {**os.environ}
        for name in ("AWS_ENDPOINT_URL", "INITIAL_NO_AUTH_ACTION_COUNT"):
            env.pop(name, None)
        if self.initial_no_auth_action_count is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.initial_no_auth_action_count)
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the group
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def _log_path(self) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name) / "moto.log"

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                # moto's own API: answers once the server dispatches requests; not an AWS action, so it
                # does not count towards initial_no_auth_action_count.
                if httpx.get(f"{self.url}/moto-api/data.json", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        log = self._log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(
            f"moto's server did not answer on {self.url} within {self.startup_timeout_seconds} s "
            f"(exit code {self._process.poll()}); its output:\n{log}"
        )

    def reset(self) -> None:
        """Forget every resource of every service (``POST /moto-api/reset``)."""
        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, SIGKILL after 10 s) and wait for it; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:  # the group is gone already
                process.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
