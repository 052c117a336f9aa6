"""The Athena metadata extractor: ``AthenaExtractor`` and the error it raises besides ``ExtractorConnectionError``.

Modules: ``client`` (boto3 sessions and clients, AssumeRole, AWS errors), ``glue_catalog`` (data catalogs;
Glue databases, tables, views, columns), ``information_schema`` (Athena's queries, the cross-check),
``query_history`` (workgroups as users, executions of a window), ``extractor`` (``AthenaExtractor``).
"""

from tasks.metadata.extractors.athena.client import AthenaExtractionError
from tasks.metadata.extractors.athena.extractor import AthenaExtractor

__all__ = ["AthenaExtractionError", "AthenaExtractor"]
