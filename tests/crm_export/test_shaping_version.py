"""``SHAPING_VERSION`` moves with what the pipeline makes of a row.

Every row's fingerprint in the sync state holds ``SHAPING_VERSION``: a change of the shaping or of a
destination's request body that keeps the version would leave the CRM with records shaped the old way,
and the diff would never send them again. This test keeps, per version, the request bodies each
destination makes of a fixed set of rows (``golden/shaping-v<N>.json``). When the shaping changes it
fails until the version is bumped; then it fails until the new version's bodies are written:

    UPDATE_SHAPING_GOLDEN=1 uv run pytest tests/crm_export/test_shaping_version.py
"""

from __future__ import annotations

import decimal
import os
from pathlib import Path

import orjson
import pytest

from pipelines.crm_export.destinations import destination_for
from pipelines.crm_export.settings import SHAPING_VERSION, PipelineSettings
from pipelines.crm_export.users import MalformedRowError, UserShaper

GOLDEN = Path(__file__).parent / "golden"
FIELDS = {"email": "email", "identity.country": "country", "properties.plan": "plan", "tags": "tags"}
DESTINATIONS = {
    "generic-whole-record": PipelineSettings(url="http://crm"),
    "generic-field-map": PipelineSettings(url="http://crm", field_map=FIELDS),
    "generic-keep-null": PipelineSettings(url="http://crm", keep_null=["identity.phone"]),
    "generic-send-nulls": PipelineSettings(url="http://crm", send_nulls=True),
    "hubspot": PipelineSettings(
        url="http://hubspot", destination="hubspot", field_map=FIELDS, id_property="email"
    ),
    "braze": PipelineSettings(url="http://braze", destination="braze", field_map=FIELDS),
}


def rows() -> list[dict]:
    """Rows as the Storage Read API gives them (RECORDs nested) and as files hold them (flattened)."""
    return [
        {
            "external_id": "u1",
            "email": "a@example.com",
            "identity": {"phone": None, "country": "DE"},
            "properties": {"plan": {"string_value": "pro", "int_value": None}},
            "tags": ["a", "b"],
            "score": decimal.Decimal("12.50"),
            "avatar": b"\x01\x02",
            "active": True,
        },
        {
            "external_id": "u2",
            "email": None,
            "identity": {"phone": "+49", "country": None},
            "properties": {"plan": {"string_value": None, "int_value": 3}},
            "tags": [],
            "active": False,
        },
        {
            "external_id": "u3",
            "email": "c@example.com",
            "identity.phone": None,
            "identity.country": "FR",
            "properties.plan.string_value": None,
            "properties.plan.int_value": None,
            "properties.plan.bool_value": True,
        },
        {"external_id": "u4", "properties": {"plan": {"string_value": "pro", "int_value": 2}}},  # malformed
    ]


def bodies() -> dict[str, object]:
    """Each destination's request body for ``rows()`` (JSON), and the rows it refuses with why."""
    out: dict[str, object] = {}
    for name, settings in DESTINATIONS.items():
        shape, records, refused = UserShaper(settings), [], {}
        for row in rows():
            try:
                records.append(shape(row))
            except MalformedRowError as exc:
                refused[row["external_id"]] = str(exc)
        payload, _, unserialisable = destination_for(settings).encode(records)
        body = orjson.loads(payload) if isinstance(payload, bytes) else orjson.loads(orjson.dumps(payload))
        out[name] = {"body": body, "refused": refused, "unserialisable": [d["key"] for d in unserialisable]}
    return out


def test_the_shaping_version_changes_with_what_is_sent():
    golden = GOLDEN / f"shaping-v{SHAPING_VERSION}.json"
    made = bodies()
    if os.environ.get("UPDATE_SHAPING_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_bytes(orjson.dumps(made, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    if not golden.exists():
        pytest.fail(
            f"no request bodies kept for SHAPING_VERSION {SHAPING_VERSION} ({golden}): once the version is "
            "bumped for a change of the shaping, write them with UPDATE_SHAPING_GOLDEN=1"
        )
    kept = orjson.loads(golden.read_bytes())
    assert made == kept, (
        f"what the pipeline makes of a row changed, and SHAPING_VERSION is still {SHAPING_VERSION}: bump it in "
        "pipelines/crm_export/settings.py (every row is then sent again once), then write the new bodies "
        "with UPDATE_SHAPING_GOLDEN=1"
    )


def test_the_newest_bodies_kept_are_of_the_current_version():
    older = sorted(GOLDEN.glob("shaping-v*.json"))
    assert [p.name for p in older][-1] == f"shaping-v{SHAPING_VERSION}.json"  # no version ahead of the code
