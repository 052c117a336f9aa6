"""A Tableau REST session held for the length of a PAT lease, through tableauserverclient (TSC).

Tableau facts (REST API reference, "Sign In" and error codes):
- Signing in with a PAT returns a credential token; signing in again with the same PAT ends the
  earlier session, whose token then gets 401 with code 401002.
- A wrong, expired or revoked PAT gets 401 with code 401001.
- Sessions expire (Tableau Server default idle timeout: 240 minutes); the token then gets 401002.

While the PAT is leased nobody else signs in with it, so a 401002 can only mean expiry: the
session signs in again once and repeats the request. A second 401002 right after a fresh
sign-in means the PAT is used outside the pool, and is raised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import tableauserverclient as TSC
from tableauserverclient.server.endpoint.exceptions import NotSignedInError, ServerResponseError

from blocks.tableau import TableauPersonalAccessToken, TableauSite

logger = logging.getLogger(__name__)
T = TypeVar("T")

SIGN_IN_FAILED = "401001"
TOKEN_INVALID = "401002"


class TableauAuthError(RuntimeError):
    """Tableau refused to sign in with a PAT, or a token was invalidated by a foreign sign-in."""


def error_code(exc: BaseException) -> str | None:
    """The Tableau error code (e.g. '409093') of a TSC exception, or None."""
    code = getattr(exc, "code", None)
    return str(code) if code is not None else None


class TableauSession:
    """One signed-in TSC ``Server`` for one PAT, shared by the threads of one domain run.

    Use as a context manager: signs in on enter, signs out on exit. Run every REST call through
    :meth:`call`, which re-signs in once when the token turns out to be expired (401002).

    Attributes:
        server: the signed-in ``tableauserverclient.Server``.
        sign_ins: number of sign-ins made so far (1, plus one per expiry).
    """

    def __init__(self, site: TableauSite, pat: TableauPersonalAccessToken, pat_block_name: str = ""):
        self.site = site
        self._pat = pat
        self._pat_label = pat_block_name or pat.token_name
        self.server = TSC.Server(site.server_url, use_server_version=False)
        self.server.add_http_options({"verify": site.verify_ssl, "timeout": site.request_timeout_seconds})
        self.sign_ins = 0
        self._generation = 0
        self._lock = threading.Lock()

    def __enter__(self) -> TableauSession:
        if self.site.api_version:
            self.server.version = self.site.api_version
        else:
            self.server.use_server_version()
        self._sign_in()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.server.auth.sign_out()
        except Exception as exc:  # the lease is released either way; the session times out by itself
            logger.warning("Sign-out with PAT %r failed: %s", self._pat_label, exc)

    def _sign_in(self) -> None:
        auth = TSC.PersonalAccessTokenAuth(
            self._pat.token_name,
            self._pat.token_secret.get_secret_value(),
            site_id=self.site.site_content_url,
        )
        try:
            self.server.auth.sign_in(auth)
        except (ServerResponseError, NotSignedInError) as exc:
            if error_code(exc) == SIGN_IN_FAILED:
                raise TableauAuthError(
                    f"Tableau refused PAT block {self._pat_label!r} (token name {self._pat.token_name!r}) "
                    f"on site {self.site.site_content_url!r} of {self.site.server_url} with 401001: the PAT "
                    "is wrong, expired (15 days unused, or past its one-year lifetime) or revoked. "
                    "Create a new PAT in Tableau and update the block."
                ) from None
            raise
        self.sign_ins += 1
        self._generation += 1

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Call a TSC endpoint method; on 401002 sign in again once and repeat the call.

        Raises:
            TableauAuthError: the token was invalidated again right after a fresh sign-in.
            tableauserverclient errors: anything else, unchanged.
        """
        generation = self._generation
        try:
            return fn(*args, **kwargs)
        except NotSignedInError as exc:
            if error_code(exc) != TOKEN_INVALID:
                raise
        with self._lock:
            # Another thread may already have signed in again for the same expiry.
            if self._generation == generation:
                logger.info("Credential token of PAT %r expired (401002); signing in again", self._pat_label)
                self._sign_in()
            fresh = self._generation
        try:
            return fn(*args, **kwargs)
        except NotSignedInError as exc:
            if error_code(exc) == TOKEN_INVALID and self._generation == fresh:
                raise TableauAuthError(
                    f"The credential token of PAT {self._pat_label!r} was invalidated (401002) right after "
                    "signing in: something outside this PAT pool signs in with the same PAT. Give that "
                    "user its own PAT."
                ) from None
            raise
