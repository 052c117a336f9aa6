"""Run a CRM stand-in until SIGTERM, SIGINT or (with --exit-on-stdin-eof) the end of standard input.

    python -m devstack.crms generic --db PATH [--api-key KEY] [--max-batch-size 5000]
        [--rate-limit-rps X] [--error-rate X] [--slow-rate X] [--slow-seconds X] [--seed N]
        [--retry-after-seconds N] [--empty-answer-rate X] [common options]
    python -m devstack.crms {hubspot,braze} [--config JSON] [common options]

    common options: [--host 127.0.0.1] [--port 0] [--exit-on-stdin-eof]

The API key (generic), token (HubSpot) or REST API key (Braze) comes from the environment variable
CRM_STANDIN_API_KEY, never the command line (the generic endpoint's may also come from --api-key).
Once listening it prints `CRM stand-in listening on http://HOST:PORT`, so a launcher that asked for
port 0 learns the port.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import orjson

from devstack.asgi_server import AsgiServer, serve_until_stopped, server_header
from devstack.crms.braze import BrazeConfig, BrazeStandIn
from devstack.crms.common import API_KEY_ENV, LISTENING, CrmApp
from devstack.crms.generic import DEFAULT_MAX_BATCH_SIZE, FaultConfig, GenericStandIn
from devstack.crms.hubspot import HubSpotConfig, HubSpotStandIn

KINDS = {"hubspot": (HubSpotStandIn, HubSpotConfig, "HubSpot"), "braze": (BrazeStandIn, BrazeConfig, "Braze")}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default="127.0.0.1")
    common.add_argument("--port", type=int, default=0, help="0 picks a free port")
    common.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when standard input ends")
    parser = argparse.ArgumentParser(prog="python -m devstack.crms", description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="{generic,hubspot,braze}")

    generic = kinds.add_parser("generic", parents=[common], help="the generic batch endpoint")
    generic.add_argument("--db", required=True, type=Path, help="SQLite file (created if missing)")
    generic.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"default: ${API_KEY_ENV}")
    generic.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="records")
    generic.add_argument("--rate-limit-rps", type=float, help="batch requests per second (default: no limit)")
    generic.add_argument("--error-rate", type=float, default=0.0, help="probability of a 500/502/503")
    generic.add_argument("--slow-rate", type=float, default=0.0, help="probability of a slow response")
    generic.add_argument("--slow-seconds", type=float, default=0.0, help="delay of a slow response")
    generic.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    generic.add_argument("--retry-after-seconds", type=int, default=1, help="Retry-After of a 429")
    generic.add_argument(
        "--empty-answer-rate", type=float, default=0.0, help="probability of a processed batch answered {}"
    )
    for kind, (_, _, name) in KINDS.items():
        crm = kinds.add_parser(kind, parents=[common], help=f"the {name} stand-in")
        crm.add_argument("--config", default="{}", help="the stand-in's settings as a JSON object")
    return parser


def _generic(parser: argparse.ArgumentParser, args: argparse.Namespace) -> GenericStandIn:
    if not args.api_key:
        parser.error(f"--api-key or ${API_KEY_ENV} is required")
    if args.max_batch_size < 1:
        parser.error("--max-batch-size must be >= 1")
    try:
        faults = FaultConfig(
            rate_limit_rps=args.rate_limit_rps,
            error_rate=args.error_rate,
            slow_rate=args.slow_rate,
            slow_seconds=args.slow_seconds,
            seed=args.seed,
            retry_after_seconds=args.retry_after_seconds,
            empty_answer_rate=args.empty_answer_rate,
        )
    except ValueError as e:
        parser.error(str(e))
    return GenericStandIn(args.db, args.api_key, faults, args.max_batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    standin: CrmApp
    if args.kind == "generic":
        standin = _generic(parser, args)
        server = AsgiServer(
            standin.app, args.host, args.port, name="CRM stand-in", server=server_header("CrmStandIn")
        )
    else:
        api_key = os.environ.get(API_KEY_ENV)
        if not api_key:
            parser.error(f"${API_KEY_ENV} is required")
        standin_type, config_type, name = KINDS[args.kind]
        try:
            config = config_type(**orjson.loads(args.config))
        except (orjson.JSONDecodeError, TypeError) as exc:
            parser.error(f"--config: {exc}")
        standin = standin_type(api_key, config)
        server = AsgiServer(standin.app, args.host, args.port, name=f"{name} stand-in")
    try:
        return serve_until_stopped(server, _announce, exit_on_stdin_eof=args.exit_on_stdin_eof)
    finally:
        standin.close()


def _announce(url: str) -> None:
    print(LISTENING + url, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
