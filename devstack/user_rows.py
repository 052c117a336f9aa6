"""Generate user rows in BigQuery's flattened export shape, as newline-delimited JSON files, or as the
nested rows of a BigQuery shard loaded into the BigQuery emulator (``shard_rows``, ``load_shard``).

Each row: ``external_id``, ``email``, flattened ``identity.*`` columns, and
``properties.<name>.<type>_value`` union columns with exactly one typed value set (or none), e.g.::

    {"external_id": "u00000042", "email": "user42@example.com", "identity.phone": null,
     "properties.plan.string_value": "pro", "properties.plan.int_value": null, ...}

``invalid_every``: every n-th row has an email the CRM rejects (to exercise per-record rejections);
``malformed_every``: every n-th line is not JSON at all (to exercise the parse dead letter).
``python -m devstack.user_rows OUT.jsonl --users 200000``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

PLANS = ("free", "pro", "team", "enterprise")
COUNTRIES = ("DE", "FR", "GB", "US", "BR", "IN", "JP", "AU")


def user_row(i: int, rng: random.Random, invalid: bool = False) -> dict:
    """The flattened row of user ``i`` (the shape of a BigQuery export of a nested user record)."""
    plan_is_int = rng.random() < 0.1
    return {
        "external_id": f"u{i:08d}",
        "email": f"user{i}example.com" if invalid else f"user{i}@example.com",
        "identity.phone": None if rng.random() < 0.6 else f"+4915{rng.randrange(10**8):08d}",
        "identity.country": rng.choice(COUNTRIES),
        "properties.plan.string_value": None if plan_is_int else rng.choice(PLANS),
        "properties.plan.int_value": rng.randrange(1, 5) if plan_is_int else None,
        "properties.plan.float_value": None,
        "properties.plan.bool_value": None,
        "properties.lifetime_value.string_value": None,
        "properties.lifetime_value.int_value": None,
        "properties.lifetime_value.float_value": round(rng.uniform(0, 5000), 2),
        "properties.lifetime_value.bool_value": None,
        "properties.newsletter.string_value": None,
        "properties.newsletter.int_value": None,
        "properties.newsletter.float_value": None,
        "properties.newsletter.bool_value": rng.random() < 0.4,
        "last_seen_at": f"2026-11-{rng.randrange(1, 22):02d}T{rng.randrange(24):02d}:00:00Z",
    }


#: The typed value columns of a union property, as BigQuery's export has them.
UNION = (
    ("string_value", "STRING"),
    ("int_value", "INT64"),
    ("float_value", "FLOAT64"),
    ("bool_value", "BOOL"),
)


def user_schema() -> list[Any]:
    """The BigQuery schema of a user shard: ``identity`` and ``properties.<name>`` are RECORDs, each
    property a union of typed values (``UNION``)."""
    from google.cloud.bigquery import SchemaField

    def union(name: str) -> SchemaField:
        return SchemaField(name, "RECORD", fields=[SchemaField(n, t) for n, t in UNION])

    return [
        SchemaField("external_id", "STRING"),
        SchemaField("email", "STRING"),
        SchemaField(
            "identity", "RECORD", fields=[SchemaField("phone", "STRING"), SchemaField("country", "STRING")]
        ),
        SchemaField(
            "properties", "RECORD", fields=[union("plan"), union("lifetime_value"), union("newsletter")]
        ),
        SchemaField("last_seen_at", "TIMESTAMP"),
    ]


def nested(row: dict[str, Any]) -> dict[str, Any]:
    """A flattened row (dotted names) as BigQuery holds it: ``{"identity.phone": x}`` → ``{"identity": {"phone": x}}``."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        *parents, leaf = name.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def shard_rows(
    users: int,
    seed: int = 7,
    invalid_every: int = 0,
    malformed_every: int = 0,
    change_every: int = 0,
    new_users: int = 0,
    duplicates: int = 0,
) -> Iterator[dict[str, Any]]:
    """The nested rows of a weekly shard of ``users`` users (``user_row``): every ``invalid_every``-th with an
    email the CRM rejects, every ``malformed_every``-th with two typed values in its ``plan`` union (a row
    the export dead-letters as malformed). The next week: the same arguments, and every
    ``change_every``-th user with another plan, and ``new_users`` more users. ``duplicates``: a second,
    older row (``last_seen_at`` a year earlier) of the first users, at the end."""
    rng, changes = random.Random(seed), random.Random(seed + 1)
    for i in range(users + new_users):
        row = user_row(i, rng, bool(invalid_every) and i % invalid_every == invalid_every - 1)
        if change_every and i < users and i % change_every == change_every - 1:
            row["properties.plan.int_value"] = None
            row["properties.plan.string_value"] = changes.choice(
                [p for p in PLANS if p != row["properties.plan.string_value"]]
            )
        if malformed_every and i % malformed_every == malformed_every - 1:
            row["properties.plan.string_value"], row["properties.plan.int_value"] = "pro", 2
        yield nested(row)
    for i in range(duplicates):
        row = user_row(i, random.Random(i))
        row["last_seen_at"] = "2025-11-01T00:00:00Z"
        yield nested(row)


def load_shard(
    client: Any, table: str, rows: Iterable[dict[str, Any]], schema: list[Any] | None = None
) -> int:
    """Load ``rows`` (nested dicts) into the BigQuery table ``project.dataset.table`` (replaced; the dataset
    is created if missing) with ``schema`` (default ``user_schema()``), through one load job of
    newline-delimited JSON; returns the rows loaded."""
    from google.cloud import bigquery

    project, dataset, _ = table.split(".", 2)
    client.create_dataset(f"{project}.{dataset}", exists_ok=True)
    schema = schema or user_schema()
    # Replaced by dropping it first: the emulator's WRITE_TRUNCATE keeps the old schema.
    client.delete_table(table, not_found_ok=True)
    with tempfile.TemporaryFile() as data:
        for row in rows:
            data.write(orjson.dumps(row) + b"\n")
        if not data.tell():  # the emulator fails to load an empty file: an empty table
            client.create_table(bigquery.Table(table, schema=schema))
            return 0
        data.seek(0)
        config = bigquery.LoadJobConfig(
            schema=schema, source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON
        )
        client.load_table_from_file(data, table, job_config=config).result()
    (counted,) = client.query(f"SELECT COUNT(*) AS n FROM `{table}`").result()
    return counted["n"]


def write_user_rows(
    path: Path, users: int, seed: int = 7, invalid_every: int = 0, malformed_every: int = 0
) -> dict[str, int]:
    """Write ``users`` lines to ``path``; returns ``{"rows", "invalid", "malformed", "bytes"}``."""
    rng = random.Random(seed)
    invalid = malformed = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for i in range(users):
            if malformed_every and i % malformed_every == malformed_every - 1:
                malformed += 1
                out.write(b'{"external_id": "u%08d", "email": \n' % i)
                continue
            bad = bool(invalid_every) and i % invalid_every == invalid_every - 1
            invalid += bad
            out.write(orjson.dumps(user_row(i, rng, bad)) + b"\n")
    return {"rows": users, "invalid": invalid, "malformed": malformed, "bytes": path.stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--invalid-every", type=int, default=0)
    parser.add_argument("--malformed-every", type=int, default=0)
    args = parser.parse_args()
    print(write_user_rows(args.out, args.users, args.seed, args.invalid_every, args.malformed_every))


if __name__ == "__main__":
    main()
