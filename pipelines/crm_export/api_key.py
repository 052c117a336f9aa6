"""The CRM API key as the pipeline takes it: ``ApiKey`` (local runner) or ``KmsEncryptedApiKey`` (Dataflow).

Beam-free: the flow's tasks wrap the key they read in an ``ApiKey``, the Dataflow launcher encrypts it.
"""

from __future__ import annotations

import re
from typing import Any

# RFC 6750 b64token: what a bearer credential may hold. Anything else (a trailing newline from a
# file, a space) would make ``requests`` refuse the header with the key in its message.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class ApiKey:
    """The CRM API key, kept out of ``repr``/``str`` so it never lands in a log or a pipeline graph dump.

    Raises ``ValueError`` (without the value) if it is empty or holds characters a bearer token
    cannot (RFC 6750 §2.1), e.g. a trailing newline.
    """

    def __init__(self, value: str):
        if not value:
            raise ValueError("the CRM API key is empty")
        if not _BEARER_TOKEN.fullmatch(value):
            raise ValueError(
                f"the CRM API key ({len(value)} characters) holds whitespace or characters a bearer token "
                "cannot (RFC 6750): check the secret for a trailing newline or spaces"
            )
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('**********')"

    __str__ = __repr__


class KmsEncryptedApiKey:
    """The CRM API key as a Cloud KMS ciphertext, decrypted on the worker (in ``PostBatchesFn.setup``).

    A DoFn and its arguments are pickled into the job graph that Dataflow stages to GCS, so a job on
    Dataflow gets the key only in this form: the launcher encrypts it with ``kms_key_name``
    (``DataflowOptions.api_key_kms_key``) and the workers' service account, which needs
    ``roles/cloudkms.cryptoKeyDecrypter`` on that key, decrypts it. Checksums are verified as
    Google's data integrity guidelines say (https://cloud.google.com/kms/docs/data-integrity-guidelines).
    Raises ``ValueError`` if the response fails its checksum.
    """

    def __init__(self, ciphertext: bytes, kms_key_name: str):
        self.ciphertext = ciphertext
        self.kms_key_name = kms_key_name
        self._value: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"ciphertext": self.ciphertext, "kms_key_name": self.kms_key_name, "_value": None}

    def _client(self) -> Any:
        from google.cloud import kms

        return kms.KeyManagementServiceClient()

    def get_secret_value(self) -> str:
        if self._value is None:
            import google_crc32c

            response = self._client().decrypt(
                request={
                    "name": self.kms_key_name,
                    "ciphertext": self.ciphertext,
                    "ciphertext_crc32c": google_crc32c.value(self.ciphertext),
                }
            )
            if google_crc32c.value(response.plaintext) != response.plaintext_crc32c:
                raise ValueError(f"the plaintext from KMS key {self.kms_key_name} failed its CRC32C check")
            self._value = response.plaintext.decode()
        return self._value

    def __repr__(self) -> str:
        return f"KmsEncryptedApiKey(kms_key_name={self.kms_key_name!r})"

    __str__ = __repr__
