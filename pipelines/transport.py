"""Where a plaintext (``http://``) endpoint is allowed: a loopback host only — a stand-in or an emulator on
this machine. Anything else takes TLS. Imports neither Beam nor Prefect (flows, tasks, blocks and the
pipelines' workers share it)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_to_another_host(url: str) -> bool:
    """True when ``url`` is ``http://`` to a host that is not loopback (to refuse, naming the setting)."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback(parts.hostname or "")
