"""Run bqemulator — BigQuery's REST API and its Storage Read API (gRPC) on DuckDB — on free loopback
ports, for the demo, the benchmarks and the tests, as moto's server is run for AWS.

It lives in an environment of its own (``devstack/bqemulator``: it pins ``sqlglot<30.12``, the project
uses 30.30), which ``make sync`` installs together with DuckDB's extensions (``install_extensions.py``:
bqemulator loads ``spatial`` at start-up and cannot download it here). Clients reach it with
``client()`` (google-cloud-bigquery, anonymous credentials) and the CRM export with a ``BigQuerySource``
whose ``api_endpoint`` is ``url`` and ``storage_api_endpoint`` ``storage_url``. Its data lives in memory
unless ``data_dir`` is given (DuckDB on disk).

What it does not do as BigQuery does, as seen here: ``COUNTIF`` of a comparison of two columns counts
wrong or fails to bind (``COUNT(CASE WHEN … THEN 1 END)`` is right); ``FARM_FINGERPRINT`` is computed in
Python (~130 µs a row); table expiration (``expiration_timestamp``) is kept but never applied; a JSON
load of a BYTES column stores the base64 text undecoded; ``numRows`` is not updated by DML (count with
``COUNT(*)``); a load of an empty file fails; a ``WRITE_TRUNCATE`` load keeps the table's old schema; its
gRPC server caps a message at 11 MiB (a ReadRows message of 65,536 wide rows exceeds it: raised here).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from devstack.prefect_server import free_port
from devstack.server_process import ServerProcess

EMULATOR_DIR = Path(__file__).resolve().parent / "bqemulator"
EMULATOR_BIN = EMULATOR_DIR / ".venv" / "bin" / "bqemulator"
#: The emulator's ``HOME``: DuckDB's extensions are installed under it (``install_extensions.py``).
EMULATOR_HOME = EMULATOR_DIR / ".home"
DEFAULT_PROJECT = "analytics-local"


class BigQueryEmulator(ServerProcess):
    """``bqemulator start`` on two free loopback ports; a context manager that stops it.

    Args:
        project: the project a request without one goes to (any project id works).
        data_dir: keep DuckDB's database there (``--persistent``); in memory when None.
        startup_timeout_seconds: how long ``start()`` waits for the REST API to answer.

    Attributes:
        url: the REST endpoint, ``http://127.0.0.1:<port>`` (``api_endpoint`` of google-cloud-bigquery).
        storage_url: the Storage Read API, ``http://127.0.0.1:<port>`` (plaintext gRPC).
    """

    name = "BigQuery emulator"

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        *,
        data_dir: Path | None = None,
        startup_timeout_seconds: float = 60.0,
    ) -> None:
        super().__init__(startup_timeout_seconds)
        self.project = project
        self.data_dir = data_dir
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.storage_url = f"http://127.0.0.1:{self.grpc_port}"

    def start(self) -> BigQueryEmulator:
        """Launch the emulator and wait until its REST API answers. Raises ``RuntimeError`` when its
        environment is not installed (run ``make sync``), or with its log if it exits or stays silent."""
        if not EMULATOR_BIN.exists() or not (EMULATOR_HOME / ".duckdb").is_dir():
            raise RuntimeError(
                f"the BigQuery emulator is not installed ({EMULATOR_BIN}, DuckDB extensions under "
                f"{EMULATOR_HOME}): run `make sync`"
            )
        self._prepare()
        storage = ["--persistent", "--data-dir", str(self.data_dir)] if self.data_dir else ["--ephemeral"]
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(EMULATOR_BIN),
            "start",
            "--rest-host=127.0.0.1",
            f"--rest-port={self.port}",
            "--grpc-host=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            f"--project={self.project}",
            "--log-level=warning",
            *storage,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "BQEMU_"))}
        env["HOME"] = str(EMULATOR_HOME)  # DuckDB's home: the installed extensions
        # Its gRPC server caps a message at this + 1 MiB, and a ReadRows message carries 65,536 rows
        # (~12 MB of user rows): raised, as BigQuery's own read messages are not capped so.
        env["BQEMU_WRITE_API_MAX_REQUEST_BYTES"] = str(256 * 2**20)
        env["BQEMU_QUERY_CACHE_TTL_SECONDS"] = "0"  # every query runs: no cached result to go stale
        self._launch(argv, env)
        return self

    def _answers(self) -> bool:
        return httpx.get(f"{self.url}/bigquery/v2/projects/{self.project}/datasets", timeout=2).is_success

    def client(self):  # -> google.cloud.bigquery.Client
        """A google-cloud-bigquery client of ``project`` on the emulator, with anonymous credentials."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.url),
        )
