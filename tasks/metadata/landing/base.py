"""The landing targets' common part: ``LandingTarget``, ``LandedFile``, ``LandingError``, key helpers and
``_Target``, the upload-then-verify and error translation every target shares (see ``tasks.metadata.landing``).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

#: What went wrong, for callers that react differently (e.g. retry on "connection").
Reason = Literal["permission", "credentials", "not_found", "connection", "verification", "error"]

_TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class LandedFile:
    """A file stored in a landing directory and verified.

    Attributes:
        name: its name inside the landing directory, as passed to ``upload``.
        uri: where it is, without credentials: ``s3://bucket/key``, ``gs://bucket/key``,
            ``https://account.blob.core.windows.net/container/key`` or ``file:///path``.
        bytes: its size in bytes (local file = stored object).
    """

    name: str
    uri: str
    bytes: int


class LandingError(RuntimeError):
    """Storing, verifying or reading a file in a landing target failed.

    The message says what was attempted on which object, why it failed and what to do; it never holds a
    SAS token or a key.

    Attributes:
        target: the target's ``describe()``.
        file: the file's name (upload) or key (``read_text``/``write_text``).
        reason: ``"permission"``, ``"credentials"``, ``"not_found"``, ``"connection"``,
            ``"verification"`` or ``"error"``.
    """

    def __init__(self, message: str, *, target: str, file: str, reason: Reason):
        super().__init__(message)
        self.target = target
        self.file = file
        self.reason = reason


@runtime_checkable
class LandingTarget(Protocol):
    """A landing directory in some storage; see the ``tasks.metadata.landing`` package docstring."""

    #: the landing directory, relative to the target's root, e.g. ``catalog/athena/landing``.
    landing_dir: str

    def upload(self, local_path: Path, name: str) -> LandedFile:
        """Write ``local_path`` to ``<landing_dir>/<name>`` (overwriting), then verify it exists with the
        local file's size. Raises ``LandingError``, or ``FileNotFoundError`` if ``local_path`` is missing."""
        ...

    def read_text(self, key: str) -> str | None:
        """The UTF-8 text at ``key`` (from the target's root), or None if there is no such file."""
        ...

    def write_text(self, key: str, text: str) -> None:
        """Write ``text`` (UTF-8) to ``key`` (from the target's root), overwriting."""
        ...

    def describe(self) -> str:
        """Where the landing directory is, e.g. ``s3://bucket/catalog/athena/landing``."""
        ...

    def uri(self, key: str) -> str:
        """Where ``key`` (from the target's root) is, e.g. ``s3://bucket/catalog/athena/athena_hwm.txt``."""
        ...


# --- keys ------------------------------------------------------------------------------------------


def _clean_key(key: str, what: str, *, allow_empty: bool = False) -> str:
    """``key`` without empty and ``.`` segments; ValueError for ``..``, backslashes or (unless allowed) nothing."""
    if "\\" in key:
        raise ValueError(f"{what} {key!r}: separate path segments with '/', not '\\'")
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"{what} {key!r} must not contain '..': keys stay inside the landing target")
    if not parts and not allow_empty:
        raise ValueError(f"{what} must name a file, got {key!r}")
    return "/".join(parts)


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def _content_type(name: str) -> str:
    kind, encoding = mimetypes.guess_type(name)
    if encoding == "gzip":
        return "application/gzip"
    if encoding:
        return "application/octet-stream"
    return kind or "application/octet-stream"


# --- the shared protocol -----------------------------------------------------------------------------


class _Target:
    """Upload-then-verify and error translation shared by the targets.

    A subclass implements the storage calls on keys relative to the target's root (``_put_file``,
    ``_stored_size``, ``_get_text``, ``_put_text``), ``_uri(key)``, and the error mapping
    (``_service_errors``, ``_explain``).
    """

    #: chain the storage client's exception as ``__cause__`` (False where its text may carry a secret).
    _chain_cause = True

    def __init__(self, landing_dir: str):
        self.landing_dir = _clean_key(landing_dir, "landing_dir", allow_empty=True)

    def uri(self, key: str) -> str:
        """Where ``key`` (from the target's root) is: a URI, for logs and errors."""
        return self._uri(_clean_key(key, "key"))

    # storage calls, implemented per target
    def _uri(self, key: str) -> str:
        raise NotImplementedError

    def _put_file(self, local_path: Path, key: str, content_type: str) -> None:
        raise NotImplementedError

    def _stored_size(self, key: str) -> int | None:
        raise NotImplementedError

    def _get_text(self, key: str) -> str | None:
        raise NotImplementedError

    def _put_text(self, key: str, text: str) -> None:
        raise NotImplementedError

    def _service_errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _explain(self, exc: BaseException) -> tuple[Reason, str, str]:
        """(reason, what went wrong, what to do) for a storage exception; never containing a secret."""
        raise NotImplementedError

    # the protocol
    def describe(self) -> str:
        return self._uri(self.landing_dir)

    def upload(self, local_path: Path, name: str) -> LandedFile:
        key = _join(self.landing_dir, _clean_key(name, "name"))
        local_path = Path(local_path)
        size = local_path.stat().st_size
        uri = self._uri(key)
        try:
            self._put_file(local_path, key, _content_type(key))
            stored = self._stored_size(key)
        except LandingError:
            raise
        except self._service_errors() as exc:
            raise self._error(exc, f"upload {local_path} to {uri}", name) from (
                exc if self._chain_cause else None
            )
        if stored is None:
            raise LandingError(
                f"Uploaded {local_path} to {uri}, but it is not there when checked right after the upload. "
                "Look for a lifecycle rule or another process removing files from the landing directory, "
                "then rerun the collector (it uploads the same window again).",
                target=self.describe(),
                file=name,
                reason="verification",
            )
        if stored != size:
            raise LandingError(
                f"Uploaded {local_path} ({size} bytes) to {uri}, but the stored file has {stored} bytes: "
                "the upload was cut short or another writer replaced the file. Rerun the collector (it "
                "uploads the same window again); make sure one collector at a time writes this landing "
                "directory.",
                target=self.describe(),
                file=name,
                reason="verification",
            )
        return LandedFile(name=name, uri=uri, bytes=size)

    def read_text(self, key: str) -> str | None:
        key = _clean_key(key, "key")
        return self._call(lambda: self._get_text(key), f"read {self._uri(key)}", key)

    def write_text(self, key: str, text: str) -> None:
        key = _clean_key(key, "key")
        self._call(lambda: self._put_text(key, text), f"write {self._uri(key)}", key)

    def _call(self, operation: Callable[[], Any], action: str, key: str) -> Any:
        try:
            return operation()
        except LandingError:
            raise
        except self._service_errors() as exc:
            raise self._error(exc, action, key) from (exc if self._chain_cause else None)

    def _error(self, exc: BaseException, action: str, file: str) -> LandingError:
        reason, problem, todo = self._explain(exc)
        return LandingError(
            f"Could not {action}: {problem}. {todo}", target=self.describe(), file=file, reason=reason
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"
