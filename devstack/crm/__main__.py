"""Run the CRM stand-in until SIGTERM or SIGINT.

    python -m devstack.crm --db PATH [--api-key KEY] [--host 127.0.0.1] [--port 0]
        [--rate-limit-rps X] [--error-rate X] [--slow-rate X] [--slow-seconds X] [--seed N]
        [--retry-after-seconds N] [--max-batch-size 5000] [--exit-on-stdin-eof]

The API key comes from --api-key or, to keep it out of the process list, the environment variable
CRM_STANDIN_API_KEY. Once listening it prints `CRM stand-in listening on http://HOST:PORT`, so a
launcher that asked for port 0 learns the port.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from devstack.crm.faults import FaultConfig
from devstack.crm.server import API_KEY_ENV, DEFAULT_MAX_BATCH_SIZE, LISTENING, make_server, watch_stdin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.crm", description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, type=Path, help="SQLite file (created if missing)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV), help=f"default: ${API_KEY_ENV}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help="records")
    parser.add_argument("--rate-limit-rps", type=float, help="batch requests per second (default: no limit)")
    parser.add_argument("--error-rate", type=float, default=0.0, help="probability of a 500/502/503")
    parser.add_argument("--slow-rate", type=float, default=0.0, help="probability of a slow response")
    parser.add_argument("--slow-seconds", type=float, default=0.0, help="delay of a slow response")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    parser.add_argument("--retry-after-seconds", type=int, default=1, help="Retry-After of a 429")
    parser.add_argument(
        "--empty-answer-rate", type=float, default=0.0, help="probability of a processed batch answered {}"
    )
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when standard input ends")
    args = parser.parse_args(argv)
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

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.exit_on_stdin_eof:
        watch_stdin(stop.set)

    server = make_server(args.db, args.api_key, faults, args.max_batch_size, args.host, args.port)
    threading.Thread(target=server.serve_forever, args=(0.1,), name="crm-standin-http", daemon=True).start()
    print(LISTENING + server.url, flush=True)
    try:
        stop.wait()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
