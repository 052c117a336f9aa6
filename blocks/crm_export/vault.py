"""Block ``VaultKvSecret``: one secret string (e.g. the CRM API key) from HashiCorp Vault KV v2.

It stores *where* the secret is and how to authenticate (token, Kubernetes or AppRole), never the
secret itself, and exposes ``get() -> str``. Errors: ``tasks.common.SecretSourceError`` and its subclasses.
A plaintext ``http://`` Vault address, or ``verify`` false, is refused for a host that is not loopback
unless ``allow_insecure_transport`` is true (``pipelines.transport``): the token and the secret cross it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import hvac
import hvac.exceptions
import requests
from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from blocks import run_logger
from pipelines.transport import (
    ALLOW_INSECURE_TRANSPORT_DESCRIPTION,
    check_transport,
    url_without_credentials,
    warn_insecure_transport,
)
from tasks.common import (
    SecretAccessDeniedError,
    SecretAuthError,
    SecretKeyError,
    SecretNotFoundError,
    SecretSourceError,
    SecretTypeError,
    SecretUnavailableError,
)

logger = logging.getLogger(__name__)

VAULT_KV_V2_API_DOC = "https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2#read-secret-version"


def _redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class VaultKvSecret(Block):
    """One key of a secret in a HashiCorp Vault KV version 2 secrets engine, read through ``hvac``.

    ``get()`` authenticates (token, Kubernetes or AppRole auth), reads
    ``GET /v1/<mount_point>/data/<path>[?version=<version>]`` and returns ``data.data[<key>]``, which must
    be a string. The Vault API it relies on is documented at
    https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2#read-secret-version,
    https://developer.hashicorp.com/vault/api-docs/auth/kubernetes#login and
    https://developer.hashicorp.com/vault/api-docs/auth/approle#login-with-approle.

    The policy of the token (or of the Kubernetes/AppRole role) needs ``read`` on
    ``<mount_point>/data/<path>``.

    Vault over plaintext ``http://``, or with ``verify`` false, is accepted for a loopback host (a dev
    server on this machine) only, unless ``allow_insecure_transport`` is true; then each ``get()`` logs a
    warning naming the block and Vault's address.

    Raises:
        ValueError (a ``pydantic.ValidationError``): an invalid field, or an insecure transport to a host
            that is not loopback without ``allow_insecure_transport`` (the message names the field and the fix).

    Example:
        Save the block once, then load it by name where the secret is needed:
        ```python
        from blocks import VaultKvSecret

        VaultKvSecret(
            url="https://vault.example.com:8200",
            path="analytics/crm",
            key="api_key",
            auth_method="kubernetes",
            kubernetes_role="crm-export",
        ).save("crm-api-key")

        vault_secret = VaultKvSecret.load("BLOCK_NAME")  # e.g. "crm-api-key"
        api_key = vault_secret.get()
        ```
    """

    _block_type_name = "Vault KV Secret"
    _description = (
        "One key of a HashiCorp Vault KV v2 secret, read with token, Kubernetes or AppRole auth. "
        "Stores where the secret is, not the secret."
    )
    _documentation_url = "https://developer.hashicorp.com/vault/docs/secrets/kv/kv-v2"
    _logo_url = "https://github.com/hashicorp.png?size=250"
    # Validation errors would otherwise quote the raw input, token or secret ID included.
    model_config = ConfigDict(hide_input_in_errors=True)

    url: str = Field(
        ...,
        description="Vault's address, e.g. https://vault.example.com:8200. http:// only for a loopback host "
        "(a dev server on this machine), unless allow_insecure_transport is true.",
    )
    namespace: str | None = Field(
        default=None,
        description="Vault Enterprise / HCP Vault namespace (sent as X-Vault-Namespace), e.g. 'admin/analytics'.",
    )
    mount_point: str = Field(default="secret", description="Path where the KV v2 secrets engine is mounted.")
    path: str = Field(
        ...,
        description="Path of the secret under the mount, without 'data/' (e.g. 'analytics/crm' for "
        "`vault kv get -mount=secret analytics/crm`).",
    )
    key: str = Field(..., description="The key of the secret's data that holds the value, e.g. 'api_key'.")
    version: int | None = Field(
        default=None, ge=1, description="Version of the secret to read; empty for the latest."
    )
    auth_method: Literal["token", "kubernetes", "approle"] = Field(
        default="token", description="How to authenticate to Vault."
    )
    token: SecretStr | None = Field(default=None, description="Vault token (auth_method 'token').")
    kubernetes_role: str | None = Field(
        default=None,
        description="Vault role bound to the pod's service account (auth_method 'kubernetes').",
    )
    kubernetes_jwt_path: str = Field(
        default="/var/run/secrets/kubernetes.io/serviceaccount/token",
        description="File holding the pod's service account token (JWT) (auth_method 'kubernetes').",
    )
    kubernetes_mount_point: str = Field(
        default="kubernetes", description="Path where the Kubernetes auth method is mounted."
    )
    approle_role_id: str | None = Field(default=None, description="AppRole role ID (auth_method 'approle').")
    approle_secret_id: SecretStr | None = Field(
        default=None,
        description="AppRole secret ID (auth_method 'approle'); may be empty only for a role with "
        "bind_secret_id=false.",
    )
    approle_mount_point: str = Field(
        default="approle", description="Path where the AppRole auth method is mounted."
    )
    verify: bool | str = Field(
        default=True,
        description="Verify Vault's TLS certificate: true, false, or the path of a CA bundle file. False only "
        "for a loopback host, unless allow_insecure_transport is true.",
    )
    allow_insecure_transport: bool = Field(default=False, description=ALLOW_INSECURE_TRANSPORT_DESCRIPTION)
    timeout_seconds: float = Field(
        default=30, gt=0, description="Timeout of one request to Vault, in seconds."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                f"url must start with http:// or https://, got {url_without_credentials(value)!r}"
            )
        return value.rstrip("/")

    @field_validator("mount_point", "path", "kubernetes_mount_point", "approle_mount_point")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        value = value.strip("/")
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("token", "approle_secret_id")
    @classmethod
    def _check_credential(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        # A newline pasted with a token would make requests refuse the header, quoting the token.
        if value is not None and (
            not value.get_secret_value() or any(c.isspace() for c in value.get_secret_value())
        ):
            raise ValueError(f"{info.field_name} is empty or holds whitespace (a trailing newline?)")
        return value

    @field_validator("namespace")
    @classmethod
    def _strip_namespace(cls, value: str | None) -> str | None:
        return (value.strip("/") or None) if value else None

    @model_validator(mode="after")
    def _check_auth(self) -> VaultKvSecret:
        if self.auth_method == "token" and not (self.token and self.token.get_secret_value()):
            raise ValueError("auth_method 'token' needs token (a Vault token with read on the secret)")
        if self.auth_method == "kubernetes" and not self.kubernetes_role:
            raise ValueError(
                "auth_method 'kubernetes' needs kubernetes_role (the Vault role bound to the pod's service account)"
            )
        if self.auth_method == "approle" and not self.approle_role_id:
            raise ValueError("auth_method 'approle' needs approle_role_id (and usually approle_secret_id)")
        self._check_transport()
        return self

    def _check_transport(self) -> str | None:
        return check_transport(
            self.url,
            owner="Vault KV Secret",
            field="url",
            allow_insecure=self.allow_insecure_transport,
            verify=self.verify,
            verify_field="verify",
        )

    # -- public API --

    def get(self) -> str:
        """Authenticate, read the secret and return the value of ``key``.

        Returns:
            The value of ``data.data[key]`` of the KV v2 secret (a string, returned as is).

        Raises:
            SecretAuthError: the login was refused (naming the auth method and role), or the Kubernetes
                service account token file is missing.
            SecretAccessDeniedError: Vault answered 403 to the read: the policy lacks ``read`` on
                ``<mount>/data/<path>`` (or the token is invalid or expired).
            SecretNotFoundError: no secret (or no such version, or a deleted/destroyed version) at the path.
            SecretKeyError: the secret has no such key (the message lists the keys it has).
            SecretTypeError: the value is not a string.
            SecretUnavailableError: Vault is sealed, not initialised, down or unreachable.
            SecretSourceError: any other error answer of Vault.
            ValueError: ``url`` or ``verify`` was changed after the block was built to an insecure
                transport that ``allow_insecure_transport`` does not accept.
        """
        client = self._client()
        try:
            self._login(client)
            response = self._read(client)
        finally:
            client.adapter.close()
        return self._extract(response)

    # -- internals --

    @property
    def _secret_path(self) -> str:
        return f"{self.mount_point}/data/{self.path}"

    @property
    def _vault(self) -> str:
        url = url_without_credentials(self.url)
        return f"Vault {url}" + (f" (namespace {self.namespace!r})" if self.namespace else "")

    def _block_label(self) -> str:
        name = getattr(self, "_block_document_name", None)
        return f"Vault KV Secret block {name!r}" if name else "Vault KV Secret block (unsaved)"

    @property
    def _what(self) -> str:
        version = f" version {self.version}" if self.version is not None else ""
        return f"key {self.key!r} of {self._secret_path}{version}"

    @property
    def _target(self) -> str:
        return f"{self._what} on {self._vault}"

    @property
    def _auth_label(self) -> str:
        if self.auth_method == "kubernetes":
            return f"Kubernetes auth role {self.kubernetes_role!r} (mount {self.kubernetes_mount_point!r})"
        if self.auth_method == "approle":
            return f"AppRole role ID {self.approle_role_id!r} (mount {self.approle_mount_point!r})"
        return "the configured token"

    def _secrets(self, *extra: str) -> list[str]:
        """Values that must never appear in a message (to redact Vault's error text, defensively)."""
        values = [s.get_secret_value() for s in (self.token, self.approle_secret_id) if s is not None]
        return [*values, *extra]

    def _client(self) -> hvac.Client:
        # Checked again here: the fields may have been changed since the block was validated.
        if self._check_transport():
            warn_insecure_transport(
                self.url, owner=self._block_label(), verify=self.verify, logger=run_logger(__name__)
            )
        # An empty token (not None) keeps hvac from picking up VAULT_TOKEN / ~/.vault-token for the login.
        token = self.token.get_secret_value() if self.auth_method == "token" and self.token else ""
        return hvac.Client(
            url=self.url,
            token=token,
            namespace=self.namespace,
            verify=self.verify,
            timeout=self.timeout_seconds,
        )

    def _read_jwt(self) -> str:
        path = Path(self.kubernetes_jwt_path)
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

    def _login(self, client: hvac.Client) -> None:
        if self.auth_method == "token":
            return
        jwt = ""
        try:
            if self.auth_method == "kubernetes":
                mount = self.kubernetes_mount_point
                hint = (
                    f"check that role {self.kubernetes_role!r} exists on auth mount {mount!r} "
                    f"(vault read auth/{mount}/role/{self.kubernetes_role}) and is bound to this pod's "
                    "service account name and namespace"
                )
                jwt = self._read_jwt()
                client.auth.kubernetes.login(self.kubernetes_role, jwt, mount_point=mount)
            else:
                mount = self.approle_mount_point
                hint = (
                    "check approle_role_id and approle_secret_id: a secret ID expires (secret_id_ttl) and may "
                    "be used a limited number of times (secret_id_num_uses); issue a new one with "
                    f"`vault write -f auth/{mount}/role/<role name>/secret-id`"
                )
                secret_id = self.approle_secret_id.get_secret_value() if self.approle_secret_id else None
                client.auth.approle.login(self.approle_role_id, secret_id, mount_point=mount)
        except (
            hvac.exceptions.InvalidRequest,
            hvac.exceptions.Forbidden,
            hvac.exceptions.Unauthorized,
        ) as exc:
            raise SecretAuthError(
                f"{self._vault} refused the {self.auth_method} login at auth/{mount}/login with "
                f"{self._auth_label} ({self._vault_errors(exc, jwt)}): {hint}"
            ) from None
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise self._translate_other(exc, f"logging in with {self._auth_label}", jwt) from None
        logger.debug("Logged in to %s with %s", self._vault, self._auth_label)

    def _read(self, client: hvac.Client) -> Any:
        try:
            return client.secrets.kv.v2.read_secret_version(
                path=self.path,
                mount_point=self.mount_point,
                version=self.version,
                raise_on_deleted_version=True,
            )
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as exc:
            whose = "this role" if self.auth_method != "token" else "this token"
            token_note = (
                " Vault also answers 403 to an invalid, expired or revoked token."
                if self.auth_method == "token"
                else ""
            )
            raise SecretAccessDeniedError(
                f"{self._vault} denied reading {self._what} with {self._auth_label} "
                f"({self._vault_errors(exc)}): the policy of {whose} must allow read on "
                f'{self._secret_path} (path "{self._secret_path}" {{ capabilities = ["read"] }}).{token_note}'
            ) from None
        except hvac.exceptions.InvalidPath as exc:
            raise self._not_found(exc) from None
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise self._translate_other(exc, f"reading {self._what}") from None

    def _not_found(self, exc: hvac.exceptions.InvalidPath) -> SecretNotFoundError:
        metadata = (
            ((exc.json or {}).get("data") or {}).get("metadata") if isinstance(exc.json, dict) else None
        )
        if isinstance(metadata, dict) and (metadata.get("destroyed") or metadata.get("deletion_time")):
            version = metadata.get("version", self.version)
            if metadata.get("destroyed"):
                what, fix = "was destroyed", "it cannot be recovered: set version to another version or empty"
            else:
                what = f"was deleted at {metadata['deletion_time']}"
                fix = (
                    f"undelete it (vault kv undelete -mount={self.mount_point} -versions={version} {self.path}) "
                    "or set version to another version or empty for the latest"
                )
            return SecretNotFoundError(
                f"Version {version} of secret {self._secret_path} on {self._vault} {what}: {fix}"
            )
        version = f" (version {self.version})" if self.version is not None else ""
        return SecretNotFoundError(
            f"{self._vault}: no secret at {self._secret_path}{version} (looking for key {self.key!r}). "
            f"Check path (relative to the mount, without 'data/'), version, and that {self.mount_point!r} "
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

    def _extract(self, response: Any) -> str:
        data = response.get("data") if isinstance(response, dict) else None
        secret = data.get("data") if isinstance(data, dict) else None
        if not isinstance(secret, dict):
            raise SecretSourceError(
                f"{self._vault} answered the read of {self._secret_path} without a data.data object: "
                f"is {self.mount_point!r} a KV version 2 mount? ({VAULT_KV_V2_API_DOC})"
            )
        if self.key not in secret:
            raise SecretKeyError(
                f"Secret {self._secret_path} on {self._vault} has no key {self.key!r}; "
                f"its keys are {sorted(secret)}. Set key to one of them."
            )
        value = secret[self.key]
        if not isinstance(value, str):
            raise SecretTypeError(
                f"Key {self.key!r} of secret {self._secret_path} on {self._vault} holds a JSON "
                f"{type(value).__name__}, not a string; an API key is a string: store it as one "
                f"(vault kv put -mount={self.mount_point} {self.path} {self.key}=...)."
            )
        version = (data.get("metadata") or {}).get("version") if isinstance(data, dict) else None
        logger.info("Read %s (version %s)", self._target, version)
        return value
