"""The deployments of ``prefect.docker.yaml``: the same deployments as ``prefect.yaml``, run from the
project's image on a Docker work pool (docs/deploy.md).

Its generated sections are written by the commands that write ``prefect.yaml``'s
(``python -m deployments.domains``, ``python -m deployments.metadata``; ``deployments.generated``):
each domain and source stays configured in one place. This module names the file and holds the build
step that names the image.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The Docker pool's deployments, beside ``prefect.yaml`` (``prefect deploy --prefect-file prefect.docker.yaml``).
DOCKER_PREFECT_FILE = "prefect.docker.yaml"
#: The work pool of ``prefect.docker.yaml`` (type ``docker``), one work queue per job.
WORK_POOL = "analytics-flows-docker"
#: The environment variable naming the image repository ``prefect deploy`` builds and pushes.
IMAGE_VARIABLE = "ANALYTICS_FLOWS_IMAGE"


class ImageNameError(RuntimeError):
    """``prefect deploy`` was not told which image repository to build and push."""


def docker_prefect_file(prefect_yaml: Path) -> Path:
    """The Docker pool's prefect file beside ``prefect_yaml`` (which may not exist)."""
    return prefect_yaml.with_name(DOCKER_PREFECT_FILE)


def image_name(variable: str = IMAGE_VARIABLE) -> dict[str, str]:
    """The image repository to build and push, from the environment variable ``variable``: a build
    step of ``prefect.docker.yaml`` (``deployments.docker.image_name``), whose output
    ``{{ image.image_name }}`` the prefect-docker steps take.

    prefect-docker's ``build_docker_image`` given ``{{ $ANALYTICS_FLOWS_IMAGE }}`` unset gets an empty
    name and fails on Docker's tag call; this step says what is missing instead.

    Returns:
        ``{"image_name": <registry/repository>}``, e.g. ``{"image_name": "ghcr.io/acme/analytics-flows"}``.

    Raises:
        ImageNameError: ``variable`` is unset or empty, or holds a tag or white space; the message names
            the variable and gives an example.
    """
    value = os.environ.get(variable, "").strip()
    example = (
        f"{variable}=ghcr.io/acme/analytics-flows prefect deploy --prefect-file {DOCKER_PREFECT_FILE} --all"
    )
    if not value:
        raise ImageNameError(
            f"{variable} is not set: set it to the image repository to build and push (registry and "
            f"repository, no tag: each deploy tags the image with its time), e.g. `{example}`."
        )
    last = value.rsplit("/", 1)[-1]
    if ":" in last or "@" in last or any(char.isspace() for char in value):
        raise ImageNameError(
            f"{variable}={value!r} is not an image repository: give the registry and repository without "
            f"tag or digest (each deploy tags the image with its time), e.g. `{example}`."
        )
    return {"image_name": value}
