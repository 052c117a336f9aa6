"""The Docker side of the local stack, for the image tests (tests/image, ``make test-image``): an engine
(``engine.py``: the running one, or Debian's ``dockerd`` on vfs with the host's network), the
Dockerfile's base image built from Debian's packages where no registry is reachable
(``base_image.py``), and a Docker worker (``worker.py``)."""

from devstack.docker.base_image import BASE_IMAGE, BaseImageError, ensure_base_image
from devstack.docker.engine import DockerEngine, DockerEngineError
from devstack.docker.worker import DockerWorker

__all__ = [
    "BASE_IMAGE",
    "BaseImageError",
    "DockerEngine",
    "DockerEngineError",
    "DockerWorker",
    "ensure_base_image",
]
