"""Block ``VaultKvSecret``: one secret string (e.g. the CRM API key) from HashiCorp Vault KV v2.

It stores *where* the secret is and how to authenticate (token, Kubernetes or AppRole), never the
secret itself, and exposes ``get() -> str``; ``get_client()`` makes the client that talks to Vault
(``blocks.crm_export.vault_client``: the three auth methods, the read, hvac's errors translated). Errors:
``blocks.secrets.SecretSourceError`` and its subclasses.
A plaintext ``http://`` Vault address, or ``verify`` false, is refused for a host that is not loopback
unless ``allow_insecure_transport`` is true (``pipelines.transport``): the token and the secret cross it.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from blocks import run_logger
from blocks.crm_export.vault_client import VaultKvClient
from pipelines.transport import (
    ALLOW_INSECURE_TRANSPORT_DESCRIPTION,
    check_transport,
    url_without_credentials,
    warn_insecure_transport,
)


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
        """Authenticate, read the secret and return the value of ``key`` (through ``get_client()``).

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
        with self.get_client() as client:
            return client.read()

    def get_client(self) -> VaultKvClient:
        """A client of Vault for this secret (``blocks.crm_export.vault_client.VaultKvClient``: the login,
        the read and the errors), to close after use.

        The transport is checked again first: the fields may have been changed since the block was
        validated (``ValueError``); an insecure one that ``allow_insecure_transport`` accepts is logged as
        a warning naming the block and Vault's address, for each client made.
        """
        if self._check_transport():
            warn_insecure_transport(
                self.url, owner=self._block_label(), verify=self.verify, logger=run_logger(__name__)
            )
        return VaultKvClient(self)

    def _block_label(self) -> str:
        name = getattr(self, "_block_document_name", None)
        return f"Vault KV Secret block {name!r}" if name else "Vault KV Secret block (unsaved)"
