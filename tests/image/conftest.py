"""The image tests (``make test-image``): the project's Docker image and its Docker work pool on a real
Docker engine. They take minutes (a base image, a build on ``vfs``), so they run only when named on
the command line (``pytest tests/image``): ``make test`` and ``make test-end-to-end`` collect nothing
here. The session's Prefect server (tests/conftest.py) serves them; the engine is the machine's, or
Debian's ``dockerd`` started and stopped here (``devstack.docker``).

At the end, the run prints how long each part took (engine, base image, build, runs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
#: Seconds each part took, in order, printed at the end of the run.
TIMINGS: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: needs a Docker engine and builds the image (make test-image)")


def _named(config: pytest.Config) -> bool:
    """True when a path on the command line is this directory or inside it."""
    paths = [Path(config.invocation_params.dir, arg.split("::")[0]).resolve() for arg in config.args]
    return any(path == HERE or path.is_relative_to(HERE) for path in paths)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave the image tests out of a run that does not name them (``make test``)."""
    if collection_path.name.startswith("test_") and not _named(config):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.image)


@contextmanager
def timed(part: str) -> Iterator[None]:
    """Record how long the block took as ``part`` (printed at the end of the run)."""
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[part] = time.monotonic() - start


def pytest_terminal_summary(terminalreporter) -> None:
    if TIMINGS:
        terminalreporter.section("image tests: time of each part (s)")
        for part, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f}  {part}")


@pytest.fixture(scope="session")
def docker_engine():
    """The Docker engine (``devstack.docker.DockerEngine``), ``DOCKER_HOST`` set for this process and its
    children (``prefect deploy``'s build step, the worker); stopped at the end if started here."""
    from devstack.docker import DockerEngine

    with timed("Docker engine: start (or find the running one)"):
        engine = DockerEngine().start()
    previous = os.environ.get("DOCKER_HOST")
    os.environ.update(engine.env())
    try:
        yield engine
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        with timed("Docker engine: stop"):
            engine.stop()


@pytest.fixture(scope="session")
def base_image(docker_engine) -> str:
    """The Dockerfile's base image in the engine: already there, or built from Debian's packages."""
    from devstack.docker import ensure_base_image

    client = docker_engine.client()
    try:
        with timed("base image (debootstrap + import, or found in the engine)"):
            return ensure_base_image(client, docker_engine.state_dir / "cache")
    finally:
        client.close()
