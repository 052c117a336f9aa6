"""The project's image on a Docker work pool, as a team deploys it: ``prefect deploy`` of
``prefect.docker.yaml`` builds the image (the Dockerfile, prefect-docker's build step), a Docker worker
runs the shipped deployments in containers against the local stack (Prefect server, Tableau stand-in,
a landing directory), and a container killed mid-run gives its PAT back when its lease expires, as a
killed process does (docs/operations.md, "A host that dies")."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import wait_for

from deployments.automations import ZOMBIE_CRASH_MESSAGE
from deployments.docker import DOCKER_PREFECT_FILE, WORK_POOL
from image.conftest import TIMINGS, timed

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "analytics-flows-test"
POOL_BLOCK = "tableau-pat-pool"  # the shipped tableau_domains.yaml's pool
PATS = ("pat-1", "pat-2", "pat-3")
LEASE_SECONDS = 60  # the pool block's minimum: how long a dead holder keeps its PAT
HEARTBEAT_WINDOW_SECONDS = 60  # two missed 30 s heartbeats: the run is marked Crashed
#: The Docker engine here has no registry to pull the base image from and no bridge network: the
#: build step gets these two docker-py build arguments (a team behind such an engine sets the same).
BUILD_HERE = {"pull": False, "network_mode": "host"}
MAX_IMAGE_BYTES = 800 * 1024 * 1024
FINISHED = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def prefect_cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """``prefect <argv>`` from the project's root, as a team runs it; its output, AssertionError if it fails."""
    import os

    done = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *argv],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"prefect {' '.join(argv)} failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
    )
    return done.stdout


def prefect_file_here(tmp_path: Path) -> Path:
    """``prefect.docker.yaml`` as shipped, with ``BUILD_HERE`` in its build step and no push step (no
    registry here: the worker runs the image from the engine that built it)."""
    document = yaml.safe_load((ROOT / DOCKER_PREFECT_FILE).read_text())
    build = next(
        step for step in document["build"] if "prefect_docker.deployments.steps.build_docker_image" in step
    )
    build["prefect_docker.deployments.steps.build_docker_image"].update(BUILD_HERE)
    document["push"] = None
    path = tmp_path / DOCKER_PREFECT_FILE
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def standin():
    """The Tableau stand-in seeded with the shipped domains' content (``devstack.demo``'s seed), whose
    marketing refreshes take an hour (the run to kill holds its PAT meanwhile)."""
    from devstack.demo import stand_in_seed
    from devstack.tableau import TableauStandIn, load_config
    from tasks.tableau.domains import load_domains

    seed = stand_in_seed(load_domains())
    for entry in seed["datasources"]:
        if entry["project"] == "Marketing":
            entry["duration_seconds"] = 3600 * 120  # an hour of real time
    seed["backgrounder_slots"] = 32  # the sales refreshes do not queue behind the marketing ones
    seed["pats"] = [{"name": pat, "secret": f"image-test-{pat}"} for pat in PATS]
    server = TableauStandIn(load_config(seed)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pat_pool(standin):
    """The shipped configuration's PAT pool block over the stand-in: three PATs, 60 s leases."""
    from blocks.tableau import TableauSite
    from devstack.demo import SITE
    from devstack.pat_pool import save_pat_pool

    site = TableauSite(server_url=standin.url, site_content_url=SITE)
    pool, _ = save_pat_pool(
        POOL_BLOCK,
        site,
        {pat: (pat, f"image-test-{pat}") for pat in PATS},
        lease_duration_seconds=LEASE_SECONDS,
    )
    return pool


@pytest.fixture(scope="module")
def landing(tmp_path_factory) -> Path:
    """A directory mounted at /data in the collection's container: its sources file (the shipped Tableau
    source, landing in /data/landing) and what it lands. Writable by the image's user (uid 10001)."""
    directory = tmp_path_factory.mktemp("metadata")
    (directory / "landing").mkdir()
    for path in (directory, directory / "landing"):
        path.chmod(0o777)
    sources = {
        "sources": {
            "tableau-local": {
                "extractor": {"kind": "tableau", "pat_pool_block": POOL_BLOCK},
                "landing": {"kind": "local", "root": "/data/landing", "landing_dir": "tableau"},
                "hwm": {"store": "file", "lag_minutes": 0, "initial_lookback_days": 1},
            }
        }
    }
    (directory / "metadata_sources.yaml").write_text(yaml.safe_dump(sources))
    return directory


@pytest.fixture(scope="module")
def deployed(docker_engine, base_image, pat_pool, prefect_api_url, tmp_path_factory):
    """The Docker work pool, the shipped Docker deployments (``prefect deploy`` builds the image) and a
    Docker worker polling the pool; yields the built image's name and tag."""
    from prefect.client.orchestration import get_client

    from deployments.automations import bootstrap_zombie_automation, zombie_flow_runs_automation
    from devstack.docker import DockerWorker

    # The automation that marks Crashed a run whose heartbeats stopped (python -m deployments.bootstrap
    # creates it, with a 90 s window): what marks a killed container's run Crashed (see the test).
    bootstrap_zombie_automation(zombie_flow_runs_automation(within_seconds=HEARTBEAT_WINDOW_SECONDS))
    with timed("work pool: prefect work-pool create --type docker"):
        prefect_cli("work-pool", "create", WORK_POOL, "--type", "docker", "--overwrite")
    prefect_file = prefect_file_here(tmp_path_factory.mktemp("deploy"))
    with timed("prefect deploy: the image's build (Dockerfile) and 7 deployments"):
        prefect_cli(
            "deploy", "--all", "--prefect-file", str(prefect_file), env={"ANALYTICS_FLOWS_IMAGE": IMAGE}
        )
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("refresh-tableau-domain/sales")
    image = deployment.job_variables["image"]
    assert image.startswith(f"{IMAGE}:"), image
    _drop_older_tags(docker_engine, image)
    home = tmp_path_factory.mktemp("docker-worker")
    with timed("Docker worker: start"):
        worker = DockerWorker(WORK_POOL, home, {"PREFECT_API_URL": prefect_api_url, **docker_engine.env()})
        worker.start()
    try:
        yield image
    finally:
        worker.stop()


def _drop_older_tags(engine, image: str) -> None:
    """Untag this test's images of earlier runs (their layers go unless the new image shares them)."""
    client = engine.client()
    try:
        for old in client.images.list(name=IMAGE):
            if image not in old.tags:
                for tag in old.tags:
                    client.images.remove(tag, noprune=False)
    finally:
        client.close()


def test_the_image_is_small_runs_as_a_non_root_user_and_has_no_build_tools(docker_engine, deployed):
    client = docker_engine.client()
    try:
        image = client.images.get(deployed)
        assert image.attrs["Size"] <= MAX_IMAGE_BYTES, f"{image.attrs['Size'] / 2**20:.0f} MB"
        assert image.attrs["Config"]["User"] == "10001:10001"
        env = dict(line.split("=", 1) for line in image.attrs["Config"]["Env"])
        assert env["ANALYTICS_FLOWS_DIR"] == "/opt/analytics-flows"  # the pull step's directory
        with timed("one container: the image's tools and imports"):
            output = client.containers.run(
                deployed,
                [
                    "sh",
                    "-c",
                    "id -u; for tool in uv pip gcc cc make; do command -v $tool; done; "
                    "python -c 'import flows.tableau.refresh, flows.metadata.collect, prefect_docker;"
                    'import importlib.util as u; print(u.find_spec("apache_beam"))\'',
                ],
                network_mode="host",
                remove=True,
            ).decode()
    finally:
        client.close()
    assert output.split() == ["10001", "None"], output  # no uv, pip or compiler on PATH; no Beam


def test_containers_refresh_a_domain_and_collect_metadata_and_a_killed_one_gives_its_pat_back(
    docker_engine, deployed, standin, pat_pool, landing
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    def audit() -> dict:
        import requests

        return requests.get(f"{standin.url}/devstack/audit", timeout=10).json()

    started = time.time()
    killed_run = run_deployment("refresh-tableau-domain/marketing", timeout=0)
    refresh_run = run_deployment("refresh-tableau-domain/sales", timeout=0)
    collect_run = run_deployment(
        "collect-metadata/metadata-tableau-prod",
        parameters={"source": "tableau-local", "sources_file": "/data/metadata_sources.yaml"},
        job_variables={"volumes": [f"{landing}:/data"]},
        timeout=0,
    )
    client = docker_engine.client()
    try:
        # The marketing run holds a PAT once its refreshes are on Tableau: kill its container then.
        wait_for(
            lambda: any(job["project"] == "Marketing" for job in audit()["jobs"]),
            timeout=600,
            interval=0.5,
            what="the marketing run's refreshes on the stand-in",
        )
        containers = client.containers.list(filters={"label": f"io.prefect.flow-run-id={killed_run.id}"})
        assert len(containers) == 1, containers
        containers[0].kill()
        killed_at = time.monotonic()
        starts = _container_starts(client, started)
    finally:
        client.close()

    with get_client(sync_client=True) as prefect:

        def state(run) -> str:
            return prefect.read_flow_run(run.id).state.type.value

        def limit(name: str) -> int:
            return prefect.read_global_concurrency_limit_by_name(name).active_slots

        wait_for(
            lambda: {state(refresh_run), state(collect_run)} <= FINISHED,
            timeout=600,
            interval=1,
            what="the refresh and the collection to finish",
        )
        TIMINGS["runs: the refresh and the collection, from their creation"] = time.time() - started
        assert state(refresh_run) == "COMPLETED", prefect.read_flow_run(refresh_run.id).state
        assert state(collect_run) == "COMPLETED", prefect.read_flow_run(collect_run.id).state
        held = time.monotonic() - killed_at
        if held < LEASE_SECONDS - 5:  # nothing gave the dead run's PAT back: only its lease's expiry will
            assert limit(pat_pool.pool_limit_name) == 1
        wait_for(
            lambda: limit(pat_pool.pool_limit_name) == 0,
            timeout=LEASE_SECONDS + 60,
            interval=0.5,
            what="the killed run's PAT lease to expire",
        )
        TIMINGS["a killed container's PAT back, from the kill"] = time.monotonic() - killed_at
        assert all(limit(name) == 0 for name in pat_pool.pat_limit_names().values())
        # prefect-docker 0.7.4 reads the exit code from the container's state before it waited for it
        # (prefect_docker/worker.py, _watch_container), so it reports a killed container's run as ended
        # well; the run stays Running until its heartbeats are missed: the automation marks it Crashed.
        wait_for(
            lambda: state(killed_run) == "CRASHED",
            timeout=HEARTBEAT_WINDOW_SECONDS + 60,
            interval=1,
            what="the killed run marked Crashed",
        )
        TIMINGS["a killed container's run Crashed, from the kill"] = time.monotonic() - killed_at
        assert ZOMBIE_CRASH_MESSAGE in prefect.read_flow_run(killed_run.id).state.message

    jobs = audit()["jobs"]
    sales = [job for job in jobs if job["project"] == "Sales"]
    assert len(sales) == 10 and all(job["finish_code"] == 0 for job in sales), sales
    landed = sorted(path.name for path in (landing / "landing" / "tableau").iterdir())
    assert landed and all(name.startswith("tableau-local_") for name in landed), landed
    assert list(landing.glob("**/tableau-local_hwm.txt")), "the collection published no high-water mark"
    # Time from a container's start to its first Tableau request (a sign-in with a PAT: the three runs
    # signed in with three different PATs, in the order their containers started).
    sign_ins = sorted(session["signed_in_at"] for session in audit()["sessions"] if session["pat"])
    first_start = min(starts.values())
    TIMINGS["container start → first Tableau sign-in (the first of 3 containers)"] = sign_ins[0] - first_start
    print(json.dumps({"container_starts": starts, "sign_ins": sign_ins}))


def _container_starts(client, since: float) -> dict[str, float]:
    """When each container started since ``since`` (unix seconds): container name → start time (the
    engine's ``start`` events)."""
    events = client.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"type": "container", "event": "start"},
        decode=True,
    )
    return {event["Actor"]["Attributes"]["name"]: event["timeNano"] / 1e9 for event in events}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "ANALYTICS_FLOWS_IMAGE is not set: set it to the image repository to build and push"),
        ("ghcr.io/acme/analytics-flows:v1", "'ghcr.io/acme/analytics-flows:v1' is not an image repository"),
    ],
)
def test_the_deploy_names_the_image_variable_when_it_is_unset_or_tagged(monkeypatch, value, message):
    from deployments.docker import IMAGE_VARIABLE, ImageNameError, image_name

    if value is None:
        monkeypatch.delenv(IMAGE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(IMAGE_VARIABLE, value)
    with pytest.raises(ImageNameError, match=re.escape(message)):
        image_name()
    monkeypatch.setenv(IMAGE_VARIABLE, "127.0.0.1:5000/analytics-flows")  # a registry's port is no tag
    assert image_name() == {"image_name": "127.0.0.1:5000/analytics-flows"}
