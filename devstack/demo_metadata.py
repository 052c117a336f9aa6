"""The metadata part of ``make demo``: the Tableau collector into Azurite, the Athena collector into moto.

``start_tableau_collector`` collects a ``tableau-demo`` source in a thread while the domain refreshes run
(on a PAT of the same pool); ``run_athena_collector`` seeds moto (``devstack.athena_catalog``) and
collects an ``athena-demo`` source twice: the initial look-back, then what is new since the first
run's HWM. Each prints its lineage counts, read back from the landed files. Imports Prefect only
inside functions.
"""

from __future__ import annotations

import csv
import gzip
import io
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import yaml

from devstack.athena_catalog import SeededAthena, information_schema_tables, queue_query_results, seed_athena
from devstack.azurite_server import Azurite
from devstack.moto_server import DUMMY_ACCESS_KEY_ID, DUMMY_SECRET_ACCESS_KEY, MotoServer

SOURCE = "athena-demo"
REGION = "us-east-1"
LANDING_BUCKET = "catalog-landing"


def _sources_file(workdir: Path, moto_url: str, seeded: SeededAthena) -> Path:
    file = workdir / "metadata_sources.yaml"
    source = {
        "extractor": {
            "kind": "athena",
            "aws_credentials_block": "demo-aws",
            "region": REGION,
            "output_location": seeded.output_location,
            "endpoint_url": moto_url,
        },
        "landing": {"kind": "s3", "s3_bucket_block": "demo-catalog-landing", "landing_dir": "athena/landing"},
        "hwm": {"store": "variable", "lag_minutes": 0, "initial_lookback_days": 1},
    }
    file.write_text(yaml.safe_dump({"sources": {SOURCE: source}}))
    return file


def run_athena_collector(workdir: Path, stack: ExitStack) -> bool:
    """Collect the Athena demo source twice and print files, rows and the HWM; True if both landed."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from flows.metadata.collect import collect_metadata

    moto = stack.enter_context(MotoServer(region=REGION))
    seeded = seed_athena(moto.url, REGION)
    moto.client("s3").create_bucket(Bucket=LANDING_BUCKET)
    credentials = AwsCredentials(
        aws_access_key_id=DUMMY_ACCESS_KEY_ID,
        aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
        region_name=REGION,
        aws_client_parameters=AwsClientParameters(endpoint_url=moto.url),
    )
    credentials.save("demo-aws", overwrite=True)
    S3Bucket(bucket_name=LANDING_BUCKET, credentials=credentials).save("demo-catalog-landing", overwrite=True)
    file = _sources_file(workdir, moto.url, seeded)
    print(
        f"\nmoto server {moto.url}: Glue catalog {', '.join(seeded.databases)}, workgroups "
        f"{', '.join(seeded.workgroups)}; running collect-metadata for {SOURCE} ..."
    )
    runs = []
    for attempt in range(2):
        # moto answers information_schema queries from a queue: what AWS would return for this catalog
        queue_query_results(moto.url, REGION, [information_schema_tables(seeded)])
        runs.append(collect_metadata(SOURCE, sources_file=str(file)))
        if attempt == 0:
            time.sleep(1.1)  # the second run's window is the second since the first run's HWM
    print("\n=== Metadata: Athena → s3://catalog-landing/athena/landing ===")
    for label, run in zip(("first run", "second run"), runs, strict=True):
        print(f"{label}: window {run.window_start} → {run.window_end}, HWM now {run.hwm}")
        for f in run.files:
            print(f"   {f.file:<72} {f.rows:>7,} rows {f.bytes:>9,} bytes")
    s3 = moto.client("s3")
    counts = lineage_counts(
        runs[0],
        lambda name: s3.get_object(Bucket=LANDING_BUCKET, Key=f"athena/landing/{name}")["Body"].read(),
    )
    print(f"Athena lineage (first run): {_describe(counts)}")
    return all(f.landed for run in runs for f in run.files) and runs[1].window_start == runs[0].hwm


TABLEAU_SOURCE = "tableau-demo"
TABLEAU_CONTAINER = "catalog-landing"


def start_tableau_collector(workdir: Path, stack: ExitStack, pool_block: str) -> threading.Thread:
    """Start collecting the Tableau demo source in a thread; ``.result`` holds its summary or error."""
    from prefect.blocks.system import Secret

    from flows.metadata.collect import collect_metadata

    azurite = stack.enter_context(Azurite(workdir / "azurite"))
    azurite.service_client().create_container(TABLEAU_CONTAINER)
    Secret(value=azurite.sas_token(TABLEAU_CONTAINER, permissions="racwl")).save(
        "demo-landing-sas", overwrite=True
    )
    file = workdir / "metadata_sources_tableau.yaml"
    source = {
        "extractor": {"kind": "tableau", "pat_pool_block": pool_block},
        "landing": {
            "kind": "azure_blob",
            "account_url": azurite.account_url,
            "container": TABLEAU_CONTAINER,
            "sas_token_secret": "demo-landing-sas",
            "landing_dir": "tableau/landing",
        },
        "hwm": {"store": "file", "lag_minutes": 0, "initial_lookback_days": 1},
    }
    file.write_text(yaml.safe_dump({"sources": {TABLEAU_SOURCE: source}}))

    def collect() -> None:
        try:
            thread.result = collect_metadata(TABLEAU_SOURCE, sources_file=str(file))
        except Exception as exc:  # reported by print_tableau_collection
            thread.result = exc

    thread = threading.Thread(target=collect, name="tableau-collector", daemon=True)
    thread.result = None
    thread.container = azurite.service_client().get_container_client(TABLEAU_CONTAINER)
    thread.start()
    print(
        f"Tableau collector started (source {TABLEAU_SOURCE}, landing {azurite.account_url}/{TABLEAU_CONTAINER})"
    )
    return thread


def print_tableau_collection(thread: threading.Thread, timeout: float) -> bool:
    """Wait for the Tableau collector and print its files; True if every file landed."""
    from flows.metadata.collect import CollectionSummary

    thread.join(timeout)
    result = thread.result
    print(
        f"\n=== Metadata: Tableau → Azure Blob {TABLEAU_CONTAINER}/tableau/landing (during the refreshes) ==="
    )
    if not isinstance(result, CollectionSummary):
        print(f"✗ the Tableau collector did not finish: {result!r}")
        return False
    print(f"window {result.window_start} → {result.window_end}, HWM now {result.hwm} ({result.hwm_store})")
    for f in result.files:
        print(f"   {f.file:<80} {f.rows:>5,} rows {f.bytes:>7,} bytes")
    counts = lineage_counts(
        result, lambda name: thread.container.download_blob(f"tableau/landing/{name}").readall()
    )
    print(f"Tableau lineage (Metadata API): {_describe(counts)}")
    return all(f.landed for f in result.files)


def lineage_counts(summary: object, read: Callable[[str], bytes]) -> dict[str, int]:
    """Lineage figures of a collection, from its landed files (``read(file name)`` → the file's bytes):
    table- and column-level edges, columns covered (distinct columns and fields at either end of a
    column edge), statements not parsed (Athena queries and views, Tableau custom SQL) of all analysed."""
    files = {f.entity: f.file for f in summary.files}

    def rows(entity: str) -> list[dict[str, str]]:
        data = read(files[entity])
        text = gzip.decompress(data).decode() if files[entity].endswith(".gz") else data.decode()
        return list(csv.DictReader(io.StringIO(text)))

    columns = rows("column_lineage")
    covered = {
        tuple(v for k, v in row.items() if k.startswith(end))
        for row in columns
        for end in ("upstream_", "downstream_")
    }
    if "lineage_statements" in files:  # Athena: queries of the window and views
        statements = rows("lineage_statements")
        unparsed = sum(r["lineage_status"] == "unparsed" for r in statements)
    else:  # Tableau: custom SQL
        statements = rows("custom_sql")
        unparsed = sum(r["sql_status"] == "unparsed" for r in statements)
    return {
        "table_edges": len(rows("table_lineage")),
        "column_edges": len(columns),
        "columns_covered": len(covered),
        "unparsed": unparsed,
        "statements": len(statements),
    }


def _describe(counts: dict[str, int]) -> str:
    return (
        f"{counts['table_edges']:,} table edges, {counts['column_edges']:,} column edges, "
        f"{counts['columns_covered']:,} columns covered, {counts['unparsed']:,} unparsed statements "
        f"of {counts['statements']:,}"
    )
