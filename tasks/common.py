"""What the tasks and flows of every job need: progress artifacts, once-per-flow-run caching, UTC times.

Blocks are loaded with ``blocks.loading`` and secrets read with ``blocks.secrets``."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Literal
from uuid import UUID

from prefect.cache_policies import RUN_ID, TASK_SOURCE

logger = logging.getLogger(__name__)

#: Cache policy of a task whose result must stay the same for the whole flow run, retries included
#: (the shard a CRM export exports, the window a collection extracts): its source and the flow run id,
#: not its inputs. The task needs ``persist_result=True``.
ONCE_PER_FLOW_RUN = TASK_SOURCE + RUN_ID


# --- Progress a person can watch -------------------------------------------------------------------

_ARTIFACT_KEY = re.compile(r"^[a-z0-9-]+$")


class ProgressReport:
    """A Prefect progress artifact (the UI shows a bar: ``done / total`` in percent) that a polling loop
    updates as work ends, with a one-line description.

    Call :meth:`update` as often as the loop polls: the artifact is written only when the figures or
    the note change. A failure to reach the Prefect API is logged as a warning and never fails the
    job. Outside a flow run the artifact is created all the same (not linked to a run).

        progress = ProgressReport("tableau-refresh-sales-progress", total=10, unit="refreshes")
        progress.update(3, note="7 running")        # 30 %
        progress.update(0, total=None, note="JOB_STATE_RUNNING; 1,234 records read")  # total unknown: 0 %

    Args:
        key: the artifact's key (lowercase letters, digits and '-'); its history is the runs' progress.
        total: how much there is to do, or None while unknown.
        unit: what ``done`` and ``total`` count, for the description ("refreshes", "records").
        title: the description's start, e.g. "Tableau refresh of domain **sales**".

    Raises:
        ValueError: ``key`` is not a valid artifact key.
    """

    def __init__(self, key: str, *, total: float | None, unit: str, title: str = "") -> None:
        if not _ARTIFACT_KEY.match(key):
            raise ValueError(f"artifact key {key!r} may hold only lowercase letters, digits and '-'")
        self.key, self.total, self.unit, self.title = key, total, unit, title
        self.done: float = 0
        self.note = ""
        self.artifact_id: UUID | None = None
        self._written: tuple[float, str] | None = None
        self.update(0)

    @property
    def percent(self) -> float:
        """``done / total`` in percent (0 while the total is unknown or 0), at most 100."""
        return min(100.0, 100.0 * self.done / self.total) if self.total else 0.0

    def description(self) -> str:
        figures = f"{self.done:,g} of {self.total:,g} {self.unit}" if self.total is not None else ""
        parts = [part for part in (self.title, figures, self.note) if part]
        return "; ".join(parts) or self.unit

    def update(
        self, done: float, *, total: float | None | Literal["unchanged"] = "unchanged", note: str = ""
    ) -> None:
        """Record ``done`` (and a new ``total`` if given) and write the artifact if anything changed."""
        self.done = done
        if total != "unchanged":
            self.total = total
        self.note = note
        state = (round(self.percent, 1), self.description())
        if state == self._written:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    progress=state[0], key=self.key, description=state[1], _sync=True
                )
            else:
                update_progress_artifact(
                    self.artifact_id, progress=state[0], description=state[1], _sync=True
                )
        except Exception as exc:  # progress is for people; the job goes on without it
            logger.warning("Could not write progress artifact %r: %s", self.key, exc)
            return
        self._written = state


def to_utc(value: dt.datetime | float | None) -> dt.datetime | None:
    """An aware UTC ``datetime`` from an aware or naive (taken as UTC) datetime or epoch seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
