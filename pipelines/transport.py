"""Where an endpoint may be reached without TLS, or without checking its TLS certificate: a loopback host
only — a stand-in or an emulator on this machine — unless the block (or configuration) that names the
endpoint says ``allow_insecure_transport: true``. Anything else takes ``https://`` with verification.

The one place for that rule: blocks and tasks refuse an insecure endpoint with ``check_transport`` when
they are built, and log ``warn_insecure_transport`` each time they make a client for an endpoint they
were allowed to reach insecurely. URLs in messages and logs go through ``url_without_credentials``.
Imports neither Beam nor Prefect (flows, tasks, blocks and the pipelines' workers share it).
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit, urlunsplit

#: The field (or configuration key) that accepts an insecure endpoint to a host that is not loopback.
ALLOW_INSECURE_TRANSPORT = "allow_insecure_transport"
#: Its description, shared by every block that has it.
ALLOW_INSECURE_TRANSPORT_DESCRIPTION = (
    "Accept a plaintext http:// endpoint, or TLS without certificate verification, on a host that is not "
    "loopback: what is sent there, credentials included, is then not protected in transit. A warning naming "
    "the block and the endpoint is logged each time a connection is set up. Off (the default): such an "
    "endpoint is refused. Loopback hosts (localhost, 127.0.0.0/8, ::1) never need it."
)

_logger = logging.getLogger(__name__)


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


def url_without_credentials(url: str) -> str:
    """``url`` fit for a message or a log: without ``user:password@``, query string and fragment (which
    may carry a token, e.g. a SAS signature). ``http://u:p@crm.example.com/v1?sig=x`` →
    ``http://crm.example.com/v1``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def insecure_transport(url: str, verify: bool | str = True) -> str | None:
    """What makes reaching ``url`` insecure when its host is not loopback, or None.

    Args:
        url: the endpoint, ``http(s)://host[:port][/path]``.
        verify: the client's TLS verification setting: True, False, or a CA bundle's path (verified).

    Returns:
        ``"plaintext http://"``, ``"TLS certificate verification turned off"`` (``verify`` is False), or
        None: ``https://`` with verification, or a loopback host.
    """
    parts = urlsplit(url)
    if is_loopback(parts.hostname or ""):
        return None
    if parts.scheme == "http":
        return "plaintext http://"
    if verify is False:
        return "TLS certificate verification turned off"
    return None


def check_transport(
    url: str,
    *,
    owner: str,
    field: str,
    allow_insecure: bool,
    verify: bool | str = True,
    verify_field: str = "verify",
) -> str | None:
    """Refuse an insecure endpoint (``insecure_transport``) unless ``allow_insecure`` accepts it.

    Args:
        url: the endpoint.
        owner: what names it, for the message: a block type (``"Vault KV Secret"``) or a configuration.
        field: the field holding ``url``.
        allow_insecure: the owner's ``allow_insecure_transport``.
        verify: the owner's TLS verification setting (True, False or a CA bundle's path).
        verify_field: the field holding ``verify``.

    Returns:
        Why the endpoint is insecure when ``allow_insecure`` accepted it; None for a secure or loopback one.

    Raises:
        ValueError: the endpoint is insecure and not allowed. The message names the owner, the fields, the
            URL without credentials, and the fixes (https:// or verification, or ``allow_insecure_transport:
            true``).
    """
    reason = insecure_transport(url, verify)
    if reason is None or allow_insecure:
        return reason
    shown = url_without_credentials(url)
    host = urlsplit(url).hostname or "(no host)"
    if reason == "plaintext http://":
        problem = (
            f"{field} {shown!r} is plaintext http:// to {host}, which is not a loopback host: what is sent "
            "there, credentials included, would cross the network unencrypted"
        )
        fix = f"Use https:// in {field}"
    else:
        problem = (
            f"{verify_field} is false for {field} {shown!r} ({host} is not a loopback host): without checking "
            "the server's TLS certificate, anyone on the network path can pose as it and receive the credentials"
        )
        fix = f"Set {verify_field} to true"
    raise ValueError(
        f"{owner}: {problem}. {fix}; or, to accept that risk, set {ALLOW_INSECURE_TRANSPORT}: true "
        "(a warning is then logged each time a connection is set up). Loopback hosts need neither."
    )


def warn_insecure_transport(
    url: str,
    *,
    owner: str,
    verify: bool | str = True,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> bool:
    """Log a warning when ``url`` is insecure (``insecure_transport``): call it each time a client or
    connection is set up for an endpoint that ``allow_insecure_transport`` accepted.

    Args:
        url: the endpoint; logged without credentials, query string or fragment.
        owner: the block (type and name, e.g. ``"Vault KV Secret block 'crm-api-key'"``) using it.
        verify: the client's TLS verification setting.
        logger: where to log (e.g. the run's logger); default this module's logger.

    Returns:
        True when the warning was logged.
    """
    reason = insecure_transport(url, verify)
    if reason is None:
        return False
    (logger or _logger).warning(
        "%s connects to %s with %s (%s: true): what it sends there, credentials included, is not "
        "protected in transit; use https:// with certificate verification.",
        owner,
        url_without_credentials(url),
        reason,
        ALLOW_INSECURE_TRANSPORT,
    )
    return True
