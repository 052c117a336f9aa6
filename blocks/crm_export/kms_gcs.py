"""Block ``KmsEncryptedGcsSecret``: one secret string stored in GCS as a Cloud KMS ciphertext.

It stores *where* the ciphertext is, which key decrypts it and which GCP Credentials block (by name)
reads it, never the secret itself, and exposes ``get() -> str``. It imports prefect-gcp (slow: it loads
the Vertex AI client) only when ``get()`` loads a named GCP Credentials block; ``blocks`` loads this
module only when asked. Errors: ``blocks.secrets.SecretSourceError`` and its subclasses, and
``blocks.loading.BlockNotFoundError`` for a missing GCP Credentials block.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import google_crc32c
from google.api_core import exceptions as google_exceptions
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import storage
from google.cloud.kms import KeyManagementServiceClient
from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, field_validator, model_validator

from blocks.crm_export.dataflow import (
    check_credentials_block_name,
    refuse_former_field,
    resolve_gcp_credentials,
)
from blocks.secrets import (
    SecretAccessDeniedError,
    SecretAuthError,
    SecretDecryptionError,
    SecretIntegrityError,
    SecretNotFoundError,
    SecretSourceError,
)

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

logger = logging.getLogger(__name__)

KMS_INTEGRITY_DOC = "https://cloud.google.com/kms/docs/data-integrity-guidelines"
KMS_DECRYPTER_ROLE = "roles/cloudkms.cryptoKeyDecrypter"
GCS_READER_ROLE = "roles/storage.objectViewer"

# Full resource name of a Cloud KMS key (https://cloud.google.com/kms/docs/resource-hierarchy).
# Key ring and key IDs: letters, digits, '_' and '-', at most 63 characters.
_KMS_KEY_NAME = re.compile(
    r"^projects/[^/\s]+/locations/[^/\s]+/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}$"
)
# A GCS bucket name (https://cloud.google.com/storage/docs/buckets#naming): 3 to 63 characters (222 with dots)
# of lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or a digit.
_BUCKET_NAME = re.compile(r"[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]")
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

    ``get()`` resolves the credentials (the GCP Credentials block ``gcp_credentials_block`` names, else the
    process's Application Default Credentials), reads ``gs://{bucket}/{blob}`` with a google-cloud-storage
    client, decrypts it with ``KeyManagementServiceClient.decrypt``, checks the CRC32C checksums as Google's
    data integrity guidelines say (https://cloud.google.com/kms/docs/data-integrity-guidelines), decodes
    UTF-8 and strips one trailing newline (``echo`` writes one).

    The identity of the credentials needs ``roles/storage.objectViewer`` on the object and
    ``roles/cloudkms.cryptoKeyDecrypter`` on the key.

    Design: the block names the object (``bucket`` + ``blob``, the object's full name) and its credentials
    (a GCP Credentials block's name) instead of nesting a prefect-gcp ``GcsBucket``. A nested ``GcsBucket``
    builds its ``GcpCredentials`` when the block is created or loaded, which looks for Application Default
    Credentials and fails where there are none (e.g. the laptop that registers blocks); a name is resolved
    only when ``get()`` runs, on the worker. It is also how ``DataflowOptions.gcp_credentials_block`` and the
    BigQuery source's ``gcp_credentials_block`` name theirs, and one object is one ``gs://`` URL, with no
    ``bucket_folder`` to prefix. A document saved with the former ``gcs_bucket`` field is refused with what to
    do, rather than loaded with its credentials silently dropped.
    """

    _block_type_name = "KMS Encrypted GCS Secret"
    _description = (
        "A secret kept in Google Cloud Storage as a Cloud KMS ciphertext; read and decrypted on use with the "
        "credentials of a GCP Credentials block, or Application Default Credentials."
    )
    _logo_url = "https://cdn.sanity.io/images/3ugk85nk/production/10424e311932e31c477ac2b9ef3d53cefbaad708-250x250.png"
    _documentation_url = "https://cloud.google.com/kms/docs/encrypt-decrypt"
    # Validation errors would otherwise quote the raw input (a former nested bucket's GCP credentials included).
    model_config = ConfigDict(hide_input_in_errors=True)

    bucket: str = Field(
        ...,
        description="Name of the GCS bucket holding the ciphertext (not a gs:// URL), e.g. 'my-crm-secrets'.",
    )
    blob: str = Field(
        ...,
        description="Name of the ciphertext object in the bucket, its full path, e.g. 'crm/api-key.enc'.",
    )
    kms_key_name: str = Field(
        ...,
        description="Full resource name of the KMS key: projects/P/locations/L/keyRings/R/cryptoKeys/K.",
    )
    gcp_credentials_block: str | None = Field(
        default=None,
        title="GCP Credentials Block",
        description=(
            "Name of the GCP Credentials block the object is read and Cloud KMS is called with. Empty: the "
            "process's Application Default Credentials."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_nested_bucket(cls, data: Any) -> Any:
        return refuse_former_field(
            data,
            "gcs_bucket",
            "give the bucket's name in bucket and the object's full name in blob (with the former bucket_folder "
            "in front), and the name of a GCP Credentials block in gcp_credentials_block (empty: the process's "
            "Application Default Credentials), then save this block again",
        )

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        value = value.strip()
        if value.startswith("gs://"):
            name, _, path = value[len("gs://") :].partition("/")
            hint = f"; the object's path goes in blob ({path!r})" if path else ""
            raise ValueError(f"bucket must be the bucket's name, not a gs:// URL: {name!r}{hint}")
        if not _BUCKET_NAME.fullmatch(value):
            raise ValueError(
                "bucket must be a GCS bucket name (3 to 222 lowercase letters, digits, '-', '_' and '.', "
                f"starting and ending with a letter or a digit), got {value!r}"
            )
        return value

    @field_validator("gcp_credentials_block")
    @classmethod
    def _check_gcp_credentials_block(cls, value: str | None) -> str | None:
        return check_credentials_block_name("gcp_credentials_block", value)

    @field_validator("blob")
    @classmethod
    def _check_blob(cls, value: str) -> str:
        if value.startswith("gs://"):
            raise ValueError(f"blob must be the object's name in the bucket, not a gs:// URL, got {value!r}")
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
            blocks.loading.BlockNotFoundError: no GCP Credentials block named ``gcp_credentials_block``.
            SecretAuthError: no credentials: Application Default Credentials are needed (no block named, or
                the block holds no service account key) and this process has none (names this block, the
                field and what to do).
            SecretNotFoundError: the object (or bucket) does not exist, or the KMS key does not.
            SecretAccessDeniedError: GCS or KMS refused (the message names the role to grant).
            SecretDecryptionError: KMS cannot decrypt the object with this key (another key, not a
                ciphertext, corrupted), or the plaintext is not UTF-8.
            SecretIntegrityError: the plaintext CRC32C did not match in any of the attempts.
            SecretSourceError: the object is empty, or another GCS/KMS error.
        """
        credentials, project = self.credentials()
        ciphertext = self._read_ciphertext(self._storage_client(credentials, project))
        plaintext = self._decrypt(ciphertext, self._kms_client(credentials))
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

    def credentials(self) -> tuple[Credentials, str | None]:
        """The credentials ``get()`` reads and decrypts with, and their project (or None), resolved now:
        the GCP Credentials block ``gcp_credentials_block`` (loaded from the Prefect API), else the process's
        Application Default Credentials (``blocks.crm_export.dataflow.resolve_gcp_credentials``).

        Raises ``blocks.loading.BlockNotFoundError`` for a missing block, ``SecretAuthError`` when there are no
        credentials (naming this block, the field and what to do).
        """
        try:
            return resolve_gcp_credentials(
                self.gcp_credentials_block, owner=self._block_label(), field="gcp_credentials_block"
            )
        except DefaultCredentialsError as exc:
            raise SecretAuthError(f"Cannot read {self._object_url}: {exc}") from None

    # -- internals --

    def _block_label(self) -> str:
        name = getattr(self, "_block_document_name", None)
        return (
            f"KMS Encrypted GCS Secret block {name!r}"
            if name
            else "this KMS Encrypted GCS Secret block (unsaved)"
        )

    def _storage_client(self, credentials: Credentials, project: str | None) -> storage.Client:
        """A Cloud Storage client with ``credentials`` and default project ``project`` (None: none; reading an
        object does not use it). Tests replace this."""
        return storage.Client(project=project, credentials=credentials)

    def _kms_client(self, credentials: Credentials) -> KeyManagementServiceClient:
        """A Cloud KMS client authenticated with ``credentials`` (tests replace this)."""
        return KeyManagementServiceClient(credentials=credentials)

    @property
    def _object_url(self) -> str:
        return f"gs://{self.bucket}/{self.blob}"

    def _read_ciphertext(self, client: storage.Client) -> bytes:
        try:
            ciphertext = client.bucket(self.bucket).blob(self.blob).download_as_bytes()
        except google_exceptions.NotFound as exc:
            raise SecretNotFoundError(
                f"No ciphertext object {self._object_url} (bucket {self.bucket!r}, blob {self.blob!r}): "
                f"{_clause(exc.message)}. Upload it (gcloud kms encrypt ... --ciphertext-file=- | gcloud storage cp - "
                f"{self._object_url}) or fix bucket or blob."
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

    def _decrypt(self, ciphertext: bytes, client: KeyManagementServiceClient) -> bytes:
        request = {
            "name": self.kms_key_name,
            "ciphertext": ciphertext,
            "ciphertext_crc32c": google_crc32c.value(ciphertext),
        }
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
