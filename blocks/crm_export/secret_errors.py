"""Errors of the secret blocks (``blocks.crm_export.vault``, ``blocks.crm_export.kms_gcs``).

Every error a secret block's ``get()`` raises derives from :class:`SecretSourceError` and from the
matching built-in (``PermissionError``, ``LookupError``, ``KeyError``, ``TypeError``,
``ConnectionError``, ``ValueError``). It names where the secret was looked for and what to do about
it, and never contains the secret value, a Vault token, a Kubernetes service account JWT or an
AppRole secret ID.
"""

from __future__ import annotations


class SecretSourceError(Exception):
    """Base of the errors raised when a secret block cannot produce its value (never carries the value)."""


class SecretAccessDeniedError(SecretSourceError, PermissionError):
    """The secret store refused to give the secret to this identity (Vault 403, KMS/GCS PERMISSION_DENIED)."""


class SecretAuthError(SecretSourceError, PermissionError):
    """Authenticating to Vault failed (login refused, or no Kubernetes service account token to log in with)."""


class SecretNotFoundError(SecretSourceError, LookupError):
    """Nothing at the configured place: no Vault secret (or version) at the path, no GCS object, no KMS key."""


class SecretKeyError(SecretSourceError, KeyError):
    """The Vault secret exists but has no such key; the message lists the key names it has (never values)."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class SecretTypeError(SecretSourceError, TypeError):
    """The secret's value is not a string (an API key is a string)."""


class SecretUnavailableError(SecretSourceError, ConnectionError):
    """The secret store cannot answer now (Vault sealed, not initialised, down or unreachable); retry later."""


class SecretIntegrityError(SecretSourceError, ValueError):
    """Cloud KMS returned a plaintext whose CRC32C does not match the checksum it sent with it."""


class SecretDecryptionError(SecretSourceError, ValueError):
    """The ciphertext could not be decrypted with the configured KMS key, or the plaintext is not UTF-8 text."""
