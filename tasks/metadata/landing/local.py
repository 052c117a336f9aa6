"""``LocalLanding``: a landing directory under a local (or mounted) directory (see ``tasks.metadata.landing``)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tasks.metadata.landing.base import LandingError, Reason, _Target

_COPY_BUFFER_BYTES = 1024 * 1024


class LocalLanding(_Target):
    """A landing directory under a local (or mounted) root directory.

    The root must exist: it is not created, so that an unmounted share fails instead of filling the
    local disk; the landing directory below it is created. Files are written to a hidden temporary file
    (``.<name>.<random>.tmp``) in the same directory, flushed to disk and renamed over the target, so a
    reader never sees a partial file; verification: ``stat().st_size``.
    """

    def __init__(self, root: str | os.PathLike[str], landing_dir: str):
        super().__init__(landing_dir)
        self.root = Path(root).expanduser().absolute()

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def _uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def describe(self) -> str:
        return str(self._path(self.landing_dir))

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise LandingError(
                f"The landing root {self.root} does not exist or is not a directory: create or mount it "
                "(it is not created automatically, so that an unmounted share fails loudly).",
                target=self.describe(),
                file=str(self.root),
                reason="not_found",
            )

    def _write_atomically(self, path: Path, write: Callable[[IO[bytes]], None]) -> None:
        self._check_root()
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(temporary, "xb") as out:  # honours the umask, unlike mkstemp's 0600
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename durable
        finally:
            os.close(directory)

    def _put_file(self, local_path: Path, key: str, content_type: str) -> None:
        with open(local_path, "rb") as source:
            self._write_atomically(
                self._path(key), lambda out: shutil.copyfileobj(source, out, _COPY_BUFFER_BYTES)
            )

    def _stored_size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def _get_text(self, key: str) -> str | None:
        self._check_root()
        try:
            return self._path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _put_text(self, key: str, text: str) -> None:
        self._write_atomically(self._path(key), lambda out: out.write(text.encode("utf-8")))

    def _service_errors(self) -> tuple[type[BaseException], ...]:
        return (OSError,)

    def _explain(self, exc: BaseException) -> tuple[Reason, str, str]:
        if isinstance(exc, PermissionError):
            return (
                "permission",
                f"permission denied ({exc})",
                f"Let the user running the flow (uid {os.getuid()}) write to {self.root} and below.",
            )
        return (
            "error",
            f"{type(exc).__name__}: {exc}",
            f"Check the file system under {self.root} (space, mounts).",
        )
