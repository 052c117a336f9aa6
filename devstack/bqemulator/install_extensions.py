"""Install DuckDB's extensions from the ``duckdb-extension-*`` wheels of this environment into the DuckDB
home the emulator runs with (its ``HOME``), so that bqemulator's ``INSTALL spatial`` finds them
installed and never downloads: ``python install_extensions.py HOME``. Run by ``make sync`` with this
environment's interpreter; idempotent.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import duckdb


def main(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(config={"home_directory": str(home)})
    installed = []
    for dist in metadata.distributions():
        if not dist.metadata["Name"].lower().replace("_", "-").startswith("duckdb-extension-"):
            continue
        for file in dist.files or ():
            if file.name.endswith(".duckdb_extension"):
                connection.execute(f"INSTALL '{file.locate()}'")
                installed.append(file.name.removesuffix(".duckdb_extension"))
    if "spatial" not in installed:
        sys.exit("duckdb-extension-spatial is not installed: run `make sync`")
    print(f"DuckDB {duckdb.__version__} extensions installed into {home}: {', '.join(sorted(installed))}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
