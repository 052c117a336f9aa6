"""Run a CRM stand-in until SIGTERM, SIGINT or (with --exit-on-stdin-eof) the end of standard input.

    python -m devstack.crms {hubspot,braze} [--host 127.0.0.1] [--port 0] [--config JSON] [--exit-on-stdin-eof]

The token (HubSpot) or REST API key (Braze) comes from the environment variable CRM_STANDIN_API_KEY,
never the command line. Once listening it prints `CRM stand-in listening on http://HOST:PORT`.
"""

from __future__ import annotations

import argparse
import os
import socket

import orjson
import uvicorn

from devstack.crm.server import API_KEY_ENV, LISTENING, watch_stdin
from devstack.crms.braze import BrazeConfig, BrazeStandIn
from devstack.crms.hubspot import HubSpotConfig, HubSpotStandIn

KINDS = {"hubspot": (HubSpotStandIn, HubSpotConfig), "braze": (BrazeStandIn, BrazeConfig)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.crms", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config", default="{}", help="the stand-in's settings as a JSON object")
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when standard input ends")
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV)
    if not api_key:
        parser.error(f"${API_KEY_ENV} is required")
    standin_type, config_type = KINDS[args.kind]
    try:
        config = config_type(**orjson.loads(args.config))
    except (orjson.JSONDecodeError, TypeError) as exc:
        parser.error(f"--config: {exc}")
    standin = standin_type(api_key, config)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1024)
    server = uvicorn.Server(
        uvicorn.Config(standin.app, log_level="warning", access_log=False, lifespan="off")
    )
    if args.exit_on_stdin_eof:
        watch_stdin(lambda: setattr(server, "should_exit", True))
    host, port = sock.getsockname()[:2]
    print(f"{LISTENING}http://{host}:{port}", flush=True)
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
