"""The stand-in's HTTP server: `Api` (the endpoints), the request handler, `CrmHttpServer` and
`make_server`, which `python -m devstack.crm` runs; `CrmStandIn` (`standin`) launches that subprocess.

The API itself is described in docs/crm-export.md, "The CRM stand-in".
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import orjson

from devstack.crm.faults import FaultConfig, Faults
from devstack.crm.response import Response, _json
from devstack.crm.store import Counters, IdempotencyKeyReused, Store, split_batch

logger = logging.getLogger(__name__)

BATCH_PATH = "/v1/users/batch"
DEFAULT_MAX_BATCH_SIZE = 5000
LISTENING = "CRM stand-in listening on "  # the line `python -m devstack.crm` prints once it serves
API_KEY_ENV = "CRM_STANDIN_API_KEY"  # how CrmStandIn hands the key over (not in argv, which `ps` shows)

_USER_PATH = "/devstack/users/"


def watch_stdin(on_eof: Callable[[], None]) -> None:
    """Call ``on_eof`` once standard input ends (the launcher closed it or died): ``--exit-on-stdin-eof``
    of ``python -m devstack.crm`` and ``python -m devstack.crms``. The watching thread is a daemon and
    reads the raw descriptor: one blocked in ``sys.stdin`` would hold its lock and stall interpreter
    shutdown."""

    def watch() -> None:
        while os.read(sys.stdin.fileno(), 4096):
            pass
        on_eof()

    threading.Thread(target=watch, name="crm-standin-stdin", daemon=True).start()


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
            answer = (
                b"{}"
                if self.faults.empty_answer()
                else orjson.dumps({"accepted": len(rows), "rejected": rejected})
            )
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
        if path == "/devstack/users" and method == "GET":
            return _json(200, {"users": self.store.users()})
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
