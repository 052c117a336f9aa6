"""The CRM export pipeline: shaping, batching, and PostBatchesFn against the real local CRM endpoint."""

from __future__ import annotations

import gc
import json
import random
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from devstack.crms import CrmStandIn, FaultConfig
from devstack.user_rows import user_row, write_user_rows
from pipelines.crm_export.accounting import DEAD_LETTER, AccountingError, Counters, check_accounting
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.destinations import GenericDestination, destination_for
from pipelines.crm_export.pipeline import (
    ParseRows,
    ShapeBatch,
    build_pipeline,
    failure_counters,
    pipeline_metrics,
)
from pipelines.crm_export.post_batches import CrmRejectedCredentialsError, PostBatchesFn, PostingStopped
from pipelines.crm_export.settings import PipelineSettings
from pipelines.crm_export.users import MalformedRowError, UserShaper, drop_nulls, merge_unions, unflatten

API_KEY = "sk-test-crm-7f3a"
LOCAL = ["--runner=FnApiRunner"]  # never Prism: it downloads a binary at run time


def settings(url: str = "http://crm.invalid", **changes) -> PipelineSettings:
    """The pipeline's settings: the defaults, with ``changes``."""
    return PipelineSettings(url=url, **changes)


# --- shaping ----------------------------------------------------------------------------------


def test_rows_become_nested_records_with_unions_merged_and_nulls_dropped():
    row = {
        "external_id": "u1",
        "email": "a@example.com",
        "identity.phone": None,
        "identity.country": "DE",
        "properties.plan.string_value": None,
        "properties.plan.int_value": 3,
        "properties.ltv.float_value": None,
        "properties.ltv.string_value": None,
    }
    assert UserShaper(settings())(row) == {
        "external_id": "u1",
        "email": "a@example.com",
        "identity": {"country": "DE"},
        "properties": {"plan": 3},
    }
    keep = UserShaper(settings(keep_null=["identity.phone", "properties.ltv"]))(row)
    assert keep["identity"] == {"country": "DE", "phone": None}
    assert keep["properties"] == {"plan": 3, "ltv": None}


def test_the_one_pass_shaper_equals_the_general_steps():
    rng = random.Random(3)
    rows = [user_row(i, rng) for i in range(300)]
    for drop in (True, False):
        given = settings(send_nulls=not drop)
        shaper = UserShaper(given)
        for row in rows:
            general = merge_unions(unflatten(row, given.flat_separator), given.union_fields)
            assert shaper(row) == (drop_nulls(general, given.keep_null) if drop else general)


def _shaped(shape, row: dict) -> bytes | str:
    """What ``shape`` makes of ``row``: the record as JSON bytes (keys in order), or the
    ``MalformedRowError`` message."""
    try:
        return orjson.dumps(shape(row))
    except MalformedRowError as exc:
        return str(exc)


def _odd_row(rng: random.Random) -> dict:
    """A row drawn from columns that collide, nest, hold objects, miss or blank the key, set two typed
    values of a union, or are null, in a random order."""
    candidates = {
        "external_id": rng.choice(["u1", "", None, 7]),
        "a": rng.choice([1, None]),
        "a.b": rng.choice([2, None]),
        "b.c.d": rng.choice(["x", None, {"e": 1}]),
        "b.c.f": rng.choice([True, None]),
        "p.string_value": rng.choice(["s", None]),
        "p.int_value": rng.choice([3, None]),
        "p.tier": rng.choice(["gold", None]),
        "q.float_value": rng.choice([1.5, None]),
        "q.bool_value": rng.choice([False, None]),
        "r": rng.choice([{"s": 1, "t": None}, None, "flat"]),
    }
    names = rng.sample(sorted(candidates), rng.randrange(1, len(candidates) + 1))
    if "external_id" not in names and rng.random() < 0.8:
        names.insert(rng.randrange(len(names) + 1), "external_id")
    return {name: candidates[name] for name in names}


def test_the_compiled_layouts_give_what_the_loop_gives_key_order_and_errors_included():
    rng = random.Random(11)
    rows = [user_row(i, rng) for i in range(200)] + [_odd_row(rng) for _ in range(3000)]
    outcomes = {"compiled": 0, "loop: not compiled": 0, "loop: compiled refused": 0}
    for given in (settings(), settings(keep_null=["a"]), settings(send_nulls=True)):
        for row in rows:
            shaper = UserShaper(given)  # a fresh one: every row's layout is compiled (or refused)
            assert _shaped(shaper, row) == _shaped(shaper._shape, row), row  # compiled, and the loop
            shape = shaper._layouts[tuple(row)]
            if shape is None:
                outcomes["loop: not compiled"] += 1
            else:
                outcomes["compiled" if shape(row) is not None else "loop: compiled refused"] += 1
    assert all(count > 300 for count in outcomes.values()), outcomes


def test_past_its_layout_limit_a_shaper_still_shapes_every_row_by_the_loop():
    shaper = UserShaper(settings())
    rows = [{"external_id": f"u{i}", f"attr_{i}": i} for i in range(UserShaper.MAX_LAYOUTS + 5)]
    assert [shaper(row) for row in rows] == rows
    assert len(shaper._layouts) == UserShaper.MAX_LAYOUTS


def test_rows_holding_nested_objects_take_the_general_path():
    row = {
        "external_id": "u2",
        "identity": {"email": "x@example.com", "phone": None},
        "identity.country": "FR",
    }
    assert UserShaper(settings())(row) == {
        "external_id": "u2",
        "identity": {"email": "x@example.com", "country": "FR"},
    }


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"external_id": "u", "plan.string_value": "a", "plan.int_value": 1}, "'plan' has two typed values"),
        ({"external_id": "u", "a": 1, "a.b": 2}, "'a' is also a value"),
        ({"email": "x@example.com"}, "no 'external_id'"),
        ({"external_id": ""}, "no 'external_id'"),
        (["not", "an", "object"], "not an object"),
    ],
)
def test_malformed_rows_are_named(row, message):
    with pytest.raises(MalformedRowError, match=message):
        UserShaper(settings())(row)


def test_batches_never_exceed_n_and_bad_rows_go_to_the_dead_letter():
    lines = [orjson.dumps(user_row(i, random.Random(i))).decode() for i in range(23)]
    lines[5] = '{"external_id": "u5", "email": '  # not JSON
    lines[9] = '{"email": "nokey@example.com"}'  # no record key
    with BeamTestPipeline(options=PipelineOptions(LOCAL)) as p:
        rows = p | beam.Create(lines) | beam.ParDo(ParseRows()).with_outputs(DEAD_LETTER, main="rows")
        shaped = (
            rows.rows
            | beam.BatchElements(min_batch_size=4, max_batch_size=4)
            | beam.ParDo(ShapeBatch(UserShaper(settings()), destination_for(settings()))).with_outputs(
                DEAD_LETTER, main="batches"
            )
        )
        sizes = shaped.batches | "sizes" >> beam.Map(lambda batch: len(batch.keys))
        assert_that(sizes | "over" >> beam.Filter(lambda n: n > 4), equal_to([]), label="none over N")
        assert_that(sizes | beam.CombineGlobally(sum), equal_to([21]), label="records")
        reasons = (
            (rows[DEAD_LETTER], shaped[DEAD_LETTER])
            | beam.Flatten()
            | beam.Map(
                lambda d: (d["stage"], d["reason"] if d["stage"] == "shape" else d["reason"].split(":")[0])
            )
        )
        assert_that(
            reasons,
            equal_to(
                [
                    ("read", "malformed JSON"),
                    ("shape", "malformed row: row has no 'external_id' (the CRM's record key)"),
                ]
            ),
            label="dead letters",
        )


def test_a_batch_is_shaped_and_encoded_with_the_garbage_collector_paused_and_resumed_even_on_error():
    crm = settings()
    destination = destination_for(crm)
    paused = []

    def encode(records):
        paused.append(not gc.isenabled())
        if len(paused) == 2:
            raise RuntimeError("encoder broke")
        return GenericDestination.encode(destination, records)

    destination.encode = encode
    shape = ShapeBatch(UserShaper(crm), destination)
    rows = [user_row(i, random.Random(i)) for i in range(3)]
    (batch,) = shape.process(rows)
    assert gc.isenabled()
    assert paused == [True]
    assert batch.keys == [row["external_id"] for row in rows]
    assert [user["external_id"] for user in orjson.loads(batch.payload)["users"]] == batch.keys
    with pytest.raises(RuntimeError, match="encoder broke"):
        list(shape.process(rows))
    assert gc.isenabled()


# --- PostBatchesFn against the local CRM endpoint -----------------------------------------------


@pytest.fixture(scope="module")
def crm(tmp_path_factory):
    with CrmStandIn(api_key=API_KEY, db_path=tmp_path_factory.mktemp("crm") / "crm.sqlite3") as standin:
        yield standin


@pytest.fixture
def fresh_crm(crm):
    crm.configure(**FaultConfig().to_dict())
    crm.reset()
    return crm


def run_export(tmp_path: Path, crm_url: str, rows: int, *extra: str, api_key: str = API_KEY, **rows_kw):
    """Run the whole pipeline on a generated file; returns (metrics, dead letters, file stats)."""
    source = tmp_path / "users_20261116.jsonl"
    made = write_user_rows(source, rows, **rows_kw)
    options = PipelineOptions(
        [
            *LOCAL,
            f"--input_file={source}",
            f"--crm_url={crm_url}",
            f"--dead_letter_prefix={tmp_path / 'dl' / 'dead-letter'}",
            "--idempotency_namespace=crm-export-20261116",
            *extra,
        ]
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, ApiKey(api_key))
    result = pipeline.run()
    result.wait_until_finish()
    dead = [
        json.loads(line)
        for f in sorted((tmp_path / "dl").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    return pipeline_metrics(result), dead, made


def test_every_record_is_accepted_or_dead_lettered_with_its_reason(tmp_path, fresh_crm):
    metrics, dead, made = run_export(
        tmp_path, fresh_crm.batch_url, 2_000, "--batch_size=300", invalid_every=100, malformed_every=501
    )
    check_accounting(metrics.counters)
    stats = fresh_crm.stats()
    assert made["invalid"] == 20
    assert made["malformed"] == 3
    assert metrics.counters.records_read == 2_000
    assert metrics.counters.records_accepted == stats["distinct_users"] == 2_000 - 20 - 3
    assert metrics.batch_size.max <= 300
    assert stats["duplicate_deliveries"] == 0
    by_stage = {}
    for entry in dead:
        by_stage.setdefault(entry["stage"], []).append(entry)
    assert len(by_stage["read"]) == 3
    assert len(by_stage["crm"]) == 20
    rejected = by_stage["crm"][0]
    assert rejected["status"] == 200
    assert "email" in rejected["reason"]
    assert rejected["key"].startswith("u")
    assert fresh_crm.user("u00000000")["attributes"]["identity"]["country"]


@pytest.mark.slow(seconds=20)
def test_429_storms_5xx_and_slow_responses_lose_nothing_and_send_nothing_twice(tmp_path, fresh_crm):
    # burst of 3 against 4 requests in flight: the first wave already meets a 429
    fresh_crm.configure(rate_limit_rps=3, error_rate=0.25, slow_rate=0.2, slow_seconds=1.5, seed=11)
    metrics, dead, _ = run_export(
        tmp_path,
        fresh_crm.batch_url,
        3_000,
        "--batch_size=100",
        "--crm_read_timeout_seconds=0.5",  # every slow response times out on the client
        "--crm_max_attempts=30",
        "--crm_max_backoff_seconds=0.3",
        "--crm_max_in_flight=4",
    )
    stats = fresh_crm.stats()
    check_accounting(metrics.counters)
    assert dead == []
    assert metrics.counters.records_accepted == stats["distinct_users"] == 3_000
    assert stats["duplicate_deliveries"] == 0  # timed-out requests were replayed by idempotency key
    assert stats["status_counts"].get("429", 0) > 0
    assert metrics.counters.http_status.get(429, 0) > 0
    assert any(stats["status_counts"].get(s, 0) for s in ("500", "502", "503"))
    assert stats["replays"] > 0
    assert stats["slow_responses"] > 0
    assert metrics.counters.retries > 0


def test_a_429_waits_as_long_as_retry_after_says(fresh_crm, monkeypatch):
    fresh_crm.configure(rate_limit_rps=1, retry_after_seconds=2)
    sink = PostBatchesFn(settings(fresh_crm.batch_url, max_backoff_seconds=0.1), ApiKey(API_KEY), "ns")
    sink.setup()
    slept = []
    pause = sink._pause
    monkeypatch.setattr(sink, "_pause", lambda s: (slept.append(s), pause(s)))
    try:
        for i in range(3):
            outcome = sink.post_body(orjson.dumps({"users": [{"external_id": f"r{i}"}]}), [f"r{i}"])
            assert outcome.accepted == 1
    finally:
        sink.teardown()
    # the hint in full (not capped at max_backoff_seconds), plus at most 10 % jitter
    assert slept
    assert all(2 <= s <= 2.2 for s in slept)


def test_a_teardown_stops_the_batches_waiting_to_be_sent_again(fresh_crm):
    """A cancelled job tears its DoFn down with batches in flight: one waiting out a 60 s Retry-After
    stops at once (not after its remaining attempts), and is neither accepted nor dead-lettered."""
    fresh_crm.configure(rate_limit_rps=1, retry_after_seconds=60)
    sink = PostBatchesFn(settings(fresh_crm.batch_url), ApiKey(API_KEY), "ns")
    sink.setup()
    batches = [
        sink._executor.submit(sink.post_body, orjson.dumps({"users": [{"external_id": key}]}), [key])
        for key in ("r0", "r1")
    ]
    try:
        deadline = time.monotonic() + 30
        while not (any(batch.done() for batch in batches) and fresh_crm.stats()["status_counts"].get("429")):
            assert time.monotonic() < deadline, "expected one batch accepted and the other told to wait"
            time.sleep(0.05)
        started = time.monotonic()
    finally:
        sink.teardown()

    assert time.monotonic() - started < 5
    stopped = [batch for batch in batches if isinstance(batch.exception(), PostingStopped)]
    accepted = [batch.result().accepted for batch in batches if batch.exception() is None]
    assert len(stopped) == 1
    assert accepted == [1]


def test_an_unreachable_crm_dead_letters_its_batches_after_the_retries(tmp_path, unused_port):
    metrics, dead, _ = run_export(
        tmp_path,
        f"http://127.0.0.1:{unused_port}/v1/users/batch",
        50,
        "--batch_size=20",
        "--crm_max_attempts=3",
        "--crm_max_backoff_seconds=0.05",
    )
    check_accounting(metrics.counters)
    assert metrics.counters.records_accepted == 0
    assert len(dead) == 50
    assert {d["attempts"] for d in dead} == {3}
    assert all("retries exhausted" in d["reason"] and "ConnectionError" in d["reason"] for d in dead)


def test_a_batch_the_crm_refuses_is_dead_lettered_with_the_status(tmp_path):
    with CrmStandIn(api_key=API_KEY, max_batch_size=10) as small:
        metrics, dead, _ = run_export(tmp_path, small.batch_url, 40, "--batch_size=20")
        assert small.stats()["distinct_users"] == 0
    check_accounting(metrics.counters)
    assert len(dead) == 40
    assert {d["status"] for d in dead} == {413}
    assert {d["attempts"] for d in dead} == {1}  # a 4xx other than 429 is not retried


def test_a_wrong_api_key_fails_the_job_and_names_the_secret_block(tmp_path, fresh_crm):
    with pytest.raises(Exception) as failure:
        run_export(tmp_path, fresh_crm.batch_url, 10, api_key="sk-wrong")
    assert isinstance(failure.value, CrmRejectedCredentialsError) or "CrmRejectedCredentialsError" in str(
        failure.value
    )
    assert "secret block" in str(failure.value)
    assert "sk-wrong" not in str(failure.value)
    assert fresh_crm.stats()["distinct_users"] == 0
    # What the local runner reports for it, its metrics lost with the failed pipeline (Dataflow: the
    # attempted value of the counter PostBatchesFn counts): the flow's signal.
    assert failure_counters(failure.value) == {"crm_key_refused": 1}
    assert failure_counters(RuntimeError("CrmRejectedCredentialsError: in the text only")) == {}


def test_accounting_names_the_unaccounted_records():
    check_accounting(Counters(records_read=10, records_accepted=7, records_dead_lettered=3))
    with pytest.raises(AccountingError, match="2 records are unaccounted for"):
        check_accounting(Counters(records_read=10, records_accepted=7, records_dead_lettered=1))


def test_the_api_key_is_hidden_from_repr_and_never_quoted_when_refused():
    key = ApiKey("sk-live-123")
    assert "sk-live-123" not in repr(key)
    assert "sk-live-123" not in str(key)
    with pytest.raises(ValueError):
        ApiKey("")
    for bad in ("sk-live-123\n", " sk-live-123", "sk live"):
        with pytest.raises(ValueError, match="trailing newline") as refused:
            ApiKey(bad)
        assert "sk-live" not in str(refused.value)


def test_the_environments_proxy_is_honoured_and_a_netrc_entry_does_not_replace_the_key(
    fresh_crm, tmp_path, monkeypatch
):
    """The generic connection reads the proxy variables once, and never ~/.netrc: requests' netrc auth
    would send the entry's basic auth instead of the bearer key."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    host = urlsplit(fresh_crm.batch_url).hostname
    (tmp_path / "netrc").write_text(f"machine {host} login someone password not-the-key\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    destination = destination_for(settings(fresh_crm.batch_url))

    def send(key: str):
        connection = destination.connect(API_KEY, (5.0, 5.0), 1)
        try:
            return connection.send(orjson.dumps({"users": [{"external_id": key}]}), [key], None)
        finally:
            connection.close()

    assert send("netrc").succeeded
    assert fresh_crm.user("netrc")
    with socket.socket() as closed:  # a proxy that is not there: the request must go to it, and fail
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed.getsockname()[1]}")
    refused = send("proxied")
    assert refused.status is None
    assert refused.retry
    assert refused.reason.startswith("ProxyError")
    monkeypatch.setenv("NO_PROXY", host)
    assert send("not-proxied").succeeded
    assert fresh_crm.user("not-proxied")


def test_bigquery_numeric_and_bytes_are_sent_and_other_values_dead_lettered(fresh_crm):
    import decimal

    crm_settings = settings(fresh_crm.batch_url)
    shape = ShapeBatch(UserShaper(crm_settings), destination_for(crm_settings))
    sink = PostBatchesFn(crm_settings, ApiKey(API_KEY), "ns")
    sink.setup()
    sink.start_bundle()
    rows = [
        {
            "external_id": "n1",
            "ltv": decimal.Decimal("12.50"),
            "visits": decimal.Decimal("3"),
            "tag": b"\x01\x02",
        },
        {"external_id": "n2", "odd": {1, 2}},  # a set: no JSON for it
    ]
    shaped = list(shape.process(rows))
    try:
        posted = [o for batch in shaped if not hasattr(batch, "tag") for o in sink.process(batch)]
        posted += list(sink.finish_bundle())
    finally:
        sink.teardown()
    # n1 accepted (finish_bundle's output is windowed), without a plan's fingerprint
    assert [o.value for o in posted] == [b'{"key":"n1","fingerprint":null}']
    dead = [o.value for o in shaped if getattr(o, "tag", None) == DEAD_LETTER]
    assert [(d["key"], d["stage"], d["reason"].split(":")[0]) for d in dead] == [("n2", "crm", "not JSON")]
    assert fresh_crm.user("n1")["attributes"] == {"ltv": 12.5, "visits": 3, "tag": "AQI="}


def test_a_plan_table_is_read_with_the_storage_api_and_what_the_crm_accepts_is_written_with_fingerprints(
    tmp_path, fresh_crm, bigquery, bigquery_dataset
):
    from google.cloud.bigquery import SchemaField

    from devstack.user_rows import load_shard
    from pipelines.crm_export.settings import DUPLICATE_OF_COLUMN, FINGERPRINT_COLUMN

    table = f"{bigquery_dataset}.plan"
    rows = [
        {"external_id": f"u{i}", "email": f"u{i}@example.com", "identity": {"country": "DE"}}
        for i in range(250)
    ]
    rows[7]["email"] = "not-an-email"  # the CRM refuses it
    for i, row in enumerate(rows):
        row |= {FINGERPRINT_COLUMN: f"fp{i}", DUPLICATE_OF_COLUMN: None, "_crm_sync_key": row["external_id"]}
    rows.append({**rows[3], FINGERPRINT_COLUMN: "fp-dup", DUPLICATE_OF_COLUMN: "u3"})  # a second row of u3
    schema = [
        SchemaField("external_id", "STRING"),
        SchemaField("email", "STRING"),
        SchemaField("identity", "RECORD", fields=[SchemaField("country", "STRING")]),
        SchemaField(FINGERPRINT_COLUMN, "STRING"),
        SchemaField(DUPLICATE_OF_COLUMN, "STRING"),
        SchemaField("_crm_sync_key", "STRING"),
    ]
    load_shard(bigquery.client(), table, rows, schema)
    options = PipelineOptions(
        [
            *LOCAL,
            f"--input_table={table}",
            f"--bigquery_storage_endpoint={bigquery.storage_url}",
            f"--crm_url={fresh_crm.batch_url}",
            "--batch_size=100",
            f"--dead_letter_prefix={tmp_path / 'dead-letter'}",
            f"--accepted_prefix={tmp_path / 'accepted'}",
            "--idempotency_namespace=plan",
        ]
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, ApiKey(API_KEY))
    result = pipeline.run()
    result.wait_until_finish()
    counters = pipeline_metrics(result).counters
    check_accounting(counters)
    assert (counters.records_read, counters.records_accepted, counters.records_duplicate) == (251, 249, 1)
    assert counters.dead_letter_reasons == {"duplicate_key": 1, "email_is_not_a_valid_email_address": 1}
    accepted = [
        orjson.loads(line) for f in tmp_path.glob("accepted-*.jsonl") for line in f.read_bytes().splitlines()
    ]
    assert sorted(accepted, key=lambda a: int(a["key"][1:])) == [
        {"key": f"u{i}", "fingerprint": f"fp{i}"} for i in range(250) if i != 7
    ]
    dead = {
        d["key"]: d
        for f in tmp_path.glob("dead-letter-*.jsonl")
        for d in map(orjson.loads, f.read_bytes().splitlines())
    }
    assert dead["u3"]["stage"] == "plan"
    assert dead["u3"]["reason"].startswith("duplicate key: the shard has another row")
    # the plan's columns never reach the CRM
    assert fresh_crm.user("u3")["attributes"] == {"email": "u3@example.com", "identity": {"country": "DE"}}
    assert fresh_crm.user("u3")["deliveries"] == 1


def test_plaintext_reaches_only_an_emulator_on_this_machine():
    from pipelines.crm_export.bigquery_read import storage_read_client

    with pytest.raises(ValueError, match=r"'http://10.0.0.5:9060': plaintext \(http://\) is for an emulator"):
        storage_read_client("http://10.0.0.5:9060")
    assert storage_read_client("http://127.0.0.1:9") is not None  # no connection until it is used
