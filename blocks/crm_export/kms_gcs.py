"""Block ``KmsEncryptedGcsSecret``: one secret string stored in GCS as a Cloud KMS ciphertext.

It stores *where* the ciphertext is and which key decrypts it, never the secret itself, and exposes
``get() -> str``. Importing it imports prefect-gcp (slow: it loads the Vertex AI client), so
``blocks`` loads it only when asked. Errors: ``tasks.common.SecretSourceError`` and its subclasses.
"""

from __future__ import annotations

import logging
import re

import google_crc32c
from google.api_core import exceptions as google_exceptions
from google.cloud.kms import KeyManagementServiceClient
from prefect.blocks.core import Block
from prefect_gcp.cloud_storage import GcsBucket
from pydantic import ConfigDict, Field, field_validator

from tasks.common import (
    SecretAccessDeniedError,
    SecretDecryptionError,
    SecretIntegrityError,
    SecretNotFoundError,
    SecretSourceError,
)

logger = logging.getLogger(__name__)

KMS_INTEGRITY_DOC = "https://cloud.google.com/kms/docs/data-integrity-guidelines"
KMS_DECRYPTER_ROLE = "roles/cloudkms.cryptoKeyDecrypter"
GCS_READER_ROLE = "roles/storage.objectViewer"

# Full resource name of a Cloud KMS key (https://cloud.google.com/kms/docs/resource-hierarchy).
# Key ring and key IDs: letters, digits, '_' and '-', at most 63 characters.
_KMS_KEY_NAME = re.compile(
    r"^projects/[^/\s]+/locations/[^/\s]+/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}$"
)
# Google's guideline: on a plaintext CRC32C mismatch, discard the response and retry a limited number of times.
_DECRYPT_ATTEMPTS = 3


def _clause(message: object) -> str:
    """A Google API error message, without its final period, to embed in a sentence."""
    return str(message).strip().rstrip(".")


class KmsEncryptedGcsSecret(Block):
    """A secret stored in a GCS object as a Cloud KMS ciphertext, decrypted with a symmetric KMS key.

    The object holds the raw ciphertext bytes, as written by::

        echo "$CRM_API_KEY" | gcloud kms encrypt --key=K --keyring=R --location=L \\
            --plaintext-file=- --ciphertext-file=- | gcloud storage cp - gs://BUCKET/FOLDER/crm-api-key.enc

    ``get()`` reads the object through the nested ``GcsBucket`` (``blob`` is relative to its
    ``bucket_folder``), decrypts it with ``KeyManagementServiceClient.decrypt`` using the bucket's
    ``GcpCredentials``, checks the CRC32C checksums as Google's data integrity guidelines say
    (https://cloud.google.com/kms/docs/data-integrity-guidelines), decodes UTF-8 and strips one
    trailing newline (``echo`` writes one).

    The identity of the credentials needs ``roles/storage.objectViewer`` on the object and
    ``roles/cloudkms.cryptoKeyDecrypter`` on the key.
    """

    _block_type_name = "KMS Encrypted GCS Secret"
    _description = (
        "A secret kept in Google Cloud Storage as a Cloud KMS ciphertext; decrypted on read with the "
        "credentials of the GCS Bucket block."
    )
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/10424e311932e31c477ac2b9ef3d53cefbaad708-250x250.png"
    _documentation_url = "https://cloud.google.com/kms/docs/encrypt-decrypt"
    # Validation errors would otherwise quote the raw input (the GCP credentials included).
    model_config = ConfigDict(hide_input_in_errors=True)

    gcs_bucket: GcsBucket = Field(
        ...,
        description="The bucket holding the ciphertext; its GCP credentials are also used to call Cloud KMS.",
    )
    blob: str = Field(
        ...,
        description="Path of the ciphertext object, relative to the bucket's bucket_folder, e.g. 'crm/api-key.enc'.",
    )
    kms_key_name: str = Field(
        ...,
        description="Full resource name of the KMS key: projects/P/locations/L/keyRings/R/cryptoKeys/K.",
    )

    @field_validator("blob")
    @classmethod
    def _check_blob(cls, value: str) -> str:
        value = value.lstrip("/")
        if not value or value.endswith("/"):
            raise ValueError(f"blob must be the path of an object, got {value!r}")
        return value

    @field_validator("kms_key_name")
    @classmethod
    def _check_key_name(cls, value: str) -> str:
        value = value.strip()
        if not _KMS_KEY_NAME.match(value):
            version_hint = (
                " Give the key, not a key version: decrypt finds the version from the ciphertext."
                if "/cryptoKeyVersions/" in value
                else ""
            )
            raise ValueError(
                "kms_key_name must be the full resource name of a Cloud KMS key, "
                "projects/<project>/locations/<location>/keyRings/<key ring>/cryptoKeys/<key> "
                f"(e.g. projects/my-project/locations/europe-west1/keyRings/analytics/cryptoKeys/crm), "
                f"got {value!r}.{version_hint}"
            )
        return value

    # -- public API --

    def get(self) -> str:
        """Read the ciphertext from GCS, decrypt it with Cloud KMS and return the text.

        Returns:
            The UTF-8 plaintext without one trailing newline (``\\n`` or ``\\r\\n``).

        Raises:
            SecretNotFoundError: the object (or bucket) does not exist, or the KMS key does not.
            SecretAccessDeniedError: GCS or KMS refused (the message names the role to grant).
            SecretDecryptionError: KMS cannot decrypt the object with this key (another key, not a
                ciphertext, corrupted), or the plaintext is not UTF-8.
            SecretIntegrityError: the plaintext CRC32C did not match in any of the attempts.
            SecretSourceError: the object is empty, or another GCS/KMS error.
        """
        ciphertext = self._read_ciphertext()
        plaintext = self._decrypt(ciphertext)
        try:
            text = plaintext.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretDecryptionError(
                f"The plaintext of {self._object_url} decrypted with {self.kms_key_name} is not UTF-8 text "
                "(an API key is text): re-encrypt the key as text."
            ) from None
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        logger.info("Decrypted %s with %s", self._object_url, self.kms_key_name)
        return text

    # -- internals --

    def _kms_client(self) -> KeyManagementServiceClient:
        """A Cloud KMS client authenticated as the bucket's ``GcpCredentials`` (tests replace this)."""
        credentials = self.gcs_bucket.gcp_credentials.get_credentials_from_service_account()
        return KeyManagementServiceClient(credentials=credentials)

    @property
    def _object_path(self) -> str:
        # As GcsBucket._resolve_path: the bucket_folder (validated to end in '/') is prefixed.
        folder = self.gcs_bucket.bucket_folder
        return self.blob if not folder or self.blob.startswith(folder) else f"{folder}{self.blob}"

    @property
    def _object_url(self) -> str:
        return f"gs://{self.gcs_bucket.bucket}/{self._object_path}"

    def _read_ciphertext(self) -> bytes:
        try:
            ciphertext = self.gcs_bucket.read_path(self.blob, _sync=True)
        except google_exceptions.NotFound as exc:
            raise SecretNotFoundError(
                f"No ciphertext object {self._object_url} (bucket {self.gcs_bucket.bucket!r}, blob "
                f"{self.blob!r} under bucket_folder {self.gcs_bucket.bucket_folder!r}): {_clause(exc.message)}. "
                "Upload it (gcloud kms encrypt ... --ciphertext-file=- | gcloud storage cp - "
                f"{self._object_url}) or fix blob."
            ) from None
        except google_exceptions.Forbidden as exc:
            raise SecretAccessDeniedError(
                f"GCS refused reading {self._object_url}: {_clause(exc.message)}. Grant the credentials' service "
                f"account {GCS_READER_ROLE} on the bucket (or the object)."
            ) from None
        except google_exceptions.GoogleAPIError as exc:
            raise SecretSourceError(
                f"Reading {self._object_url} failed: {type(exc).__name__}: {exc}"
            ) from None
        if not ciphertext:
            raise SecretSourceError(f"The ciphertext object {self._object_url} is empty.")
        return bytes(ciphertext)

    def _decrypt(self, ciphertext: bytes) -> bytes:
        request = {
            "name": self.kms_key_name,
            "ciphertext": ciphertext,
            "ciphertext_crc32c": google_crc32c.value(ciphertext),
        }
        client = self._kms_client()
        for attempt in range(1, _DECRYPT_ATTEMPTS + 1):
            try:
                response = client.decrypt(request=request)
            except google_exceptions.PermissionDenied as exc:
                raise SecretAccessDeniedError(
                    f"Cloud KMS refused to decrypt {self._object_url} with key {self.kms_key_name}: "
                    f"{_clause(exc.message)}. Grant the credentials' service account {KMS_DECRYPTER_ROLE} on that key "
                    "(gcloud kms keys add-iam-policy-binding ... --role=roles/cloudkms.cryptoKeyDecrypter)."
                ) from None
            except google_exceptions.NotFound as exc:
                raise SecretNotFoundError(
                    f"Cloud KMS has no key {self.kms_key_name} (to decrypt {self._object_url}): {_clause(exc.message)}"
                ) from None
            except google_exceptions.InvalidArgument as exc:
                raise SecretDecryptionError(
                    f"Cloud KMS could not decrypt {self._object_url} with key {self.kms_key_name}: "
                    f"{_clause(exc.message)}. The object was most likely encrypted with another key, is not a raw KMS "
                    "ciphertext (e.g. base64-encoded text), or was corrupted: re-encrypt it with this key."
                ) from None
            except google_exceptions.FailedPrecondition as exc:
                raise SecretDecryptionError(
                    f"Cloud KMS could not decrypt {self._object_url} with key {self.kms_key_name}: "
                    f"{_clause(exc.message)}. The key version that encrypted it is probably disabled or destroyed."
                ) from None
            except google_exceptions.GoogleAPIError as exc:
                raise SecretSourceError(
                    f"Cloud KMS failed to decrypt {self._object_url} with key {self.kms_key_name}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            plaintext = bytes(response.plaintext)
            if response.plaintext_crc32c == google_crc32c.value(plaintext):
                return plaintext
            logger.warning(
                "Cloud KMS decrypt response for %s failed its CRC32C check (attempt %d of %d)",
                self._object_url,
                attempt,
                _DECRYPT_ATTEMPTS,
            )
        raise SecretIntegrityError(
            f"The plaintext Cloud KMS returned for {self._object_url} (key {self.kms_key_name}) was corrupted "
            f"in transit: its CRC32C did not match plaintext_crc32c in {_DECRYPT_ATTEMPTS} attempts "
            f"({KMS_INTEGRITY_DOC}). Retry later."
        )
