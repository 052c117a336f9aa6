"""Metadata collection for one configured source: extract what is new, land it, then move the HWM.

    plan [start, end) → extract → mask SQL → write files → pin the window, upload + verify → publish HWM

The HWM moves only after every file landed and was verified, and only forwards; a run that failed
halfway is finished by the next one, in the same window; the protocol: docs/metadata-collectors.md.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.common import ProgressReport
from tasks.metadata.collection import (
    LandingResult,
    build_hwm_store,
    build_landing,
    build_pending_window,
    extract_to_files,
    land_files,
    plan_collection_window,
    publish_collection_hwm,
)
from tasks.metadata.extract_files import WrittenFile
from tasks.metadata.extracts import PartialExtractionError
from tasks.metadata.hwm import HwmStore, PendingWindowFile, Window, check_now
from tasks.metadata.landing import LandingTarget
from tasks.metadata.sources import SourceConfig, load_source


@dataclass(frozen=True)
class CollectedFile:
    """One extract file of a run: ``rows`` data rows, ``bytes`` on disk (gzipped size for ``.csv.gz``),
    ``landed`` the URI it was uploaded and verified at (None in a dry run)."""

    entity: str
    file: str
    rows: int
    bytes: int
    landed: str | None


@dataclass(frozen=True)
class CollectionSummary:
    """What a ``collect-metadata`` run did; ``files`` is also its table artifact ``metadata-<source>``.

    ``window_start``/``window_end``: the window ``[start, end)`` extracted (aware UTC). ``hwm``: the HWM
    published (``window_end``), None in a dry run. ``hwm_store`` and ``landing``: where the HWM and the
    files are (``describe()`` of each). ``out_dir``: where a dry run left its files (None otherwise).
    ``already_published``: another run had landed and published this window (this run's retry found
    its end published): nothing landed. ``landed_before``: files of the window that an earlier run
    landed (a failed run's, resumed here), not uploaded again.
    """

    source: str
    window_start: dt.datetime
    window_end: dt.datetime
    dry_run: bool
    hwm: dt.datetime | None
    hwm_store: str
    landing: str
    out_dir: str | None
    files: list[CollectedFile]
    already_published: bool = False
    landed_before: list[str] = field(default_factory=list)


@flow(name="collect-metadata", persist_result=True)
def collect_metadata(
    source: str,
    dry_run: bool = False,
    sources_file: str | None = None,
    out_dir: str | None = None,
    now: dt.datetime | None = None,
) -> CollectionSummary:
    """Collect one source of ``metadata_sources.yaml``; returns what the run did.

    ``dry_run``: write the files (to ``out_dir``, default a new temporary directory that is kept and
    reported) and upload nothing; the HWM does not move. ``now``: the instant the run takes as the
    present (timezone-aware, not later than the current time; default: the current time): the window
    ends at ``now`` − lag, unless a run that failed halfway left a pending window, which this run
    lands instead. Raises ``ValueError`` (``now`` naive or later than the current time: an HWM in the
    future would skip the data until then), ``SourceConfigError`` (unknown source),
    ``BlockNotFoundError``, ``ExtractorConnectionError``, ``PartialExtractionError`` (part of the source
    could not be read: nothing lands, the artifact names what is missing), ``LandingError`` or
    ``HwmError`` (among them ``WindowInProgressError``: another run is landing the pending window);
    the HWM is unchanged after any of them.
    """
    current = dt.datetime.now(dt.UTC)
    if now is not None:
        check_now(now, current)
    config = load_source(source, sources_file)
    target = build_landing(config)
    store = build_hwm_store(config, target)
    pending = build_pending_window(config, target)
    window = plan_collection_window(config, store, pending, now or current)
    progress = ProgressReport(
        f"{artifact_key(config.name)}-progress",
        total=None,
        unit="files landed",
        title=f"Metadata collection of source **{config.name}**",
    )
    progress.update(0, note=f"extracting window {window}")
    with tempfile.TemporaryDirectory(prefix=f"collect-{config.name}-") as tmp:
        directory = _files_directory(config.name, out_dir, dry_run, Path(tmp))
        files = _extract(config, window, directory)
        if dry_run:
            progress.update(
                0, total=len(files), note=f"dry run: {len(files)} files written, nothing uploaded"
            )
            landing = None
        else:
            landing = _land_and_publish(target, files, window, store, pending, progress)
    summary = _summary(config.name, window, dry_run, store, target, directory, files, landing)
    create_table_artifact(
        key=artifact_key(config.name),
        # One row per file, narrow enough to read: every file landed in the directory the description names.
        table=[
            {"entity": f.entity, "rows": f"{f.rows:,}", "bytes": f"{f.bytes:,}", "file": f.file}
            for f in summary.files
        ],
        description=_describe_run(summary, window, target.describe()),
    )
    return summary


def _files_directory(source: str, out_dir: str | None, dry_run: bool, tmp: Path) -> Path:
    """Where the run writes its files: ``out_dir`` if given; a dry run keeps its files (to look at) in a
    new temporary directory; a real run's files live in ``tmp`` only until they landed."""
    if out_dir:
        return Path(out_dir)
    if dry_run:
        return Path(tempfile.mkdtemp(prefix=f"dry-run-{source}-"))
    return tmp


def _extract(config: SourceConfig, window: Window, directory: Path) -> list[WrittenFile]:
    """Extract the window into ``directory`` (``extract_to_files``); a partial result is reported in the
    run's artifact before it fails the run."""
    try:
        return extract_to_files(config, window, directory)
    except PartialExtractionError as partial:
        _report_partial(config.name, window, partial)
        raise


def _land_and_publish(
    target: LandingTarget,
    files: list[WrittenFile],
    window: Window,
    store: HwmStore,
    pending: PendingWindowFile,
    progress: ProgressReport,
) -> LandingResult:
    """Land and verify the window's files, then publish its end as the HWM, under one hold of the
    source's HWM lock from the claim of the window to the publish (the tasks' own ``with store.lock()``
    then acquire nothing): a second run waits, then sees the HWM this one published."""
    progress.update(0, total=len(files), note=f"landing in {target.describe()}")
    with store.lock():
        landing = land_files(target, files, window, store, pending, progress)
        if not landing.already_published:
            publish_collection_hwm(store, window, pending)
    if landing.already_published:
        progress.update(0, note=f"window {window} was published already: nothing landed")
    else:
        progress.update(len(files), note=f"HWM now {window.end}")
    return landing


def _summary(
    source: str,
    window: Window,
    dry_run: bool,
    store: HwmStore,
    target: LandingTarget,
    directory: Path,
    files: list[WrittenFile],
    landing: LandingResult | None,
) -> CollectionSummary:
    uris = {f.name: f.uri for f in landing.landed} if landing else {}
    return CollectionSummary(
        source=source,
        window_start=window.start,
        window_end=window.end,
        dry_run=dry_run,
        hwm=None if dry_run else window.end,
        hwm_store=store.describe(),
        landing=target.describe(),
        out_dir=str(directory) if dry_run else None,
        files=[CollectedFile(f.entity, f.path.name, f.rows, f.bytes, uris.get(f.path.name)) for f in files],
        already_published=bool(landing and landing.already_published),
        landed_before=[] if landing is None else _landed_before(landing),
    )


def _landed_before(landing: LandingResult) -> list[str]:
    """The files of the window an earlier attempt landed (not uploaded again by this run)."""
    uploaded = set(landing.uploaded)
    return [f.name for f in landing.landed if f.name not in uploaded]


def _describe_run(summary: CollectionSummary, window: Window, landing: str) -> str:
    """The table artifact's description: window, where the files are, what happened to the HWM."""
    if summary.dry_run:
        return f"{summary.source}: window {window} → dry run, nothing uploaded; HWM unchanged"
    if summary.already_published:
        return f"{summary.source}: window {window} was published already: nothing landed; HWM {window.end}"
    resumed = (
        f" ({len(summary.landed_before)} of the files landed by an earlier attempt at this window)"
        if summary.landed_before
        else ""
    )
    return f"{summary.source}: window {window} → {landing}{resumed}; HWM now {summary.hwm}"


def artifact_key(source: str) -> str:
    """The key of a source's table artifact, ``metadata-<source>`` (``_`` → ``-``: keys allow neither)."""
    return f"metadata-{source.replace('_', '-')}"


def _report_partial(source: str, window: object, partial: PartialExtractionError) -> None:
    """The artifact of a run whose source answered only in part: what is missing; nothing landed."""
    create_table_artifact(
        key=artifact_key(source),
        table=[{"problem": p} for p in partial.problems],
        description=(
            f"{source}: window {window} → PARTIAL result, nothing landed, HWM unchanged "
            f"({len(partial.files)} files written locally); rerun the same window"
        ),
    )
