"""The stand-ins' one HTTP stack: a Starlette app served by uvicorn on a thread of this process
(``AsgiServer``), and ``serve_until_stopped``, the loop of their command lines (``python -m
devstack.tableau``, ``python -m devstack.crms``). The Tableau stand-in runs in the caller's process;
the CRM stand-ins in a subprocess of their own (``devstack.crms.standin``).

``HttpServerMethods`` keeps what the stand-ins answered when they were served by ``http.server``: 501
to a method other than GET, POST, PUT, DELETE and PATCH (HEAD and OPTIONS included).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol, Self

import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

#: The methods ``http.server`` handlers of the stand-ins answered (they defined ``do_<METHOD>``).
HTTP_SERVER_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})
STARTUP_TIMEOUT_SECONDS = 10.0
#: How long ``stop()`` lets requests in flight finish before cancelling them (a slow response of a CRM
#: stand-in may sleep longer).
GRACEFUL_SHUTDOWN_SECONDS = 1.0


def server_header(name: str) -> str:
    """The ``Server`` header ``http.server`` sent for a handler whose ``server_version`` is ``name``."""
    return f"{name} Python/{sys.version.split()[0]}"


class HttpServerMethods:
    """ASGI middleware: 501 ``Unsupported method ('X')`` (and ``Connection: close``) to a method
    outside ``HTTP_SERVER_METHODS``, as ``http.server`` answered it; the rest goes to ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in HTTP_SERVER_METHODS:
            message = f"Unsupported method ({scope['method']!r})"
            await PlainTextResponse(message, 501, headers={"Connection": "close"})(scope, receive, send)
            return
        await self.app(scope, receive, send)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0 picks a free one), listening. Its protocol is named:
    asyncio disables Nagle's algorithm only on the connections of a socket whose ``proto`` is TCP, and
    without that a keep-alive request waits ~40 ms for a delayed ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


class AsgiServer:
    """``app`` served by uvicorn (asyncio, h11) on a daemon thread: ``start()`` binds ``host:port``
    (port 0 picks a free one) and returns once uvicorn serves; ``url`` is the base URL; ``stop()``
    closes connections and waits for the thread (idempotent). A context manager.

    Endpoints that block (a lock, SQLite, a CPU-bound answer) run in uvicorn's thread pool (Starlette
    runs a sync endpoint there; an async one calls ``run_in_threadpool``), not on the event loop.
    ``server`` is the ``Server`` header (None: uvicorn's). The process's logging configuration is left
    as it is: uvicorn's loggers have no handler of their own, so its access log (``uvicorn.access``, at
    INFO) is silent unless the process logs that at INFO.
    """

    def __init__(
        self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, name: str, server: str | None = None
    ) -> None:
        self.app, self.name, self.server_header = app, name, server
        self._address = (host, port)
        self._running: tuple[uvicorn.Server, threading.Thread, str] | None = None

    @property
    def url(self) -> str:
        if self._running is None:
            raise RuntimeError(f"the {self.name} is not running")
        return self._running[2]

    def start(self) -> Self:
        if self._running is not None:
            raise RuntimeError(f"the {self.name} is already running")
        sock = listening_socket(*self._address)
        url = "http://{}:{}".format(*sock.getsockname()[:2])
        config = uvicorn.Config(
            self.app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            proxy_headers=False,
            headers=[] if self.server_header is None else [("Server", self.server_header)],
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"{self.name}-http", daemon=True
        )
        self._running = (server, thread, url)
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"the {self.name} did not start serving on {url}")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            server, thread, _ = running
            server.should_exit = True
            thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Running(Protocol):
    @property
    def url(self) -> str: ...


def watch_stdin(on_eof: Callable[[], None]) -> None:
    """Call ``on_eof`` once standard input ends (the launcher closed it or died). The watching thread
    is a daemon and reads the raw descriptor: one blocked in ``sys.stdin`` would hold its lock and
    stall interpreter shutdown."""

    def watch() -> None:
        while os.read(sys.stdin.fileno(), 4096):
            pass
        on_eof()

    threading.Thread(target=watch, name="standin-stdin", daemon=True).start()


def serve_until_stopped(
    server: AbstractContextManager[_Running],
    announce: Callable[[str], None],
    *,
    exit_on_stdin_eof: bool = False,
) -> int:
    """A stand-in's command line: enter ``server`` (it starts serving), ``announce(url)``, and serve
    until SIGTERM, SIGINT or (``exit_on_stdin_eof``) the end of standard input; then leave it (it
    stops) and return the exit code, 0."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if exit_on_stdin_eof:
        watch_stdin(stop.set)
    with server as running:
        announce(running.url)
        stop.wait()
    return 0
