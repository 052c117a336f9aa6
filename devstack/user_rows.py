"""Generate user rows in BigQuery's flattened export shape, as newline-delimited JSON.

Each row: ``external_id``, ``email``, flattened ``identity.*`` columns, and
``properties.<name>.<type>_value`` union columns with exactly one typed value set (or none), e.g.::

    {"external_id": "u00000042", "email": "user42@example.com", "identity.phone": null,
     "properties.plan.string_value": "pro", "properties.plan.int_value": null, ...}

``invalid_every``: every n-th row has an email the CRM rejects (to exercise per-record rejections);
``malformed_every``: every n-th line is not JSON at all (to exercise the parse dead letter).
``write_next_week`` makes the following week's shard: some users changed, some new.
``python -m devstack.user_rows OUT.jsonl --users 200000``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

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


def write_next_week(
    previous: Path, path: Path, change_every: int = 20, new_users: int = 0, seed: int = 11
) -> dict[str, int]:
    """Next week's shard from ``previous``: every ``change_every``-th line (counting every line, the
    malformed ones too) changes plan and ``new_users`` are added; other lines stay as they were.
    Returns ``{"rows", "changed", "new", "bytes"}``."""
    rng = random.Random(seed)
    rows = changed = 0
    last = -1
    path.parent.mkdir(parents=True, exist_ok=True)
    with previous.open("rb") as before, path.open("wb") as out:
        for line in before:
            rows += 1
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                out.write(line)
                continue
            last = max(last, int(row["external_id"][1:]))
            if change_every and rows % change_every == 0:
                row["properties.plan.int_value"] = None
                row["properties.plan.string_value"] = rng.choice(
                    [p for p in PLANS if p != row["properties.plan.string_value"]]
                )
                changed += 1
                line = orjson.dumps(row) + b"\n"
            out.write(line)
        for i in range(last + 1, last + 1 + new_users):
            out.write(orjson.dumps(user_row(i, rng)) + b"\n")
    return {"rows": rows + new_users, "changed": changed, "new": new_users, "bytes": path.stat().st_size}


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
