"""The Dockerfile's base image, built here from Debian's packages when the engine does not have it.

The Dockerfile names the public image teams pull (``python:3.11-slim-bookworm``). Where no image
registry is reachable, ``ensure_base_image`` builds a stand-in of it: ``debootstrap --variant=minbase
bookworm`` plus Debian's ``python3.11``, then ``python3.11-venv`` with apt (the official image has
``venv`` and ``pip`` too), without apt's lists, caches and documentation, imported as that tag. The stand-in trusts
the certificate authorities this host trusts (its ``/etc/ssl/certs/ca-certificates.crt``, e.g. a
TLS-inspecting proxy's CA) and points pip and uv at that bundle, so that the image's build reaches
PyPI as the host does. The root file system's archive is kept under the engine's state directory
between runs on one machine; it is made again whenever it is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

#: The Dockerfile's ``PYTHON_IMAGE`` default.
BASE_IMAGE = "python:3.11-slim-bookworm"
SUITE = "bookworm"
PACKAGES = ("python3.11", "ca-certificates")
#: Installed with apt in the new root file system afterwards: in debootstrap's ``--include`` its
#: configuration fails (its postinst needs the base system configured first).
LATER_PACKAGES = ("python3.11-venv",)
#: Debian's mirror (``DEBIAN_MIRROR`` to use another).
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: What the stand-in leaves out: apt's package lists and caches, documentation, translations.
PRUNED = ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man", "usr/share/locale")
#: The image's configuration (``docker import --change``), as the official image's where it matters.
CHANGES = (
    "ENV LANG=C.UTF-8",
    f"ENV SSL_CERT_FILE={HOST_CA_BUNDLE}",
    f"ENV PIP_CERT={HOST_CA_BUNDLE}",
    'CMD ["python3.11"]',
    "LABEL org.analytics-flows.base-image=debootstrap",
)


class BaseImageError(RuntimeError):
    """The stand-in base image could not be built (debootstrap or apt failed, or not root)."""


def recipe() -> str:
    """A digest of what the root file system is made of (suite, packages, mirror, the host's CAs): the
    cached archive's name, so that a change makes a new one."""
    digest = hashlib.sha256(repr((SUITE, PACKAGES, LATER_PACKAGES, MIRROR, PRUNED, CHANGES)).encode())
    if HOST_CA_BUNDLE.exists():
        digest.update(HOST_CA_BUNDLE.read_bytes())
    return digest.hexdigest()[:16]


def rootfs_archive(cache_dir: Path) -> Path:
    """The root file system as a tar archive, from ``cache_dir`` or made by debootstrap (a minute or
    two: it downloads and unpacks ~50 MB of packages).

    Raises:
        BaseImageError: not root, debootstrap missing, or a command failed (with its output).
    """
    archive = cache_dir / f"debian-{SUITE}-python3.11-{recipe()}.tar"
    if archive.exists():
        return archive
    if os.geteuid() != 0:
        raise BaseImageError(f"building {BASE_IMAGE} with debootstrap needs root; or pull the image")
    if shutil.which("debootstrap") is None:
        raise BaseImageError("debootstrap is not installed: `make test-image` installs Debian's package")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=cache_dir) as work:
        rootfs = Path(work) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                MIRROR,
            ]
        )
        _run(
            [
                "chroot",
                str(rootfs),
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                *LATER_PACKAGES,
            ],
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        for pruned in PRUNED:
            for child in (rootfs / pruned).glob("*"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if HOST_CA_BUNDLE.exists():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / HOST_CA_BUNDLE.relative_to("/"))
        partial = Path(work) / "rootfs.tar"
        with tarfile.open(partial, "w") as tar:
            tar.add(rootfs, arcname=".")
        os.replace(partial, archive)
    for stale in cache_dir.glob(f"debian-{SUITE}-python3.11-*.tar"):
        if stale != archive:
            stale.unlink()
    return archive


def ensure_base_image(client, cache_dir: Path, tag: str = BASE_IMAGE) -> str:
    """The id of ``tag`` in the engine of ``client`` (a ``docker.DockerClient``): the image already
    there (pulled, or imported by an earlier run), else the stand-in imported from ``rootfs_archive``.

    Raises:
        BaseImageError: the stand-in could not be built.
    """
    import docker

    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        pass
    archive = rootfs_archive(cache_dir)
    repository, image_tag = tag.rsplit(":", 1)
    client.api.import_image(src=str(archive), repository=repository, tag=image_tag, changes=list(CHANGES))
    return client.images.get(tag).id


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if done.returncode:
        output = (done.stdout + done.stderr)[-3000:]
        raise BaseImageError(f"{' '.join(argv)} failed ({done.returncode}):\n{output}")
