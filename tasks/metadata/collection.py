"""Prefect tasks of the metadata collectors, and the builders behind them (docs/metadata-collectors.md).

A run: plan the window (the HWM store and the pending window, read only) → test the connection →
extract → mask SQL → write one file per entity → pin the window, upload and verify every file →
publish the HWM. Any failure before the publish leaves the HWM where it was; once a file may have
landed, the window is pinned, and every later run lands that window's remaining files under the same
names before anything else. ``dry_run`` writes the files and stops there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from sqlglot.dialects.dialect import Dialect

from blocks.loading import load_block
from tasks.common import ONCE_PER_FLOW_RUN, ProgressReport
from tasks.metadata.extract_files import WrittenFile, write_extracts
from tasks.metadata.extracts import Extract, Extractor, PartialExtractionError
from tasks.metadata.hwm import (
    FileHwmStore,
    HwmStore,
    PendingWindowFile,
    VariableHwmStore,
    Window,
    claim_window,
    plan_or_resume,
    publish_hwm,
)
from tasks.metadata.landing import LandedFile, LandingError, LandingTarget
from tasks.metadata.masking import mask_sql


def build_extractor(source: Any) -> Extractor:
    """The extractor of a ``SourceConfig`` (``tasks.metadata.sources``); blocks are loaded here."""
    config = source.extractor
    if config.kind == "athena":
        from prefect_aws import AwsCredentials

        from tasks.metadata.extractors.athena import AthenaExtractor

        return AthenaExtractor(
            source=source.name,
            credentials=load_block(
                AwsCredentials,
                config.aws_credentials_block,
                needed_by=_needed_by(source, "extractor.aws_credentials_block"),
            ),
            region=config.region,
            workgroups=config.workgroups,
            output_location=config.output_location,
            role_arn=config.role_arn,
            endpoint_url=config.endpoint_url,
            history_days=config.history_days,
            job_namespace=config.openlineage_job_namespace,
        )
    from tasks.metadata.extractors.tableau import TableauExtractor

    return TableauExtractor(
        source=source.name,
        pool_block=config.pat_pool_block,
        lineage=config.lineage,
        job_namespace=config.openlineage_job_namespace,
    )


def build_landing(source: Any) -> LandingTarget:
    """The landing target of a ``SourceConfig``; blocks are loaded here."""
    config = source.landing
    if config.kind == "s3":
        from prefect_aws import S3Bucket

        from tasks.metadata.landing import S3Landing

        bucket = load_block(
            S3Bucket, config.s3_bucket_block, needed_by=_needed_by(source, "landing.s3_bucket_block")
        )
        return S3Landing(bucket, config.landing_dir)
    if config.kind == "azure_blob":
        from tasks.metadata.landing import AzureBlobLanding

        return AzureBlobLanding(
            config.account_url,
            config.container,
            config.sas_token_secret,
            config.landing_dir,
            allow_insecure_transport=config.allow_insecure_transport,
        )
    if config.kind == "gcs":
        from prefect_gcp import GcsBucket

        from tasks.metadata.landing import GcsLanding

        bucket = load_block(
            GcsBucket, config.gcs_bucket_block, needed_by=_needed_by(source, "landing.gcs_bucket_block")
        )
        return GcsLanding(bucket, config.landing_dir)
    from tasks.metadata.landing import LocalLanding

    return LocalLanding(config.root, config.landing_dir)


def build_hwm_store(source: Any, target: LandingTarget) -> HwmStore:
    if source.hwm.store == "file":
        return FileHwmStore(target, source.name)
    return VariableHwmStore(source.name)


def build_pending_window(source: Any, target: LandingTarget) -> PendingWindowFile:
    """The source's pending-window record, ``<source>_hwm_pending.json`` next to the landing directory."""
    return PendingWindowFile(target, source.name)


def masked(extract: Extract, dialect: str = "athena") -> Extract:
    """``extract`` with the literals of its ``sql_columns`` masked (rows stay a stream), each row in
    its own dialect when the extract names a ``sql_dialect_column`` (a Hive view's ``"x"`` is a
    string, an Athena one's a name); in a JSON-lines extract, the ``query`` of each SQL facet at its
    ``sql_facet_paths``, in the facet's ``dialect``."""
    if extract.format == "jsonl":
        return _masked_facets(extract, dialect)
    positions = [extract.columns.index(c) for c in extract.sql_columns if c in extract.columns]
    if not positions:
        return extract
    dialect_at = extract.columns.index(extract.sql_dialect_column) if extract.sql_dialect_column else None

    def rows() -> Iterator[tuple[Any, ...]]:
        for row in extract.rows:
            cells = list(row)
            row_dialect = (cells[dialect_at] if dialect_at is not None else None) or dialect
            for i in positions:
                if isinstance(cells[i], str):
                    cells[i] = mask_sql(cells[i], row_dialect)
            yield tuple(cells)

    return dataclasses.replace(extract, rows=rows())


def _masked_facets(extract: Extract, dialect: str) -> Extract:
    if not extract.sql_facet_paths:
        return extract

    def rows() -> Iterator[tuple[Any, ...]]:
        for (document,) in extract.rows:
            for path in extract.sql_facet_paths:
                facet: Any = document
                for key in path:
                    facet = facet.get(key) if isinstance(facet, dict) else None
                if isinstance(facet, dict) and isinstance(facet.get("query"), str):
                    facet["query"] = mask_sql(facet["query"], _sqlglot_dialect(facet.get("dialect"), dialect))
            yield (document,)

    return dataclasses.replace(extract, rows=rows())


def _sqlglot_dialect(name: Any, default: str) -> str:
    """``name`` if sqlglot knows it, else ``default`` (a facet may name a dialect sqlglot lacks)."""
    if isinstance(name, str) and name:
        try:
            Dialect.get_or_raise(name)
            return name
        except ValueError:
            pass
    return default


def _needed_by(source: Any, field: str) -> str:
    """Who needs a block, for ``load_block``'s message: the source and its configuration field."""
    return f"source {source.name!r} (field {field})"


def history_start(source: Any, now: dt.datetime) -> dt.datetime | None:
    """The earliest instant the source still holds (Athena keeps 45 days of query history)."""
    if source.extractor.kind == "athena":
        return now - dt.timedelta(days=source.extractor.history_days)
    return None


@task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def plan_collection_window(
    source: Any, store: HwmStore, pending: PendingWindowFile, now: dt.datetime
) -> Window:
    """The window ``[start, end)`` of this run: the pending window of a run that began landing and did
    not publish, else planned from the HWM (``plan_or_resume``; reads both, writes nothing).

    Cached per flow run: a retried run extracts exactly the window it planned, into the same files.
    """
    return plan_or_resume(
        store, pending, now, source.hwm.lag, source.hwm.initial_lookback, history_start(source, now)
    )


@task(cache_policy=NO_CACHE)
def extract_to_files(source: Any, window: Window, out_dir: Path) -> list[WrittenFile]:
    """Test the connection, extract, mask SQL (if configured), write one file per entity.

    Raises ``PartialExtractionError`` (after writing the files) when the extractor reports problems:
    part of the source could not be read, so nothing may land. An extractor that is a context manager
    (Athena: its extracts hold a temporary file until written) is used in a ``with`` block around it all.
    """
    extractor = build_extractor(source)
    with contextlib.ExitStack() as resources:
        if isinstance(extractor, contextlib.AbstractContextManager):
            resources.enter_context(extractor)
        extractor.test_connection()
        extracts = extractor.run(window.start, window.end)
        if source.mask:
            extracts = [masked(e) for e in extracts]
        files = write_extracts(extracts, out_dir, source.name, window, source.compress)
    problems = list(getattr(extractor, "problems", []))
    if problems:
        raise PartialExtractionError(source.name, problems, [f.path.name for f in files])
    return files


def retry_if_unreachable(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry a landing target that could not be reached, nothing else."""
    try:
        state.result()
    except LandingError as exc:
        return exc.reason == "connection"
    except Exception:
        return False
    return False


@dataclass(frozen=True)
class LandingResult:
    """What ``land_files`` did. ``landed``: the window's files landed and verified, in the order of the
    files given (by this call or an earlier attempt at the window: ``uploaded`` names this call's);
    both empty when ``already_published`` (the window's end was the HWM already: nothing landed)."""

    landed: list[LandedFile]
    uploaded: list[str]
    already_published: bool = False


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=retry_if_unreachable)
def land_files(
    target: LandingTarget,
    files: list[WrittenFile],
    window: Window,
    store: HwmStore,
    pending: PendingWindowFile,
    progress: ProgressReport | None = None,
) -> LandingResult:
    """Pin ``window`` as the pending window (``claim_window``), then upload and verify every file of it
    not landed yet (exists, size), recording each in the pending window as it lands.

    A file an earlier attempt at the window landed (a retry of this task, a failed run's) is not
    uploaded again; a window already published lands nothing. ``progress``, if given, counts the
    files landed and verified. Raises ``LandingError`` on the first failure, and what
    ``claim_window`` raises (``HwmError``, ``PendingWindowError``, ``WindowInProgressError``).
    """
    logger = get_run_logger()
    record = claim_window(store, pending, window, flow_run.id)
    if record is None:
        return LandingResult(landed=[], uploaded=[], already_published=True)
    if record.landed:
        logger.info(
            "%d files of window %s landed already: %s", len(record.landed), window, ", ".join(record.landed)
        )
    landed: list[LandedFile] = []
    uploaded: list[str] = []
    for file in files:
        name = file.path.name
        if name in record.landed:
            landed.append(record.landed[name])
        else:
            landed.append(target.upload(file.path, name))
            uploaded.append(name)
            record = record.with_landed(landed[-1])
            pending.write(record)
            logger.info("Landed %s (%d rows, %d bytes)", landed[-1].uri, file.rows, file.bytes)
        if progress is not None:
            progress.update(len(landed), note=f"landed {name}")
    return LandingResult(landed=landed, uploaded=uploaded)


@task(cache_policy=NO_CACHE)
def publish_collection_hwm(store: HwmStore, window: Window, pending: PendingWindowFile | None = None) -> None:
    """Publish ``window.end`` as the HWM (only after every file landed and was verified) and mark the
    pending window published."""
    publish_hwm(store, window, pending)
    get_run_logger().info("Published HWM %s to %s", window.end, store.describe())
