"""Test harness: one real ``prefect server start`` for the whole run (none for a run of tests/multihost
alone, which brings up its own stack), and helpers.

Prefect reads its settings when first imported, so the server is launched and ``PREFECT_API_URL``
set in ``pytest_configure``, before any test module (and Prefect) is imported. With pytest-xdist
the controller launches it and the workers inherit its URL: one server for the run, which starts
while the workers collect (the controller waits for it before any test is sent). It runs its
lease-expiry service every second, so crash tests see leases expire promptly.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from devstack.prefect_server import PrefectServer

_server: PrefectServer | None = None
_home: tempfile.TemporaryDirectory | None = None
_registered = False

#: Marks the tests that run ``python -m deployments.bootstrap``: it creates the project's one zombie
#: automation on the session's server, so they share a pytest-xdist worker and never create it at once.
BOOTSTRAP_COMMAND = pytest.mark.xdist_group("bootstrap-command")


def pytest_configure(config: pytest.Config) -> None:
    global _server, _home
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # a pytest-xdist worker: the controller's server, inherited through the environment
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = "false"  # nothing to ship logs to once the server stops
    # The session server's SQLite answers 503 when the workers' writes collide; under load a client's
    # five retries (2, 4, 8, 16, 32 s apart) have run out (seen saving a block): allow a few more.
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "8")
    if _only_multihost(config):
        # tests/multihost brings up its own stack and talks to nothing else: no session server, and
        # a Prefect home of the run's own rather than the user's.
        _home = tempfile.TemporaryDirectory(prefix="prefect-home-")
        os.environ["PREFECT_HOME"] = _home.name
        return
    _server = PrefectServer(repossessor_loop_seconds=1).launch()
    os.environ.update(_server.client_env())


def _only_multihost(config: pytest.Config) -> bool:
    """True when every path given on the command line is inside tests/multihost."""
    multihost = Path(__file__).parent / "multihost"
    paths = [Path(config.invocation_params.dir, arg.split("::")[0]).resolve() for arg in config.args]
    return bool(paths) and all(path.is_relative_to(multihost) for path in paths)


def pytest_sessionstart(session: pytest.Session) -> None:
    if _server is not None and not session.config.pluginmanager.hasplugin("dsession"):
        _server_ready()  # no pytest-xdist workers: this process runs the tests


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    _server_ready()  # the controller, before it sends the first test


def _server_ready() -> None:
    """Wait until the session's server answers, then register the Tableau and CRM block types, once: two
    workers saving a block of a type the server does not know yet race in Prefect's Block.save (409
    "Block type ... already exists")."""
    global _registered
    if _registered or _server is None:
        return
    _server.wait_until_ready()
    from blocks.crm_export.crm import BrazeCrm, GenericCrmEndpoint, HubSpotCrm
    from blocks.tableau import TableauConnectedApp, TableauPatPool, TableauPersonalAccessToken

    for block_type in (
        TableauPatPool,
        TableauPersonalAccessToken,
        TableauConnectedApp,
        GenericCrmEndpoint,
        HubSpotCrm,
        BrazeCrm,
    ):
        block_type.register_type_and_schema()
    _registered = True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the tests marked ``slow`` first, longest first (``seconds``), then the rest in file order,
    so that with pytest-xdist the long ones start at once on different workers instead of ending the
    run alone."""

    def seconds(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        return 0.0 if slow is None else slow.kwargs.get("seconds", 1.0)

    items.sort(key=seconds, reverse=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()
    if _home is not None:
        _home.cleanup()


@pytest.fixture(scope="session")
def prefect_api_url() -> str:
    return os.environ["PREFECT_API_URL"]


@pytest.fixture
def job_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``TMPDIR`` of the local CRM jobs a test starts: a directory of the test's own, so that a job it
    SIGKILLs leaves Beam's ``beam-pipeline-temp*`` there rather than in /tmp."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setenv("TMPDIR", str(directory))
    return directory


# --- Waiting for another thread or process --------------------------------------------------------


def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "the condition"
) -> Any:
    """Poll ``condition`` every ``interval`` seconds until it returns something truthy, and return that;
    AssertionError naming ``what`` once it has not within ``timeout`` seconds (its last try is at or
    after the deadline). For waits on another thread or process instead of a fixed sleep: no longer
    than needed, and as long as it takes under load. Tests import it: ``from conftest import wait_for``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- Tableau stand-in ------------------------------------------------------------------------

SITE = "analytics"
PATS = {"pat-1": "secret-1", "pat-2": "secret-2", "pat-3": "secret-3"}


def standin_config(**overrides: Any) -> dict[str, Any]:
    """A small site: Sales (4 data sources, 1 workbook), Marketing (3), and a look-alike 'Orders'."""
    config: dict[str, Any] = {
        "site_content_url": SITE,
        "time_scale": 100,  # a 60 s refresh takes 0.6 s
        "backgrounder_slots": 4,
        "pats": [{"name": name, "secret": secret} for name, secret in PATS.items()],
        "projects": ["Sales", "Marketing", "Archive"],
        "datasources": [
            *(
                {"project": "Sales", "name": n, "duration_seconds": [40, 90]}
                for n in ("Orders", "Leads", "Targets", "Regions")
            ),
            *(
                {"project": "Marketing", "name": n, "duration_seconds": [40, 90]}
                for n in ("Campaigns", "Ad Spend", "Sessions")
            ),
            {"project": "Archive", "name": "Orders", "duration_seconds": 60},
        ],
        "workbooks": [{"project": "Sales", "name": "Sales Overview", "duration_seconds": 60}],
    }
    config.update(overrides)
    return config


class StandIn:
    """The running stand-in and its audit, as tests use them."""

    def __init__(self, server: Any):
        self.server = server
        self.url = server.url

    def audit(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/devstack/audit", timeout=10).json()

    def expire_sessions(self) -> int:
        return requests.post(f"{self.url}/devstack/sessions/expire", timeout=10).json()["expired"]


@pytest.fixture
def make_standin() -> Iterator[Any]:
    """Factory: start a stand-in with ``standin_config(**overrides)``; stopped after the test."""
    from devstack.tableau import TableauStandIn, load_config

    started = []

    def start(**overrides: Any) -> StandIn:
        server = TableauStandIn(load_config(standin_config(**overrides))).start()
        started.append(server)
        return StandIn(server)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def standin(make_standin) -> StandIn:
    return make_standin()


# --- Blocks, limits and domain configuration --------------------------------------------------


class Workspace:
    """Blocks and limits of one test, under names no other test uses."""

    def __init__(self, standin: StandIn, tmp_path: Path):
        self.standin = standin
        self.tag = uuid.uuid4().hex[:8]
        self.pool_block = f"pool-{self.tag}"
        self.domains_file = tmp_path / "domains.yaml"

    def pat_block(self, pat: str) -> str:
        return f"{pat}-{self.tag}"

    def create_pool(
        self,
        pats: list[str],
        *,
        secrets: dict[str, str] | None = None,
        bootstrap: bool = True,
        **pool_fields: Any,
    ):
        from blocks import TableauSite
        from devstack.pat_pool import save_pat_pool

        secrets = {**PATS, **(secrets or {})}
        pool, _ = save_pat_pool(
            self.pool_block,
            TableauSite(server_url=self.standin.url, site_content_url=SITE, api_version="3.29"),
            {self.pat_block(pat): (pat, secrets[pat]) for pat in pats},
            bootstrap=bootstrap,
            concurrency_limit_prefix=f"tableau-pat-{self.tag}",
            **pool_fields,
        )
        return pool

    def write_domains(self, domains: dict[str, dict[str, Any]], **defaults: Any) -> str:
        body = {
            "defaults": {"pat_pool_block": self.pool_block, "timeout_seconds": 120, **defaults},
            "domains": {
                name: {"upstream": {"flow": f"{name}-pipeline"}, **entry} for name, entry in domains.items()
            },
        }
        self.domains_file.write_text(yaml.safe_dump(body))
        return str(self.domains_file)


@pytest.fixture
def workspace(standin: StandIn, tmp_path: Path) -> Workspace:
    return Workspace(standin, tmp_path)


SALES = {
    "datasources": [{"project": "Sales", "name": n} for n in ("Orders", "Leads", "Targets", "Regions")],
    "workbooks": [{"project": "Sales", "name": "Sales Overview"}],
}
MARKETING = {
    "datasources": [{"project": "Marketing", "name": n} for n in ("Campaigns", "Ad Spend", "Sessions")]
}


@pytest.fixture
def unused_port() -> int:
    """A TCP port nothing listens on (bound once, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- BigQuery emulator -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bigquery() -> Iterator[Any]:
    """The BigQuery emulator (``devstack.bigquery_emulator``), one per pytest-xdist worker; tests keep to
    datasets of their own (``bigquery_dataset``)."""
    from devstack.bigquery_emulator import BigQueryEmulator

    with BigQueryEmulator() as emulator:
        yield emulator


@pytest.fixture
def bigquery_dataset(bigquery) -> str:
    """A new dataset of the emulator's project, for one test: ``project.dataset``."""
    dataset = f"{bigquery.project}.test_{uuid.uuid4().hex[:10]}"
    bigquery.client().create_dataset(dataset)
    return dataset
