"""``AthenaExtractor``: the metadata of one Athena source (account + region), as ``Extract``s.

What it extracts, from where, and the IAM actions it needs: docs/metadata-collectors.md ("Athena");
the columns of each entity: docs/metadata-extracts.md.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from tasks.metadata.extractors.athena import glue_catalog, information_schema, query_history
from tasks.metadata.extractors.athena.client import (
    DENIED_CODES,
    NO_BUCKET_CODES,
    AwsClients,
    aws_error,
    aws_errors,
    guarded,
)
from tasks.metadata.extractors.athena.glue_catalog import (
    COLUMN_COLUMNS,
    DATA_CATALOG_COLUMNS,
    DATABASE_COLUMNS,
    TABLE_COLUMNS,
    VIEW_COLUMNS,
    Catalog,
)
from tasks.metadata.extractors.athena.information_schema import InformationSchema
from tasks.metadata.extractors.athena.query_history import (
    ATHENA_HISTORY_DAYS,
    QUERY_HISTORY_COLUMNS,
    USER_COLUMNS,
    QueryHistory,
)
from tasks.metadata.extracts import Extract, ExtractorConnectionError
from tasks.metadata.hwm import Window
from tasks.metadata.lineage.athena import AthenaLineage

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials

logger = logging.getLogger(__name__)

_S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(/.*)?")


class AthenaExtractor(contextlib.AbstractContextManager):
    """Metadata of one Athena source (account + region); follows ``tasks.metadata.extracts.Extractor``.

    Args:
        source: the source's configured name (e.g. ``athena-prod``), in messages and the role session name.
        credentials: prefect-aws ``AwsCredentials``; its ``aws_client_parameters`` apply to every client.
        region: AWS region of Athena and Glue, e.g. ``eu-west-1``.
        workgroups: workgroups whose history is extracted and which are published as users; None = all
            (``ListWorkGroups``). information_schema queries run in the first one (``primary`` if None).
        output_location: ``s3://bucket/prefix/`` where Athena writes the information_schema query results.
        role_arn: a role to assume with STS before anything else (session ``analytics-flows-<source>``).
        catalogs: data catalogs to extract (case-insensitive); None = all that ``ListDataCatalogs`` lists.
        endpoint_url: one endpoint for every AWS service; overrides the block's.
        history_days: how far back query history may reach from the window end (days, 1-45; Athena keeps 45).
        job_namespace: the OpenLineage job namespace of the queries' runs (None: the source's name).

    Attributes:
        aws: the source's boto3 clients (``AwsClients``): ``aws.client("athena")``, ``"glue"``, ``"s3"``, ``"sts"``.

    Raises:
        ValueError: on an ``output_location`` that is not ``s3://bucket/...``, empty lists, bad ``history_days``.

    A context manager: the extracts of ``run`` hold a temporary file (the lineage's spooled OpenLineage
    events) until they are written; the end of the ``with`` block (or ``close()``) drops it.
    """

    #: Waiting for an information_schema query: first poll interval, the cap it doubles to, the give-up time
    #: (seconds). Class attributes: an instance may set its own.
    query_poll_seconds = 0.25
    query_poll_max_seconds = 5.0
    query_timeout_seconds = 900.0
    #: BatchGetQueryExecution: how often unprocessed ids are asked for again, and the first back-off (s).
    unprocessed_retries = 3
    unprocessed_retry_seconds = 1.0

    def __init__(
        self,
        source: str,
        credentials: AwsCredentials,
        region: str,
        workgroups: list[str] | None,
        output_location: str,
        role_arn: str | None = None,
        catalogs: list[str] | None = None,
        endpoint_url: str | None = None,
        history_days: int = ATHENA_HISTORY_DAYS,
        job_namespace: str | None = None,
    ) -> None:
        match = _S3_URI.fullmatch(output_location or "")
        if match is None:
            raise ValueError(
                f"output_location of Athena source {source!r} must be an s3:// URI of the query-results "
                f"bucket, e.g. 's3://my-athena-results/collector/'; got {output_location!r}"
            )
        if workgroups is not None and not workgroups:
            raise ValueError(f"workgroups of Athena source {source!r} is empty: list some, or None for all")
        if catalogs is not None and not catalogs:
            raise ValueError(f"catalogs of Athena source {source!r} is empty: list some, or None for all")
        if not 1 <= history_days <= ATHENA_HISTORY_DAYS:
            raise ValueError(
                f"history_days must be 1..{ATHENA_HISTORY_DAYS} (Athena keeps 45 days), got {history_days}"
            )
        self.source = source
        self.region = region
        self.workgroups = list(workgroups) if workgroups is not None else None
        self.output_location = output_location
        self.results_bucket = match["bucket"]
        self.role_arn = role_arn
        self.catalogs = list(catalogs) if catalogs is not None else None
        self.history_days = history_days
        self.job_namespace = job_namespace
        self.query_workgroup = self.workgroups[0] if self.workgroups else "primary"
        self.aws = AwsClients(source, credentials, region, role_arn, endpoint_url)
        self._identity: str | None = None
        self.problems: list[str] = []
        self.lineage: AthenaLineage | None = None
        self._resources = contextlib.ExitStack()  # what the extracts of ``run`` hold until written

    def __repr__(self) -> str:
        return f"AthenaExtractor(source={self.source!r}, region={self.region!r})"

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop what the extracts of ``run`` hold (the lineage's temporary file), written or not."""
        self._resources.close()

    # --- test_connection ---------------------------------------------------------------------------

    def test_connection(self) -> None:
        """Check credentials, the role, workgroups, the results bucket and Glue access.

        Credentials (``sts:GetCallerIdentity``) and the role (``sts:AssumeRole``) are checked first and
        stop at the first failure; then every other problem is collected into one
        ``ExtractorConnectionError`` naming the workgroup/bucket and the IAM action needed.
        """
        self._identity = self.aws.check_credentials()
        if self.role_arn:
            self.aws.session()  # raises if the role cannot be assumed
            self._identity = self.aws.client("sts").get_caller_identity()["Arn"]
        with aws_errors(self.source, "checking the connection"):
            problems = [*self._check_workgroups(), *self._check_results_bucket(), *self._check_glue()]
        if problems:
            raise ExtractorConnectionError(
                f"Athena source {self.source!r} ({self.region}, as {self._identity}) is not ready: "
                + "; ".join(problems)
            )
        logger.info("Athena source %r: connected to %s as %s", self.source, self.region, self._identity)

    def _denied(self, code: str, message: str, action: str, thing: str) -> str:
        if code in DENIED_CODES:
            return f"permission denied on {thing}: grant {action} to {self._identity} ({code}: {message})"
        return f"{action} on {thing} failed ({code}: {message})"

    def _check_workgroups(self) -> list[str]:
        athena = self.aws.client("athena")
        if self.workgroups is None:
            try:
                athena.list_work_groups(MaxResults=1)
            except ClientError as exc:
                return [self._denied(*aws_error(exc), "athena:ListWorkGroups", "the account's workgroups")]
            return []
        problems = []
        for name in self.workgroups:
            try:
                if query_history.get_workgroup(athena, name) is None:
                    problems.append(query_history.missing_workgroup(name, self.region))
            except ClientError as exc:
                problems.append(self._denied(*aws_error(exc), "athena:GetWorkGroup", f"workgroup {name!r}"))
        return problems

    def _check_results_bucket(self) -> list[str]:
        bucket = self.results_bucket
        try:
            self.aws.client("s3").head_bucket(Bucket=bucket)
        except ClientError as exc:
            code, message = aws_error(exc)
            if code in NO_BUCKET_CODES:
                return [
                    f"results bucket {bucket!r} (output_location {self.output_location}) does not exist: "
                    "create it or fix output_location"
                ]
            if code in DENIED_CODES:
                return [
                    f"permission denied on results bucket {bucket!r}: grant s3:ListBucket on "
                    f"arn:aws:s3:::{bucket} (and s3:GetObject, s3:PutObject on its objects) to {self._identity}"
                ]
            return [f"s3:ListBucket (HeadBucket) on results bucket {bucket!r} failed ({code}: {message})"]
        return []

    def _check_glue(self) -> list[str]:
        try:
            self.aws.client("glue").get_databases(MaxResults=1)
        except ClientError as exc:
            return [self._denied(*aws_error(exc), "glue:GetDatabases", "the Glue Data Catalog")]
        return []

    # --- run ---------------------------------------------------------------------------------------

    def history_window(self, start_hwm: datetime, end_hwm: datetime) -> Window:
        """``[start_hwm, end_hwm)`` (aware datetimes), its start clamped to ``end_hwm - history_days`` with
        a WARNING: older executions are gone from Athena. ``ValueError`` if naive or start > end."""
        return query_history.history_window(self.source, start_hwm, end_hwm, self.history_days)

    def run(self, start_hwm: datetime, end_hwm: datetime) -> list[Extract]:
        """Every entity (docs/metadata-extracts.md); ``query_history`` within ``[start_hwm, end_hwm)``;
        then lineage and usage of the views and of that query history, and its OpenLineage events
        (``tasks.metadata.lineage.athena``; ``self.lineage`` holds their figures once written). Write the
        extracts before the extractor's ``with`` block ends (or ``close()``).

        Lists catalogs and workgroups now (errors surface here); the other entities are generators: the
        API calls happen while the writer consumes them, one page in memory at a time. Raises
        ``ExtractorConnectionError`` (credentials or permission: the message names the IAM action AWS
        refused) or ``AthenaExtractionError``, now or while the rows are read.
        """
        window = self.history_window(start_hwm, end_hwm)
        with aws_errors(self.source, "listing data catalogs and workgroups"):
            athena = self.aws.client("athena")
            catalogs = glue_catalog.list_catalogs(athena, self.source, self.region, self.catalogs)
            workgroups = query_history.list_workgroups(athena, self.source, self.region, self.workgroups)
            # the Glue Data Catalog's account: a catalog's catalog-id, else the caller's (sts:GetCallerIdentity
            # needs no permission), for the OpenLineage symlinks of its tables
            account = self.aws.client("sts").get_caller_identity()["Account"]
        glue_catalog_ids = {c.name.lower(): c.glue_catalog_id or account for c in catalogs if c.is_glue}
        schema = InformationSchema(
            athena,
            self.source,
            self.query_workgroup,
            self.output_location,
            poll_seconds=self.query_poll_seconds,
            poll_max_seconds=self.query_poll_max_seconds,
            timeout_seconds=self.query_timeout_seconds,
        )
        history = QueryHistory(
            athena,
            self.source,
            unprocessed_retries=self.unprocessed_retries,
            unprocessed_retry_seconds=self.unprocessed_retry_seconds,
        )

        def entity(name: str, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
            return guarded(self.source, name, rows)

        lineage = self.lineage = self._resources.enter_context(
            AthenaLineage(
                self.source,
                self.region,
                window.end,
                job_namespace=self.job_namespace,
                glue_catalog_ids=glue_catalog_ids,
            )
        )

        return [
            Extract(
                "data_catalogs",
                DATA_CATALOG_COLUMNS,
                [(c.name, c.type, c.metadata_source) for c in catalogs],
            ),
            Extract("databases", DATABASE_COLUMNS, entity("databases", self._databases(catalogs))),
            Extract("tables", TABLE_COLUMNS, entity("tables", self._tables(catalogs, schema))),
            Extract(
                "views",
                VIEW_COLUMNS,
                lineage.views(entity("views", self._views(catalogs, schema))),
                sql_columns=("view_sql",),
                sql_dialect_column="view_dialect",
            ),
            Extract(
                "columns", COLUMN_COLUMNS, lineage.columns(entity("columns", self._columns(catalogs, schema)))
            ),
            Extract("users", USER_COLUMNS, [query_history.user_row(wg) for wg in workgroups]),
            Extract(
                "query_history",
                QUERY_HISTORY_COLUMNS,
                lineage.query_history(
                    entity("query_history", history.rows([wg["Name"] for wg in workgroups], window))
                ),
                sql_columns=("query_text",),
            ),
            *lineage.extracts(),
        ]

    # Glue catalogs come from Glue (cross-checked with information_schema); others from Athena alone.

    def _databases(self, catalogs: list[Catalog]) -> Iterator[tuple[Any, ...]]:
        for catalog in catalogs:
            if catalog.is_glue:
                yield from glue_catalog.database_rows(self.aws.client("glue"), catalog)
            else:
                yield from information_schema.database_rows(self.aws.client("athena"), catalog)

    def _tables(self, catalogs: list[Catalog], schema: InformationSchema) -> Iterator[tuple[Any, ...]]:
        for catalog in catalogs:
            if catalog.is_glue:
                seen: set[tuple[str, str]] = set()
                yield from glue_catalog.table_rows(self.aws.client("glue"), catalog, seen)
                schema.cross_check(catalog, seen)
            else:
                yield from schema.table_rows(catalog)

    def _views(self, catalogs: list[Catalog], schema: InformationSchema) -> Iterator[tuple[Any, ...]]:
        for catalog in catalogs:
            if catalog.is_glue:
                yield from glue_catalog.view_rows(self.aws.client("glue"), catalog)
            else:
                yield from schema.view_rows(catalog)

    def _columns(self, catalogs: list[Catalog], schema: InformationSchema) -> Iterator[tuple[Any, ...]]:
        for catalog in catalogs:
            if catalog.is_glue:
                yield from glue_catalog.column_rows(self.aws.client("glue"), catalog)
            else:
                yield from schema.column_rows(catalog)
