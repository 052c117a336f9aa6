"""Every row of the shard is skipped unchanged, accepted by the CRM or dead-lettered: the counters that show
it, the dead-letter entry, the check.

Beam-free: the pipeline counts and dead-letters, the launchers read the counters, the flow checks them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: Namespace of the export's Beam metrics.
NAMESPACE = "crm_export"
#: Tag of the dead-letter outputs.
DEAD_LETTER = "dead_letter"


#: Prefix of the counters of dead letters by reason code (``dead_lettered_invalid_email``, ...).
REASON_COUNTER_PREFIX = "dead_lettered_"
#: The counter saying that the CRM refused the job's key (``PostBatchesFn`` counts it as the refusal fails
#: its bundle, and with it the job): the flow's signal for ``CrmCredentialsError``.
KEY_REFUSED = "crm_key_refused"
#: The counter saying that the CRM refused a setting every request carries, so that no request can succeed
#: (HubSpot's 400 for an ``idProperty`` without unique values): ``PostBatchesFn`` counts it as the refusal
#: fails the job, and the flow raises ``CrmSettingsError``.
SETTINGS_REFUSED = "crm_settings_refused"
#: Counters read from their attempted values: they are counted by bundles that fail, whose committed
#: values never come.
ATTEMPTED_COUNTERS = frozenset({KEY_REFUSED, SETTINGS_REFUSED})


def dead_letter(key: Any, reason: str, status: int | None, attempts: int, stage: str) -> dict[str, Any]:
    """A dead-letter entry: the record key, why it was not accepted, the last HTTP status, attempts made.

    ``reason`` starts with its code, ``"<code>: <detail>"`` (``"INVALID_EMAIL: Email address … is
    invalid"``, ``"duplicate key: …"``, ``"http 400: …"``): ``reason_code`` counts dead letters by it."""
    return {"key": key, "reason": reason, "status": status, "attempts": attempts, "stage": stage}


def reason_code(reason: str) -> str:
    """The code of a dead letter's reason: its text before the first ``:`` (all of it if none), lowercase,
    other characters than letters and digits as ``_``, at most 40 characters (``"INVALID_EMAIL: …"`` →
    ``invalid_email``)."""
    head = reason.split(":", 1)[0]
    return re.sub(r"[^a-z0-9]+", "_", head.lower()).strip("_")[:40] or "unknown"


@dataclass(frozen=True)
class Counters:
    """The export's counters (Beam metrics of namespace ``NAMESPACE``), committed values summed over steps.

    Records: ``records_read`` (every row read), ``records_malformed`` (not JSON, or not a record),
    ``records_sent`` (put in a request), ``records_accepted`` and ``records_rejected`` (by the CRM),
    ``records_duplicate`` (a row whose key another row of the shard has: dead-lettered),
    ``records_dead_lettered``, ``records_not_sent`` (the CRM's daily limit was reached first: neither
    accepted nor dead-lettered, sent with the next export). ``batches``: batches posted. ``requests``:
    HTTP requests sent (retries and isolation included). ``retries``: requests repeated.
    ``requests_isolating``: requests of the halves of batches the CRM refused whole for an input error. ``http_status``: the CRM's responses by HTTP status (the
    counters ``http_<status>``); ``dead_letter_reasons``: dead letters by reason code (the counters
    ``dead_lettered_<code>``, ``reason_code``). From the export's plan (``tasks.crm_export.sync_state``),
    reported by the job: ``rows_in_shard`` (None when the job ran without a plan),
    ``records_unchanged`` (rows skipped because the CRM holds them as they are) and
    ``records_removed_from_source`` (keys the CRM holds that the shard no longer has; never deleted).
    ``crm_key_refused``: times the CRM refused the key (``KEY_REFUSED``; a job that counts it failed, the
    CRM having taken nothing with the key). ``crm_settings_refused``: times the CRM refused a setting no
    request can succeed with (``SETTINGS_REFUSED``: HubSpot's non-unique ``idProperty``; the job failed).
    """

    records_read: int = 0
    records_malformed: int = 0
    records_sent: int = 0
    records_accepted: int = 0
    records_rejected: int = 0
    records_duplicate: int = 0
    records_dead_lettered: int = 0
    records_not_sent: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    requests_isolating: int = 0
    records_unchanged: int = 0
    records_removed_from_source: int = 0
    rows_in_shard: int | None = None
    crm_key_refused: int = 0
    crm_settings_refused: int = 0
    http_status: dict[int, int] = field(default_factory=dict)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_names(cls, values: Mapping[str, int]) -> Counters:
        """From counter name → value (``records_read``, ``http_429``, ``dead_lettered_invalid_email``, …);
        other names are ignored."""
        named = {f.name for f in fields(cls)} - {"http_status", "dead_letter_reasons"}
        return cls(
            **{name: int(value) for name, value in values.items() if name in named},
            http_status={
                int(name[5:]): int(value)
                for name, value in values.items()
                if name.startswith("http_") and name[5:].isdigit()
            },
            dead_letter_reasons={
                name.removeprefix(REASON_COUNTER_PREFIX): int(value)
                for name, value in values.items()
                if name.startswith(REASON_COUNTER_PREFIX)
            },
        )

    def to_names(self) -> dict[str, int]:
        """Counter name → value, as ``from_names`` takes it."""
        values = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("http_status", "dead_letter_reasons") and getattr(self, f.name) is not None
        }
        return (
            values
            | {f"http_{status}": count for status, count in sorted(self.http_status.items())}
            | {REASON_COUNTER_PREFIX + code: n for code, n in sorted(self.dead_letter_reasons.items())}
        )


@dataclass(frozen=True)
class Distribution:
    """A Beam distribution's committed value: ``count`` values (≥ 1), their ``sum``, ``min`` and ``max``."""

    count: int
    sum: int
    min: int
    max: int

    @property
    def mean(self) -> float:
        return self.sum / self.count

    def merged(self, other: Distribution) -> Distribution:
        """The distribution of both (e.g. of two steps, or two reports of one)."""
        return Distribution(
            self.count + other.count, self.sum + other.sum, min(self.min, other.min), max(self.max, other.max)
        )


@dataclass(frozen=True)
class ExportMetrics:
    """What an export job reports: its ``counters``, the ``batch_size`` distribution (records per batch
    posted; None before the first batch) and the runner's ``resources`` by metric name (Dataflow: the
    units of ``tasks.crm_export.cost``; local runner: ``wall_seconds``, ``cpu_seconds``, ``max_rss_bytes``)."""

    counters: Counters = field(default_factory=Counters)
    batch_size: Distribution | None = None
    resources: dict[str, float] = field(default_factory=dict)


class AccountingError(RuntimeError):
    """Records were lost or counted twice: ``records_read != records_accepted + records_dead_lettered +
    records_not_sent``, or ``rows_in_shard != records_unchanged + records_accepted + records_dead_lettered +
    records_not_sent``."""


def check_accounting(counters: Counters) -> None:
    """Raise ``AccountingError`` unless every record read was accepted, dead-lettered or not sent and, when
    the job had a plan, every row of the shard was skipped unchanged, accepted, dead-lettered or not sent."""
    read, accepted, dead = counters.records_read, counters.records_accepted, counters.records_dead_lettered
    not_sent = counters.records_not_sent
    if read != accepted + dead + not_sent:
        raise AccountingError(
            f"records read ({read}) != accepted ({accepted}) + dead-lettered ({dead}) + not sent ({not_sent}): "
            f"{read - accepted - dead - not_sent} records are unaccounted for"
        )
    rows, unchanged = counters.rows_in_shard, counters.records_unchanged
    if rows is not None and rows != unchanged + accepted + dead + not_sent:
        raise AccountingError(
            f"rows in shard ({rows}) != unchanged ({unchanged}) + accepted ({accepted}) + dead-lettered "
            f"({dead}) + not sent ({not_sent}): {rows - unchanged - accepted - dead - not_sent} rows are "
            "unaccounted for"
        )


class DeadLetterRatioError(RuntimeError):
    """More of the shard's rows were dead-lettered than the export allows (``max_dead_letter_ratio``)."""


def check_dead_letter_ratio(counters: Counters, max_ratio: float, detail: str = "") -> None:
    """Raise ``DeadLetterRatioError`` when ``records_dead_lettered`` exceeds ``max_ratio`` (0 to 1) of the
    rows in the shard (of the records read, for a job without a plan), naming the top reasons by code
    (``dead_letter_reasons``) and their counts; ``detail`` ends the message.

    The base is the shard, not the records read: a diff sends few rows, and the rows the CRM keeps
    refusing (an invalid email) are sent again every week; per shard, the ratio is the share of users the
    CRM does not hold as they are."""
    rows = counters.records_read if counters.rows_in_shard is None else counters.rows_in_shard
    dead = counters.records_dead_lettered
    if not rows or dead / rows <= max_ratio:
        return
    top = sorted(counters.dead_letter_reasons.items(), key=lambda item: (-item[1], item[0]))[:5]
    reasons = ", ".join(f"{code} {count:,}" for code, count in top) or "not reported"
    raise DeadLetterRatioError(
        f"{dead:,} of the {rows:,} rows of the shard ({dead / rows:.2%}) were dead-lettered, above "
        f"max_dead_letter_ratio {max_ratio:.2%}; top reasons: {reasons}" + (f"; {detail}" if detail else "")
    )
