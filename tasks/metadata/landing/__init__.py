"""Landing targets: where the metadata collectors put their extract files (design.md §5, issue 4 §3).

A landing target is a directory (the *landing directory*) inside some storage: an S3 bucket
(``S3Landing``), an Azure Blob container (``AzureBlobLanding``), a GCS bucket (``GcsLanding``) or a
local directory (``LocalLanding``). Each follows ``LandingTarget``:

- ``upload(local_path, name)`` writes ``<landing_dir>/<name>``, then reads the stored object's size back
  and compares it with the local file's (bytes). It returns a ``LandedFile`` only when they are equal,
  and raises ``LandingError`` otherwise; the collector publishes its HWM only after every file of the
  run came back verified.
- ``read_text(key)`` / ``write_text(key, text)``: small UTF-8 files addressed from the target's root,
  e.g. ``<source>_hwm.txt`` next to the landing directory (``tasks.metadata.hwm.hwm_file_key``).
  ``read_text`` returns None when there is no such file.
- ``describe()``: where the landing directory is, e.g. ``s3://bucket/catalog/athena/landing``.

Keys and names are ``/``-separated paths relative to the target's root: the ``bucket_folder`` of the
S3Bucket/GcsBucket block, the container, or the local root directory. Empty and ``.`` segments are
dropped (so leading and trailing slashes do not matter); ``..`` and ``\\`` are refused (``ValueError``).

Objects are stored as they are: a ``.csv.gz`` gets ``Content-Type: application/gzip`` and no
``Content-Encoding``, so that no client or service (e.g. GCS decompressive transcoding) hands out the
decompressed bytes instead of the file.

Failures of the storage (permission, credentials, missing bucket/container/directory, connection,
verification) raise ``LandingError``, naming the target, the file, the cause and what to do. No message
contains a SAS token or a key: Azure errors, whose text carries request URLs with the SAS, are scrubbed
and raised without their cause chained.

``dry_run`` is the caller's business: it does not call a target at all.
"""

from tasks.metadata.landing.azure_blob import AzureBlobLanding
from tasks.metadata.landing.base import LandedFile, LandingError, LandingTarget, Reason
from tasks.metadata.landing.gcs import GcsLanding
from tasks.metadata.landing.local import LocalLanding
from tasks.metadata.landing.s3 import S3Landing

__all__ = [
    "AzureBlobLanding",
    "GcsLanding",
    "LandedFile",
    "LandingError",
    "LandingTarget",
    "LocalLanding",
    "Reason",
    "S3Landing",
]
