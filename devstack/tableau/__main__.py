"""Run the Tableau stand-in until SIGTERM or SIGINT.

    python -m devstack.tableau --config PATH [--host 127.0.0.1] [--port 0] [--url-file PATH]

Once listening it writes the base URL to --url-file if given (atomically), then prints
`listening on http://HOST:PORT`, so a launcher that asked for port 0 can find it either way.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from devstack.asgi_server import serve_until_stopped
from devstack.tableau.config import load_config
from devstack.tableau.server import TableauStandIn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.tableau", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="seed config, YAML or JSON")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--url-file", type=Path, help="write the base URL here once listening")
    args = parser.parse_args(argv)

    def announce(url: str) -> None:
        if args.url_file:
            partial = args.url_file.with_name(args.url_file.name + ".tmp")
            partial.write_text(url + "\n", encoding="utf-8")
            os.replace(partial, args.url_file)
        print(f"listening on {url}", flush=True)

    return serve_until_stopped(
        TableauStandIn(load_config(args.config), host=args.host, port=args.port), announce
    )


if __name__ == "__main__":
    raise SystemExit(main())
