"""Benchmark: the content downstream of warehouse tables, resolved through the Metadata API.

    python -m bench.tableau_lineage [--datasources 5000] [--tables 2000] [--workbooks 1000]
        [--domain-tables 50] [--page-size 100] [--seed 7]

Runs the Tableau stand-in as its own process (``python -m devstack.tableau``, a real HTTP server on
its own core) seeded with ``--tables`` Athena tables in 10 schemas, every table name in two of them
(so the name filter brings back look-alikes that are matched out), ``--datasources`` published data
sources on 1-3 tables each (90 % with extracts, 5 % through custom SQL) and ``--workbooks`` workbooks
(60 % connected to 1-2 published data sources, 40 % with an embedded extract of their own on 1-3
tables). Then, signed in with a ``TableauSession`` as a refresh run is, it resolves
(``tasks.tableau.lineage.resolve_downstream``) a domain of ``--domain-tables`` random tables and the
whole site (every table), three times each, and prints the GraphQL requests, the wall time (the
median of the three) and what was found.

Targets (2 cores, the stand-in's graphql-core answering on one of them): a domain of 50 tables in
<= 2 requests and <= 1 s; the whole site (2,000 tables) in <= 25 requests and <= 10 s. The exit status
is 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SITE = "bench"
PAT, SECRET = "pat-1", "bench-secret"
CATALOG = "AwsDataCatalog"
ATHENA = {"type": "athena", "server_address": "athena.eu-west-1.amazonaws.com", "server_port": 443}
SCHEMAS = 10
TARGETS = {"domain": (2, 1.0), "site": (25, 10.0)}  # (requests, seconds) at most


def table(i: int) -> tuple[str, str]:
    """(schema, name) of table ``i``: names t0000.. each in two of the schemas s0..s9."""
    return f"s{i % SCHEMAS}", f"t{i // 2:04d}"


def seed(datasources: int, tables: int, workbooks: int, rng: random.Random) -> dict[str, Any]:
    def on(i: int) -> dict[str, Any]:
        schema, name = table(i)
        return {
            "connection_type": "athena",
            "database": CATALOG,
            "schema": schema,
            "name": name,
            "columns": ["id"],
        }

    ds_specs, ds_lineage = [], {}
    for d in range(datasources):
        name = f"ds{d:05d}"
        ds_specs.append(
            {
                "project": f"p{d % 20:02d}",
                "name": name,
                "connections": [ATHENA],
                "has_extracts": rng.random() < 0.9,
                "refresh_schedule": None,
            }
        )
        picks = rng.sample(range(tables), rng.randint(1, 3))
        if rng.random() < 0.05:
            schema, tname = table(picks[0])
            entry: dict[str, Any] = {
                "custom_sql": [
                    {
                        "name": "q",
                        "query": f"SELECT id FROM {schema}.{tname}",
                        "database": CATALOG,
                        "tables": [f"{schema}.{tname}"],
                        "columns": ["id"],
                    }
                ]
            }
        else:
            entry = {"tables": [on(i) for i in picks]}
        if rng.random() < 0.5:
            entry["extract_last_refresh_time"] = "2026-12-01T06:00:00Z"
        ds_lineage[f"p{d % 20:02d}/{name}"] = entry
    wb_specs, wb_lineage = [], {}
    for w in range(workbooks):
        name = f"wb{w:05d}"
        wb_specs.append({"project": f"p{w % 20:02d}", "name": name, "views": ["v"]})
        if rng.random() < 0.6:
            keys = rng.sample(sorted(ds_lineage), rng.randint(1, 2))
            wb_lineage[f"p{w % 20:02d}/{name}"] = {"datasources": keys, "sheets": {}}
        else:
            picks = rng.sample(range(tables), rng.randint(1, 3))
            wb_lineage[f"p{w % 20:02d}/{name}"] = {
                "embedded": {"extract": {"tables": [on(i) for i in picks]}},
                "sheets": {},
            }
    return {
        "site_content_url": SITE,
        "pats": [{"name": PAT, "secret": SECRET}],
        "datasources": ds_specs,
        "workbooks": wb_specs,
        "metadata_api": {"datasources": ds_lineage, "workbooks": wb_lineage},
    }  # fmt: skip


def start_standin(config: dict[str, Any], tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    path, url_file = tmp / "seed.json", tmp / "url"
    path.write_text(json.dumps(config), encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.tableau", "--config", str(path), "--url-file", str(url_file)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not url_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the Tableau stand-in did not start")
        time.sleep(0.1)
    return process, url_file.read_text(encoding="utf-8").strip()


def measure(url: str, keys: list[str], page_size: int, repeat: int = 3) -> dict[str, Any]:
    from blocks import TableauPersonalAccessToken, TableauSite
    from tasks.tableau.assets import parse_table_key
    from tasks.tableau.lineage import resolve_downstream
    from tasks.tableau.session import TableauSession

    site = TableauSite(server_url=url, site_content_url=SITE, api_version="3.29")
    pat = TableauPersonalAccessToken(token_name=PAT, token_secret=SECRET)
    tables = [parse_table_key(k) for k in keys]
    walls, resolution = [], None
    with TableauSession(site, pat, "bench-pat") as session:
        for _ in range(repeat):
            started = time.perf_counter()
            resolution = resolve_downstream(session, tables, page_size=page_size)
            walls.append(time.perf_counter() - started)
    assert resolution is not None
    return {
        "tables": len(keys),
        "requests": resolution.requests,
        "wall_s": statistics.median(walls),
        "walls_s": [round(w, 2) for w in walls],
        "datasources": sum(c.kind == "datasource" for c in resolution.content),
        "workbooks": sum(c.kind == "workbook" for c in resolution.content),
        "tables_without_extracts": len(resolution.tables_without_extracts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tableau_lineage", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--datasources", type=int, default=5000)
    parser.add_argument("--tables", type=int, default=2000)
    parser.add_argument("--workbooks", type=int, default=1000)
    parser.add_argument("--domain-tables", type=int, default=50)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    config = seed(args.datasources, args.tables, args.workbooks, rng)
    every = [f"athena://awsdatacatalog/{s}/{n}" for s, n in (table(i) for i in range(args.tables))]
    domain = rng.sample(every, args.domain_tables)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        process, url = start_standin(config, Path(tmp))
        try:
            print(
                f"stand-in: {args.datasources} data sources, {args.workbooks} workbooks, {args.tables} tables; "
                f"started in {time.perf_counter() - started:.1f} s"
            )
            ok = True
            for what, keys in (("domain", domain), ("site", every)):
                figures = measure(url, keys, args.page_size)
                most_requests, most_seconds = TARGETS[what]
                met = figures["requests"] <= most_requests and figures["wall_s"] <= most_seconds
                ok &= met
                print(
                    f"{what:6} {figures['tables']:5d} tables: {figures['requests']:3d} requests, "
                    f"{figures['wall_s']:.2f} s (runs {figures['walls_s']}); {figures['datasources']} data sources, "
                    f"{figures['workbooks']} workbooks, {figures['tables_without_extracts']} tables without an extract; "
                    f"target <= {most_requests} requests and <= {most_seconds:g} s: {'met' if met else 'MISSED'}"
                )
        finally:
            process.terminate()
            process.wait(timeout=30)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
