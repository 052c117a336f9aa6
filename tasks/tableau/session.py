"""A Tableau REST session of one run, through tableauserverclient (TSC), signed in with a PAT or with a
connected app's JWT.

Tableau facts (REST API reference, "Sign In" and error codes; "Troubleshoot Connected Apps"):
- Signing in with a PAT returns a credential token; signing in again with the same PAT ends the
  earlier session, whose token then gets 401 with code 401002. A connected app's sessions are
  independent: every sign-in has its own JWT (unique ``jti``) and its own session.
- A wrong, expired or revoked PAT, or a JWT Tableau does not accept, gets 401 with code 401001 (for a
  JWT the detail carries the connected-app error number, e.g. "(16)" LOGIN_FAILED).
- Sessions expire (Tableau Server default idle timeout: 240 minutes); the token then gets 401002.
- A request the JWT's scopes do not cover is refused with 401002 as well
  (tableau/server-client-python #1320).

While a run holds its PAT (or signs in with its own JWT) nobody else ends its session, so a 401002
can only mean expiry: the session signs in again once (a fresh JWT for a connected app) and repeats
the request. A second 401002 right after that is raised: the PAT is used outside the pool, or the
JWT lacks the scope the request needs.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import jwt
import requests
import tableauserverclient as TSC
from tableauserverclient.server.endpoint.exceptions import NotSignedInError, ServerResponseError

from blocks.tableau import TableauConnectedApp, TableauPersonalAccessToken, TableauSite

logger = logging.getLogger(__name__)
T = TypeVar("T")

SIGN_IN_FAILED = "401001"
TOKEN_INVALID = "401002"


class TableauAuthError(RuntimeError):
    """Tableau refused to sign in, or refused a request again right after a fresh sign-in."""


def error_code(exc: BaseException) -> str | None:
    """The Tableau error code (e.g. '409093') of a TSC exception, or None."""
    code = getattr(exc, "code", None)
    return str(code) if code is not None else None


@dataclass(frozen=True)
class PatCredentials:
    """Sign-ins with one PAT (its secret read at each sign-in)."""

    pat: TableauPersonalAccessToken
    block_name: str = ""

    @property
    def label(self) -> str:
        return f"PAT block {self.block_name or self.pat.token_name!r}"

    def tsc_auth(self, site: TableauSite) -> TSC.PersonalAccessTokenAuth:
        return TSC.PersonalAccessTokenAuth(
            self.pat.token_name, self.pat.read_secret(self.block_name), site_id=site.site_content_url
        )

    def refused(self, site: TableauSite, detail: str) -> str:
        return (
            f"Tableau refused PAT block {self.block_name or self.pat.token_name!r} (token name "
            f"{self.pat.token_name!r}) on site {site.site_content_url!r} of {site.server_url} with 401001"
            f"{f' ({detail.strip()})' if detail.strip() else ''}: the PAT is wrong, expired (15 days unused, "
            "or past its one-year lifetime) or revoked. Create a new PAT in Tableau and update the block."
        )

    def refused_after_fresh_sign_in(self, what: str) -> str:
        return (
            f"The credential token of PAT {self.block_name or self.pat.token_name!r} was invalidated (401002) "
            "right after signing in: something outside this PAT pool signs in with the same PAT. Give that "
            "user its own PAT."
        )


def connected_app_jwt(app: TableauConnectedApp, secret_value: str, *, now: float | None = None) -> str:
    """A JWT for one sign-in with ``app`` (direct trust), HS256 with the app's secret.

    Header: ``kid`` = secret id, ``iss`` = client id. Claims: ``iss`` (client id), ``sub`` (the user),
    ``aud`` = "tableau", ``jti`` (a fresh UUID), ``exp`` = ``now`` + ``app.token_lifetime_seconds``
    (at most 600 s: Tableau's maximum), ``scp`` (the scopes). Source: Tableau, "Configure Connected
    Apps with Direct Trust", step 3 (the JWT's registered claims and header).

    Args:
        now: epoch seconds of the signature (default: the current time).
    """
    issued = time.time() if now is None else now
    claims = {
        "iss": app.client_id,
        "sub": app.username,
        "aud": "tableau",
        "jti": str(uuid.uuid4()),
        "exp": int(issued + app.token_lifetime_seconds),
        "scp": list(app.scopes),
    }
    return jwt.encode(
        claims, secret_value, algorithm="HS256", headers={"kid": app.secret_id, "iss": app.client_id}
    )


@dataclass(frozen=True)
class ConnectedAppCredentials:
    """Sign-ins with a connected app: a fresh JWT (new ``jti``, new ``exp``) for every sign-in."""

    app: TableauConnectedApp
    block_name: str = ""

    @property
    def label(self) -> str:
        return f"Tableau Connected App block {self.block_name or self.app.client_id!r}"

    def tsc_auth(self, site: TableauSite) -> TSC.JWTAuth:
        token = connected_app_jwt(self.app, self.app.read_secret(self.block_name))
        return TSC.JWTAuth(token, site_id=site.site_content_url)

    def refused(self, site: TableauSite, detail: str) -> str:
        return (
            f"Tableau refused the JWT of {self.label} (client id {self.app.client_id!r}, user "
            f"{self.app.username!r}) on site {site.site_content_url!r} of {site.server_url} with 401001 "
            f"({detail.strip()}). Tableau's connected-app error numbers: 5 unknown user (sub), 16 login failed "
            "(exp more than 10 minutes ahead or past, unknown user, a claim Tableau does not accept), 126 "
            "connected app not found or disabled (client id), 127 secret not found (secret id or value), "
            "10083 JWT header lacks kid or iss ('Troubleshoot Connected Apps'). Check the app is enabled and "
            "the block's ids, secret and user."
        )

    def refused_after_fresh_sign_in(self, what: str) -> str:
        return (
            f"Tableau refused {what} with 401002 right after a fresh sign-in with {self.label}: the JWT's "
            f"scopes {list(self.app.scopes)} do not cover it (Tableau answers a request outside the scopes "
            "with 401002). Add the scope to the block's scopes; the refresh needs tableau:content:read, "
            "tableau:tasks:run, tableau:jobs:read and tableau:jobs:update."
        )


Credentials = PatCredentials | ConnectedAppCredentials


class TableauSession:
    """One signed-in TSC ``Server`` for one run, shared by its threads.

    Use as a context manager: signs in on enter, signs out on exit. Run every REST call through
    :meth:`call`, which re-signs in once when the token turns out to be expired (401002).

    Args:
        site: the Tableau site.
        credentials: ``PatCredentials`` or ``ConnectedAppCredentials``; a bare
            ``TableauPersonalAccessToken`` is taken as ``PatCredentials(pat, pat_block_name)``.
        pat_block_name: the PAT block's name, for messages (with a bare PAT only).

    Attributes:
        server: the signed-in ``tableauserverclient.Server``.
        sign_ins: number of sign-ins made so far (1, plus one per expiry).
    """

    def __init__(
        self,
        site: TableauSite,
        credentials: Credentials | TableauPersonalAccessToken,
        pat_block_name: str = "",
    ):
        if isinstance(credentials, TableauPersonalAccessToken):
            credentials = PatCredentials(credentials, pat_block_name)
        self.site = site
        self.credentials = credentials
        self.server = TSC.Server(
            site.server_url, use_server_version=False, session_factory=self._http_session
        )
        self.server.add_http_options(site.http_options(owner=f"Tableau site of {credentials.label}"))
        self.sign_ins = 0
        self._generation = 0
        self._lock = threading.Lock()
        self._answers = threading.local()

    def _http_session(self) -> requests.Session:
        """TSC's HTTP session, with a hook that keeps each thread's last Retry-After header (TSC's
        errors carry only the response body)."""
        session = requests.Session()
        session.hooks["response"].append(self._keep_retry_after)
        return session

    def _keep_retry_after(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        if response.status_code == 429:
            self._answers.retry_after = response.headers.get("Retry-After")

    def last_retry_after(self) -> str | None:
        """The Retry-After header of the last 429 this thread received, if it had one."""
        return getattr(self._answers, "retry_after", None)

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
        except Exception as exc:  # the run ends either way; the session times out by itself
            logger.warning("Sign-out of %s failed: %s", self.credentials.label, exc)

    def _sign_in(self) -> None:
        try:
            self.server.auth.sign_in(self.credentials.tsc_auth(self.site))
        except (ServerResponseError, NotSignedInError) as exc:
            if error_code(exc) == SIGN_IN_FAILED:
                raise TableauAuthError(
                    self.credentials.refused(self.site, getattr(exc, "detail", ""))
                ) from None
            raise
        self.sign_ins += 1
        self._generation += 1

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Call a TSC endpoint method; on 401002 sign in again once and repeat the call.

        Raises:
            TableauAuthError: refused again right after a fresh sign-in.
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
                logger.info(
                    "Credential token of %s expired (401002); signing in again", self.credentials.label
                )
                self._sign_in()
            fresh = self._generation
        try:
            return fn(*args, **kwargs)
        except NotSignedInError as exc:
            if error_code(exc) == TOKEN_INVALID and self._generation == fresh:
                what = getattr(fn, "__qualname__", repr(fn))
                raise TableauAuthError(self.credentials.refused_after_fresh_sign_in(what)) from None
            raise
