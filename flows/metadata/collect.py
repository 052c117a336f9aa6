"""Metadata collection for one configured source: extract what is new, land it, then move the HWM.

    plan [start, end) → extract → mask SQL → write files → upload + verify → publish HWM

The HWM moves only after every file landed and was verified; the protocol: docs/metadata-collectors.md.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.common import ProgressReport
from tasks.metadata.collection import (
    build_hwm_store,
    build_landing,
    extract_to_files,
    land_files,
    plan_collection_window,
    publish_collection_hwm,
)
from tasks.metadata.extracts import PartialExtractionError
from tasks.metadata.sources import load_source


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
    present (timezone-aware; default: the current time): the window ends at ``now`` − lag. An earlier
    ``now`` collects up to then; a later one would publish an HWM in the future, which the next runs
    refuse (``HwmInFutureError``) until the clock passes it. Raises ``SourceConfigError`` (unknown
    source), ``BlockNotFoundError``, ``ExtractorConnectionError``, ``PartialExtractionError`` (part of the
    source could not be read: nothing lands, the artifact names what is missing), ``LandingError`` or
    ``HwmError``; the HWM is unchanged after any of them.
    """
    config = load_source(source, sources_file)
    target = build_landing(config)
    store = build_hwm_store(config, target)
    window = plan_collection_window(config, store, now or dt.datetime.now(dt.UTC))
    progress = ProgressReport(
        f"{artifact_key(config.name)}-progress",
        total=None,
        unit="files landed",
        title=f"Metadata collection of source **{config.name}**",
    )
    progress.update(0, note=f"extracting window {window}")
    with tempfile.TemporaryDirectory(prefix=f"collect-{config.name}-") as tmp:
        # A dry run keeps its files (to look at); a real run's files live only until they landed.
        if out_dir:
            directory = Path(out_dir)
        elif dry_run:
            directory = Path(tempfile.mkdtemp(prefix=f"dry-run-{config.name}-"))
        else:
            directory = Path(tmp)
        try:
            files = extract_to_files(config, window, directory)
        except PartialExtractionError as partial:
            _report_partial(config.name, window, partial)
            raise
        if dry_run:
            landed = []
            progress.update(
                0, total=len(files), note=f"dry run: {len(files)} files written, nothing uploaded"
            )
        else:
            progress.update(0, total=len(files), note=f"landing in {target.describe()}")
            landed = land_files(target, files, progress)
    if not dry_run:
        publish_collection_hwm(store, window)
        progress.update(len(files), note=f"HWM now {window.end}")
    summary = CollectionSummary(
        source=config.name,
        window_start=window.start,
        window_end=window.end,
        dry_run=dry_run,
        hwm=None if dry_run else window.end,
        hwm_store=store.describe(),
        landing=target.describe(),
        out_dir=str(directory) if dry_run else None,
        files=[
            CollectedFile(f.entity, f.path.name, f.rows, f.bytes, landed[i].uri if landed else None)
            for i, f in enumerate(files)
        ],
    )
    create_table_artifact(
        key=artifact_key(config.name),
        # One row per file, narrow enough to read: every file landed in the directory the description names.
        table=[
            {"entity": f.entity, "rows": f"{f.rows:,}", "bytes": f"{f.bytes:,}", "file": f.file}
            for f in summary.files
        ],
        description=(
            f"{config.name}: window {window} → {'dry run, nothing uploaded' if dry_run else target.describe()}; "
            f"HWM {'unchanged' if dry_run else 'now ' + str(window.end)}"
        ),
    )
    return summary


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
