"""Athena metadata extractor: catalogs, databases, tables, views, columns, workgroups and query history.

``AthenaExtractor`` follows ``tasks.metadata.extracts.Extractor`` (design.md §5, issue 4 §1). It reaches AWS with
boto3 through a prefect-aws ``AwsCredentials`` block, optionally assuming a role first (STS AssumeRole,
session name ``analytics-flows-<source>``).

Where the catalog comes from (one rule, kept simple):

- **Glue catalogs** (type ``GLUE``: ``AwsDataCatalog`` and Glue catalogs registered from other accounts):
  the Glue Data Catalog APIs are the source of truth — ``GetDatabases`` and ``GetTables`` through their
  boto3 paginators. Then one Athena query of ``information_schema.tables`` per catalog cross-checks
  them: tables Glue lists that Athena does not show (e.g. hidden by Lake Formation, unreadable formats)
  and tables Athena shows that Glue did not list are logged as a WARNING. The cross-check never changes
  the rows, and its failure (e.g. no ``athena:StartQueryExecution``) is a WARNING, not an error.
- **Other catalogs** (``LAMBDA`` federated sources, ``HIVE``): Glue cannot see them, so
  ``information_schema`` is their only source: one Athena query per catalog joins
  ``information_schema.columns``, ``.tables`` and ``.views``; databases come from Athena's
  ``ListDatabases``. Their tables carry no owner, location or formats.

Queries run in the first configured workgroup (``primary`` when all workgroups are harvested), with
``ResultConfiguration.OutputLocation = output_location`` (a workgroup that enforces its own location
overrides it). They show up in that workgroup's query history, like any other query.

Entities (``run`` returns them in this order; columns as listed; times are aware UTC ``datetime``):

- ``data_catalogs``: ``DATA_CATALOG_COLUMNS``; ``metadata_source`` is ``glue`` or ``information_schema``.
- ``databases``: ``DATABASE_COLUMNS``.
- ``tables``: ``TABLE_COLUMNS``, views included (``table_type`` as the source says: Glue
  ``EXTERNAL_TABLE``/``MANAGED_TABLE``/``VIRTUAL_VIEW``, information_schema ``BASE TABLE``/``VIEW``);
  ``partition_keys`` comma-separated; ``classification`` is Glue's ``Parameters.classification``
  (``parquet``, ``csv``, ...) or, for Iceberg, ``Parameters.table_type``.
- ``views``: ``VIEW_COLUMNS``; ``view_sql`` is the SQL the view was created with: for Athena views
  (``ViewOriginalText`` = ``/* Presto View: <base64 JSON> */``) the decoded ``originalSql``
  (``view_dialect`` ``athena``), for Hive/Spark views the text itself (``hive``).
- ``columns``: ``COLUMN_COLUMNS``; ``ordinal_position`` counts from 1, partition keys after the
  columns (as Athena's ``information_schema.columns`` does).
- ``users``: ``USER_COLUMNS``: Athena records no user per query, so each workgroup is published as the
  user ``athena_workgroup_<name>`` (KADA's convention, ../shared/seeds/001_0f91690c1ed31a77.txt).
- ``query_history``: ``QUERY_HISTORY_COLUMNS``: executions of each workgroup whose
  ``Status.CompletionDateTime`` lies in the window ``[start, end)``; ``query_text`` is raw (the writer
  stage masks literals). Running and queued queries have no completion time yet: they belong to the
  window in which they complete.

Large entities (``databases`` … ``columns``, ``query_history``) are generators: the API calls happen
while the writer consumes them, one page in memory at a time; ``tables``, ``views`` and ``columns`` each
page Glue once (three passes over ``GetTables``). Failures raise ``ExtractorConnectionError`` (credentials
or permission: the message names the IAM action AWS refused) or ``AthenaExtractionError``.

IAM actions used: ``sts:GetCallerIdentity``, ``sts:AssumeRole`` (with ``role_arn``);
``athena:GetWorkGroup``/``athena:ListWorkGroups``, ``athena:ListDataCatalogs``, ``athena:GetDataCatalog``,
``athena:ListDatabases``, ``athena:StartQueryExecution``, ``athena:GetQueryExecution``,
``athena:GetQueryResults``, ``athena:StopQueryExecution``, ``athena:ListQueryExecutions``,
``athena:BatchGetQueryExecution``; ``glue:GetDatabases``, ``glue:GetTables``; ``s3:ListBucket`` (HeadBucket),
``s3:GetBucketLocation``, ``s3:GetObject``, ``s3:PutObject`` on the results bucket (KADA's policy, same file).

API references: https://docs.aws.amazon.com/athena/latest/APIReference/ (ListQueryExecutions,
BatchGetQueryExecution, GetQueryResults, StartQueryExecution, ListDataCatalogs, GetWorkGroup),
https://docs.aws.amazon.com/glue/latest/webapi/ (GetDatabases, GetTables),
https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadBucket.html,
https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from tasks.metadata.extracts import Extract, ExtractorConnectionError
from tasks.metadata.hwm import Window

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials

logger = logging.getLogger(__name__)

AWS_DATA_CATALOG = "AwsDataCatalog"

#: Athena keeps query history for 45 days ("ListQueryExecutions", Athena API reference).
ATHENA_HISTORY_DAYS = 45
#: BatchGetQueryExecution takes at most 50 ids (its API reference: "up to 50 query executions").
BATCH_GET_MAX_IDS = 50
#: ListQueryExecutions ``MaxResults`` maximum (1-50).
LIST_PAGE_SIZE = 50
#: GetQueryResults ``MaxResults`` maximum (1-1000).
RESULTS_PAGE_SIZE = 1000
#: How long before the window start a query may have been submitted and still complete inside the window:
#: Athena cancels DML after at most 240 min and DDL after 600 min ("Service Quotas", Athena user guide,
#: https://docs.aws.amazon.com/athena/latest/ug/service-limits.html), plus time queued.
STRAGGLER_MARGIN = timedelta(hours=12)

DATA_CATALOG_COLUMNS = ("catalog_name", "catalog_type", "metadata_source")
DATABASE_COLUMNS = ("catalog_name", "database_name", "description", "location_uri", "create_time")
TABLE_COLUMNS = (
    "catalog_name",
    "database_name",
    "table_name",
    "table_type",
    "description",
    "owner",
    "location",
    "input_format",
    "serde_library",
    "classification",
    "partition_keys",
    "create_time",
    "update_time",
)
VIEW_COLUMNS = ("catalog_name", "database_name", "view_name", "view_dialect", "view_sql")
COLUMN_COLUMNS = (
    "catalog_name",
    "database_name",
    "table_name",
    "column_name",
    "ordinal_position",
    "data_type",
    "is_partition_key",
    "comment",
)
USER_COLUMNS = ("user_name", "workgroup", "state", "description", "creation_time", "engine_version")
QUERY_HISTORY_COLUMNS = (
    "query_id",
    "workgroup",
    "user_name",
    "state",
    "statement_type",
    "substatement_type",
    "catalog_name",
    "database_name",
    "query_text",
    "submission_time",
    "completion_time",
    "data_scanned_bytes",
    "engine_execution_ms",
    "total_execution_ms",
    "queue_ms",
    "error_category",
    "error_type",
)

# The Glue cross-check: the tables Athena can see in a catalog.
TABLES_SQL = (
    "SELECT table_schema, table_name, table_type FROM information_schema.tables "
    "WHERE table_schema <> 'information_schema'"
)
# Non-Glue catalogs: everything in one query. ``extra_info`` is 'partition key' for partition columns;
# the view's SQL rides on its first column's row only.
CATALOG_SQL = """\
SELECT c.table_schema, c.table_name, t.table_type, c.column_name, c.ordinal_position, c.data_type,
       c.comment, c.extra_info,
       CASE WHEN c.ordinal_position = 1 THEN v.view_definition END AS view_definition
FROM information_schema.columns AS c
JOIN information_schema.tables AS t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
LEFT JOIN information_schema.views AS v ON v.table_schema = c.table_schema AND v.table_name = c.table_name
WHERE c.table_schema <> 'information_schema'
ORDER BY c.table_schema, c.table_name, c.ordinal_position"""

# Athena views in Glue: Trino's Hive connector format (trino-hive ViewReaderUtil, PRESTO_VIEW_PREFIX).
_PRESTO_VIEW = re.compile(r"/\* Presto View: (?P<payload>[A-Za-z0-9+/=\s]+?) \*/", re.DOTALL)
_S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(/.*)?")
_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]")
_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")
#: The IAM action of an operation is ``<service>:<operation>``, except these (and Athena's, the default).
_IAM_ACTIONS = {
    "GetDatabases": "glue:GetDatabases",
    "GetTables": "glue:GetTables",
    "HeadBucket": "s3:ListBucket",
    "AssumeRole": "sts:AssumeRole",
}

# Error codes (AWS "Common Errors" of each service; S3 HeadBucket has no body, only the status code).
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "IncompleteSignature",
    }
)
_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403", "Forbidden"}
)
_NO_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})


class AthenaExtractionError(RuntimeError):
    """Extraction failed for a reason other than credentials or permission: a query failed or timed out,
    query executions stayed unprocessed, a configured catalog or workgroup does not exist."""


@dataclass(frozen=True)
class _Catalog:
    """A data catalog to extract. ``glue_catalog_id``: Glue's ``CatalogId`` (None: the caller's account)."""

    name: str
    type: str
    glue_catalog_id: str | None = None

    @property
    def is_glue(self) -> bool:
        return self.type == "GLUE"

    def glue_kwargs(self) -> dict[str, str]:
        return {"CatalogId": self.glue_catalog_id} if self.glue_catalog_id else {}


def workgroup_user_name(workgroup: str) -> str:
    """The user a workgroup is published as: ``athena_workgroup_<name>``."""
    return f"athena_workgroup_{workgroup}"


def view_sql(original_text: str | None) -> tuple[str, str | None]:
    """``(dialect, sql)`` of a Glue view's ``ViewOriginalText``.

    Athena stores ``/* Presto View: <base64 JSON> */`` whose ``originalSql`` is the view's SQL
    (dialect ``athena``); Hive and Spark store the SQL text itself (``hive``). A blob that does not decode
    is returned as it is, dialect ``athena``.
    """
    if not original_text:
        return "hive", None
    match = _PRESTO_VIEW.fullmatch(original_text.strip())
    if match is None:
        return "hive", original_text
    try:
        definition = json.loads(base64.b64decode(match["payload"]))
        return "athena", definition["originalSql"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        return "athena", original_text


def _utc(value: datetime | float | None) -> datetime | None:
    """An API timestamp as an aware UTC datetime (botocore parses them aware; naive is taken as UTC)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _blank(value: Any) -> Any:
    """``""`` → None: sources differ in how they say "no value"."""
    return None if value == "" else value


def _error(exc: ClientError) -> tuple[str, str]:
    """(code, message) of an AWS error. moto answers IAM denials of JSON APIs with an XML body that botocore
    cannot parse (code "403", the XML as message): its Code and Message are read from the XML."""
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if message.lstrip().startswith("<"):
        xml_code, xml_message = _XML_CODE.search(message), _XML_MESSAGE.search(message)
        code = xml_code[1] if xml_code else code
        message = xml_message[1] if xml_message else message
    return code, message


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class AthenaExtractor:
    """Metadata of one Athena source (account + region). See the module docstring for what it extracts.

    Args:
        source: the source's configured name (e.g. ``athena-prod``), in messages and the role session name.
        credentials: prefect-aws ``AwsCredentials``; its ``aws_client_parameters`` apply to every client.
        region: AWS region of Athena and Glue, e.g. ``eu-west-1``.
        workgroups: workgroups whose history is extracted and which are published as users; None = all
            (``ListWorkGroups``). information_schema queries run in the first one (``primary`` if None).
        output_location: ``s3://bucket/prefix/`` where Athena writes the information_schema query results.
        role_arn: a role to assume with STS before anything else (session ``analytics-flows-<source>``).
        catalogs: data catalogs to extract (case-insensitive); None = all that ``ListDataCatalogs`` lists.
        endpoint_url: one endpoint for every AWS service (moto's server); overrides the block's.
        history_days: how far back query history may reach from the window end (days, 1-45; Athena keeps 45).

    Raises:
        ValueError: on an ``output_location`` that is not ``s3://bucket/...``, empty lists, bad ``history_days``.
    """

    #: Waiting for an information_schema query: first poll interval, the cap it doubles to, the give-up time
    #: (seconds). Class attributes so that tests can shorten them on an instance.
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
        self.credentials = credentials
        self.region = region
        self.workgroups = list(workgroups) if workgroups is not None else None
        self.output_location = output_location
        self.results_bucket = match["bucket"]
        self.role_arn = role_arn
        self.catalogs = list(catalogs) if catalogs is not None else None
        self.endpoint_url = endpoint_url
        self.history_days = history_days
        self.query_workgroup = self.workgroups[0] if self.workgroups else "primary"
        self.role_session_name = _SESSION_NAME_UNSAFE.sub("-", f"analytics-flows-{source}")[:64]
        self._sessions: dict[str, boto3.Session] = {}
        self._clients: dict[str, Any] = {}
        self._catalog_queries: dict[str, str] = {}
        self._identity: str | None = None

    def __repr__(self) -> str:
        return f"AthenaExtractor(source={self.source!r}, region={self.region!r})"

    # --- sessions and clients ----------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        params = self.credentials.aws_client_parameters.get_params_override()
        if self.endpoint_url:
            params["endpoint_url"] = self.endpoint_url
        # botocore's "standard" retry mode: throttling and transient errors with exponential back-off.
        config = Config(retries={"mode": "standard", "max_attempts": 8})
        params["config"] = config.merge(params["config"]) if "config" in params else config
        return {**params, "region_name": self.region}

    def _base_session(self) -> boto3.Session:
        if "base" not in self._sessions:
            self._sessions["base"] = self.credentials.get_boto3_session()
        return self._sessions["base"]

    def _session(self) -> boto3.Session:
        """The session every client uses: the block's, or the assumed role's (``ExtractorConnectionError``
        if the role cannot be assumed)."""
        if "effective" in self._sessions:
            return self._sessions["effective"]
        session = self._base_session()
        if self.role_arn:
            sts = session.client("sts", **self._client_kwargs())
            try:
                credentials = sts.assume_role(RoleArn=self.role_arn, RoleSessionName=self.role_session_name)[
                    "Credentials"
                ]
            except ClientError as exc:
                code, message = _error(exc)
                raise ExtractorConnectionError(
                    f"Athena source {self.source!r}: cannot assume role {self.role_arn} "
                    f"({code}: {message}). The identity of the AwsCredentials block needs sts:AssumeRole on "
                    "that role, and the role's trust policy must allow that identity."
                ) from exc
            except BotoCoreError as exc:
                raise self._unreachable("STS", exc) from exc
            session = boto3.Session(
                aws_access_key_id=credentials["AccessKeyId"],
                aws_secret_access_key=credentials["SecretAccessKey"],
                aws_session_token=credentials["SessionToken"],
                region_name=self.region,
            )
        self._sessions["effective"] = session
        return session

    def _client(self, name: str) -> Any:
        """The boto3 client of service ``name`` (``athena``, ``glue``, ``s3``, ``sts``), made once; the seam
        tests use to stub calls moto lacks (``botocore.stub.Stubber``)."""
        if name not in self._clients:
            self._clients[name] = self._session().client(name, **self._client_kwargs())
        return self._clients[name]

    def _unreachable(self, service: str, exc: BaseException) -> ExtractorConnectionError:
        where = self.endpoint_url or f"the {self.region} endpoint"
        return ExtractorConnectionError(
            f"Athena source {self.source!r}: cannot reach AWS {service} at {where}: {exc}"
        )

    # --- test_connection ---------------------------------------------------------------------------

    def test_connection(self) -> None:
        """Check credentials, the role, workgroups, the results bucket and Glue access.

        Credentials (``sts:GetCallerIdentity``) and the role (``sts:AssumeRole``) are checked first and
        stop at the first failure; then every other problem is collected into one
        ``ExtractorConnectionError`` naming the workgroup/bucket and the IAM action needed.
        """
        self._identity = self._check_credentials()
        if self.role_arn:
            self._session()  # raises if the role cannot be assumed
            self._identity = self._client("sts").get_caller_identity()["Arn"]
        with self._errors("checking the connection"):
            problems = [*self._check_workgroups(), *self._check_results_bucket(), *self._check_glue()]
        if problems:
            raise ExtractorConnectionError(
                f"Athena source {self.source!r} ({self.region}, as {self._identity}) is not ready: "
                + "; ".join(problems)
            )
        logger.info("Athena source %r: connected to %s as %s", self.source, self.region, self._identity)

    def _check_credentials(self) -> str:
        try:
            sts = self._base_session().client("sts", **self._client_kwargs())
            return sts.get_caller_identity()["Arn"]
        except NoCredentialsError as exc:
            raise ExtractorConnectionError(
                f"Athena source {self.source!r}: no AWS credentials: set aws_access_key_id and "
                "aws_secret_access_key (or profile_name) in its AwsCredentials block, or provide them in the "
                "environment of the worker"
            ) from exc
        except ClientError as exc:
            code, message = _error(exc)
            raise ExtractorConnectionError(
                f"Athena source {self.source!r}: AWS rejected the credentials of its AwsCredentials block "
                f"(sts:GetCallerIdentity: {code}: {message}); check the access key id, secret and session "
                "token, and whether the key is active"
            ) from exc
        except BotoCoreError as exc:
            raise self._unreachable("STS", exc) from exc

    def _denied(self, code: str, message: str, action: str, thing: str) -> str:
        if code in _DENIED_CODES:
            return f"permission denied on {thing}: grant {action} to {self._identity} ({code}: {message})"
        return f"{action} on {thing} failed ({code}: {message})"

    def _check_workgroups(self) -> list[str]:
        athena = self._client("athena")
        if self.workgroups is None:
            try:
                athena.list_work_groups(MaxResults=1)
            except ClientError as exc:
                return [self._denied(*_error(exc), "athena:ListWorkGroups", "the account's workgroups")]
            return []
        problems = []
        for name in self.workgroups:
            try:
                if self._get_workgroup(name) is None:
                    problems.append(self._missing_workgroup(name))
            except ClientError as exc:
                problems.append(self._denied(*_error(exc), "athena:GetWorkGroup", f"workgroup {name!r}"))
        return problems

    def _get_workgroup(self, name: str) -> dict[str, Any] | None:
        """GetWorkGroup's ``WorkGroup``, None if there is no such workgroup (AWS answers
        InvalidRequestException "WorkGroup <name> is not found"; moto an empty response)."""
        try:
            return self._client("athena").get_work_group(WorkGroup=name).get("WorkGroup")
        except ClientError as exc:
            code, message = _error(exc)
            if code == "InvalidRequestException" and "not found" in message.lower():
                return None
            raise

    def _missing_workgroup(self, name: str) -> str:
        return f"workgroup {name!r} does not exist in {self.region}: fix the source's workgroups or create it"

    def _check_results_bucket(self) -> list[str]:
        bucket = self.results_bucket
        try:
            self._client("s3").head_bucket(Bucket=bucket)
        except ClientError as exc:
            code, message = _error(exc)
            if code in _NO_BUCKET_CODES:
                return [
                    f"results bucket {bucket!r} (output_location {self.output_location}) does not exist: "
                    "create it or fix output_location"
                ]
            if code in _DENIED_CODES:
                return [
                    f"permission denied on results bucket {bucket!r}: grant s3:ListBucket on "
                    f"arn:aws:s3:::{bucket} (and s3:GetObject, s3:PutObject on its objects) to {self._identity}"
                ]
            return [f"s3:ListBucket (HeadBucket) on results bucket {bucket!r} failed ({code}: {message})"]
        return []

    def _check_glue(self) -> list[str]:
        try:
            self._client("glue").get_databases(MaxResults=1)
        except ClientError as exc:
            return [self._denied(*_error(exc), "glue:GetDatabases", "the Glue Data Catalog")]
        return []

    # --- run ---------------------------------------------------------------------------------------

    def history_window(self, start_hwm: datetime, end_hwm: datetime) -> Window:
        """``[start_hwm, end_hwm)`` (aware datetimes), its start clamped to ``end_hwm - history_days`` with
        a WARNING: older executions are gone from Athena. ``ValueError`` if naive or start > end."""
        window = Window(start_hwm, end_hwm)
        earliest = window.end - timedelta(days=self.history_days)
        if window.start < earliest:
            logger.warning(
                "Athena source %r: window start %s is more than %d days before its end %s; Athena keeps %d "
                "days of query history: clamped to %s, executions completed before it are not extracted",
                self.source,
                window.start.isoformat(),
                self.history_days,
                window.end.isoformat(),
                ATHENA_HISTORY_DAYS,
                earliest.isoformat(),
            )
            window = Window(earliest, window.end)
        return window

    def run(self, start_hwm: datetime, end_hwm: datetime) -> list[Extract]:
        """Every entity of the module docstring; ``query_history`` within ``[start_hwm, end_hwm)``.

        Lists catalogs and workgroups now (errors surface here); the other entities are generators.
        """
        window = self.history_window(start_hwm, end_hwm)
        self._catalog_queries.clear()
        with self._errors("listing data catalogs and workgroups"):
            catalogs = self._list_catalogs()
            workgroups = self._list_workgroups()
        return [
            Extract(
                "data_catalogs",
                DATA_CATALOG_COLUMNS,
                [(c.name, c.type, "glue" if c.is_glue else "information_schema") for c in catalogs],
            ),
            Extract("databases", DATABASE_COLUMNS, self._guarded("databases", self._databases(catalogs))),
            Extract("tables", TABLE_COLUMNS, self._guarded("tables", self._tables(catalogs))),
            Extract(
                "views",
                VIEW_COLUMNS,
                self._guarded("views", self._views(catalogs)),
                sql_columns=("view_sql",),
            ),
            Extract("columns", COLUMN_COLUMNS, self._guarded("columns", self._columns(catalogs))),
            Extract("users", USER_COLUMNS, [self._user_row(wg) for wg in workgroups]),
            Extract(
                "query_history",
                QUERY_HISTORY_COLUMNS,
                self._guarded(
                    "query_history", self._query_history([wg["Name"] for wg in workgroups], window)
                ),
                sql_columns=("query_text",),
            ),
        ]

    def _translate(self, exc: ClientError | BotoCoreError, doing: str) -> Exception:
        if isinstance(exc, BotoCoreError):
            return AthenaExtractionError(f"Athena source {self.source!r}: {doing} failed: {exc}")
        code, message = _error(exc)
        operation = exc.operation_name
        if code in _CREDENTIAL_CODES:
            return ExtractorConnectionError(
                f"Athena source {self.source!r}: {doing}: AWS rejected the credentials ({operation}: {code}: "
                f"{message}); check its AwsCredentials block (or role_arn)"
            )
        if code in _DENIED_CODES:
            action = _IAM_ACTIONS.get(operation, f"athena:{operation}")
            return ExtractorConnectionError(
                f"Athena source {self.source!r}: {doing}: {operation} was refused ({code}: {message}); "
                f"grant {action} to the collector's identity"
            )
        return AthenaExtractionError(
            f"Athena source {self.source!r}: {doing}: {operation} failed ({code}: {message})"
        )

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """AWS errors inside become ``ExtractorConnectionError`` (credentials, permission) or
        ``AthenaExtractionError``, naming the source, what was being done and AWS's message."""
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, doing) from exc

    def _guarded(self, entity: str, rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        try:
            yield from rows
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, f"extracting {entity}") from exc

    # --- catalogs ----------------------------------------------------------------------------------

    def _list_catalogs(self) -> list[_Catalog]:
        athena = self._client("athena")
        summaries = [
            summary
            for page in athena.get_paginator("list_data_catalogs").paginate()
            for summary in page.get("DataCatalogsSummary", [])
        ]
        if not any(s["CatalogName"] == AWS_DATA_CATALOG for s in summaries):
            # AWS always lists it; moto does not (design.md §7).
            summaries.insert(0, {"CatalogName": AWS_DATA_CATALOG, "Type": "GLUE"})
        usable = []
        for summary in summaries:
            status = summary.get("Status")
            if status and (status.endswith("FAILED") or status.startswith("DELETE")):
                logger.warning(
                    "Athena source %r: data catalog %r is %s: skipped",
                    self.source,
                    summary["CatalogName"],
                    status,
                )
            else:
                usable.append(summary)
        if self.catalogs is not None:
            by_name = {s["CatalogName"].lower(): s for s in usable}
            missing = [name for name in self.catalogs if name.lower() not in by_name]
            if missing:
                raise AthenaExtractionError(
                    f"Athena source {self.source!r}: data catalog(s) {missing} not found in {self.region} "
                    f"(athena:ListDataCatalogs lists {sorted(s['CatalogName'] for s in usable)}): fix catalogs"
                )
            usable = [by_name[name.lower()] for name in dict.fromkeys(self.catalogs)]
        catalogs = []
        for summary in usable:
            name, kind = summary["CatalogName"], summary.get("Type", "GLUE")
            catalog_id = None
            if kind == "GLUE" and name != AWS_DATA_CATALOG:
                parameters = athena.get_data_catalog(Name=name)["DataCatalog"].get("Parameters") or {}
                catalog_id = parameters.get("catalog-id")
            catalogs.append(_Catalog(name, kind, catalog_id))
        return catalogs

    def _glue_databases(self, catalog: _Catalog) -> Iterator[dict[str, Any]]:
        pages = self._client("glue").get_paginator("get_databases").paginate(**catalog.glue_kwargs())
        for page in pages:
            yield from page.get("DatabaseList", [])

    def _glue_tables(self, catalog: _Catalog) -> Iterator[dict[str, Any]]:
        paginator = self._client("glue").get_paginator("get_tables")
        for database in self._glue_databases(catalog):
            for page in paginator.paginate(DatabaseName=database["Name"], **catalog.glue_kwargs()):
                yield from page.get("TableList", [])

    def _databases(self, catalogs: list[_Catalog]) -> Iterator[tuple[Any, ...]]:
        for catalog in catalogs:
            if catalog.is_glue:
                for db in self._glue_databases(catalog):
                    yield (
                        catalog.name,
                        db["Name"],
                        _blank(db.get("Description")),
                        _blank(db.get("LocationUri")),
                        _utc(db.get("CreateTime")),
                    )
            else:
                pages = (
                    self._client("athena").get_paginator("list_databases").paginate(CatalogName=catalog.name)
                )
                for page in pages:
                    for db in page.get("DatabaseList", []):
                        yield (catalog.name, db["Name"], _blank(db.get("Description")), None, None)

    def _tables(self, catalogs: list[_Catalog]) -> Iterator[tuple[Any, ...]]:
        for catalog in catalogs:
            if not catalog.is_glue:
                yield from self._schema_tables(catalog)
                continue
            seen: set[tuple[str, str]] = set()
            for table in self._glue_tables(catalog):
                seen.add((table["DatabaseName"].lower(), table["Name"].lower()))
                storage = table.get("StorageDescriptor") or {}
                parameters = table.get("Parameters") or {}
                keys = [key["Name"] for key in table.get("PartitionKeys") or []]
                yield (
                    catalog.name,
                    table["DatabaseName"],
                    table["Name"],
                    table.get("TableType"),
                    _blank(table.get("Description")),
                    _blank(table.get("Owner")),
                    _blank(storage.get("Location")),
                    _blank(storage.get("InputFormat")),
                    _blank((storage.get("SerdeInfo") or {}).get("SerializationLibrary")),
                    parameters.get("classification") or parameters.get("table_type"),
                    ",".join(keys) or None,
                    _utc(table.get("CreateTime")),
                    _utc(table.get("UpdateTime")),
                )
            self._cross_check(catalog, seen)

    def _views(self, catalogs: list[_Catalog]) -> Iterator[tuple[Any, ...]]:
        for catalog in catalogs:
            if not catalog.is_glue:
                yield from self._schema_views(catalog)
                continue
            for table in self._glue_tables(catalog):
                if table.get("TableType") == "VIRTUAL_VIEW":
                    dialect, sql = view_sql(table.get("ViewOriginalText"))
                    yield (catalog.name, table["DatabaseName"], table["Name"], dialect, sql)

    def _columns(self, catalogs: list[_Catalog]) -> Iterator[tuple[Any, ...]]:
        for catalog in catalogs:
            if not catalog.is_glue:
                yield from self._schema_columns(catalog)
                continue
            for table in self._glue_tables(catalog):
                columns = (table.get("StorageDescriptor") or {}).get("Columns") or []
                keys = table.get("PartitionKeys") or []
                for position, (column, is_key) in enumerate(
                    itertools.chain(((c, False) for c in columns), ((k, True) for k in keys)), start=1
                ):
                    yield (
                        catalog.name,
                        table["DatabaseName"],
                        table["Name"],
                        column["Name"],
                        position,
                        column.get("Type"),
                        is_key,
                        _blank(column.get("Comment")),
                    )

    # --- information_schema through Athena ---------------------------------------------------------

    def _cross_check(self, catalog: _Catalog, glue_tables: set[tuple[str, str]]) -> None:
        """Compare Glue's tables with what Athena's information_schema shows; differences are WARNINGs."""
        try:
            execution_id = self._run_query(catalog.name, TABLES_SQL)
            athena_tables = {
                (row["table_schema"].lower(), row["table_name"].lower())
                for row in self._result_rows(execution_id)
            }
        except (AthenaExtractionError, ClientError, BotoCoreError) as exc:
            logger.warning(
                "Athena source %r: information_schema cross-check of catalog %r skipped: %s",
                self.source,
                catalog.name,
                exc,
            )
            return
        for missing, where, other in (
            (glue_tables - athena_tables, "Glue lists", "Athena's information_schema does not show"),
            (athena_tables - glue_tables, "Athena's information_schema shows", "Glue did not list"),
        ):
            if missing:
                names = sorted(f"{db}.{table}" for db, table in missing)
                logger.warning(
                    "Athena source %r, catalog %r: %s %d table(s) that %s (Lake Formation permissions, "
                    "unsupported formats, or a change during the run?): %s%s",
                    self.source,
                    catalog.name,
                    where,
                    len(names),
                    other,
                    ", ".join(names[:20]),
                    " …" if len(names) > 20 else "",
                )

    def _run_query(self, catalog: str, sql: str) -> str:
        """Start ``sql`` in ``catalog`` and wait (backing off) until it SUCCEEDED; its execution id.

        ``AthenaExtractionError`` if it FAILED, was CANCELLED or outlived ``query_timeout_seconds`` (then it
        is stopped).
        """
        athena = self._client("athena")
        execution_id = athena.start_query_execution(
            QueryString=sql,
            QueryExecutionContext={"Catalog": catalog},
            ResultConfiguration={"OutputLocation": self.output_location},
            WorkGroup=self.query_workgroup,
        )["QueryExecutionId"]
        deadline = time.monotonic() + self.query_timeout_seconds
        delay = self.query_poll_seconds
        while True:
            status = athena.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"]["Status"]
            state = status["State"]
            if state == "SUCCEEDED":
                return execution_id
            if state in ("FAILED", "CANCELLED"):
                reason = status.get("StateChangeReason") or (status.get("AthenaError") or {}).get(
                    "ErrorMessage"
                )
                raise AthenaExtractionError(
                    f"Athena source {self.source!r}: information_schema query {execution_id} on catalog "
                    f"{catalog!r} (workgroup {self.query_workgroup!r}) {state}: {reason}"
                )
            if time.monotonic() >= deadline:
                try:
                    athena.stop_query_execution(QueryExecutionId=execution_id)
                except ClientError:
                    logger.warning("Athena source %r: could not stop query %s", self.source, execution_id)
                raise AthenaExtractionError(
                    f"Athena source {self.source!r}: information_schema query {execution_id} on catalog "
                    f"{catalog!r} still {state} after {self.query_timeout_seconds:.0f} s: stopped"
                )
            time.sleep(delay)
            delay = min(delay * 2, self.query_poll_max_seconds)

    def _result_rows(self, execution_id: str) -> Iterator[dict[str, str | None]]:
        """Rows of a finished query as ``{column: value}`` (strings; None = NULL), via the paginator.

        The first row of a SELECT's first page holds the column names (GetQueryResults reference): skipped.
        """
        pages = (
            self._client("athena")
            .get_paginator("get_query_results")
            .paginate(QueryExecutionId=execution_id, PaginationConfig={"PageSize": RESULTS_PAGE_SIZE})
        )
        names: list[str] | None = None
        for page_number, page in enumerate(pages):
            result = page["ResultSet"]
            if names is None:
                names = [c["Name"] for c in result["ResultSetMetadata"]["ColumnInfo"]]
            for row_number, row in enumerate(result.get("Rows", [])):
                values = [datum.get("VarCharValue") for datum in row["Data"]]
                if page_number == 0 and row_number == 0 and values == names:
                    continue
                yield dict(zip(names, values, strict=True))

    def _catalog_rows(self, catalog: _Catalog) -> Iterator[dict[str, str | None]]:
        """``CATALOG_SQL``'s rows for a non-Glue catalog; the query runs once per ``run``."""
        if catalog.name not in self._catalog_queries:
            self._catalog_queries[catalog.name] = self._run_query(catalog.name, CATALOG_SQL)
        return self._result_rows(self._catalog_queries[catalog.name])

    def _schema_table_groups(self, catalog: _Catalog) -> Iterator[list[dict[str, str | None]]]:
        for _, rows in itertools.groupby(
            self._catalog_rows(catalog), lambda r: (r["table_schema"], r["table_name"])
        ):
            yield list(rows)

    def _schema_tables(self, catalog: _Catalog) -> Iterator[tuple[Any, ...]]:
        for rows in self._schema_table_groups(catalog):
            first = rows[0]
            keys = [r["column_name"] for r in rows if r["extra_info"] == "partition key"]
            yield (
                catalog.name,
                first["table_schema"],
                first["table_name"],
                first["table_type"],
                *(None,) * 6,
                ",".join(k for k in keys if k) or None,
                None,
                None,
            )

    def _schema_views(self, catalog: _Catalog) -> Iterator[tuple[Any, ...]]:
        for rows in self._schema_table_groups(catalog):
            first = rows[0]
            if first["table_type"] == "VIEW":
                sql = next((r["view_definition"] for r in rows if r["view_definition"]), None)
                yield (catalog.name, first["table_schema"], first["table_name"], "athena", sql)

    def _schema_columns(self, catalog: _Catalog) -> Iterator[tuple[Any, ...]]:
        for row in self._catalog_rows(catalog):
            position = row["ordinal_position"]
            yield (
                catalog.name,
                row["table_schema"],
                row["table_name"],
                row["column_name"],
                int(position) if position is not None else None,
                row["data_type"],
                row["extra_info"] == "partition key",
                _blank(row["comment"]),
            )

    # --- workgroups and query history --------------------------------------------------------------

    def _list_workgroups(self) -> list[dict[str, Any]]:
        """Workgroup descriptions (``Name``, ``State``, ``Description``, ``CreationTime``, engine version)."""
        athena = self._client("athena")
        if self.workgroups is None:
            # botocore has no paginator for ListWorkGroups: follow NextToken.
            workgroups, token = [], None
            while True:
                page = athena.list_work_groups(**({"NextToken": token} if token else {}))
                workgroups += page.get("WorkGroups", [])
                token = page.get("NextToken")
                if not token:
                    return workgroups
        workgroups = []
        for name in self.workgroups:
            workgroup = self._get_workgroup(name)
            if workgroup is None:
                raise AthenaExtractionError(f"Athena source {self.source!r}: {self._missing_workgroup(name)}")
            workgroups.append(workgroup)
        return workgroups

    @staticmethod
    def _user_row(workgroup: dict[str, Any]) -> tuple[Any, ...]:
        engine = (
            workgroup.get("EngineVersion")
            or (workgroup.get("Configuration") or {}).get("EngineVersion")
            or {}
        )
        return (
            workgroup_user_name(workgroup["Name"]),
            workgroup["Name"],
            workgroup.get("State"),
            _blank(workgroup.get("Description")),
            _utc(workgroup.get("CreationTime")),
            engine.get("EffectiveEngineVersion") or engine.get("SelectedEngineVersion"),
        )

    def _query_history(self, workgroups: list[str], window: Window) -> Iterator[tuple[Any, ...]]:
        if window.empty:
            return
        for workgroup in workgroups:
            yield from self._workgroup_history(workgroup, window)

    def _workgroup_history(self, workgroup: str, window: Window) -> Iterator[tuple[Any, ...]]:
        """Executions of ``workgroup`` completed in ``window``.

        AWS lists executions newest first (by submission), 50 per page: once the listing has been in
        that order so far and a whole page was submitted before ``window.start - STRAGGLER_MARGIN``, no
        later page can hold an execution completed in the window, and paging stops. A listing seen out of
        that order (moto: oldest first, one page — design.md §7) is read to its end.
        """
        cutoff = window.start - STRAGGLER_MARGIN
        newest_first = True
        previous: datetime | None = None
        kept = listed = pages_read = 0
        pages = (
            self._client("athena")
            .get_paginator("list_query_executions")
            .paginate(WorkGroup=workgroup, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
        )
        for page in pages:
            pages_read += 1
            ids = page.get("QueryExecutionIds", [])
            listed += len(ids)
            executions = self._batch_get(ids)
            submitted_times = []
            for execution_id in ids:
                execution = executions[execution_id]
                status = execution.get("Status") or {}
                submitted = _utc(status.get("SubmissionDateTime"))
                if submitted is not None:
                    if previous is not None and submitted > previous:
                        newest_first = False
                    previous = submitted
                    submitted_times.append(submitted)
                completed = _utc(status.get("CompletionDateTime"))
                if completed is not None and window.contains(completed):
                    kept += 1
                    yield self._history_row(execution, workgroup)
            if newest_first and submitted_times and max(submitted_times) < cutoff:
                logger.debug(
                    "Athena workgroup %r: page %d is older than %s: stop paging",
                    workgroup,
                    pages_read,
                    cutoff,
                )
                break
        logger.info(
            "Athena source %r: workgroup %r: %d execution(s) completed in %s of %d listed (%d page(s))",
            self.source,
            workgroup,
            kept,
            window,
            listed,
            pages_read,
        )

    def _batch_get(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """``BatchGetQueryExecution`` of ``ids`` in chunks of ≤ 50; unprocessed ids are asked for again
        (``unprocessed_retries`` times, backing off), then ``AthenaExtractionError`` names them."""
        athena = self._client("athena")
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(ids, BATCH_GET_MAX_IDS):
            pending, errors = chunk, {}
            for attempt in range(self.unprocessed_retries + 1):
                if attempt:
                    time.sleep(self.unprocessed_retry_seconds * 2 ** (attempt - 1))
                response = athena.batch_get_query_execution(QueryExecutionIds=pending)
                for execution in response.get("QueryExecutions", []):
                    found[execution["QueryExecutionId"]] = execution
                errors = {
                    u["QueryExecutionId"]: f"{u.get('ErrorCode')}: {u.get('ErrorMessage')}"
                    for u in response.get("UnprocessedQueryExecutionIds", [])
                }
                pending = [i for i in pending if i not in found]
                if not pending:
                    break
                logger.info(
                    "Athena source %r: %d query execution(s) unprocessed (attempt %d): retrying",
                    self.source,
                    len(pending),
                    attempt + 1,
                )
            if pending:
                details = ", ".join(f"{i} ({errors.get(i, 'not returned')})" for i in pending)
                raise AthenaExtractionError(
                    f"Athena source {self.source!r}: BatchGetQueryExecution left {len(pending)} execution(s) "
                    f"unprocessed after {self.unprocessed_retries} retries: {details}. Nothing was published; "
                    "rerun the collector (same window)."
                )
        return found

    @staticmethod
    def _history_row(execution: dict[str, Any], listed_in: str) -> tuple[Any, ...]:
        status = execution.get("Status") or {}
        statistics = execution.get("Statistics") or {}
        context = execution.get("QueryExecutionContext") or {}
        error = status.get("AthenaError") or {}
        workgroup = execution.get("WorkGroup") or listed_in
        return (
            execution["QueryExecutionId"],
            workgroup,
            workgroup_user_name(workgroup),
            status.get("State"),
            execution.get("StatementType"),
            execution.get("SubstatementType"),
            context.get("Catalog"),
            context.get("Database"),
            execution.get("Query"),
            _utc(status.get("SubmissionDateTime")),
            _utc(status.get("CompletionDateTime")),
            statistics.get("DataScannedInBytes"),
            statistics.get("EngineExecutionTimeInMillis"),
            statistics.get("TotalExecutionTimeInMillis"),
            statistics.get("QueryQueueTimeInMillis"),
            error.get("ErrorCategory"),
            error.get("ErrorType"),
        )
