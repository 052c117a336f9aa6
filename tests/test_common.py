"""The helpers every job shares (``tasks.common``), against the session's real Prefect server."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from prefect import flow, task
from prefect.blocks.system import Secret

from tasks.common import (
    ONCE_PER_FLOW_RUN,
    BlockNotFoundError,
    load_block,
    load_block_by_slug,
    secret_string,
    to_utc,
)


def test_a_missing_block_is_named_with_who_needs_it_and_how_to_create_it() -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BlockNotFoundError) as caught:
        load_block(Secret, name, needed_by="domain 'sales'")
    message = str(caught.value)
    assert f"Secret block {name!r}, needed by domain 'sales', does not exist" in message
    assert f"Secret(...).save({name!r})" in message
    assert isinstance(caught.value, LookupError)


def test_a_missing_block_slug_is_named_and_a_malformed_one_says_the_form() -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BlockNotFoundError, match=f"Block 'secret/{name}' .* needed by the CRM export"):
        load_block_by_slug(f"secret/{name}", needed_by="the CRM export")
    with pytest.raises(ValueError, match="'<block-type-slug>/<block-name>'"):
        load_block_by_slug("crm-api-key", needed_by="the CRM export")


def test_a_saved_block_loads_and_its_secret_string_is_the_raw_value() -> None:
    name = f"key-{uuid.uuid4().hex[:8]}"
    Secret(value="123").save(name)
    loaded = load_block(Secret, name, needed_by="a test")
    assert secret_string(loaded, name) == "123"  # Secret.get() would give the integer 123
    assert load_block_by_slug(f"secret/{name}", needed_by="a test").get() == 123


def test_a_json_secret_is_a_type_error_that_names_the_block_not_the_value() -> None:
    with pytest.raises(TypeError, match="Secret block 'json-key' holds a dict") as caught:
        secret_string(Secret(value={"token": "s3cr3t"}), "json-key")
    assert "s3cr3t" not in str(caught.value)


def test_to_utc_makes_every_form_an_aware_utc_datetime() -> None:
    expected = dt.datetime(2026, 11, 30, 6, 0, tzinfo=dt.UTC)
    assert to_utc(expected.replace(tzinfo=None)) == expected
    assert to_utc(expected.astimezone(dt.timezone(dt.timedelta(hours=2)))) == expected
    assert to_utc(expected.timestamp()) == expected
    assert to_utc(None) is None
    assert to_utc(expected.astimezone(dt.timezone(dt.timedelta(hours=-5)))).tzinfo is dt.UTC


def test_once_per_flow_run_caches_across_calls_of_one_run_and_not_across_runs() -> None:
    calls = []

    @task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
    def pick(value: int) -> int:
        calls.append(value)
        return value

    @flow
    def run(first: int, second: int) -> tuple[int, int]:
        return pick(first), pick(second)

    assert run(1, 2) == (1, 1)  # the second call gets the first result, whatever its input
    assert run(3, 4) == (3, 3)  # a new flow run computes again
    assert calls == [1, 3]
