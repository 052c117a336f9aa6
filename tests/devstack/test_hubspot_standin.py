"""The HubSpot stand-in (devstack/crms/hubspot.py) driven by hubspot-api-client, as the sink drives it, and
checked against HubSpot's own answers (tests/fixtures/hubspot/, sources in tests/fixtures/README.md).

One stand-in serves the module; every test starts from a reset store and the default settings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchResponseSimplePublicUpsertObject,
    BatchResponseSimplePublicUpsertObjectWithErrors,
    SimplePublicObjectBatchInputUpsert,
)
from hubspot.crm.contacts.exceptions import ApiException, ServiceException, UnauthorizedException
from starlette.testclient import TestClient
from urllib3.util.retry import Retry

from devstack.crms import HubSpotServer
from devstack.crms.common import RollingWindow
from devstack.crms.hubspot import PORTAL_ID, UPSERT_PATH, HubSpotConfig, HubSpotStandIn

TOKEN = "pat-na1-5e4f0c2a-standin"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hubspot"
INVALID_VALUES = "Property values were not valid: "


def fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


@pytest.fixture(scope="module")
def hubspot() -> Iterator[HubSpotServer]:
    with HubSpotServer(TOKEN) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(hubspot: HubSpotServer) -> None:
    hubspot.configure(**HubSpotConfig().__dict__)
    hubspot.reset()


def client(hubspot: HubSpotServer, token: str = TOKEN):
    return HubSpot(access_token=token, host=hubspot.url, retry=Retry(total=0)).crm.contacts.batch_api


def upsert(hubspot: HubSpotServer, *inputs: dict, token: str = TOKEN):
    batch = BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[SimplePublicObjectBatchInputUpsert(**i) for i in inputs]
    )
    return client(hubspot, token).upsert(batch_input_simple_public_object_batch_input_upsert=batch)


def refused(hubspot: HubSpotServer, *inputs: dict) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a batch the client raises ``ApiException`` for."""
    with pytest.raises(ApiException) as raised:
        upsert(hubspot, *inputs)
    return raised.value.status, orjson.loads(raised.value.body)


def send(hubspot: HubSpotServer, body: dict) -> tuple[int, dict[str, Any], Any]:
    """A raw request body sent by the client: (status, JSON answer, the client's model or None)."""
    api = client(hubspot)
    try:
        parsed = api.upsert(body)
    except ApiException as exc:
        return exc.status, orjson.loads(exc.body), None
    raw = api.api_client.last_response
    return raw.status, orjson.loads(raw.data), parsed


def contact(key: str, trace: str | None = None, id_property: str = "external_id", **properties: str) -> dict:
    return {
        "id": key,
        "id_property": id_property,
        "object_write_trace_id": trace,
        "properties": {"email": f"{key}@example.com", **properties},
    }


def by_email(email: str, trace: str | None = None, **properties: str) -> dict:
    return {"id": email, "id_property": "email", "object_write_trace_id": trace, "properties": properties}


# -- upserts ---------------------------------------------------------------------------------------


def test_an_upsert_creates_then_updates_by_id_property_and_the_client_parses_it(hubspot):
    first = upsert(hubspot, contact("u1", plan="pro"), contact("u2"))
    assert isinstance(first, BatchResponseSimplePublicUpsertObject)
    assert first.status == "COMPLETE"
    assert [r.new for r in first.results] == [True, True]
    assert first.results[0].properties["external_id"] == "u1"
    assert first.results[0].properties["plan"] == "pro"
    assert first.started_at <= first.completed_at
    again = upsert(hubspot, contact("u1", plan="team"))
    assert again.results[0].new is False
    assert again.results[0].id == first.results[0].id
    stored = hubspot.user("u1")
    assert stored["properties"]["plan"] == "team"
    assert stored["deliveries"] == 2


def test_an_email_upsert_is_stored_by_the_lowercased_email_and_a_case_variant_updates_it(hubspot):
    first = upsert(hubspot, by_email("Ada@Example.com", firstname="Ada"))
    assert first.results[0].properties["email"] == "Ada@Example.com"
    again = upsert(hubspot, by_email("ADA@example.COM", lastname="Lovelace"))
    assert again.results[0].new is False
    assert again.results[0].id == first.results[0].id
    stored = hubspot.user("ada@example.com")
    assert stored["deliveries"] == 2
    assert stored["properties"]["firstname"] == "Ada"
    assert stored["properties"]["lastname"] == "Lovelace"
    assert hubspot.user("Ada@Example.com") is None


# -- per-input errors and refused batches ----------------------------------------------------------


def test_invalid_inputs_with_trace_ids_get_207_errors_by_trace_id_and_the_rest_is_upserted(hubspot):
    hubspot.configure(known_properties=["email", "plan", "external_id"])
    answer = upsert(
        hubspot,
        contact("ok", trace="t-ok"),
        contact("bad-email", trace="t-email", email="bad-email.example.com"),
        contact("p", trace="t-prop", tier="x"),
    )
    assert isinstance(answer, BatchResponseSimplePublicUpsertObjectWithErrors)
    assert answer.status == "COMPLETE"
    assert answer.num_errors == 2
    assert [r.properties["external_id"] for r in answer.results] == ["ok"]
    assert answer.results[0].object_write_trace_id is None  # results do not echo the trace id
    by_trace = {e.context["objectWriteTraceId"][0]: e for e in answer.errors}
    assert sorted(by_trace) == ["t-email", "t-prop"]
    assert all(e.context == {"objectWriteTraceId": [trace]} for trace, e in by_trace.items())
    email = by_trace["t-email"]
    assert email.status == "error"
    assert email.category == "VALIDATION_ERROR"
    assert email.message.startswith(INVALID_VALUES)
    assert email.errors[0].code == "INVALID_EMAIL"
    assert email.errors[0].context == {"propertyName": ["email"]}
    prop = by_trace["t-prop"].errors[0]
    assert prop.code == "PROPERTY_DOESNT_EXIST"
    assert '"tier"' in prop.message
    assert hubspot.user("ok")
    assert hubspot.user("bad-email") is None
    assert hubspot.user("p") is None
    stats = hubspot.stats()
    assert stats["status_counts"] == {"207": 1}
    assert (stats["records_accepted"], stats["records_rejected"]) == (1, 2)


def test_an_invalid_input_without_a_trace_id_refuses_the_whole_batch_with_400_and_stores_nothing(hubspot):
    status, body = refused(
        hubspot,
        contact("ok", trace="t-ok"),
        contact("bad", trace="t-bad", email="x"),
        contact("untraced", email="y"),
    )
    assert status == 400
    assert body["status"] == "error"
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith(INVALID_VALUES)
    assert [detail["code"] for detail in body["errors"]] == ["INVALID_EMAIL", "INVALID_EMAIL"]
    validations = orjson.loads(body["message"].removeprefix(INVALID_VALUES))  # HubSpot's wording of the list
    assert [(v["isValid"], v["error"], v["name"]) for v in validations] == [
        (False, "INVALID_EMAIL", "email")
    ] * 2
    assert [v["message"] for v in validations] == [d["message"] for d in body["errors"]]
    stats = hubspot.stats()
    assert stats["distinct_users"] == 0
    assert hubspot.user("ok") is None
    assert (stats["records_accepted"], stats["records_rejected"]) == (0, 3)


def test_with_trace_ids_off_one_invalid_input_refuses_the_batch_even_when_every_input_has_one(hubspot):
    hubspot.configure(trace_ids=False)
    status, body = refused(hubspot, contact("ok", trace="t-ok"), contact("bad", trace="t-bad", email="x"))
    assert status == 400
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith(INVALID_VALUES)
    assert hubspot.stats()["distinct_users"] == 0
    assert len(upsert(hubspot, contact("ok", trace="t-ok")).results) == 1  # a valid batch is still upserted


def test_refusal_207_empty_answers_a_refused_batch_207_with_empty_results_and_stores_nothing(hubspot):
    hubspot.configure(refusal="207-empty")
    answer = upsert(hubspot, contact("ok"), contact("bad", email="not-an-email"))
    assert isinstance(answer, BatchResponseSimplePublicUpsertObjectWithErrors)
    assert answer.status == "COMPLETE"
    assert answer.results == []
    assert hubspot.stats()["distinct_users"] == 0
    assert hubspot.stats()["status_counts"] == {"207": 1}
    valid = upsert(hubspot, contact("ok"))  # only a refused batch is answered so
    assert isinstance(valid, BatchResponseSimplePublicUpsertObject)
    assert len(valid.results) == 1


@pytest.mark.parametrize("id_property", ["phone", "hs_object_id", "firstname"])
def test_an_id_property_without_unique_values_is_a_400_naming_it_and_the_portal(hubspot, id_property):
    status, body = refused(hubspot, contact("u1"), contact("12345", id_property=id_property))
    assert status == 400
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"] == (
        f"Unable to perform update/upsert by non-unique 0-1 property {id_property} in portal ID {PORTAL_ID}"
    )
    assert hubspot.stats()["distinct_users"] == 0


def test_a_property_configured_as_unique_may_be_the_id_property(hubspot):
    hubspot.configure(unique_properties=["email", "external_id", "member_no"])
    answer = upsert(hubspot, contact("M-7", id_property="member_no"))
    assert answer.results[0].properties["member_no"] == "M-7"
    assert hubspot.user("M-7")


def test_two_inputs_of_one_contact_are_a_400_duplicate_ids_with_their_ids_in_context(hubspot):
    status, body = refused(hubspot, contact("u1"), contact("u2"), contact("u1", plan="pro"))
    assert status == 400
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"] == "Duplicate IDs found in batch input: [u1]. IDs must be unique"
    assert body["context"] == {"ids": ["u1"]}
    assert hubspot.stats()["distinct_users"] == 0


def test_case_variants_of_one_email_are_duplicates_only_when_the_id_property_is_email(hubspot):
    status, body = refused(hubspot, by_email("Ada@example.com"), by_email("ada@EXAMPLE.com"))
    assert status == 400
    assert body["message"].startswith("Duplicate IDs found in batch input: [")
    assert body["context"] == {"ids": ["ada@EXAMPLE.com"]}
    assert hubspot.stats()["distinct_users"] == 0
    answer = upsert(hubspot, contact("U1"), contact("u1"))  # external_id values are case-sensitive
    assert [r.new for r in answer.results] == [True, True]
    assert hubspot.stats()["distinct_users"] == 2


def test_more_than_100_inputs_is_a_400_validation_error_and_100_are_accepted(hubspot):
    status, body = refused(hubspot, *(contact(f"u{i}") for i in range(101)))
    assert status == 400
    assert body["category"] == "VALIDATION_ERROR"
    assert "100" in body["message"]
    assert hubspot.stats()["distinct_users"] == 0
    assert len(upsert(hubspot, *(contact(f"u{i}") for i in range(100))).results) == 100


# -- the answers HubSpot gives (tests/fixtures/hubspot/) -------------------------------------------

# Settings that make the stand-in answer the fixture's request as HubSpot did, and how many times the
# request is sent first (to use up a limit).
FIXTURE_CASES = [
    ("batch_upsert_207_trace_ids.json", {"known_properties": ["email", "firstname"]}, 0),
    ("batch_upsert_400_validation.json", {"known_properties": ["email", "firstname", "lastname"]}, 0),
    ("batch_upsert_207_empty_results.json", {"known_properties": ["email"], "refusal": "207-empty"}, 0),
    ("batch_upsert_400_non_unique_id_property.json", {}, 0),
    ("batch_upsert_400_duplicate_ids.json", {}, 0),
    ("rate_limit_429_daily.json", {"daily_limit": 1}, 1),
    ("rate_limit_429_ten_secondly.json", {"ten_second_limit": 1, "interval_milliseconds": 60_000}, 1),
]
#: Top-level keys the stand-in adds to HubSpot's answer: the 207 with empty results was recorded as
#: ``{"status", "results": [], "errors": []}``; the stand-in's also has the documented 207 fields.
EXTRA_KEYS = {"batch_upsert_207_empty_results.json": {"startedAt", "completedAt"}}


def same_message(actual: str, expected: str) -> bool:
    """Equal, or both ``Property values were not valid: <JSON list>`` (the list's fields differ)."""
    if expected.startswith(INVALID_VALUES):
        return actual.startswith(INVALID_VALUES) and isinstance(
            orjson.loads(actual[len(INVALID_VALUES) :]), list
        )
    return actual == expected


def error_summary(error: dict[str, Any]) -> tuple[Any, ...]:
    return error.get("status"), error.get("category"), error.get("code"), orjson.dumps(error.get("context"))


@pytest.mark.parametrize(
    ("name", "settings", "sent_before"), FIXTURE_CASES, ids=[c[0] for c in FIXTURE_CASES]
)
def test_the_answer_to_each_fixture_request_has_its_status_keys_category_and_message(
    hubspot, name, settings, sent_before
):
    case = fixture(name)
    expected = case["response"]["body"]
    hubspot.configure(**settings)
    for _ in range(sent_before):
        send(hubspot, case["request"])
    status, answer, parsed = send(hubspot, case["request"])

    assert status == case["response"]["status"]
    assert set(answer) == set(expected) | EXTRA_KEYS.get(name, set())
    for key in ("status", "category", "errorType", "policyName", "context"):
        if key in expected:
            assert answer[key] == expected[key], key
    if "message" in expected:
        assert same_message(answer["message"], expected["message"]), answer["message"]
    if "results" in expected:
        assert len(answer["results"]) == len(expected["results"])
    if expected.get("errors"):
        like = {error_summary(e): e for e in expected["errors"]}
        assert {error_summary(e) for e in answer["errors"]} == set(like)
        for error in answer["errors"]:
            assert set(like[error_summary(error)]) <= set(error)
            assert same_message(error["message"], like[error_summary(error)]["message"])
    if status in (200, 207):  # the client parses it
        assert parsed is not None
        assert parsed.status == answer["status"]
    if not answer.get("results"):  # nothing of the compared request was stored
        assert hubspot.stats()["deliveries"] == sent_before


# -- limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "per_interval", "per_day"),
    [
        ("free", 100, 250_000),
        ("starter", 100, 250_000),
        ("professional", 190, 625_000),
        ("enterprise", 190, 1_000_000),
    ],
)
def test_each_tier_answers_with_its_limits_in_the_rate_limit_headers(hubspot, tier, per_interval, per_day):
    hubspot.configure(tier=tier)
    _, status, headers = client(hubspot).upsert_with_http_info({"inputs": []})
    assert status == 200
    expected = {
        "X-HubSpot-RateLimit-Daily": str(per_day),
        "X-HubSpot-RateLimit-Daily-Remaining": str(per_day - 1),
        "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        "X-HubSpot-RateLimit-Max": str(per_interval),
        "X-HubSpot-RateLimit-Remaining": str(per_interval - 1),
    }
    assert {name: headers.get(name) for name in expected} == expected


def test_ten_second_and_daily_limits_given_override_the_tiers(hubspot):
    hubspot.configure(tier="enterprise", ten_second_limit=7, daily_limit=9)
    _, _, headers = client(hubspot).upsert_with_http_info({"inputs": []})
    assert (headers["X-HubSpot-RateLimit-Max"], headers["X-HubSpot-RateLimit-Daily"]) == ("7", "9")


def test_over_the_ten_second_limit_is_429_ten_secondly_rolling_which_the_day_does_not_count(hubspot):
    hubspot.configure(ten_second_limit=2, interval_milliseconds=60_000)
    api = client(hubspot)
    body = {"inputs": [{"idProperty": "external_id", "id": "u1", "properties": {}}]}
    remaining = []
    for _ in range(2):
        _, status, headers = api.upsert_with_http_info(body)
        remaining.append(headers["X-HubSpot-RateLimit-Remaining"])
        assert status == 200
        assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "60000"
    assert remaining == ["1", "0"]
    with pytest.raises(ApiException) as limited:
        api.upsert(body)
    answer = orjson.loads(limited.value.body)
    assert limited.value.status == 429
    assert answer["errorType"] == "RATE_LIMIT"
    assert answer["status"] == "error"
    assert answer["policyName"] == "TEN_SECONDLY_ROLLING"
    assert answer["message"] == "You have reached your ten_secondly_rolling limit."
    assert limited.value.headers["X-HubSpot-RateLimit-Max"] == "2"
    assert limited.value.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert limited.value.headers["X-HubSpot-RateLimit-Daily-Remaining"] == str(625_000 - 2)
    assert hubspot.stats()["daily_used"] == 2


def test_over_the_daily_limit_is_429_daily_and_a_new_configuration_starts_the_day_afresh(hubspot):
    hubspot.configure(daily_limit=1)
    upsert(hubspot, contact("u1"))
    with pytest.raises(ApiException) as daily:
        upsert(hubspot, contact("u2"))
    answer = orjson.loads(daily.value.body)
    assert daily.value.status == 429
    assert answer["errorType"] == "RATE_LIMIT"
    assert answer["policyName"] == "DAILY"
    assert answer["message"] == "You have reached your daily limit."
    assert daily.value.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    assert hubspot.user("u2") is None
    hubspot.configure(daily_limit=1)
    assert upsert(hubspot, contact("u2")).results[0].new is True


def test_the_daily_limit_resets_at_midnight_in_the_account_time_zone_not_in_utc():
    zone = ZoneInfo("America/New_York")
    now = [dt.datetime(2026, 3, 10, 19, 59, 30, tzinfo=zone).timestamp()]  # 23:59:30 UTC
    standin = HubSpotStandIn(
        TOKEN, HubSpotConfig(daily_limit=2, time_zone="America/New_York"), wall_clock=lambda: now[0]
    )
    http = TestClient(standin.app)

    def post():
        body = {"inputs": [{"idProperty": "external_id", "id": "u1", "properties": {}}]}
        return http.post(UPSERT_PATH, json=body, headers={"Authorization": f"Bearer {TOKEN}"})

    assert [post().status_code for _ in range(3)] == [200, 200, 429]
    now[0] += 60  # past midnight UTC, still 20:00:30 in New York
    still = post()
    assert still.status_code == 429
    assert still.json()["policyName"] == "DAILY"
    now[0] = dt.datetime(2026, 3, 11, 0, 0, 0, tzinfo=zone).timestamp()
    fresh = post()
    assert fresh.status_code == 200
    assert fresh.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "1"


def test_the_rolling_window_frees_a_slot_once_the_oldest_request_is_older_than_the_interval():
    now = [0.0]
    window = RollingWindow(limit=2, seconds=10, clock=lambda: now[0])
    assert window.take()
    assert window.take()
    assert not window.take()
    now[0] = 9.9
    assert not window.take()
    assert window.remaining() == 0
    now[0] = 10.0  # both requests of t=0 left the window
    assert window.take()
    assert window.remaining() == 1


# -- authentication and faults ---------------------------------------------------------------------


def test_a_wrong_or_missing_token_is_401_invalid_authentication_without_the_token(hubspot):
    for token in ("pat-wrong", ""):
        with pytest.raises(UnauthorizedException) as raised:
            upsert(hubspot, contact("u1"), token=token)
        body = orjson.loads(raised.value.body)
        assert raised.value.status == 401
        assert body["category"] == "INVALID_AUTHENTICATION"
        assert body["status"] == "error"
        assert body["message"].startswith("Authentication credentials not found.")
        assert TOKEN not in raised.value.body
        assert "pat-wrong" not in raised.value.body
    assert hubspot.stats()["distinct_users"] == 0
    assert hubspot.stats()["daily_used"] == 0


def test_injected_server_errors_are_5xx_the_client_reports(hubspot):
    hubspot.configure(error_rate=1.0, seed=4)
    statuses = set()
    for _ in range(12):
        with pytest.raises(ServiceException) as failed:
            upsert(hubspot, contact("u1"))
        statuses.add(failed.value.status)
        assert orjson.loads(failed.value.body)["status"] == "error"
    assert statuses <= {500, 502, 503, 504}
    assert len(statuses) > 1
    assert hubspot.user("u1") is None
