"""Landing targets: where the metadata collectors put their extract files (S3, Azure Blob, GCS, local).

Each follows ``LandingTarget`` (``upload`` then verify, ``read_text``/``write_text``, ``describe``);
keys, content types and errors: docs/metadata-collectors.md ("Landing targets").
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
