"""The HTTP response value the stand-in's endpoints (`server`) and its fault injection (`faults`) return;
in a module of its own so that `faults` need not import `server`, which imports it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, body (JSON unless empty) and extra headers."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def _json(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(data), headers or {})
