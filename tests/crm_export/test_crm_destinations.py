"""Each destination's requests and answers, through the sink (PostBatchesFn) against its stand-in, which
answers as the service does: what counts as accepted (only what the answer says was written), bad inputs
isolated when HubSpot refuses a whole batch, duplicates, limits and pacing, 429 storms, 5xx, a refused
key, an oversize batch."""

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
from pipelines.crm_export.destinations import (
    BrazeDestination,
    FieldMap,
    GenericDestination,
    HubSpotDestination,
    hubspot_value,
)
from pipelines.crm_export.pipeline import failure_counters
from pipelines.crm_export.post_batches import (
    CrmRejectedCredentialsError,
    CrmRejectedSettingsError,
    Pacer,
    PostBatchesFn,
)
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
    given = {"field_map": FIELDS, "id_property": "external_id", "max_backoff_seconds": 0.2}
    return PipelineSettings(url=url, destination="hubspot", **(given | changes))


def test_hubspot_inputs_carry_a_trace_id_and_207_errors_dead_letter_with_hubspots_code(hs):
    batch = records("u1", "u2", "u3", u2={"email": "u2example.com"})
    payload, _, _ = HubSpotDestination(hubspot_settings(hs.url)).encode(batch)
    assert [i["objectWriteTraceId"] for i in payload["inputs"]] == ["u1", "u2", "u3"]
    outcome = send(sink(hubspot_settings(hs.url)), batch)
    assert outcome.accepted == 2
    assert outcome.statuses == [207]
    assert outcome.requests == 1
    (dead,) = outcome.dead_letters
    assert dead["key"] == "u2"
    assert dead["status"] == 207
    assert dead["stage"] == "crm"
    assert dead["reason"] == "INVALID_EMAIL: Email address u2example.com is invalid"
    stored = hs.user("u1")["properties"]
    assert {k: stored[k] for k in ("external_id", "email", "plan", "country")} == {
        "external_id": "u1",
        "email": "u1@example.com",
        "plan": "pro",
        "country": "DE",
    }
    assert hs.user("u2") is None


@pytest.mark.parametrize(
    ("config", "statuses"),
    [
        ({}, {207}),  # per-input errors through the trace ids: no split
        ({"trace_ids": False}, {400, 200}),  # one invalid input refuses the whole batch
        ({"trace_ids": False, "refusal": "207-empty"}, {207, 200}),  # a 207 that wrote nothing
    ],
)
def test_one_invalid_email_in_a_batch_of_100_leaves_99_accepted_and_1_dead_lettered(hs, config, statuses):
    hs.configure(**config)
    keys = [f"c{i:03d}" for i in range(100)]
    outcome = send(sink(hubspot_settings(hs.url)), records(*keys, c037={"email": "c037.example.com"}))
    assert outcome.accepted == 99
    assert [d["key"] for d in outcome.dead_letters] == ["c037"]
    if config.get("refusal"):  # HubSpot said nothing of why
        assert outcome.dead_letters[0]["reason"].startswith("HTTP 207, nothing written")
    else:
        assert outcome.dead_letters[0]["reason"].startswith(("INVALID_EMAIL", "HTTP 400"))
        assert "c037.example.com is invalid" in outcome.dead_letters[0]["reason"]
    assert sorted(outcome.accepted_positions) == [i for i in range(100) if i != 37]
    assert set(outcome.statuses) == statuses
    stats = hs.stats()
    assert stats["distinct_users"] == 99
    assert hs.user("c037") is None
    assert stats["duplicate_deliveries"] == 0
    if config:  # refused whole: halves until the bad input is alone (37 in 100, 50, 25, 13, 6, 3, 2: 1)
        assert outcome.isolation_requests == outcome.requests - 1 == 12
    else:
        assert outcome.requests == 1
        assert outcome.isolation_requests == 0


def test_two_inputs_hubspot_takes_for_one_contact_never_share_a_batch(hs):
    settings = hubspot_settings(hs.url, id_property="email", key_field="email")
    batch = [
        {"email": "Ann@Example.com", "properties": {"plan": "pro"}},
        {"email": "bob@example.com", "properties": {"plan": "pro"}},
        {"email": "ann@example.com", "properties": {"plan": "team"}},
    ]
    payload, keys, duplicates = HubSpotDestination(settings).encode(batch)
    assert keys == ["Ann@Example.com", "bob@example.com"]
    (duplicate,) = duplicates
    assert duplicate["key"] == "ann@example.com"
    assert duplicate["reason"].startswith(
        "duplicate key: HubSpot takes 'ann@example.com' and 'Ann@Example.com'"
    )
    outcome = sink(settings).post_body(payload, keys)
    assert outcome.accepted == 2
    assert outcome.requests == 1
    assert hs.stats()["distinct_users"] == 2
    assert hs.stats()["status_counts"] == {"200": 1}  # never a 400 "Duplicate IDs found in batch input"
    assert hs.user("ann@example.com")["properties"]["plan"] == "pro"  # the first row, sent once


def test_an_id_property_without_unique_values_fails_at_the_first_request_and_dead_letters_nothing(hs):
    fn = sink(hubspot_settings(hs.url, id_property="phone"))
    try:
        with pytest.raises(CrmRejectedSettingsError) as refused:
            fn.post_body(*fn.destination.encode(records("n1", "n2", "n3"))[:2])
    finally:
        fn.teardown()
    assert str(refused.value).endswith(
        "no request can succeed: HTTP 400: VALIDATION_ERROR: Unable to perform update/upsert by non-unique 0-1 "
        "property phone in portal ID 21939747"
    )
    assert hs.stats()["requests"] == 1  # not split, not retried
    assert hs.stats()["distinct_users"] == 0
    # What the local runner reports for the failed job (Dataflow: the counter's attempted value).
    assert failure_counters(RuntimeError("CrmRejectedSettingsError: in the text only")) == {}
    wrapped = RuntimeError("bundle failed")
    wrapped.__cause__ = refused.value
    assert failure_counters(wrapped) == {"crm_settings_refused": 1}


def test_an_answer_that_does_not_list_an_input_sends_it_again_then_dead_letters_it():
    settings = hubspot_settings("http://hubspot.invalid")
    destination = HubSpotDestination(settings)
    listed = {"status": "COMPLETE", "results": [{"id": "1", "properties": {"external_id": "a"}}]}
    answer = destination.parse(200, {}, orjson.dumps(listed), ["a", "b"])
    assert answer.succeeded
    assert answer.accepted == {0}
    assert answer.rejected == {}
    assert answer.reason.startswith("unconfirmed: HubSpot's answer lists it neither")
    assert destination.parse(200, {}, b"{}", ["a"]).retry  # no results at all: a protocol error
    assert destination.parse(207, {}, b'{"results": [], "errors": []}', ["a", "b"]).refused_whole


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
    assert sum(o.accepted for o in outcomes) == 6
    assert not any(o.dead_letters for o in outcomes)
    stats = hs.stats()
    assert stats["status_counts"].get("429", 0) > 0
    assert stats["duplicate_deliveries"] == 0
    assert sum(o.retries for o in outcomes) == stats["status_counts"]["429"]


def test_hubspots_daily_limit_stops_sending_and_leaves_the_rest_not_sent(hs):
    hs.configure(daily_limit=2)
    fn = sink(hubspot_settings(hs.url))
    try:
        outcomes = [fn.post_body(*fn.destination.encode(records(f"d{i}a", f"d{i}b"))[:2]) for i in range(4)]
    finally:
        fn.teardown()
    assert [o.accepted for o in outcomes] == [2, 2, 0, 0]
    assert [o.not_sent for o in outcomes] == [0, 0, 2, 2]
    assert [o.requests for o in outcomes] == [1, 1, 1, 0]  # the DAILY 429 stops the job's sending
    assert not any(o.dead_letters for o in outcomes)
    assert hs.stats()["distinct_users"] == 4


def test_hubspot_5xx_are_retried(hs):
    hs.configure(error_rate=0.5, seed=1)
    fn = sink(hubspot_settings(hs.url, max_attempts=20))
    try:
        outcomes = [fn.post_body(*fn.destination.encode(records(f"e{i}"))[:2]) for i in range(8)]
    finally:
        fn.teardown()
    assert sum(o.accepted for o in outcomes) == 8
    assert sum(o.retries for o in outcomes) > 0
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
    assert refused.accepted == 0
    assert refused.statuses == []
    assert "ProxyError" in refused.dead_letters[0]["reason"]
    monkeypatch.setenv("NO_PROXY", urlsplit(hs.url).hostname)
    assert send(sink(hubspot_settings(hs.url)), records("p2")).accepted == 1
    assert hs.stats()["distinct_users"] == 1  # p1 never reached HubSpot


def test_hubspot_batches_stay_within_100_inputs():
    assert HubSpotDestination.max_batch_size == 100  # the pipeline never batches more
    assert hubspot_settings("http://hubspot.invalid", batch_size=5000).batch_limit() == 100


def test_workers_pace_themselves_below_the_ten_second_limit_and_meet_no_429(hs):
    hs.configure(ten_second_limit=10, interval_milliseconds=1_000)
    settings = hubspot_settings(hs.url, rate_limit_requests=10, rate_limit_seconds=1.0, max_attempts=1)
    assert settings.requests_per_second(parallelism=2) == pytest.approx(4.5)  # 90 %, shared by two
    fn = sink(settings)
    started = time.monotonic()
    try:
        outcomes = [fn.post_body(*fn.destination.encode(records(f"pace{i}"))[:2]) for i in range(20)]
    finally:
        fn.teardown()
    assert sum(o.accepted for o in outcomes) == 20
    assert "429" not in hs.stats()["status_counts"]
    assert time.monotonic() - started >= 19 / 9  # 9 requests a second at most


def test_a_pacer_spaces_requests_at_its_rate_from_every_thread():
    now = [100.0]
    pacer = Pacer(4.0, clock=lambda: now[0])
    assert [pacer.delay() for _ in range(3)] == [0.0, 0.25, 0.5]
    now[0] = 101.0  # idle for a while: no burst saved up beyond the schedule
    assert [pacer.delay() for _ in range(2)] == [0.0, 0.25]


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
    assert outcome.accepted == 2
    assert outcome.statuses == [201]
    (dead,) = outcome.dead_letters
    assert dead["key"] == "b3"
    assert dead["reason"] == "The value provided for the 'email' field is not a valid email."
    assert bz.user("b1")["properties"] == {"email": "b1@example.com", "plan": "pro", "country": "DE"}
    assert bz.user("b3") is None


def test_a_braze_429_waits_until_x_ratelimit_reset():
    settings = braze_settings("http://braze.invalid")
    now = 1_000.0
    answer = BrazeDestination.parse(
        429, {"X-RateLimit-Reset": "1003"}, b'{"message": "Rate Limited"}', 1, now=now
    )
    assert answer.retry
    assert answer.retry_after_seconds == 3.0
    assert answer.reason == "HTTP 429: Rate Limited"
    assert settings.batch_limit() == 75


@pytest.mark.parametrize(
    "content", [b"<html>maintenance</html>", b"null", b"[]", b'"ok"', b'{"message": "success"}']
)
def test_a_braze_2xx_that_does_not_say_what_it_processed_is_a_protocol_error(content):
    answer = BrazeDestination.parse(201, {}, content, 3)
    assert answer.retry
    assert answer.accepted == frozenset()
    assert answer.reason.startswith("protocol error")


def test_brazes_processed_count_says_which_objects_were_written():
    errors = b'"errors": [{"type": "x", "input_array": "attributes", "index": 1}]'
    for processed in (2, 3):  # the valid objects, or every object less the errors
        answer = BrazeDestination.parse(201, {}, b'{"attributes_processed": %d, %s}' % (processed, errors), 3)
        assert answer.accepted == {0, 2}
        assert answer.rejected == {1: "x"}
    short = BrazeDestination.parse(201, {}, b'{"attributes_processed": 1, %s}' % errors, 3)
    assert short.accepted == frozenset()
    assert short.reason.startswith("unconfirmed: Braze processed 1 of the 2")


def test_an_mau_contract_sends_50_objects_a_request(bz):
    bz.configure(objects_per_request=50)
    settings = braze_settings(bz.url, objects_per_request=50)
    assert settings.batch_limit() == 50
    with pytest.raises(
        ValueError, match=r"objects_per_request 80: braze takes at most 75 records per request"
    ):
        braze_settings(bz.url, objects_per_request=80)
    assert send(sink(settings), records(*(f"m{i}" for i in range(50)))).accepted == 50
    assert bz.stats()["distinct_users"] == 50
    oversize = send(sink(settings), records(*(f"n{i}" for i in range(51))))
    assert oversize.dead_letters[0]["reason"] == "HTTP 400: Max Input Length Exceeded"
    assert bz.stats()["distinct_users"] == 50  # the refused request stored nothing


def test_a_batch_braze_refuses_whole_is_dead_lettered_with_brazes_words(bz):
    outcome = send(sink(braze_settings(bz.url)), records("v1", "v2", v1={"email": "x"}, v2={"email": "y"}))
    assert outcome.requests == 1
    assert outcome.accepted == 0
    assert {d["status"] for d in outcome.dead_letters} == {400}
    assert outcome.dead_letters[0]["reason"] == (
        "HTTP 400: Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
    )


@pytest.mark.parametrize(
    ("key", "config", "status"),
    [("unknown-key", {}, 404), (TOKEN, {"permissions": []}, 403), ("", {}, 401)],
)
def test_a_refused_braze_key_fails_at_once_naming_users_track(bz, key, config, status):
    bz.configure(**config)
    fn = PostBatchesFn(braze_settings(bz.url), ApiKey(TOKEN), "ns")
    fn.setup()
    fn._connection.session.headers["Authorization"] = f"Bearer {key}"
    with pytest.raises(CrmRejectedCredentialsError, match=rf"answered {status}: .*users\.track permission"):
        send(fn, records("k1"))
    assert bz.stats()["distinct_users"] == 0


def test_a_braze_429_storm_is_waited_out(bz):
    bz.configure(requests_per_window=2, window_seconds=1)
    fn = sink(braze_settings(bz.url, max_attempts=20))
    started = time.monotonic()
    try:
        outcomes = [fn.post_body(*fn.destination.encode(records(f"r{i}"))[:2]) for i in range(5)]
    finally:
        fn.teardown()
    assert sum(o.accepted for o in outcomes) == 5
    assert bz.stats()["status_counts"].get("429", 0) > 0
    assert time.monotonic() - started >= 1.0  # two windows passed: it waited for the reset, not a fixed sleep


def test_braze_5xx_are_retried_and_an_oversize_batch_is_dead_lettered(bz):
    bz.configure(error_rate=0.5, seed=3)
    fn = sink(braze_settings(bz.url, max_attempts=20))
    try:
        outcomes = [fn.post_body(*fn.destination.encode(records(f"x{i}"))[:2]) for i in range(6)]
    finally:
        fn.teardown()
    assert sum(o.accepted for o in outcomes) == 6
    assert sum(o.retries for o in outcomes) > 0
    bz.configure(error_rate=0.0)
    outcome = send(sink(braze_settings(bz.url)), records(*(f"big{i}" for i in range(76))))
    assert outcome.requests == 1
    assert {d["status"] for d in outcome.dead_letters} == {400}
    assert outcome.dead_letters[0]["reason"] == "HTTP 400: Max Input Length Exceeded"


# --- the generic endpoint -----------------------------------------------------------------------------


def test_a_generic_answer_that_does_not_say_what_was_accepted_is_retried_then_dead_lettered(tmp_path):
    from devstack.crms import CrmStandIn, FaultConfig

    with CrmStandIn(
        api_key=TOKEN, db_path=tmp_path / "crm.sqlite3", faults=FaultConfig(empty_answer_rate=1.0)
    ) as crm:
        settings = PipelineSettings(url=crm.batch_url, max_attempts=3, max_backoff_seconds=0.05)
        outcome = send(sink(settings), records("g1", "g2"))
        assert outcome.accepted == 0
        assert outcome.requests == 3
        assert outcome.retries == 2
        assert [d["key"] for d in outcome.dead_letters] == ["g1", "g2"]
        assert outcome.dead_letters[0]["reason"].startswith(
            "retries exhausted: 3 attempts, the last: protocol error: HTTP 200 without an integer 'accepted'"
        )
        # The endpoint stored them but did not say so: they count as not accepted, and go out again.
        assert crm.user("g1")["deliveries"] == 1
        assert crm.stats()["replays"] == 2
    for body in (b"{}", b'{"error": "db down"}', b'{"accepted": "2"}', b"[]"):
        assert GenericDestination.parse(200, {}, body, 2).retry
    partial = GenericDestination.parse(200, {}, b'{"accepted": 1, "rejected": []}', 2)
    assert partial.succeeded
    assert partial.accepted == frozenset()
    assert partial.reason.startswith("unconfirmed")
