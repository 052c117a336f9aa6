"""``VaultKvClient``: the talking to HashiCorp Vault for a ``VaultKvSecret`` block — log in (token,
Kubernetes or AppRole auth), read one key of a KV version 2 secret through ``hvac``, and say what went
wrong as ``blocks.secrets.SecretSourceError`` and its subclasses, never quoting a token, a service account
JWT or an AppRole secret ID.

The block (``blocks.crm_export.vault``) holds the settings and makes a client with ``get_client()``, as
prefect-aws's ``AwsCredentials`` holds credentials and makes the boto3 clients that talk to AWS. The Vault
API it relies on: https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2#read-secret-version,
https://developer.hashicorp.com/vault/api-docs/auth/kubernetes#login and
https://developer.hashicorp.com/vault/api-docs/auth/approle#login-with-approle.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Literal, Protocol

import hvac
import hvac.exceptions
import requests
from pydantic import SecretStr

from blocks.secrets import (
    SecretAccessDeniedError,
    SecretAuthError,
    SecretKeyError,
    SecretNotFoundError,
    SecretSourceError,
    SecretTypeError,
    SecretUnavailableError,
)
from pipelines.transport import url_without_credentials

logger = logging.getLogger(__name__)

VAULT_KV_V2_API_DOC = "https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2#read-secret-version"


class VaultKvSettings(Protocol):
    """Where the secret is and how to log in: the fields of a ``VaultKvSecret`` block (which see)."""

    url: str
    namespace: str | None
    mount_point: str
    path: str
    key: str
    version: int | None
    auth_method: Literal["token", "kubernetes", "approle"]
    token: SecretStr | None
    kubernetes_role: str | None
    kubernetes_jwt_path: str
    kubernetes_mount_point: str
    approle_role_id: str | None
    approle_secret_id: SecretStr | None
    approle_mount_point: str
    verify: bool | str
    timeout_seconds: float


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class VaultKvClient(contextlib.AbstractContextManager):
    """One session with Vault for the secret ``settings`` name: ``read()`` logs in and returns the value of
    its key. Close it (or use it in a ``with`` block) to release its connections.

    The hvac client gets the block's token (auth method ``token``) or an empty one, which keeps hvac from
    picking up ``VAULT_TOKEN`` or ``~/.vault-token`` for a login.
    """

    def __init__(self, settings: VaultKvSettings) -> None:
        self.settings = settings
        token = (
            settings.token.get_secret_value() if settings.auth_method == "token" and settings.token else ""
        )
        self._hvac = hvac.Client(
            url=settings.url,
            token=token,
            namespace=settings.namespace,
            verify=settings.verify,
            timeout=settings.timeout_seconds,
        )

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._hvac.adapter.close()

    # -- public API --

    def read(self) -> str:
        """Log in, read the secret and return the value of its key (``VaultKvSecret.get`` says what it
        raises)."""
        self.login()
        return self._extract(self._read_secret())

    def login(self) -> None:
        """Log in with the Kubernetes or AppRole auth method (the token method needs none); raises
        ``SecretAuthError`` naming the method and role, or what ``_translate_other`` makes of the rest."""
        if self.settings.auth_method == "token":
            return
        jwt = ""
        try:
            if self.settings.auth_method == "kubernetes":
                mount, hint = self.settings.kubernetes_mount_point, self._kubernetes_hint()
                jwt = self._read_jwt()
                self._hvac.auth.kubernetes.login(self.settings.kubernetes_role, jwt, mount_point=mount)
            else:
                mount, hint = self.settings.approle_mount_point, self._approle_hint()
                secret_id = self.settings.approle_secret_id
                self._hvac.auth.approle.login(
                    self.settings.approle_role_id,
                    secret_id.get_secret_value() if secret_id else None,
                    mount_point=mount,
                )
        except (
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.Forbidden,
            hvac.exceptions.Unauthorized,
        ) as exc:
            raise SecretAuthError(
                f"{self._vault} refused the {self.settings.auth_method} login at auth/{mount}/login with "
                f"{self._auth_label} ({self._vault_errors(exc, jwt)}): {hint}"
            ) from None
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise self._translate_other(exc, f"logging in with {self._auth_label}", jwt) from None
        logger.debug("Logged in to %s with %s", self._vault, self._auth_label)

    # -- names, in messages --

    @property
    def _secret_path(self) -> str:
        return f"{self.settings.mount_point}/data/{self.settings.path}"

    @property
    def _vault(self) -> str:
        url = url_without_credentials(self.settings.url)
        namespace = self.settings.namespace
        return f"Vault {url}" + (f" (namespace {namespace!r})" if namespace else "")

    @property
    def _what(self) -> str:
        version = f" version {self.settings.version}" if self.settings.version is not None else ""
        return f"key {self.settings.key!r} of {self._secret_path}{version}"

    @property
    def _target(self) -> str:
        return f"{self._what} on {self._vault}"

    @property
    def _auth_label(self) -> str:
        s = self.settings
        if s.auth_method == "kubernetes":
            return f"Kubernetes auth role {s.kubernetes_role!r} (mount {s.kubernetes_mount_point!r})"
        if s.auth_method == "approle":
            return f"AppRole role ID {s.approle_role_id!r} (mount {s.approle_mount_point!r})"
        return "the configured token"

    def _secrets(self, *extra: str) -> list[str]:
        """Values that must never appear in a message (to redact Vault's error text, defensively)."""
        values = [
            s.get_secret_value()
            for s in (self.settings.token, self.settings.approle_secret_id)
            if s is not None
        ]
        return [*values, *extra]

    # -- the auth methods --

    def _kubernetes_hint(self) -> str:
        role, mount = self.settings.kubernetes_role, self.settings.kubernetes_mount_point
        return (
            f"check that role {role!r} exists on auth mount {mount!r} "
            f"(vault read auth/{mount}/role/{role}) and is bound to this pod's "
            "service account name and namespace"
        )

    def _approle_hint(self) -> str:
        return (
            "check approle_role_id and approle_secret_id: a secret ID expires (secret_id_ttl) and may "
            "be used a limited number of times (secret_id_num_uses); issue a new one with "
            f"`vault write -f auth/{self.settings.approle_mount_point}/role/<role name>/secret-id`"
        )

    def _read_jwt(self) -> str:
        path = Path(self.settings.kubernetes_jwt_path)
        try:
            jwt = path.read_text().strip()
        except FileNotFoundError:
            raise SecretAuthError(
                f"Cannot log in to {self._vault} with {self._auth_label}: the service account token file "
                f"{str(path)!r} does not exist: not running in a Kubernetes pod? (Or the pod does not mount "
                "its service account token: check automountServiceAccountToken, or set kubernetes_jwt_path.)"
            ) from None
        except OSError as exc:
            raise SecretAuthError(
                f"Cannot log in to {self._vault} with {self._auth_label}: cannot read the service account "
                f"token file {str(path)!r}: {exc.strerror}"
            ) from None
        if not jwt:
            raise SecretAuthError(
                f"Cannot log in to {self._vault} with {self._auth_label}: the service account token file "
                f"{str(path)!r} is empty"
            )
        return jwt

    # -- the read --

    def _read_secret(self) -> Any:
        try:
            return self._hvac.secrets.kv.v2.read_secret_version(
                path=self.settings.path,
                mount_point=self.settings.mount_point,
                version=self.settings.version,
                raise_on_deleted_version=True,
            )
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            raise self._denied(exc) from None
        except hvac.exceptions.InvalidPath as exc:
            raise self._not_found(exc) from None
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise self._translate_other(exc, f"reading {self._what}") from None

    def _extract(self, response: Any) -> str:
        s = self.settings
        data = response.get("data") if isinstance(response, dict) else None
        secret = data.get("data") if isinstance(data, dict) else None
        if not isinstance(secret, dict):
            raise SecretSourceError(
                f"{self._vault} answered the read of {self._secret_path} without a data.data object: "
                f"is {s.mount_point!r} a KV version 2 mount? ({VAULT_KV_V2_API_DOC})"
            )
        if s.key not in secret:
            raise SecretKeyError(
                f"Secret {self._secret_path} on {self._vault} has no key {s.key!r}; "
                f"its keys are {sorted(secret)}. Set key to one of them."
            )
        value = secret[s.key]
        if not isinstance(value, str):
            raise SecretTypeError(
                f"Key {s.key!r} of secret {self._secret_path} on {self._vault} holds a JSON "
                f"{type(value).__name__}, not a string; an API key is a string: store it as one "
                f"(vault kv put -mount={s.mount_point} {s.path} {s.key}=...)."
            )
        version = (data.get("metadata") or {}).get("version") if isinstance(data, dict) else None
        logger.info("Read %s (version %s)", self._target, version)
        return value

    # -- hvac's errors → ours --

    def _denied(self, exc: hvac.exceptions.VaultError) -> SecretAccessDeniedError:
        token = self.settings.auth_method == "token"
        whose = "this token" if token else "this role"
        token_note = " Vault also answers 403 to an invalid, expired or revoked token." if token else ""
        return SecretAccessDeniedError(
            f"{self._vault} denied reading {self._what} with {self._auth_label} "
            f"({self._vault_errors(exc)}): the policy of {whose} must allow read on "
            f'{self._secret_path} (path "{self._secret_path}" {{ capabilities = ["read"] }}).{token_note}'
        )

    def _not_found(self, exc: hvac.exceptions.InvalidPath) -> SecretNotFoundError:
        s = self.settings
        metadata = (
            ((exc.json or {}).get("data") or {}).get("metadata") if isinstance(exc.json, dict) else None
        )
        if isinstance(metadata, dict) and (metadata.get("destroyed") or metadata.get("deletion_time")):
            version = metadata.get("version", s.version)
            if metadata.get("destroyed"):
                what, fix = "was destroyed", "it cannot be recovered: set version to another version or empty"
            else:
                what = f"was deleted at {metadata['deletion_time']}"
                fix = (
                    f"undelete it (vault kv undelete -mount={s.mount_point} -versions={version} {s.path}) "
                    "or set version to another version or empty for the latest"
                )
            return SecretNotFoundError(
                f"Version {version} of secret {self._secret_path} on {self._vault} {what}: {fix}"
            )
        version = f" (version {s.version})" if s.version is not None else ""
        return SecretNotFoundError(
            f"{self._vault}: no secret at {self._secret_path}{version} (looking for key {s.key!r}). "
            f"Check path (relative to the mount, without 'data/'), version, and that {s.mount_point!r} "
            "is a KV version 2 mount (vault secrets list -detailed)."
        )

    def _translate_other(self, exc: Exception, doing: str, *secrets: str) -> SecretSourceError:
        if isinstance(exc, hvac.exceptions.VaultDown | hvac.exceptions.VaultNotInitialized):
            return SecretUnavailableError(
                f"{self._vault} cannot answer ({self._vault_errors(exc, *secrets)}) while {doing}: it is sealed, "
                "not initialised or in maintenance. Retry once an operator has unsealed it."
            )
        if isinstance(exc, hvac.exceptions.BadGateway | hvac.exceptions.InternalServerError):
            return SecretUnavailableError(
                f"{self._vault} failed ({type(exc).__name__}: {self._vault_errors(exc, *secrets)}) while {doing}; retry later."
            )
        if isinstance(exc, requests.RequestException):
            hint = " Check verify (CA bundle)." if isinstance(exc, requests.exceptions.SSLError) else ""
            return SecretUnavailableError(
                f"Cannot reach {self._vault} while {doing}: {type(exc).__name__}: "
                f"{_redact(str(exc), self._secrets(*secrets))}.{hint}"
            )
        return SecretSourceError(
            f"{self._vault} answered {type(exc).__name__} ({self._vault_errors(exc, *secrets)}) while {doing}."
        )

    def _vault_errors(self, exc: Exception, *secrets: str) -> str:
        errors = getattr(exc, "errors", None)
        if isinstance(errors, list) and errors:
            text = "; ".join(str(e) for e in errors)
        elif isinstance(errors, str) and errors:
            text = errors
        else:
            text = type(exc).__name__
        return _redact(text, self._secrets(*secrets))
