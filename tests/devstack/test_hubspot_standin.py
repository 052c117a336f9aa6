"""The HubSpot stand-in (devstack/crms/hubspot.py) driven by hubspot-api-client, as the sink drives it:
the client must parse every answer (200, 207 with per-input errors, 400, 401, 429, 5xx).

One stand-in serves the module; every test starts from a reset store and the default settings.
"""

from __future__ import annotations

from collections.abc import Iterator

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
from urllib3.util.retry import Retry

from devstack.crms import HubSpotServer
from devstack.crms.common import RollingWindow
from devstack.crms.hubspot import HubSpotConfig

TOKEN = "pat-na1-5e4f0c2a-standin"


@pytest.fixture(scope="module")
def hubspot() -> Iterator[HubSpotServer]:
    with HubSpotServer(TOKEN) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(hubspot: HubSpotServer) -> None:
    hubspot.configure(**{k: v for k, v in HubSpotConfig().__dict__.items()})
    hubspot.reset()


def client(hubspot: HubSpotServer, token: str = TOKEN):
    return HubSpot(access_token=token, host=hubspot.url, retry=Retry(total=0)).crm.contacts.batch_api


def upsert(hubspot: HubSpotServer, *inputs: dict, token: str = TOKEN):
    batch = BatchInputSimplePublicObjectBatchInputUpsert(
        inputs=[SimplePublicObjectBatchInputUpsert(**i) for i in inputs]
    )
    return client(hubspot, token).upsert(batch_input_simple_public_object_batch_input_upsert=batch)


def contact(key: str, **properties: str) -> dict:
    return {
        "id": key,
        "id_property": "external_id",
        "properties": {"email": f"{key}@example.com", **properties},
    }


def test_an_upsert_creates_then_updates_by_id_property_and_the_client_parses_it(hubspot):
    first = upsert(hubspot, contact("u1", plan="pro"), contact("u2"))
    assert isinstance(first, BatchResponseSimplePublicUpsertObject) and first.status == "COMPLETE"
    assert [r.new for r in first.results] == [True, True]
    assert first.results[0].properties["external_id"] == "u1" and first.results[0].properties["plan"] == "pro"
    assert first.started_at <= first.completed_at
    again = upsert(hubspot, contact("u1", plan="team"))
    assert again.results[0].new is False and again.results[0].id == first.results[0].id
    stored = hubspot.user("u1")
    assert stored["properties"]["plan"] == "team" and stored["deliveries"] == 2


def test_invalid_inputs_get_207_with_their_ids_codes_and_the_rest_is_upserted(hubspot):
    hubspot.configure(known_properties=["email", "plan", "external_id"])
    answer = upsert(
        hubspot, contact("ok"), contact("bad-email", email="bad-email.example.com"), contact("p", tier="x")
    )
    assert isinstance(answer, BatchResponseSimplePublicUpsertObjectWithErrors)
    assert answer.num_errors == 2 and len(answer.results) == 1
    by_id = {e.context["ids"][0]: e for e in answer.errors}
    assert by_id["bad-email"].category == "VALIDATION_ERROR"
    assert by_id["bad-email"].errors[0].code == "INVALID_EMAIL"
    assert by_id["bad-email"].errors[0].context == {"propertyName": ["email"]}
    assert by_id["p"].errors[0].code == "PROPERTY_DOESNT_EXIST" and '"tier"' in by_id["p"].errors[0].message
    assert hubspot.user("ok") and hubspot.user("bad-email") is None
    assert hubspot.stats()["status_counts"] == {"207": 1}


def test_a_wrong_or_missing_token_is_401_invalid_authentication_without_the_token(hubspot):
    for token in ("pat-wrong", ""):
        with pytest.raises(UnauthorizedException) as refused:
            upsert(hubspot, contact("u1"), token=token)
        body = orjson.loads(refused.value.body)
        assert refused.value.status == 401 and body["category"] == "INVALID_AUTHENTICATION"
        assert body["message"].startswith("Authentication credentials not found.")
        assert TOKEN not in refused.value.body and "pat-wrong" not in refused.value.body
    assert hubspot.stats()["distinct_users"] == 0


def test_the_ten_second_and_daily_limits_answer_429_with_their_policy_and_headers(hubspot):
    hubspot.configure(ten_second_limit=2, interval_milliseconds=60_000)
    api = client(hubspot)
    body = {"inputs": [{"idProperty": "external_id", "id": "u1", "properties": {}}]}
    remaining = []
    for _ in range(2):
        _, status, headers = api.upsert_with_http_info(body)
        remaining.append(headers["X-HubSpot-RateLimit-Remaining"])
        assert status == 200 and headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "60000"
    assert remaining == ["1", "0"]
    with pytest.raises(ApiException) as limited:
        api.upsert(body)
    answer = orjson.loads(limited.value.body)
    assert limited.value.status == 429 and answer["errorType"] == "RATE_LIMIT"
    assert answer["policyName"] == "TEN_SECONDLY_ROLLING"
    assert answer["message"] == "You have reached your ten_secondly_rolling limit."
    assert limited.value.headers["X-HubSpot-RateLimit-Max"] == "2"

    hubspot.configure(daily_limit=1)
    api.upsert(body)
    with pytest.raises(ApiException) as daily:
        api.upsert(body)
    answer = orjson.loads(daily.value.body)
    assert answer["policyName"] == "DAILY" and answer["message"] == "You have reached your daily limit."
    assert daily.value.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"


def test_more_than_100_inputs_is_a_400_validation_error_and_nothing_is_stored(hubspot):
    with pytest.raises(ApiException) as refused:
        upsert(hubspot, *(contact(f"u{i}") for i in range(101)))
    answer = orjson.loads(refused.value.body)
    assert (
        refused.value.status == 400
        and answer["category"] == "VALIDATION_ERROR"
        and "100" in answer["message"]
    )
    assert hubspot.stats()["distinct_users"] == 0


def test_injected_server_errors_are_5xx_the_client_reports(hubspot):
    hubspot.configure(error_rate=1.0, seed=4)
    with pytest.raises(ServiceException) as failed:
        upsert(hubspot, contact("u1"))
    assert failed.value.status in (500, 502, 503, 504)
    assert hubspot.user("u1") is None


def test_the_rolling_window_frees_a_slot_once_the_oldest_request_is_older_than_the_interval():
    now = [0.0]
    window = RollingWindow(limit=2, seconds=10, clock=lambda: now[0])
    assert window.take() and window.take() and not window.take()
    now[0] = 9.9
    assert not window.take() and window.remaining() == 0
    now[0] = 10.0  # both requests of t=0 left the window
    assert window.take() and window.remaining() == 1
