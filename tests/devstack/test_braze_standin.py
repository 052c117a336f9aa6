"""The Braze stand-in (devstack/crms/braze.py) against response bodies, headers and limits copied from
Braze's documentation and from clients that recorded Braze's answers (tests/fixtures/braze/, sources in
tests/fixtures/README.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from devstack.crms import BrazeServer
from devstack.crms.braze import BrazeConfig
from devstack.crms.common import FixedWindow

API_KEY = "braze-rest-key-3f9a"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "braze"
INVALID_EMAIL = "The value provided for the 'email' field is not a valid email."


def fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def shape(value: Any) -> Any:
    """The JSON shape of a value: the same keys (recursively) and value types."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


@pytest.fixture(scope="module")
def braze() -> Iterator[BrazeServer]:
    with BrazeServer(API_KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(braze: BrazeServer) -> None:
    braze.configure(**BrazeConfig().__dict__)
    braze.reset()


def track(braze: BrazeServer, attributes: list, key: str | None = API_KEY) -> requests.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return requests.post(
        braze.url + "/users/track", json={"attributes": attributes}, headers=headers, timeout=10
    )


# -- successes and non-fatal errors ----------------------------------------------------------------


def test_a_success_has_the_documented_shape_and_upserts_by_external_id(braze):
    response = track(braze, [{"external_id": "u1", "email": "u1@example.com", "plan": "pro"}])
    assert response.status_code == 201
    assert response.json() == fixture("users_track_success.json")
    track(braze, [{"external_id": "u1", "plan": "team"}])
    assert braze.user("u1") == {
        "key": "u1",
        "properties": {"email": "u1@example.com", "plan": "team"},
        "deliveries": 2,
    }


def test_an_object_without_identifier_is_a_non_fatal_error_by_index_as_documented(braze):
    response = track(braze, [{"external_id": "u1"}, {"plan": "pro"}])
    assert response.status_code == 201
    assert response.json() == fixture("users_track_non_fatal_errors.json")
    assert braze.user("u1")
    assert braze.stats()["distinct_users"] == 1


def test_an_invalid_email_is_a_non_fatal_error_with_brazes_wording_and_the_object_is_not_stored(braze):
    answer = track(braze, [{"external_id": "u2", "email": "u2example.com"}, {"external_id": "u3"}]).json()
    assert shape(answer) == shape(fixture("users_track_non_fatal_errors.json"))
    assert answer["errors"] == [{"type": INVALID_EMAIL, "input_array": "attributes", "index": 0}]
    assert answer["attributes_processed"] == 1
    assert braze.user("u2") is None
    assert braze.user("u3")


def test_attributes_processed_counts_the_valid_objects_and_errors_name_the_others_by_index(braze):
    attributes = [
        {"external_id": "a", "plan": "pro"},
        {"plan": "orphan"},
        {"braze_id": "b-1"},
        {"external_id": "c", "email": "not-an-email"},
        {"user_alias": {"alias_name": "d", "alias_label": "crm"}},
    ]
    identifier_required = fixture("users_track_non_fatal_errors.json")["errors"][0]["type"]
    response = track(braze, attributes)
    assert response.status_code == 201
    assert response.json() == {
        "message": "success",
        "attributes_processed": 3,
        "errors": [
            {"type": identifier_required, "input_array": "attributes", "index": 1},
            {"type": INVALID_EMAIL, "input_array": "attributes", "index": 3},
        ],
    }
    stats = braze.stats()
    assert (stats["distinct_users"], stats["records_accepted"], stats["records_rejected"]) == (3, 3, 2)


def test_a_request_whose_every_object_is_invalid_is_a_400_with_the_errors_and_stores_nothing(braze):
    response = track(braze, [{"external_id": "u1", "email": "u1@"}, {"external_id": "u2", "email": "u2"}])
    assert response.status_code == 400
    assert response.json() == fixture("users_track_no_valid_data.json")
    assert braze.stats()["distinct_users"] == 0
    assert braze.stats()["status_counts"] == {"400": 1}


def test_a_user_identified_by_braze_id_alone_is_upserted_under_it(braze):
    response = track(braze, [{"braze_id": "b-7", "plan": "pro"}])
    assert response.status_code == 201
    assert response.json()["attributes_processed"] == 1
    assert braze.user("b-7")["properties"] == {"plan": "pro"}


# -- fatal errors ----------------------------------------------------------------------------------


def test_the_default_limits_are_the_documented_ones():
    limits = fixture("users_track_limits.json")
    config = BrazeConfig()
    assert (config.requests_per_window, config.window_seconds, config.objects_per_request) == (
        limits["requests_per_window"],
        limits["window_seconds"],
        limits["objects_per_request"],
    )


def test_more_than_75_attributes_objects_is_the_documented_fatal_error(braze):
    response = track(braze, [{"external_id": f"u{i}"} for i in range(76)])
    assert response.status_code == 400
    assert response.json() == fixture("fatal_error.json")
    assert braze.stats()["distinct_users"] == 0
    assert track(braze, [{"external_id": f"u{i}"} for i in range(75)]).json()["attributes_processed"] == 75


def test_on_an_mau_contract_51_objects_are_max_input_length_exceeded_and_50_are_accepted(braze):
    mau = fixture("users_track_limits.json")["objects_per_request_mau"]
    braze.configure(objects_per_request=mau)
    response = track(braze, [{"external_id": f"u{i}"} for i in range(mau + 1)])
    assert response.status_code == 400
    assert response.json() == fixture("fatal_error.json")
    assert braze.stats()["distinct_users"] == 0
    accepted = track(braze, [{"external_id": f"u{i}"} for i in range(mau)])
    assert accepted.status_code == 201
    assert accepted.json()["attributes_processed"] == mau


def test_a_missing_or_empty_key_is_401_unauthorized(braze):
    for key in (None, "", "   "):
        response = track(braze, [{"external_id": "u1"}], key=key)
        assert response.status_code == 401
        assert response.json() == fixture("unauthorized.json")
    assert braze.user("u1") is None


def test_an_unknown_key_is_404_unknown_rest_api_key_without_echoing_a_key(braze):
    response = track(braze, [{"external_id": "u1"}], key="wrong-key")
    assert response.status_code == 404
    assert response.json() == fixture("unknown_rest_api_key.json")
    assert API_KEY not in response.text
    assert "wrong-key" not in response.text
    assert braze.user("u1") is None


def test_a_key_without_the_users_track_permission_is_403_access_denied(braze):
    braze.configure(permissions=["users.export.ids"])
    response = track(braze, [{"external_id": "u1"}])
    assert response.status_code == 403
    assert response.json() == fixture("access_denied.json")
    assert braze.user("u1") is None
    braze.configure(permissions=["users.export.ids", "users.track"])
    assert track(braze, [{"external_id": "u1"}]).status_code == 201


def test_over_the_rate_limit_is_429_with_the_documented_headers(braze):
    braze.configure(requests_per_window=2, window_seconds=3600)
    for remaining in ("1", "0"):
        ok = track(braze, [{"external_id": "u1"}])
        assert ok.status_code == 201
        assert ok.headers["X-RateLimit-Remaining"] == remaining
    limited = track(braze, [{"external_id": "u2"}])
    assert limited.status_code == 429
    assert shape(limited.json()) == shape(fixture("fatal_error.json"))
    assert limited.json()["message"] == "Rate Limited"
    headers = {name: limited.headers[name] for name in fixture("rate_limit_headers.json")}
    assert headers["X-RateLimit-Limit"] == "2"
    assert headers["X-RateLimit-Remaining"] == "0"
    reset = int(headers["X-RateLimit-Reset"])
    assert reset % 3600 == 0
    assert time.time() < reset <= time.time() + 3600
    assert braze.user("u2") is None


def test_the_default_rate_limit_headers_have_the_documented_limit(braze):
    response = track(braze, [{"external_id": "u1"}])
    documented = fixture("rate_limit_headers.json")
    assert all(name in response.headers for name in documented)
    assert response.headers["X-RateLimit-Limit"] == documented["X-RateLimit-Limit"]


def test_the_window_resets_at_its_epoch_boundary():
    now = [1_000.5]
    window = FixedWindow(limit=1, seconds=3, clock=lambda: now[0])
    assert window.take() == (True, 0, 1_002)
    assert window.take()[0] is False
    now[0] = 1_002.0
    assert window.take() == (True, 0, 1_005)


def test_a_setting_of_the_wrong_type_is_refused_and_changes_nothing(braze):
    before = braze.configure()
    with pytest.raises(RuntimeError, match="400 .*'requests_per_window' must be of type int"):
        braze.configure(requests_per_window="5")
    assert braze.configure() == before
    assert track(braze, [{"external_id": "u1"}]).status_code == 201


def test_injected_server_errors_are_5xx_with_a_fatal_error_body(braze):
    braze.configure(error_rate=1.0, seed=2)
    response = track(braze, [{"external_id": "u1"}])
    assert response.status_code in (500, 502, 503)
    assert braze.user("u1") is None
    assert shape(response.json()) == shape(fixture("fatal_error.json"))
