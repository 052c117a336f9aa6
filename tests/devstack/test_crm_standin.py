"""The generic CRM stand-in (devstack/crms/generic.py) against the API it documents: auth, per-record
validation, upserts and delivery counts, idempotent replays, batch limits, injected faults, and the
subprocess lifecycle.

One stand-in serves the module; every test starts from a reset store and the default fault settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import wait_for

from devstack.crms import CrmStandIn, FaultConfig

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def crm() -> Iterator[CrmStandIn]:
    with CrmStandIn(API_KEY) as standin:
        yield standin


@pytest.fixture(autouse=True)
def clean(crm: CrmStandIn) -> None:
    crm.configure(**FaultConfig().to_dict())
    crm.reset()


def post(crm: CrmStandIn, users: Any, key: str | None = None, **kwargs: Any) -> requests.Response:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    kwargs.setdefault("timeout", 10)
    return requests.post(crm.batch_url, json={"users": users}, headers=headers, **kwargs)


def users(*ids: str) -> list[dict[str, Any]]:
    return [{"external_id": i, "email": f"{i}@example.com", "plan": "pro"} for i in ids]


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited


# -- auth and validation ---------------------------------------------------------------------------


def test_missing_or_wrong_api_key_is_401_without_echoing_the_key(crm: CrmStandIn) -> None:
    body = {"users": users("u1")}
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}):
        response = requests.post(crm.batch_url, json=body, headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json() == {"error": "invalid_api_key"}
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "wrong-key" not in response.text
        assert API_KEY not in response.text

    stats = crm.stats()
    assert stats["status_counts"] == {"401": 3}
    assert stats["distinct_users"] == 0
    assert crm.user("u1") is None


def test_valid_records_are_stored_and_invalid_ones_rejected_by_index(crm: CrmStandIn) -> None:
    batch = [
        {"external_id": "ok-1", "email": "ada@example.com", "score": 1.5, "tags": ["a", 2, True]},
        "not an object",
        {"email": "no-id@example.com"},
        {"external_id": ""},
        {"external_id": "x" * 129},
        {"external_id": 42},
        {"external_id": "bad-email", "email": "ada@example"},
        {"external_id": "ok-2", "email": None, "address": {"city": "Oslo", "geo": {"lat": 59.9, "n": None}}},
        {"external_id": "bad-array", "tags": ["a", {"b": 1}]},
        {"external_id": "bad-nested", "address": {"lines": [["x"]]}},
        {"external_id": "y" * 128},
    ]
    response = post(crm, batch)

    assert response.status_code == 200
    assert response.json() == {
        "accepted": 3,
        "rejected": [
            {"index": 1, "external_id": None, "reason": "record is not a JSON object"},
            {"index": 2, "external_id": None, "reason": "external_id is required"},
            {"index": 3, "external_id": "", "reason": "external_id must be a non-empty string of at most 128 characters"},
            {"index": 4, "external_id": "x" * 129, "reason": "external_id must be a non-empty string of at most 128 characters"},
            {"index": 5, "external_id": None, "reason": "external_id must be a non-empty string of at most 128 characters"},
            {"index": 6, "external_id": "bad-email", "reason": "email is not a valid email address"},
            {"index": 8, "external_id": "bad-array", "reason": "attribute tags[1]: arrays may hold only strings, numbers and booleans"},
            {"index": 9, "external_id": "bad-nested", "reason": "attribute address.lines[0]: arrays may hold only strings, numbers and booleans"},
        ],
    }  # fmt: skip
    assert crm.user("ok-1") == {
        "external_id": "ok-1",
        "attributes": {"email": "ada@example.com", "score": 1.5, "tags": ["a", 2, True]},
        "deliveries": 1,
    }
    assert crm.user("ok-2")["attributes"] == {
        "email": None,
        "address": {"city": "Oslo", "geo": {"lat": 59.9, "n": None}},
    }
    assert crm.user("y" * 128) == {"external_id": "y" * 128, "attributes": {}, "deliveries": 1}
    assert crm.user("bad-email") is None
    assert crm.user("bad-array") is None

    stats = crm.stats()
    assert {k: stats[k] for k in ("records_received", "records_accepted", "records_rejected")} == {
        "records_received": 11,
        "records_accepted": 3,
        "records_rejected": 8,
    }
    assert stats["distinct_users"] == 3
    assert stats["batches_accepted"] == 1


def test_user_lookup_takes_any_external_id(crm: CrmStandIn) -> None:
    odd = "team/ø ?#%2F&x=1"
    assert post(crm, [{"external_id": odd, "n": 1}]).json() == {"accepted": 1, "rejected": []}
    assert crm.user(odd) == {"external_id": odd, "attributes": {"n": 1}, "deliveries": 1}
    assert crm.user("team") is None


def test_upsert_replaces_attributes_and_counts_deliveries(crm: CrmStandIn) -> None:
    assert post(crm, users("u1", "u2")).json()["accepted"] == 2
    assert crm.stats()["duplicate_deliveries"] == 0

    assert post(crm, [{"external_id": "u1", "plan": "free"}], key="k-2").json()["accepted"] == 1
    assert crm.user("u1") == {"external_id": "u1", "attributes": {"plan": "free"}, "deliveries": 2}
    assert crm.user("u2")["deliveries"] == 1
    stats = crm.stats()
    assert (stats["distinct_users"], stats["duplicate_deliveries"], stats["batches_accepted"]) == (2, 1, 2)


# -- idempotency -----------------------------------------------------------------------------------


def test_idempotent_replay_returns_the_stored_response_and_stores_nothing(crm: CrmStandIn) -> None:
    batch = [*users("u1", "u2"), {"external_id": ""}]
    first = post(crm, batch, key="batch-0001")
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers

    again = post(crm, batch, key="batch-0001")
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert again.json()["accepted"] == 2
    assert again.json()["rejected"][0]["index"] == 2

    assert crm.user("u1")["deliveries"] == 1
    stats = crm.stats()
    assert (stats["replays"], stats["batches_accepted"], stats["records_accepted"]) == (1, 1, 2)
    assert stats["duplicate_deliveries"] == 0
    assert stats["status_counts"] == {"200": 2}


def test_idempotency_key_reused_with_another_body_is_422(crm: CrmStandIn) -> None:
    assert post(crm, users("u1"), key="batch-7").status_code == 200
    response = post(crm, users("u2"), key="batch-7")

    assert response.status_code == 422
    assert response.json() == {"error": "idempotency_key_reused"}
    assert crm.user("u2") is None
    assert crm.user("u1")["deliveries"] == 1


# -- batch limits and bodies -----------------------------------------------------------------------


def test_batch_over_max_batch_size_is_413_and_a_full_batch_is_accepted(crm: CrmStandIn) -> None:
    batch = [{"external_id": f"u{i}"} for i in range(5001)]
    response = post(crm, batch)
    assert response.status_code == 413
    assert response.json() == {"error": "batch_too_large", "max_batch_size": 5000}
    assert crm.stats()["distinct_users"] == 0

    assert post(crm, batch[:5000]).json() == {"accepted": 5000, "rejected": []}
    assert crm.stats()["distinct_users"] == 5000


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"users": [{"external_id": "u1"}', "malformed JSON"),
        (b"", "malformed JSON"),
        (b'{"records": []}', '"users" list'),
        (b'{"users": {"external_id": "u1"}}', '"users" list'),
        (b'[{"external_id": "u1"}]', '"users" list'),
    ],
)
def test_malformed_body_is_400_and_stores_nothing(crm: CrmStandIn, body: bytes, detail: str) -> None:
    response = requests.post(crm.batch_url, data=body, headers=AUTH, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert detail in response.json()["detail"]
    assert crm.stats()["distinct_users"] == 0


# -- faults ----------------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after_and_stores_nothing(crm: CrmStandIn) -> None:
    crm.configure(rate_limit_rps=2, retry_after_seconds=3)  # burst of 2, one more every 0.5 s
    responses = [post(crm, users(f"u{i}")) for i in range(5)]

    assert [r.status_code for r in responses] == [200, 200, 429, 429, 429]
    for refused in responses[2:]:
        assert refused.headers["Retry-After"] == "3"
        assert refused.json() == {"error": "rate_limited", "retry_after": 3}
    assert [crm.user(f"u{i}") is not None for i in range(5)] == [True, True, False, False, False]

    time.sleep(0.6)  # the bucket has a token again (real time passing is the behaviour under test)
    assert post(crm, users("u9")).status_code == 200
    assert crm.stats()["status_counts"] == {"200": 3, "429": 3}


def test_error_rate_1_answers_5xx_from_the_seeded_generator_and_stores_nothing(crm: CrmStandIn) -> None:
    crm.configure(error_rate=1.0, seed=0)
    first = [post(crm, users(f"u{i}"), key=f"k{i}") for i in range(20)]

    statuses = [r.status_code for r in first]
    assert set(statuses) == {500, 502, 503}  # all three, with this seed
    for response in first:
        assert response.json() == {"error": "server_error"}
        assert response.headers.get("Retry-After") == ("1" if response.status_code == 503 else None)
    stats = crm.stats()
    assert stats["distinct_users"] == 0
    assert stats["batches_accepted"] == 0

    crm.reset()  # re-seeds: the same requests meet the same faults
    assert [post(crm, users(f"u{i}")).status_code for i in range(20)] == statuses

    crm.configure(error_rate=0.0)  # the keys of the failed requests were not remembered
    assert post(crm, users("u0"), key="k0").headers.get("Idempotent-Replayed") is None


def test_slow_response_is_delayed_then_stored(crm: CrmStandIn) -> None:
    crm.configure(slow_rate=1.0, slow_seconds=0.5)
    started = time.monotonic()
    response = post(crm, users("u1"))
    elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert 0.5 <= elapsed < 1.5
    assert crm.user("u1")["deliveries"] == 1
    assert crm.stats()["slow_responses"] == 1


def test_client_timing_out_on_a_slow_response_and_retrying_with_its_key_gets_a_replay(
    crm: CrmStandIn,
) -> None:
    crm.configure(slow_rate=1.0, slow_seconds=0.5)
    with pytest.raises(requests.ReadTimeout):
        post(crm, users("u1", "u2"), key="batch-1", timeout=0.2)
    retry = post(crm, users("u1", "u2"), key="batch-1")  # sleeps too; the first commits meanwhile

    assert retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json() == {"accepted": 2, "rejected": []}
    stats = crm.stats()
    assert (stats["replays"], stats["batches_accepted"], stats["duplicate_deliveries"]) == (1, 1, 0)
    assert stats["slow_responses"] == 2


def test_empty_answer_rate_1_answers_200_empty_object_yet_stores_the_batch(crm: CrmStandIn) -> None:
    crm.configure(empty_answer_rate=1.0)
    response = post(crm, [*users("u1", "u2"), {"external_id": ""}], key="batch-1")

    assert response.status_code == 200
    assert response.json() == {}
    assert crm.user("u1")["deliveries"] == 1
    assert crm.user("u2")["deliveries"] == 1
    stats = crm.stats()
    assert (stats["batches_accepted"], stats["records_accepted"], stats["records_rejected"]) == (1, 2, 1)

    crm.configure(empty_answer_rate=0.0)  # a replay answers what was stored: the empty object
    replay = post(crm, [*users("u1", "u2"), {"external_id": ""}], key="batch-1")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == {}
    assert crm.user("u1")["deliveries"] == 1


def test_config_endpoint_validates_and_answers_the_configuration(crm: CrmStandIn) -> None:
    assert crm.configure(rate_limit_rps=50.0, seed=3) == FaultConfig(rate_limit_rps=50.0, seed=3)
    assert requests.get(f"{crm.url}/devstack/config", timeout=10).json()["rate_limit_rps"] == 50.0

    for bad in ({"error_rate": 1.5}, {"eror_rate": 0.1}, {"rate_limit_rps": 0}, {"seed": "x"}):
        response = requests.post(f"{crm.url}/devstack/config", json=bad, timeout=10)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_body"
    with pytest.raises(ValueError, match="unknown fault settings"):
        crm.configure(eror_rate=0.1)


# -- reset and lifecycle ---------------------------------------------------------------------------


def test_reset_forgets_users_keys_and_counters(crm: CrmStandIn) -> None:
    post(crm, users("u1"), key="batch-1")
    post(crm, users("u1"))
    crm.reset()

    stats = crm.stats()
    assert stats == {
        "requests": 0,
        "batches_accepted": 0,
        "records_received": 0,
        "records_accepted": 0,
        "records_rejected": 0,
        "replays": 0,
        "slow_responses": 0,
        "status_counts": {},
        "distinct_users": 0,
        "duplicate_deliveries": 0,
    }
    assert crm.user("u1") is None
    second = post(crm, users("u2"), key="batch-1")  # the key is new again: neither 422 nor a replay
    assert second.status_code == 200
    assert "Idempotent-Replayed" not in second.headers


def test_stop_leaves_no_process_even_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), CrmStandIn("k") as standin:
        pid = standin.pid
        assert pid is not None
        assert process_exists(pid)
        raise RuntimeError("boom")
    assert not process_exists(pid)
    with pytest.raises(RuntimeError, match="not running"):
        _ = standin.url
    standin.stop()  # idempotent


@pytest.mark.parametrize(
    "module, launcher_class",
    [("devstack.crms", "CrmStandIn"), ("devstack.crms", "HubSpotServer"), ("devstack.crms", "BrazeServer")],
)
def test_server_exits_when_its_launcher_is_killed(module: str, launcher_class: str) -> None:
    """Each CRM stand-in stops when its standard input ends (``--exit-on-stdin-eof``)."""
    launcher = textwrap.dedent(
        f"""
        import time
        from {module} import {launcher_class}
        standin = {launcher_class}("k").start()
        print(standin.pid, flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", launcher], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(process.stdout.readline())
        assert process_exists(pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
        wait_for(lambda: not process_exists(pid), timeout=5, what=f"the stand-in (pid {pid}) to exit")
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        if "pid" in locals() and process_exists(pid):
            os.kill(pid, signal.SIGTERM)


def test_a_server_that_cannot_start_is_reported_with_its_stderr() -> None:
    with pytest.raises(RuntimeError, match="max-batch-size must be >= 1"):
        CrmStandIn("k", max_batch_size=0).start()
