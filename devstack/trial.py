"""Stand-ins for a team's own services, to follow docs/getting-started.md before touching real ones.

    python -m devstack.trial --env-file trial.env    # runs until Ctrl-C or SIGTERM, then stops everything

It starts, on free loopback ports: the Tableau stand-in seeded with every data source and workbook of
the domain configuration (``TABLEAU_DOMAINS_FILE`` or ``tableau_domains.yaml``) and three PATs; moto's
server as the AWS account of the ``athena-prod`` example source (region eu-west-1: a Glue catalog,
workgroups ``primary`` and ``analysts``, query history, the buckets ``analytics-athena-results`` and
``catalog-landing``); the BigQuery emulator with a shard ``my-gcp-project.crm_export.users_<date>``
(1,000 users); and the HubSpot stand-in. Once they answer it writes ``--env-file`` (mode 0600): shell
``export`` lines of their URLs and the stand-ins' credentials, which getting-started's commands read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from devstack.athena_catalog import information_schema_tables, queue_query_results, seed_athena
from devstack.bigquery_emulator import BigQueryEmulator
from devstack.crms import HubSpotServer
from devstack.crms.hubspot import HubSpotConfig
from devstack.demo import stand_in_seed, start_tableau
from devstack.moto_server import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, MotoServer
from devstack.user_rows import load_shard, shard_rows

AWS_REGION = "eu-west-1"  # the athena-prod example's region
BUCKETS = ("analytics-athena-results", "catalog-landing")  # its results bucket and its landing bucket
BIGQUERY_PROJECT, BIGQUERY_DATASET = "my-gcp-project", "crm_export"  # the crm-export-weekly example's
USERS = 1_000
PAT_COUNT = 3


def start(workdir: Path, stack: ExitStack) -> dict[str, str]:
    """Start every stand-in on ``stack`` (which stops them); returns the variables of the env file."""
    from tasks.tableau.domains import load_domains

    pats = {f"prefect-refresh-{i}": secrets.token_urlsafe(16) for i in range(1, PAT_COUNT + 1)}
    seed = stand_in_seed(load_domains())
    seed["pats"] = [{"name": name, "secret": secret} for name, secret in pats.items()]
    tableau_url = start_tableau(workdir, seed, stack)
    env = {"TABLEAU_URL": tableau_url, "TABLEAU_SITE": seed["site_content_url"]}
    for i, (name, secret) in enumerate(pats.items(), start=1):
        env[f"TABLEAU_PAT_{i}_NAME"], env[f"TABLEAU_PAT_{i}_SECRET"] = name, secret

    moto = stack.enter_context(MotoServer(region=AWS_REGION))
    seeded = seed_athena(moto.url, AWS_REGION)
    s3 = moto.client("s3")
    for bucket in BUCKETS:
        if bucket != seeded.results_bucket:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": AWS_REGION})
    # moto answers information_schema queries from a queue: what AWS would return, for the first collection
    queue_query_results(moto.url, AWS_REGION, [information_schema_tables(seeded)])
    env |= {
        "AWS_TRIAL_ENDPOINT_URL": moto.url,
        "AWS_TRIAL_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "AWS_TRIAL_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
    }

    bigquery = stack.enter_context(BigQueryEmulator(BIGQUERY_PROJECT, data_dir=workdir / "bigquery"))
    shard = dt.date.today() - dt.timedelta(days=1)
    table = f"{BIGQUERY_PROJECT}.{BIGQUERY_DATASET}.users_{shard:%Y%m%d}"
    load_shard(bigquery.client(), table, shard_rows(users=USERS, invalid_every=250))
    env |= {"BIGQUERY_URL": bigquery.url, "BIGQUERY_STORAGE_URL": bigquery.storage_url}

    token = "pat-na1-" + secrets.token_hex(16)
    hubspot = stack.enter_context(HubSpotServer(token, HubSpotConfig(tier="enterprise")))
    env |= {"HUBSPOT_URL": hubspot.url, "HUBSPOT_TOKEN": token}
    return env


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """``export NAME=value`` lines, readable by the owner only (they hold the stand-ins' secrets)."""
    text = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.trial", description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, required=True, help="where to write the export lines")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="analytics-flows-trial-")))
        env = start(workdir, stack)
        write_env_file(args.env_file, env)
        stack.callback(args.env_file.unlink, missing_ok=True)
        print(f"stand-ins ready: {', '.join(sorted(env))} written to {args.env_file}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
