"""Run moto's real server on a free loopback port, for the demo, the benchmark and the tests.

One server emulates every AWS service moto implements (S3, Glue, Athena, STS, IAM, ...) on one endpoint;
clients reach it through ``AWS_ENDPOINT_URL`` (``client_env()``) or an explicit ``endpoint_url``. It runs
behind ``devstack.moto_gaps``, which answers the Athena calls moto lacks or answers differently as AWS
does. Its state lives in memory: it is gone when the server stops (``reset()`` empties it while running).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import httpx

from devstack.server_process import ServerProcess

#: moto accepts any key pair unless IAM authorization is enabled (``initial_no_auth_action_count``).
DUMMY_ACCESS_KEY_ID = "testing"
DUMMY_SECRET_ACCESS_KEY = "testing"
DEFAULT_REGION = "us-east-1"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


class MotoServer(ServerProcess):
    """``python -m devstack.moto_gaps -H 127.0.0.1 -p PORT`` in a subprocess; a context manager that stops it.

    Args:
        region: the region ``client_env()`` hands to clients.
        initial_no_auth_action_count: if set, moto enforces IAM authorization after that many AWS API
            requests (moto's ``INITIAL_NO_AUTH_ACTION_COUNT``): the first requests set up users and
            policies unchecked, later ones need an IAM user's keys and are denied what its policies do
            not allow (``AccessDenied``). ``None`` (the default): everything is allowed.
            ``enforce_iam()`` sets it on a running server.
        startup_timeout_seconds: how long ``start()`` waits for the server to answer.

    Attributes:
        url: the endpoint, ``http://127.0.0.1:<port>`` (no trailing slash).
        port, pid: of the running server (``pid`` is None when stopped).
    """

    name = "moto server"

    def __init__(
        self,
        *,
        region: str = DEFAULT_REGION,
        initial_no_auth_action_count: int | None = None,
        startup_timeout_seconds: float = 60.0,
    ) -> None:
        self.region = region
        self.initial_no_auth_action_count = initial_no_auth_action_count
        super().__init__(startup_timeout_seconds)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, service: str) -> Any:
        """A boto3 client of ``service`` on this server, in its region, with the dummy keys."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
        )

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
        self._prepare()
        env = {**os.environ}
        for name in ("AWS_ENDPOINT_URL", "INITIAL_NO_AUTH_ACTION_COUNT"):
            env.pop(name, None)
        if self.initial_no_auth_action_count is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.initial_no_auth_action_count)
        # devstack.moto_gaps is imported from this checkout, wherever the caller runs from.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "devstack.moto_gaps", "-H", "127.0.0.1", "-p", str(self.port)]
        self._launch(argv, env)
        return self

    def _answers(self) -> bool:
        # moto's own API: answers once the server dispatches requests; not an AWS action, so it does
        # not count towards initial_no_auth_action_count.
        return httpx.get(f"{self.url}/moto-api/data.json", timeout=2).status_code == 200

    def enforce_iam(self, after_requests: int | None) -> None:
        """Enforce IAM authorization after ``after_requests`` more AWS API requests (None: never), as
        ``initial_no_auth_action_count`` does at start (``POST /moto-api/reset-auth``)."""
        count = "inf" if after_requests is None else str(after_requests)
        httpx.post(f"{self.url}/moto-api/reset-auth", content=count, timeout=10).raise_for_status()

    def reset(self) -> None:
        """Forget every resource of every service (``POST /moto-api/reset``) and enforce IAM as configured
        at start again (``initial_no_auth_action_count``, counted from now)."""
        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()
        self.enforce_iam(self.initial_no_auth_action_count)
