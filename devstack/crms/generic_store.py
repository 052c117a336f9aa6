"""The generic CRM stand-in's state (``devstack.crms.generic``): record validation (`record_error`,
`split_batch`) and the SQLite `Store` of users and idempotency keys."""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

import orjson

from devstack.crms.common import EMAIL

MAX_EXTERNAL_ID_LENGTH = 128
_SCALAR_TYPES = frozenset({str, int, float, bool})
_FLAT_TYPES = _SCALAR_TYPES | {type(None)}  # an attribute value that needs no further check

# Reasons given for rejected records.
NOT_AN_OBJECT = "record is not a JSON object"
EXTERNAL_ID_REQUIRED = "external_id is required"
EXTERNAL_ID_INVALID = f"external_id must be a non-empty string of at most {MAX_EXTERNAL_ID_LENGTH} characters"
EMAIL_INVALID = "email is not a valid email address"


# -- validation ------------------------------------------------------------------------------------


def record_error(record: Any) -> str | None:
    """Why `record` (one parsed element of `users`) is rejected, or None if it is valid.

    A record is an object with `external_id` (a non-empty string of at most 128 characters), an
    optional `email` (null, or a string shaped like an address) and attributes: every other field,
    whose values are strings, numbers, booleans, null, arrays of strings/numbers/booleans, or objects
    whose values follow the same rules (checked at every depth).
    """
    if type(record) is not dict:
        return NOT_AN_OBJECT
    external_id = record.get("external_id")
    if external_id is None:
        return EXTERNAL_ID_REQUIRED
    if type(external_id) is not str or not external_id or len(external_id) > MAX_EXTERNAL_ID_LENGTH:
        return EXTERNAL_ID_INVALID
    email = record.get("email")
    if email is not None and (type(email) is not str or EMAIL.fullmatch(email) is None):
        return EMAIL_INVALID
    for name, value in record.items():
        if type(value) not in _FLAT_TYPES:
            reason = _attribute_error(name, value)
            if reason is not None:
                return reason
    return None


def _attribute_error(name: str, value: Any) -> str | None:
    """Why attribute `name` holding `value` is invalid, or None; `name` is a dotted path when nested."""
    pending = [(name, value)]
    while pending:  # a stack, not recursion: nesting depth is up to the client
        path, value = pending.pop()
        kind = type(value)
        if kind in _FLAT_TYPES:
            continue
        if kind is dict:
            pending.extend((f"{path}.{key}", item) for key, item in value.items())
        elif kind is list:
            for index, item in enumerate(value):
                if type(item) not in _SCALAR_TYPES:
                    return f"attribute {path}[{index}]: arrays may hold only strings, numbers and booleans"
        else:
            return f"attribute {path}: unsupported value of type {kind.__name__}"
    return None


def split_batch(users: list[Any]) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """Validate the records of one batch: `(rows, rejected)`, where rows are `(external_id, attributes
    JSON)` for the valid records, in order, and rejected are `{"index", "external_id", "reason"}`
    entries for the others. Valid records lose their `external_id` field (the rest are attributes)."""
    rows: list[tuple[str, str]] = []
    rejected: list[dict[str, Any]] = []
    for index, record in enumerate(users):
        reason = record_error(record)
        if reason is None:
            external_id = record.pop("external_id")
            rows.append((external_id, orjson.dumps(record).decode()))
        else:
            external_id = record.get("external_id") if type(record) is dict else None
            rejected.append(
                {
                    "index": index,
                    "external_id": external_id if type(external_id) is str else None,
                    "reason": reason,
                }
            )
    return rows, rejected


# -- store -----------------------------------------------------------------------------------------


class IdempotencyKeyReused(Exception):
    """An idempotency key already answered a request with a different body."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    external_id TEXT PRIMARY KEY,
    attributes TEXT NOT NULL,
    deliveries INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    body_sha256 TEXT NOT NULL,
    response TEXT NOT NULL
) WITHOUT ROWID;
"""
_UPSERT = (
    "INSERT INTO users (external_id, attributes, deliveries) VALUES (?, ?, 1) "
    "ON CONFLICT (external_id) DO UPDATE SET attributes = excluded.attributes, deliveries = deliveries + 1"
)


class Store:
    """Accepted users and answered idempotency keys in SQLite (WAL, synchronous=OFF: fast, and
    durable enough for a stand-in). One connection, guarded by one lock."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        for pragma in (
            "journal_mode = WAL",
            "synchronous = OFF",
            "cache_size = -65536",
            "temp_store = MEMORY",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(_SCHEMA)

    def replay(self, key: str, body_sha256: str) -> bytes | None:
        """The response stored for idempotency key `key`, or None if the key is new.
        Raises `IdempotencyKeyReused` if the key was used with a body of another hash."""
        with self._lock:
            return self._replay(key, body_sha256)

    def _replay(self, key: str, body_sha256: str) -> bytes | None:
        row = self._db.execute(
            "SELECT body_sha256, response FROM idempotency_keys WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        if row[0] != body_sha256:
            raise IdempotencyKeyReused(key)
        return row[1].encode()

    def commit_batch(
        self, rows: list[tuple[str, str]], response: bytes, key: str | None, body_sha256: str
    ) -> tuple[bytes, bool]:
        """Upsert `rows` (external_id, attributes JSON) and remember `key` → `response`, in one
        transaction; if `key` was stored meanwhile, store nothing. Returns the response to send and
        whether it is a replay; raises `IdempotencyKeyReused` like `replay`."""
        with self._lock:
            if key is not None:
                stored = self._replay(key, body_sha256)
                if stored is not None:
                    return stored, True
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, rows)
                if key is not None:
                    self._db.execute(
                        "INSERT INTO idempotency_keys (key, body_sha256, response) VALUES (?, ?, ?)",
                        (key, body_sha256, response.decode()),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return response, False

    def get(self, external_id: str) -> dict[str, Any] | None:
        """`{"external_id", "attributes", "deliveries"}` of a stored user, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT attributes, deliveries FROM users WHERE external_id = ?", (external_id,)
            ).fetchone()
        if row is None:
            return None
        return {"external_id": external_id, "attributes": orjson.loads(row[0]), "deliveries": row[1]}

    def users(self) -> list[dict[str, Any]]:
        """Every stored user, as ``get`` gives one, by ``external_id``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT external_id, attributes, deliveries FROM users ORDER BY external_id"
            ).fetchall()
        return [
            {"external_id": key, "attributes": orjson.loads(attrs), "deliveries": n} for key, attrs, n in rows
        ]

    def counts(self) -> dict[str, int]:
        """`distinct_users` and `duplicate_deliveries` (users delivered more than once)."""
        with self._lock:
            users, duplicates = self._db.execute(
                "SELECT count(*), coalesce(sum(deliveries > 1), 0) FROM users"
            ).fetchone()
        return {"distinct_users": users, "duplicate_deliveries": duplicates}

    def clear(self) -> None:
        """Forget every user and idempotency key."""
        with self._lock:
            self._db.execute("DELETE FROM users")
            self._db.execute("DELETE FROM idempotency_keys")

    def close(self) -> None:
        with self._lock:
            self._db.close()
