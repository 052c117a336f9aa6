"""A Docker worker: ``prefect worker start --type docker`` in a subprocess, for the image tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Self

from devstack.multihost import WorkerHost


class DockerWorker(WorkerHost):
    """``prefect worker start --pool POOL --type docker --name NAME``, polling every second, its output in
    ``<home>/worker.log`` (``devstack.multihost.WorkerHost``'s lifecycle); a context manager that stops
    it on exit. Containers it started live on after ``stop()`` (as after a worker restart); the test's
    engine stops them.

    Args:
        pool: the work pool (type ``docker``; the worker creates it if it is missing).
        home: its ``PREFECT_HOME`` and log.
        env: added to its environment: the Prefect API (``PREFECT_API_URL``) and the engine
            (``DOCKER_HOST``); the worker hands ``PREFECT_API_URL`` to the containers it starts.
        name: the worker's name in the Prefect UI.
    """

    def __init__(self, pool: str, home: Path, env: Mapping[str, str], *, name: str = "docker-worker"):
        super().__init__(name, pool, home, {"PREFECT_WORKER_QUERY_SECONDS": "1", **env}, worker_type="docker")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
