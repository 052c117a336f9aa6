"""Workgroups (published as users) and their query history: the executions completed in a window."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from pipelines.retries import Backoff, retrying
from tasks.common import to_utc
from tasks.metadata.extractors.athena.client import AthenaExtractionError, aws_error
from tasks.metadata.extractors.athena.glue_catalog import blank
from tasks.metadata.hwm import Window

logger = logging.getLogger(__name__)

#: Athena keeps query history for 45 days ("ListQueryExecutions", Athena API reference).
ATHENA_HISTORY_DAYS = 45
#: BatchGetQueryExecution takes at most 50 ids (its API reference: "up to 50 query executions").
BATCH_GET_MAX_IDS = 50
#: ListQueryExecutions ``MaxResults`` maximum (1-50).
LIST_PAGE_SIZE = 50
#: How long before the window start a query may have been submitted and still complete inside the window:
#: Athena cancels DML after at most 240 min and DDL after 600 min ("Service Quotas", Athena user guide,
#: https://docs.aws.amazon.com/athena/latest/ug/service-limits.html), plus time queued.
STRAGGLER_MARGIN = timedelta(hours=12)

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


def workgroup_user_name(workgroup: str) -> str:
    """The user a workgroup is published as: ``athena_workgroup_<name>``."""
    return f"athena_workgroup_{workgroup}"


def missing_workgroup(name: str, region: str) -> str:
    """The problem of a configured workgroup that does not exist, for messages."""
    return f"workgroup {name!r} does not exist in {region}: fix the source's workgroups or create it"


def get_workgroup(athena: Any, name: str) -> dict[str, Any] | None:
    """GetWorkGroup's ``WorkGroup``, None if there is no such workgroup (AWS answers
    ``InvalidRequestException`` "WorkGroup <name> is not found.")."""
    try:
        return athena.get_work_group(WorkGroup=name)["WorkGroup"]
    except ClientError as exc:
        code, message = aws_error(exc)
        if code == "InvalidRequestException" and "not found" in message.lower():
            return None
        raise


def list_workgroups(athena: Any, source: str, region: str, names: list[str] | None) -> list[dict[str, Any]]:
    """Workgroup descriptions (``Name``, ``State``, ``Description``, ``CreationTime``, engine version) of
    ``names``, or of every workgroup (``ListWorkGroups``) when None. ``AthenaExtractionError`` names a
    configured workgroup that does not exist."""
    if names is None:
        # botocore has no paginator for ListWorkGroups: follow NextToken.
        workgroups, token = [], None
        while True:
            page = athena.list_work_groups(**({"NextToken": token} if token else {}))
            workgroups += page.get("WorkGroups", [])
            token = page.get("NextToken")
            if not token:
                return workgroups
    workgroups = []
    for name in names:
        workgroup = get_workgroup(athena, name)
        if workgroup is None:
            raise AthenaExtractionError(f"Athena source {source!r}: {missing_workgroup(name, region)}")
        workgroups.append(workgroup)
    return workgroups


def user_row(workgroup: dict[str, Any]) -> tuple[Any, ...]:
    """The ``USER_COLUMNS`` row of a workgroup."""
    engine = (
        workgroup.get("EngineVersion") or (workgroup.get("Configuration") or {}).get("EngineVersion") or {}
    )
    return (
        workgroup_user_name(workgroup["Name"]),
        workgroup["Name"],
        workgroup.get("State"),
        blank(workgroup.get("Description")),
        to_utc(workgroup.get("CreationTime")),
        engine.get("EffectiveEngineVersion") or engine.get("SelectedEngineVersion"),
    )


def history_window(source: str, start_hwm: datetime, end_hwm: datetime, history_days: int) -> Window:
    """``[start_hwm, end_hwm)`` (aware datetimes), its start clamped to ``end_hwm - history_days`` with
    a WARNING: older executions are gone from Athena. ``ValueError`` if naive or start > end."""
    window = Window(start_hwm, end_hwm)
    earliest = window.end - timedelta(days=history_days)
    if window.start < earliest:
        logger.warning(
            "Athena source %r: window start %s is more than %d days before its end %s; Athena keeps %d "
            "days of query history: clamped to %s, executions completed before it are not extracted",
            source,
            window.start.isoformat(),
            history_days,
            window.end.isoformat(),
            ATHENA_HISTORY_DAYS,
            earliest.isoformat(),
        )
        window = Window(earliest, window.end)
    return window


class QueryHistory:
    """The executions of workgroups completed in a window, through ``ListQueryExecutions`` and
    ``BatchGetQueryExecution``.

    Args:
        athena: the source's boto3 Athena client.
        source: the source's name, for messages.
        unprocessed_retries: how often ids BatchGetQueryExecution left unprocessed are asked for again.
        unprocessed_retry_seconds: the first back-off before that (seconds; doubles each time).
    """

    def __init__(
        self, athena: Any, source: str, *, unprocessed_retries: int, unprocessed_retry_seconds: float
    ):
        self.athena = athena
        self.source = source
        self.unprocessed_retries = unprocessed_retries
        self.unprocessed_retry_seconds = unprocessed_retry_seconds

    def rows(self, workgroups: list[str], window: Window) -> Iterator[tuple[Any, ...]]:
        """``QUERY_HISTORY_COLUMNS`` rows of the executions of ``workgroups`` completed in ``window``."""
        if window.empty:
            return
        for workgroup in workgroups:
            yield from self._workgroup_rows(workgroup, window)

    def _workgroup_rows(self, workgroup: str, window: Window) -> Iterator[tuple[Any, ...]]:
        """Executions of ``workgroup`` completed in ``window``.

        Athena lists executions newest first (by submission), at most 50 per page: once a whole page was
        submitted before ``window.start - STRAGGLER_MARGIN``, no later page can hold an execution
        completed in the window, and paging stops.
        """
        cutoff = window.start - STRAGGLER_MARGIN
        kept = listed = pages_read = 0
        pages = self.athena.get_paginator("list_query_executions").paginate(
            WorkGroup=workgroup, PaginationConfig={"PageSize": LIST_PAGE_SIZE}
        )
        for page in pages:
            pages_read += 1
            ids = page.get("QueryExecutionIds", [])
            listed += len(ids)
            executions = self.batch_get(ids)
            submitted_times = []
            for execution_id in ids:
                execution = executions[execution_id]
                status = execution.get("Status") or {}
                submitted = to_utc(status.get("SubmissionDateTime"))
                if submitted is not None:
                    submitted_times.append(submitted)
                completed = to_utc(status.get("CompletionDateTime"))
                if completed is not None and window.contains(completed):
                    kept += 1
                    yield history_row(execution, workgroup)
            if submitted_times and max(submitted_times) < cutoff:
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

    def batch_get(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """``BatchGetQueryExecution`` of ``ids`` in chunks of ≤ 50; unprocessed ids are asked for again
        (``unprocessed_retries`` times, backing off), then ``AthenaExtractionError`` names them."""
        found: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}

        def get(pending: list[str]) -> list[str]:
            """One request for ``pending``, which it narrows to the ids still pending (unprocessed, or
            not returned); returns it."""
            response = self.athena.batch_get_query_execution(QueryExecutionIds=list(pending))
            for execution in response.get("QueryExecutions", []):
                found[execution["QueryExecutionId"]] = execution
            errors.clear()
            errors.update(
                (u["QueryExecutionId"], f"{u.get('ErrorCode')}: {u.get('ErrorMessage')}")
                for u in response.get("UnprocessedQueryExecutionIds", [])
            )
            pending[:] = [i for i in pending if i not in found]
            return pending

        for start in range(0, len(ids), BATCH_GET_MAX_IDS):
            pending = retrying(
                Backoff(self.unprocessed_retry_seconds),
                again=bool,
                retries=self.unprocessed_retries,
                after_failure=lambda pending, attempt: logger.info(
                    "Athena source %r: %d query execution(s) unprocessed (attempt %d): retrying",
                    self.source,
                    len(pending),
                    attempt,
                ),
            )(get, ids[start : start + BATCH_GET_MAX_IDS])
            if pending:
                details = ", ".join(f"{i} ({errors.get(i, 'not returned')})" for i in pending)
                raise AthenaExtractionError(
                    f"Athena source {self.source!r}: BatchGetQueryExecution left {len(pending)} execution(s) "
                    f"unprocessed after {self.unprocessed_retries} retries: {details}. Nothing was published; "
                    "rerun the collector (same window)."
                )
        return found


def history_row(execution: dict[str, Any], listed_in: str) -> tuple[Any, ...]:
    """The ``QUERY_HISTORY_COLUMNS`` row of a ``QueryExecution`` listed in workgroup ``listed_in``."""
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
        to_utc(status.get("SubmissionDateTime")),
        to_utc(status.get("CompletionDateTime")),
        statistics.get("DataScannedInBytes"),
        statistics.get("EngineExecutionTimeInMillis"),
        statistics.get("TotalExecutionTimeInMillis"),
        statistics.get("QueryQueueTimeInMillis"),
        error.get("ErrorCategory"),
        error.get("ErrorType"),
    )
