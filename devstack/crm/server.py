"""The CRM stand-in: the HTTP handler, the SQLite store, fault injection, and `CrmStandIn`, which runs
all of it in a subprocess (`python -m devstack.crm`) so that the server has a CPU and a GIL of its own.

The API itself is described in the package docstring (`devstack/crm/__init__.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import random
import re
import selectors
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import orjson
import requests

logger = logging.getLogger(__name__)

BATCH_PATH = "/v1/users/batch"
DEFAULT_MAX_BATCH_SIZE = 5000
MAX_EXTERNAL_ID_LENGTH = 128
LISTENING = "CRM stand-in listening on "  # the line `python -m devstack.crm` prints once it serves

_USER_PATH = "/devstack/users/"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_SCALAR_TYPES = frozenset({str, int, float, bool})
_FLAT_TYPES = _SCALAR_TYPES | {type(None)}  # an attribute value that needs no further check
_SERVER_ERRORS = (500, 502, 503)

# Reasons given for rejected records.
NOT_AN_OBJECT = "record is not a JSON object"
EXTERNAL_ID_REQUIRED = "external_id is required"
EXTERNAL_ID_INVALID = f"external_id must be a non-empty string of at most {MAX_EXTERNAL_ID_LENGTH} characters"
EMAIL_INVALID = "email is not a valid email address"


# -- fault configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultConfig:
    """Faults injected into `POST /v1/users/batch`, in this order, before the batch is processed:

    - `rate_limit_rps`: a token bucket of this many requests per second (burst: max(1, rate));
      a request finding it empty gets 429 with `Retry-After: retry_after_seconds`. None: no limit.
    - `error_rate`: probability (0..1) of a 500, 502 or 503 (503 with `Retry-After: 1`).
    - `slow_rate`: probability (0..1) of sleeping `slow_seconds` before processing normally.

    Draws come from `random.Random(seed)`, one generator for the server, so a given sequence of
    requests meets the same faults. Invalid values raise `ValueError`.
    """

    rate_limit_rps: float | None = None
    error_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 0.0
    seed: int = 0
    retry_after_seconds: int = 1

    def __post_init__(self) -> None:
        def number(value: Any) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if self.rate_limit_rps is not None and not (number(self.rate_limit_rps) and self.rate_limit_rps > 0):
            raise ValueError("rate_limit_rps must be a number > 0, or null for no limit")
        for name in ("error_rate", "slow_rate"):
            value = getattr(self, name)
            if not (number(value) and 0 <= value <= 1):
                raise ValueError(f"{name} must be a probability between 0 and 1")
        if not (number(self.slow_seconds) and self.slow_seconds >= 0):
            raise ValueError("slow_seconds must be a number >= 0")
        if not integer(self.seed):
            raise ValueError("seed must be an integer")
        if not (integer(self.retry_after_seconds) and self.retry_after_seconds >= 0):
            raise ValueError("retry_after_seconds must be an integer >= 0")

    def updated(self, changes: Mapping[str, Any]) -> FaultConfig:
        """A copy with `changes` applied; unknown field names raise `ValueError` (they are typos)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown fault settings {sorted(unknown)}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cli_args(self) -> list[str]:
        """The `python -m devstack.crm` options that set this configuration."""
        args = []
        for name, value in self.to_dict().items():
            if value is not None:
                args += [f"--{name.replace('_', '-')}", str(value)]
        return args


class _TokenBucket:
    """`rate` tokens per second, at most max(1, rate) saved up; starts full. Not thread-safe."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, body (JSON unless empty) and extra headers."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def _json(status: int, data: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, orjson.dumps(data), headers or {})


class Faults:
    """The current `FaultConfig`, its seeded generator and its token bucket, under one lock."""

    def __init__(self, config: FaultConfig) -> None:
        self._lock = threading.Lock()
        self._set(config)

    def _set(self, config: FaultConfig) -> None:
        self.config = config
        self._random = random.Random(config.seed)
        self._bucket = None if config.rate_limit_rps is None else _TokenBucket(config.rate_limit_rps)

    def update(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Apply `changes` (FaultConfig fields); the generator is re-seeded and the bucket refilled."""
        with self._lock:
            self._set(self.config.updated(changes))
            return self.config

    def reset(self) -> None:
        """Re-seed the generator and refill the bucket, keeping the configuration."""
        with self._lock:
            self._set(self.config)

    def draw(self) -> tuple[Response | None, float]:
        """For one batch request: an injected error response (or None), and seconds to sleep first."""
        with self._lock:
            config = self.config
            if self._bucket is not None and not self._bucket.take():
                retry_after = config.retry_after_seconds
                return _json(
                    429,
                    {"error": "rate_limited", "retry_after": retry_after},
                    {"Retry-After": str(retry_after)},
                ), 0.0
            if config.error_rate and self._random.random() < config.error_rate:
                status = self._random.choice(_SERVER_ERRORS)
                headers = {"Retry-After": "1"} if status == 503 else {}
                return _json(status, {"error": "server_error"}, headers), 0.0
            if config.slow_rate and self._random.random() < config.slow_rate:
                return None, config.slow_seconds
            return None, 0.0


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
    if email is not None and (type(email) is not str or _EMAIL.fullmatch(email) is None):
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

    def user(self, external_id: str) -> dict[str, Any] | None:
        """`{"external_id", "attributes", "deliveries"}` of a stored user, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT attributes, deliveries FROM users WHERE external_id = ?", (external_id,)
            ).fetchone()
        if row is None:
            return None
        return {"external_id": external_id, "attributes": orjson.loads(row[0]), "deliveries": row[1]}

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


# -- counters --------------------------------------------------------------------------------------

_COUNTERS = (
    "requests",
    "batches_accepted",
    "records_received",
    "records_accepted",
    "records_rejected",
    "replays",
    "slow_responses",
)


class Counters:
    """Request counters for `/devstack/stats`, in memory, updated once per answered batch request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(_COUNTERS, 0)
            self._statuses: Counter[str] = Counter()

    def add(self, status: int, **increments: int) -> None:
        """Count one answered request with `status`, plus `increments` of the other counters."""
        with self._lock:
            self._values["requests"] += 1
            self._statuses[str(status)] += 1
            for name, value in increments.items():
                self._values[name] += value

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self._values, "status_counts": dict(self._statuses)}


# -- HTTP ------------------------------------------------------------------------------------------


class Api:
    """The endpoints: `handle()` maps a request to a `Response`; unexpected errors become 500."""

    def __init__(self, store: Store, api_key: str, faults: Faults, max_batch_size: int) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        self.store = store
        self.faults = faults
        self.counters = Counters()
        self.max_batch_size = max_batch_size
        self._authorization = f"Bearer {api_key}".encode()

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        path = path.partition("?")[0]
        if path == BATCH_PATH and method == "POST":
            return self.batch(headers, body)
        try:
            if path == BATCH_PATH:
                return _json(405, {"error": "method_not_allowed"}, {"Allow": "POST"})
            return self._devstack(method, path, body)
        except Exception:
            logger.exception("%s %s failed", method, path)
            return _json(500, {"error": "internal_error"})

    def batch(self, headers: Mapping[str, str], body: bytes) -> Response:
        """`POST /v1/users/batch`; counts the request and its outcome."""
        increments: dict[str, int] = {}
        try:
            response = self._batch(headers, body, increments)
        except Exception:
            logger.exception("POST %s failed", BATCH_PATH)
            response = _json(500, {"error": "internal_error"})
        self.counters.add(response.status, **increments)
        return response

    def _batch(self, headers: Mapping[str, str], body: bytes, increments: dict[str, int]) -> Response:
        given = (headers.get("Authorization") or "").encode()
        if not hmac.compare_digest(given, self._authorization):
            return _json(401, {"error": "invalid_api_key"}, {"WWW-Authenticate": "Bearer"})

        injected, delay_seconds = self.faults.draw()
        if injected is not None:
            return injected
        if delay_seconds:
            increments["slow_responses"] = 1
            time.sleep(delay_seconds)

        key = headers.get("Idempotency-Key") or None
        body_sha256 = hashlib.sha256(body).hexdigest() if key else ""
        try:
            if key is not None and (stored := self.store.replay(key, body_sha256)) is not None:
                increments["replays"] = 1
                return Response(200, stored, {"Idempotent-Replayed": "true"})
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                return _json(400, {"error": "invalid_body", "detail": f"malformed JSON: {e}"})
            users = document.get("users") if type(document) is dict else None
            if type(users) is not list:
                return _json(
                    400, {"error": "invalid_body", "detail": 'expected an object with a "users" list'}
                )
            if len(users) > self.max_batch_size:
                return _json(413, {"error": "batch_too_large", "max_batch_size": self.max_batch_size})

            rows, rejected = split_batch(users)
            answer = orjson.dumps({"accepted": len(rows), "rejected": rejected})
            sent, replayed = self.store.commit_batch(rows, answer, key, body_sha256)
        except IdempotencyKeyReused:
            return _json(422, {"error": "idempotency_key_reused"})
        if replayed:  # the same key was committed while this request was being validated
            increments["replays"] = 1
            return Response(200, sent, {"Idempotent-Replayed": "true"})
        increments.update(
            batches_accepted=1,
            records_received=len(users),
            records_accepted=len(rows),
            records_rejected=len(rejected),
        )
        return Response(200, sent)

    def _devstack(self, method: str, path: str, body: bytes) -> Response:
        if path == "/devstack/stats" and method == "GET":
            return _json(200, {**self.counters.snapshot(), **self.store.counts()})
        if path == "/devstack/reset" and method == "POST":
            self.store.clear()
            self.counters.reset()
            self.faults.reset()
            return Response(204)
        if path == "/devstack/config" and method == "GET":
            return _json(200, self.faults.config.to_dict())
        if path == "/devstack/config" and method == "POST":
            try:
                changes = orjson.loads(body or b"{}")
                if type(changes) is not dict:
                    raise ValueError("expected a JSON object of fault settings")
                config = self.faults.update(changes)
            except (orjson.JSONDecodeError, ValueError, TypeError) as e:
                return _json(400, {"error": "invalid_body", "detail": str(e)})
            return _json(200, config.to_dict())
        if path.startswith(_USER_PATH) and method == "GET":
            user = self.store.user(unquote(path[len(_USER_PATH) :]))
            return _json(404, {"error": "not_found"}) if user is None else _json(200, user)
        return _json(404, {"error": "not_found"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries its length
    server_version = "CrmStandIn"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: CrmHttpServer

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(_json(411, {"error": "length_required"}))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            self._send(_json(400, {"error": "invalid_body", "detail": "bad Content-Length"}))
            return
        body = self.rfile.read(length) if length > 0 else b""
        self._send(self.server.api.handle(self.command, self.path, self.headers, body))

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        if response.status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.status != 204:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing per request (a benchmark sends hundreds of them per second)."""


class CrmHttpServer(ThreadingHTTPServer):
    """The stand-in's HTTP server, bound on construction (port 0 picks a free one); a thread per
    connection. `close()` stops serving and closes the store."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: Api) -> None:
        super().__init__(address, _Handler)
        self.api = api

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (e.g. timed out on a slow response) is routine: say nothing."""
        if not isinstance(sys.exception(), ConnectionError):
            super().handle_error(request, client_address)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.api.store.close()


def make_server(
    db_path: str | os.PathLike[str],
    api_key: str,
    faults: FaultConfig | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    host: str = "127.0.0.1",
    port: int = 0,
) -> CrmHttpServer:
    """A bound, not yet serving, server storing into the SQLite file `db_path` (created if missing)."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    api = Api(Store(db_path), api_key, Faults(faults or FaultConfig()), max_batch_size)
    return CrmHttpServer((host, port), api)


# -- launcher --------------------------------------------------------------------------------------

API_KEY_ENV = "CRM_STANDIN_API_KEY"  # how CrmStandIn hands the key over (not in argv, which `ps` shows)
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class CrmStandIn:
    """The stand-in in a subprocess (`python -m devstack.crm`); a context manager.

    `start()` launches it on a free port and waits up to `startup_timeout_seconds` for it to listen
    (`RuntimeError` if it exits or stays silent; its stderr is in the message). The subprocess exits
    when `stop()` is called or when this process dies (it watches its standard input). The SQLite
    file is `db_path`, or one in a temporary directory removed on `stop()`.

    Attributes: `url` (base URL, no trailing slash), `batch_url` (`url + "/v1/users/batch"`), `pid`.
    """

    def __init__(
        self,
        api_key: str,
        db_path: Path | None = None,
        faults: FaultConfig | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        *,
        startup_timeout_seconds: float = 30.0,
    ) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        self.api_key = api_key
        self.db_path = db_path
        self.faults = faults or FaultConfig()
        self.max_batch_size = max_batch_size
        self.startup_timeout_seconds = startup_timeout_seconds
        self._process: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._http: requests.Session | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the CRM stand-in is not running")
        return self._url

    @property
    def batch_url(self) -> str:
        return self.url + BATCH_PATH

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> CrmStandIn:
        if self._process is not None:
            raise RuntimeError("the CRM stand-in is already running")
        self._tmp = tempfile.TemporaryDirectory(prefix="crm-standin-")
        db_path = self.db_path or Path(self._tmp.name) / "crm.sqlite3"
        stderr_path = Path(self._tmp.name) / "stderr.log"
        env = {
            **os.environ,
            API_KEY_ENV: self.api_key,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH")])),
        }
        argv = [sys.executable, "-m", "devstack.crm", "--port", "0", "--db", str(db_path)]
        argv += [*self.faults.cli_args(), "--max-batch-size", str(self.max_batch_size), "--exit-on-stdin-eof"]
        with open(stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        try:
            self._url = self._wait_until_listening()
        except BaseException:
            self.stop()
            raise
        self._http = requests.Session()
        return self

    def _wait_until_listening(self) -> str:
        assert self._process is not None and self._process.stdout is not None and self._tmp is not None
        deadline = time.monotonic() + self.startup_timeout_seconds
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not selector.select(remaining):
                    continue
                line = self._process.stdout.readline().decode(errors="replace").strip()
                if not line:  # end of output: the process exited
                    break
                if line.startswith(LISTENING):
                    return line.removeprefix(LISTENING).rstrip("/")
        self._process.poll()
        stderr = (Path(self._tmp.name) / "stderr.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(
            f"the CRM stand-in did not start within {self.startup_timeout_seconds} s "
            f"(exit code {self._process.returncode}); stderr:\n{stderr}"
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        assert self._http is not None
        response = self._http.request(method, self.url + path, timeout=30, **kwargs)
        if response.status_code >= 400 and response.status_code != 404:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response

    def stats(self) -> dict[str, Any]:
        """`GET /devstack/stats` (counters, `distinct_users`, `duplicate_deliveries`, `status_counts`)."""
        return self._call("GET", "/devstack/stats").json()

    def reset(self) -> None:
        """`POST /devstack/reset`: forget users, idempotency keys and counters (faults stay)."""
        self._call("POST", "/devstack/reset")

    def configure(self, **faults: Any) -> FaultConfig:
        """`POST /devstack/config` with FaultConfig fields; returns the configuration now in force."""
        self.faults.updated(faults)  # checks names and values before the server does
        self.faults = FaultConfig(**self._call("POST", "/devstack/config", json=faults).json())
        return self.faults

    def user(self, external_id: str) -> dict[str, Any] | None:
        """`{"external_id", "attributes", "deliveries"}` of a stored user, or None if there is none."""
        response = self._call("GET", _USER_PATH + quote(external_id, safe=""))
        return None if response.status_code == 404 else response.json()

    def stop(self) -> None:
        """Terminate the subprocess and wait for it (killed after 10 s); idempotent."""
        if self._http is not None:
            self._http.close()
            self._http = None
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._url = None

    def __enter__(self) -> CrmStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
