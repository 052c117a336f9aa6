"""Every record read is accepted by the CRM or dead-lettered: the counters that show it, the dead-letter entry, the check.

Beam-free: the pipeline counts and dead-letters, the launchers read the counters, the flow checks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Namespace of the export's Beam metrics.
NAMESPACE = "crm_export"
#: Tag of the dead-letter outputs.
DEAD_LETTER = "dead_letter"


def dead_letter(key: Any, reason: str, status: int | None, attempts: int, stage: str) -> dict[str, Any]:
    """A dead-letter entry: the record key, why it was not accepted, the last HTTP status, attempts made."""
    return {"key": key, "reason": reason, "status": status, "attempts": attempts, "stage": stage}


class AccountingError(RuntimeError):
    """``records_read != records_accepted + records_dead_lettered``: records were lost or counted twice."""


COUNTERS = (
    "records_read",
    "records_malformed",
    "records_sent",
    "records_accepted",
    "records_rejected",
    "records_dead_lettered",
    "batches",
    "retries",
)


def check_accounting(counters: Mapping[str, int]) -> None:
    """Raise ``AccountingError`` unless every record read was accepted or dead-lettered."""
    read = counters.get("records_read", 0)
    accepted = counters.get("records_accepted", 0)
    dead = counters.get("records_dead_lettered", 0)
    if read != accepted + dead:
        raise AccountingError(
            f"records read ({read}) != accepted ({accepted}) + dead-lettered ({dead}): "
            f"{read - accepted - dead} records are unaccounted for"
        )
