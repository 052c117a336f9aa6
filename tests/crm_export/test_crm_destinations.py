"""Each destination's requests and answers, through the sink (PostBatchesFn) against its stand-in:
partial failures with the CRM's own codes, 429 storms, 5xx, a refused key, an oversize batch."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import pytest

from devstack.crms import BrazeServer, HubSpotServer
from devstack.crms.braze import BrazeConfig
from devstack.crms.hubspot import HubSpotConfig
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.destinations import BrazeDestination, FieldMap, HubSpotDestination, hubspot_value
from pipelines.crm_export.post_batches import CrmRejectedCredentialsError, PostBatchesFn
from pipelines.crm_export.settings import PipelineSettings

TOKEN = "pat-na1-destinations-test"
FIELDS = {"email": "email", "properties.plan": "plan", "identity.country": "country"}


def records(*keys: str, **overrides) -> list[dict]:
    return [
        {
            "external_id": k,
            "email": f"{k}@example.com",
            "identity": {"country": "DE"},
            "properties": {"plan": "pro"},
        }
        | overrides.get(k, {})
        for k in keys
    ]


def sink(settings: PipelineSettings, key: str = TOKEN) -> PostBatchesFn:
    fn = PostBatchesFn(settings, ApiKey(key), "ns", backoff_base_seconds=0.05)
    fn.setup()
    return fn


def send(fn: PostBatchesFn, batch: list[dict]):
    payload, keys, unserialisable = fn.destination.encode(batch)
    assert unserialisable == []
    try:
        return fn.post_body(payload, keys)
    finally:
        fn.teardown()


def test_the_field_map_takes_nested_fields_and_leaves_out_what_the_record_lacks():
    mapping = FieldMap({"email": "email", "properties.plan": "plan", "identity.phone": "phone"}, ".")
    assert mapping({"email": "a@b.co", "properties": {"plan": "pro"}, "identity": {}}) == {
        "email": "a@b.co",
        "plan": "pro",
    }
    assert [hubspot_value(v) for v in ("x", None, True, 3, 2.5, ["a"])] == [
        "x",
        "",
        "true",
        "3",
        "2.5",
        '["a"]',
    ]


# --- HubSpot --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hubspot() -> Iterator[HubSpotServer]:
    with HubSpotServer(TOKEN) as server:
        yield server


@pytest.fixture
def hs(hubspot):
    hubspot.configure(**HubSpotConfig().__dict__)
    hubspot.reset()
    return hubspot


def hubspot_settings(url: str, **changes) -> PipelineSettings:
    return PipelineSettings(
        url=url,
        destination="hubspot",
        field_map=FIELDS,
        id_property="external_id",
        max_backoff_seconds=0.2,
        **changes,
    )


def test_hubspot_inputs_are_upserted_by_id_property_and_207_errors_dead_letter_with_hubspots_code(hs):
    batch = records("u1", "u2", "u3", u2={"email": "u2example.com"})
    outcome = send(sink(hubspot_settings(hs.url)), batch)
    assert outcome.accepted == 2 and outcome.statuses == [207] and outcome.requests == 1
    (dead,) = outcome.dead_letters
    assert dead["key"] == "u2" and dead["status"] == 207 and dead["stage"] == "crm"
    assert dead["reason"] == "INVALID_EMAIL: Email address u2example.com is invalid"
    stored = hs.user("u1")["properties"]
    assert {k: stored[k] for k in ("external_id", "email", "plan", "country")} == {
        "external_id": "u1",
        "email": "u1@example.com",
        "plan": "pro",
        "country": "DE",
    }


def test_a_hubspot_429_storm_is_waited_out_and_everything_is_upserted_once(hs):
    hs.configure(ten_second_limit=2, interval_milliseconds=300)
    fn = sink(hubspot_settings(hs.url, max_attempts=40))
    outcomes = []
    try:
        for i in range(6):
            payload, keys, _ = fn.destination.encode(records(f"s{i}"))
            outcomes.append(fn.post_body(payload, keys))
    finally:
        fn.teardown()
    assert sum(o.accepted for o in outcomes) == 6 and not any(o.dead_letters for o in outcomes)
    stats = hs.stats()
    assert stats["status_counts"].get("429", 0) > 0 and stats["duplicate_deliveries"] == 0
    assert sum(o.retries for o in outcomes) == stats["status_counts"]["429"]


def test_hubspots_daily_limit_dead_letters_the_batch_without_retrying(hs):
    hs.configure(daily_limit=0)
    outcome = send(sink(hubspot_settings(hs.url)), records("d1", "d2"))
    assert outcome.requests == 1 and outcome.accepted == 0 and len(outcome.dead_letters) == 2
    assert "daily limit" in outcome.dead_letters[0]["reason"] and outcome.dead_letters[0]["status"] == 429


def test_hubspot_5xx_are_retried(hs):
    hs.configure(error_rate=0.5, seed=1)
    fn = sink(hubspot_settings(hs.url, max_attempts=20))
    try:
        outcomes = [fn.post_body(*fn.destination.encode(records(f"e{i}"))[:2]) for i in range(8)]
    finally:
        fn.teardown()
    assert sum(o.accepted for o in outcomes) == 8 and sum(o.retries for o in outcomes) > 0
    assert any(s >= 500 for o in outcomes for s in o.statuses)


def test_a_wrong_hubspot_token_fails_and_nothing_is_stored(hs):
    with pytest.raises(
        CrmRejectedCredentialsError,
        match="answered 401: check the API key in the CRM block .* crm.objects.contacts.write",
    ):
        send(sink(hubspot_settings(hs.url), key="pat-wrong"), records("w1"))
    assert hs.stats()["distinct_users"] == 0


def test_the_hubspot_client_goes_through_the_environments_proxy_unless_no_proxy_names_the_host(
    hs, monkeypatch
):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as closed:  # a proxy that is not there: the request must go to it, and fail
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed.getsockname()[1]}")
    refused = send(sink(hubspot_settings(hs.url, max_attempts=1)), records("p1"))
    assert refused.accepted == 0 and refused.statuses == []
    assert "ProxyError" in refused.dead_letters[0]["reason"]
    monkeypatch.setenv("NO_PROXY", urlsplit(hs.url).hostname)
    assert send(sink(hubspot_settings(hs.url)), records("p2")).accepted == 1
    assert hs.stats()["distinct_users"] == 1  # p1 never reached HubSpot


def test_an_oversize_hubspot_batch_is_dead_lettered_with_the_400_not_retried(hs):
    fn = sink(hubspot_settings(hs.url))
    batch = records(*(f"o{i}" for i in range(101)))
    outcome = send(fn, batch)
    assert outcome.requests == 1 and len(outcome.dead_letters) == 101
    assert {d["status"] for d in outcome.dead_letters} == {400}
    assert "VALIDATION_ERROR" in outcome.dead_letters[0]["reason"]
    assert HubSpotDestination.max_batch_size == 100  # the pipeline never batches more


# --- Braze ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def braze() -> Iterator[BrazeServer]:
    with BrazeServer(TOKEN) as server:
        yield server


@pytest.fixture
def bz(braze):
    braze.configure(**BrazeConfig().__dict__)
    braze.reset()
    return braze


def braze_settings(url: str, **changes) -> PipelineSettings:
    return PipelineSettings(
        url=url, destination="braze", field_map=FIELDS, max_backoff_seconds=0.2, **changes
    )


def test_braze_attributes_are_keyed_by_external_id_and_non_fatal_errors_dead_letter_by_index(bz):
    batch = records("b1", "b2", "b3", b3={"email": "nope"})
    payload, keys, _ = BrazeDestination(braze_settings(bz.url)).encode(batch)
    assert orjson.loads(payload)["attributes"][0] == {
        "external_id": "b1",
        "email": "b1@example.com",
        "plan": "pro",
        "country": "DE",
    }
    outcome = send(sink(braze_settings(bz.url)), batch)
    assert outcome.accepted == 2 and outcome.statuses == [201]
    (dead,) = outcome.dead_letters
    assert dead["key"] == "b3" and dead["reason"] == "'email' is not a valid email address"
    assert bz.user("b1")["properties"] == {"email": "b1@example.com", "plan": "pro", "country": "DE"}


def test_a_braze_429_waits_until_x_ratelimit_reset():
    settings = braze_settings("http://braze.invalid")
    now = 1_000.0
    answer = BrazeDestination.parse(
        429, {"X-RateLimit-Reset": "1003"}, b'{"message": "Rate Limited"}', 1, now=now
    )
    assert answer.retry and answer.retry_after_seconds == 3.0 and answer.reason == "HTTP 429: Rate Limited"
    assert settings.batch_limit() == 75


@pytest.mark.parametrize("content", [b"<html>maintenance</html>", b"null", b"[]", b'"ok"'])
def test_a_braze_2xx_whose_body_is_not_the_documented_object_dead_letters_the_batch(content):
    answer = BrazeDestination.parse(201, {}, content, 3)
    assert answer.rejected == {i: "unparseable Braze response" for i in range(3)}


def test_a_braze_429_storm_is_waited_out(bz):
    bz.configure(requests_per_window=2, window_seconds=1)
    fn = sink(braze_settings(bz.url, max_attempts=20))
    started = time.monotonic()
    try:
        outcomes = [fn.post_body(*fn.destination.encode(records(f"r{i}"))[:2]) for i in range(5)]
    finally:
        fn.teardown()
    assert sum(o.accepted for o in outcomes) == 5 and bz.stats()["status_counts"].get("429", 0) > 0
    assert time.monotonic() - started >= 1.0  # two windows passed: it waited for the reset, not a fixed sleep


def test_braze_5xx_are_retried_a_wrong_key_fails_and_an_oversize_batch_is_dead_lettered(bz):
    bz.configure(error_rate=0.5, seed=3)
    fn = sink(braze_settings(bz.url, max_attempts=20))
    try:
        outcomes = [fn.post_body(*fn.destination.encode(records(f"x{i}"))[:2]) for i in range(6)]
    finally:
        fn.teardown()
    assert sum(o.accepted for o in outcomes) == 6 and sum(o.retries for o in outcomes) > 0
    bz.configure(error_rate=0.0)
    with pytest.raises(CrmRejectedCredentialsError, match="answered 401: .* users.track permission"):
        send(sink(braze_settings(bz.url), key="wrong"), records("k1"))
    outcome = send(sink(braze_settings(bz.url)), records(*(f"big{i}" for i in range(76))))
    assert outcome.requests == 1 and {d["status"] for d in outcome.dead_letters} == {400}
    assert outcome.dead_letters[0]["reason"] == "HTTP 400: Max Input Length Exceeded"
