"""Run the Tableau stand-in until SIGTERM or SIGINT.

    python -m devstack.tableau --config PATH [--host 127.0.0.1] [--port 0] [--url-file PATH]

Once listening it writes the base URL to --url-file if given (atomically), then prints
`listening on http://HOST:PORT`, so a launcher that asked for port 0 can find it either way.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from devstack.tableau.config import load_config
from devstack.tableau.server import TableauStandIn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.tableau", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="seed config, YAML or JSON")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--url-file", type=Path, help="write the base URL here once listening")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    with TableauStandIn(load_config(args.config), host=args.host, port=args.port) as standin:
        if args.url_file:
            partial = args.url_file.with_name(args.url_file.name + ".tmp")
            partial.write_text(standin.url + "\n", encoding="utf-8")
            os.replace(partial, args.url_file)
        print(f"listening on {standin.url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
