"""The Braze stand-in (devstack/crms/braze.py) against response bodies and headers copied in shape
from Braze's documentation (tests/fixtures/braze/, sources in tests/fixtures/README.md)."""

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


def track(braze: BrazeServer, attributes: list, key: str = API_KEY) -> requests.Response:
    return requests.post(
        braze.url + "/users/track",
        json={"attributes": attributes},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_a_success_has_the_documented_shape_and_upserts_by_external_id(braze):
    response = track(braze, [{"external_id": "u1", "email": "u1@example.com", "plan": "pro"}])
    assert response.status_code == 201 and response.json() == fixture("users_track_success.json")
    track(braze, [{"external_id": "u1", "plan": "team"}])
    assert braze.user("u1") == {
        "key": "u1",
        "properties": {"email": "u1@example.com", "plan": "team"},
        "deliveries": 2,
    }


def test_an_object_without_identifier_is_a_non_fatal_error_by_index_as_documented(braze):
    response = track(braze, [{"external_id": "u1"}, {"plan": "pro"}])
    assert response.status_code == 201 and response.json() == fixture("users_track_non_fatal_errors.json")
    bad_email = track(braze, [{"external_id": "u2", "email": "u2example.com"}, {"external_id": "u3"}]).json()
    assert shape(bad_email) == shape(fixture("users_track_non_fatal_errors.json"))
    assert bad_email["errors"][0]["index"] == 0 and bad_email["attributes_processed"] == 1
    assert braze.user("u2") is None and braze.user("u3")


def test_more_than_75_attributes_objects_is_the_documented_fatal_error(braze):
    response = track(braze, [{"external_id": f"u{i}"} for i in range(76)])
    assert response.status_code == 400 and response.json() == fixture("fatal_error.json")
    assert braze.stats()["distinct_users"] == 0


def test_an_unknown_or_missing_key_is_401_with_a_fatal_error_body(braze):
    for key in ("wrong", ""):
        response = track(braze, [{"external_id": "u1"}], key=key)
        assert response.status_code == 401 and shape(response.json()) == shape(fixture("fatal_error.json"))
        assert API_KEY not in response.text
    assert braze.user("u1") is None


def test_over_the_rate_limit_is_429_with_the_documented_headers(braze):
    braze.configure(requests_per_window=2, window_seconds=3600)
    for _ in range(2):
        assert track(braze, [{"external_id": "u1"}]).status_code == 201
    limited = track(braze, [{"external_id": "u1"}])
    assert limited.status_code == 429 and shape(limited.json()) == shape(fixture("fatal_error.json"))
    headers = {name: limited.headers[name] for name in fixture("rate_limit_headers.json")}
    assert headers["X-RateLimit-Limit"] == "2" and headers["X-RateLimit-Remaining"] == "0"
    reset = int(headers["X-RateLimit-Reset"])
    assert reset % 3600 == 0 and time.time() < reset <= time.time() + 3600


def test_a_user_identified_by_braze_id_alone_is_upserted_under_it(braze):
    response = track(braze, [{"braze_id": "b-7", "plan": "pro"}])
    assert response.status_code == 201 and response.json()["attributes_processed"] == 1
    assert braze.user("b-7")["properties"] == {"plan": "pro"}


def test_a_setting_of_the_wrong_type_is_refused_and_changes_nothing(braze):
    before = braze.configure()
    with pytest.raises(RuntimeError, match="400 .*'requests_per_window' must be of type int"):
        braze.configure(requests_per_window="5")
    assert braze.configure() == before
    assert track(braze, [{"external_id": "u1"}]).status_code == 201


def test_injected_server_errors_are_5xx(braze):
    braze.configure(error_rate=1.0, seed=2)
    response = track(braze, [{"external_id": "u1"}])
    assert response.status_code in (500, 502, 503) and braze.user("u1") is None


def test_the_window_resets_at_its_epoch_boundary():
    now = [1_000.5]
    window = FixedWindow(limit=1, seconds=3, clock=lambda: now[0])
    assert window.take() == (True, 0, 1_002)
    assert window.take()[0] is False
    now[0] = 1_002.0
    assert window.take() == (True, 0, 1_005)
