"""collect_metadata: windows, landing, HWM publication only after a verified upload, dry runs, bad input.

The extractor here is a stand-in that reports query history by completion time (the real Athena
extractor has its own tests against moto); landing is real: moto's S3 server and a local directory.
Runs take their ``now`` from the test (``collect_metadata(now=...)``): consecutive runs are seconds
apart without waiting for the clock.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from prefect.variables import Variable

import tasks.metadata.collection as collection
from devstack.prefect_server import free_port
from flows.metadata.collect import collect_metadata
from tasks.common import BlockNotFoundError
from tasks.metadata.extracts import Extract
from tasks.metadata.hwm import HWM_FORMAT
from tasks.metadata.landing import LandingError
from tasks.metadata.sources import SourceConfigError

#: The ``now`` of a test's first run (later runs: a second apart each); an hour ago, in whole seconds.
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
SECOND = dt.timedelta(seconds=1)


class HistoryExtractor:
    """Queries completed once per 0.2 s from ``origin``; ``run`` returns those in ``[start, end)``."""

    origin = T0 - dt.timedelta(minutes=5)

    def __init__(self, source: str):
        self.source = source

    def test_connection(self) -> None:
        pass

    def run(self, start: dt.datetime, end: dt.datetime) -> list[Extract]:
        queries = []
        t = self.origin
        while t < end:
            if t >= start:
                queries.append((f"q-{t:%H%M%S%f}", t, f"SELECT * FROM t WHERE id = {t.second}"))
            t += dt.timedelta(milliseconds=200)
        return [
            Extract("databases", ("name",), [("sales",)]),
            Extract("query_history", ("query_id", "completed_at", "query"), queries, sql_columns=("query",)),
        ]


@pytest.fixture
def source(tmp_path, monkeypatch, moto):
    """A source landing in moto's S3 (file HWM) and its sources file; returns (name, file, s3 client)."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    name = f"history-{uuid.uuid4().hex[:6]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=moto.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=name)
    credentials = AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=moto.url),
    )
    S3Bucket(bucket_name=name, credentials=credentials).save(name)
    file = tmp_path / "sources.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    name: {
                        "extractor": {"kind": "tableau", "pat_pool_block": "unused"},
                        "landing": {"kind": "s3", "s3_bucket_block": name, "landing_dir": "catalog/landing"},
                        "hwm": {"store": "file", "lag_minutes": 0, "initial_lookback_days": 1},
                    }
                }
            }
        )
    )
    monkeypatch.setattr(collection, "build_extractor", lambda config: HistoryExtractor(config.name))
    return name, str(file), s3


def landed_query_ids(s3, bucket: str) -> list[str]:
    ids = []
    for item in s3.list_objects_v2(Bucket=bucket, Prefix="catalog/landing/").get("Contents", []):
        if "_query_history_" in item["Key"]:
            body = gzip.decompress(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()).decode()
            ids += [line.split(",")[0] for line in body.splitlines()[1:]]
    return ids


def test_three_runs_give_contiguous_windows_and_no_query_twice(source):
    name, file, s3 = source
    summaries = [collect_metadata(name, sources_file=file, now=T0 + i * SECOND) for i in range(3)]
    for earlier, later in zip(summaries, summaries[1:], strict=False):
        assert later.window_start == earlier.window_end  # no gap, no overlap
    hwm = s3.get_object(Bucket=name, Key=f"catalog/{name}_hwm.txt")["Body"].read()
    assert hwm.decode() == summaries[-1].window_end.strftime(HWM_FORMAT)
    ids = landed_query_ids(s3, name)
    assert len(ids) == len(set(ids)) > 0
    rows = {f.entity: f.rows for f in summaries[0].files}
    assert rows["databases"] == 1 and summaries[0].files[0].landed.startswith("s3://")


def test_the_artifact_lists_each_file_and_names_the_window_and_landing_directory(source):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    name, file, _ = source
    summary = collect_metadata(name, sources_file=file, now=T0)
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"metadata-{name}"])), limit=1
        )
    table = json.loads(artifact.data)  # a table artifact stores its rows as JSON text
    assert [row["file"] for row in table] == [f.file for f in summary.files]
    history = next(row for row in table if row["entity"] == "query_history")
    assert history["rows"] == f"{summary.files[-1].rows:,}" and history["bytes"].replace(",", "").isdigit()
    assert summary.landing in artifact.description and str(summary.window_end) in artifact.description


def test_the_progress_artifact_counts_the_files_landed_and_ends_at_the_hwm(source):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    name, file, _ = source
    summary = collect_metadata(name, sources_file=file, now=T0)
    with get_client(sync_client=True) as client:
        (progress,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"metadata-{name}-progress"])), limit=1
        )
    assert (progress.type, progress.data) == ("progress", 100.0)
    n = len(summary.files)
    assert progress.description == (
        f"Metadata collection of source **{name}**; {n} of {n} files landed; HWM now {summary.window_end}"
    )


def test_sql_literals_are_masked_in_the_landed_file(source):
    name, file, s3 = source
    collect_metadata(name, sources_file=file, now=T0)
    key = next(i["Key"] for i in s3.list_objects_v2(Bucket=name)["Contents"] if "_query_history_" in i["Key"])
    body = gzip.decompress(s3.get_object(Bucket=name, Key=key)["Body"].read()).decode()
    assert "WHERE id = ?" in body and "WHERE id = 1" not in body


def test_an_unreachable_landing_is_retried_with_the_same_window_and_files(source, monkeypatch):
    name, file, s3 = source
    collect_metadata(name, sources_file=file, now=T0)
    real_upload = __import__("tasks.metadata.landing", fromlist=["S3Landing"]).S3Landing.upload
    attempts: list[str] = []

    def flaky(self, local_path: Path, key: str):
        attempts.append(key)
        if len(attempts) == 1:
            raise LandingError("connection reset", target=self.describe(), file=key, reason="connection")
        return real_upload(self, local_path, key)

    monkeypatch.setattr("tasks.metadata.landing.S3Landing.upload", flaky)
    monkeypatch.setattr(
        "flows.metadata.collect.land_files", collection.land_files.with_options(retry_delay_seconds=0)
    )
    summary = collect_metadata(name, sources_file=file, now=T0 + SECOND)
    first_try, *retried = attempts
    assert first_try in retried  # the retry wrote the same file names: the same window
    assert {f.file for f in summary.files} == set(retried)


def test_a_failed_upload_leaves_the_hwm_and_the_rerun_extracts_the_same_window(source, monkeypatch):
    name, file, s3 = source
    first = collect_metadata(name, sources_file=file, now=T0)

    def refuse(self, local_path: Path, key: str):
        raise LandingError("upload refused", target=self.describe(), file=key, reason="permission")

    with monkeypatch.context() as patch:
        patch.setattr("tasks.metadata.landing.S3Landing.upload", refuse)
        with pytest.raises(LandingError):
            collect_metadata(name, sources_file=file, now=T0 + SECOND)
    hwm_key = f"catalog/{name}_hwm.txt"
    assert s3.get_object(Bucket=name, Key=hwm_key)["Body"].read().decode() == first.window_end.strftime(
        HWM_FORMAT
    )
    rerun = collect_metadata(name, sources_file=file, now=T0 + SECOND)
    assert rerun.window_start == first.window_end  # the failed run's window is extracted now


def test_a_stopped_landing_server_is_a_landing_error_and_the_hwm_stays(tmp_path, monkeypatch):
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the landing server is down
    name = f"gone-{uuid.uuid4().hex[:6]}"
    S3Bucket(
        bucket_name="gone",
        credentials=AwsCredentials(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(
                endpoint_url=url, config={"retries": {"max_attempts": 1}}
            ),
        ),
    ).save(name)
    file = tmp_path / "sources.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    name: {
                        "extractor": {"kind": "tableau", "pat_pool_block": "unused"},
                        "landing": {"kind": "s3", "s3_bucket_block": name, "landing_dir": "landing"},
                    }
                }
            }
        )
    )
    monkeypatch.setattr(collection, "build_extractor", lambda config: HistoryExtractor(config.name))
    monkeypatch.setattr(
        "flows.metadata.collect.land_files", collection.land_files.with_options(retry_delay_seconds=0)
    )
    with pytest.raises(LandingError) as failure:
        collect_metadata(name, sources_file=str(file), now=T0)
    assert failure.value.reason == "connection"  # retried twice (the task's retries), then failed
    assert Variable.get(f"hwm_{name}") is None  # the Variable store was never written


def test_a_dry_run_writes_files_and_uploads_nothing(source, tmp_path):
    name, file, s3 = source
    summary = collect_metadata(name, sources_file=file, dry_run=True, out_dir=str(tmp_path / "out"), now=T0)
    assert summary.hwm is None and all(f.landed is None for f in summary.files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.file for f in summary.files)
    assert "Contents" not in s3.list_objects_v2(Bucket=name)


def test_an_unknown_source_names_the_configured_ones(source):
    name, file, _ = source
    with pytest.raises(
        SourceConfigError, match=f"unknown metadata source 'nope'.*configured sources: {name}"
    ):
        collect_metadata("nope", sources_file=file)  # fails at once: bad input is not retried


# --- the real Athena extractor on moto's server ----------------------------------------------------


@pytest.fixture(scope="module")
def seeded(moto):
    from devstack.athena_catalog import seed_athena

    return seed_athena(moto.url, "us-east-1")


@pytest.fixture
def athena_source(tmp_path, moto, seeded):
    """An Athena source on moto (TPC-DS catalog, history), landing locally; returns (name, file, landing)."""
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    name = f"athena-{uuid.uuid4().hex[:6]}"
    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=moto.url),
    ).save(name)
    landing = tmp_path / "landing-root"
    landing.mkdir()
    file = tmp_path / "sources.yaml"

    def write(**extractor):
        entry = {
            "extractor": {
                "kind": "athena",
                "aws_credentials_block": name,
                "region": "us-east-1",
                "output_location": seeded.output_location,
                "endpoint_url": moto.url,
                **extractor,
            },
            "landing": {"kind": "local", "root": str(landing), "landing_dir": "athena/landing"},
            "hwm": {"store": "file", "lag_minutes": 0, "initial_lookback_days": 1},
        }
        file.write_text(yaml.safe_dump({"sources": {name: entry}}))

    write()
    return name, str(file), landing, write


def test_three_athena_runs_land_every_query_once(athena_source):
    name, file, landing, _ = athena_source
    # The first window ends after every seeded execution completed (moto: when it was started).
    first = dt.datetime.now(dt.UTC).replace(microsecond=0) + SECOND
    runs = [collect_metadata(name, sources_file=file, now=first + i * SECOND) for i in range(3)]
    assert [r.window_start for r in runs[1:]] == [r.window_end for r in runs[:-1]]
    ids = []
    for path in sorted((landing / "athena" / "landing").glob(f"{name}_query_history_*.csv.gz")):
        ids += [line.split(",")[0] for line in gzip.decompress(path.read_bytes()).decode().splitlines()[1:]]
    assert len(ids) == len(set(ids)) >= 73  # the seeded history, then only the collector's own queries
    assert (landing / "athena" / f"{name}_hwm.txt").read_text() == runs[-1].window_end.strftime(HWM_FORMAT)
    # Lineage, usage and OpenLineage land with the rest, before the HWM moved.
    lineage = {
        "lineage_statements",
        "table_lineage",
        "column_lineage",
        "table_usage",
        "column_usage",
        "openlineage",
    }
    first = {f.entity: f for f in runs[0].files}
    assert lineage <= set(first) and all(first[e].landed for e in lineage)
    assert first["openlineage"].file.endswith(".jsonl.gz") and first["openlineage"].rows > 0
    assert first["table_lineage"].rows >= 3  # the two views' tables, at least


class PartialExtractor(HistoryExtractor):
    """Answers, but reports that part of the source could not be read (as the Metadata API may)."""

    def __init__(self, source: str):
        super().__init__(source)
        self.problems = ["workbooksConnection: NODE_LIMIT_EXCEEDED with one node per page"]


def test_a_partial_result_lands_nothing_and_the_hwm_stays(source, monkeypatch):
    from tasks.metadata.extracts import PartialExtractionError

    name, file, s3 = source
    monkeypatch.setattr(collection, "build_extractor", lambda config: PartialExtractor(config.name))
    with pytest.raises(PartialExtractionError, match="NODE_LIMIT_EXCEEDED") as partial:
        collect_metadata(name, sources_file=file, now=T0)
    assert partial.value.files and all(f.startswith(f"{name}_") for f in partial.value.files)
    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0  # no file, no HWM file
    # The rerun, once the source answers whole, extracts the same window.
    monkeypatch.setattr(collection, "build_extractor", lambda config: HistoryExtractor(config.name))
    rerun = collect_metadata(name, sources_file=file, now=T0)
    assert rerun.window_start == T0 - dt.timedelta(days=1) and rerun.hwm == T0


def test_a_missing_workgroup_is_named_and_the_hwm_stays(athena_source):
    from tasks.metadata.extracts import ExtractorConnectionError

    name, file, landing, write = athena_source
    write(workgroups=["primary", "no-such-workgroup"])
    with pytest.raises(ExtractorConnectionError, match="no-such-workgroup"):
        collect_metadata(name, sources_file=file)
    assert not (landing / "athena" / f"{name}_hwm.txt").exists()
    assert (
        not list((landing / "athena" / "landing").glob("*"))
        if (landing / "athena" / "landing").exists()
        else True
    )


def test_view_sql_is_masked_in_each_rows_own_dialect():
    views = Extract(
        "views",
        ("view_name", "view_dialect", "view_sql"),
        [
            ("hive_view", "hive", 'SELECT a FROM db.t WHERE note = "secret-note"'),
            ("athena_view", "athena", "SELECT a FROM db.t WHERE note = 'secret-note'"),
        ],
        sql_columns=("view_sql",),
        sql_dialect_column="view_dialect",
    )
    rows = list(collection.masked(views).rows)
    assert all("secret-note" not in sql for _, _, sql in rows) and all("?" in sql for _, _, sql in rows)


def test_a_missing_landing_block_names_the_source_and_the_field(tmp_path):
    file = tmp_path / "sources.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "sources": {
                    "lost": {
                        "extractor": {"kind": "tableau", "pat_pool_block": "unused"},
                        "landing": {
                            "kind": "s3",
                            "s3_bucket_block": "no-such-bucket-block",
                            "landing_dir": "x",
                        },
                    }
                }
            }
        )
    )
    with pytest.raises(
        BlockNotFoundError,
        match=r"S3 Bucket block 'no-such-bucket-block', needed by source 'lost' \(field landing\.s3_bucket_block\)",
    ):
        collect_metadata("lost", sources_file=str(file))
