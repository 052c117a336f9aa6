"""collect_metadata: windows, landing, HWM publication only after a verified upload, a run that fails
halfway and its rerun, dry runs, bad input.

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
from blocks.loading import BlockNotFoundError
from devstack.prefect_server import free_port
from flows.metadata.collect import collect_metadata
from tasks.metadata.extract_files import WrittenFile
from tasks.metadata.extracts import Extract
from tasks.metadata.hwm import HWM_FORMAT, FileHwmStore, PendingWindowFile, WindowInProgressError
from tasks.metadata.landing import LandingError, S3Landing
from tasks.metadata.sources import SourceConfigError, load_source

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


@pytest.mark.slow(seconds=12)
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
    assert rows["databases"] == 1
    assert summaries[0].files[0].landed.startswith("s3://")


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
    assert history["rows"] == f"{summary.files[-1].rows:,}"
    assert history["bytes"].replace(",", "").isdigit()
    assert summary.landing in artifact.description
    assert str(summary.window_end) in artifact.description


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
    assert "WHERE id = ?" in body
    assert "WHERE id = 1" not in body


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
    assert summary.hwm is None
    assert all(f.landed is None for f in summary.files)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.file for f in summary.files)
    assert "Contents" not in s3.list_objects_v2(Bucket=name)


def test_an_unknown_source_names_the_configured_ones(source):
    name, file, _ = source
    with pytest.raises(
        SourceConfigError, match=f"unknown metadata source 'nope'.*configured sources: {name}"
    ):
        collect_metadata("nope", sources_file=file)  # fails at once: bad input is not retried


# --- a run that fails halfway ----------------------------------------------------------------------


class ThreeEntities(HistoryExtractor):
    """Three files per run: databases, tables, query_history (in that order)."""

    def run(self, start: dt.datetime, end: dt.datetime) -> list[Extract]:
        databases, history = super().run(start, end)
        return [databases, Extract("tables", ("database", "name"), [("sales", "orders")]), history]


class RecordedLanding(S3Landing):
    """The source's real S3 landing, recording every upload it is asked for in ``log``; the upload
    numbered ``fail_at`` (counted in ``log``, from 1) fails as a refused write would (not retried)."""

    def __init__(self, real: S3Landing, log: list[str], fail_at: int | None = None):
        super().__init__(real.bucket, real.landing_dir)
        self.log, self.fail_at = log, fail_at

    def upload(self, local_path: Path, name: str):
        self.log.append(name)
        if len(self.log) == self.fail_at:
            raise LandingError(
                "injected: upload refused", target=self.describe(), file=name, reason="permission"
            )
        return super().upload(local_path, name)


@pytest.fixture
def halfway(source, monkeypatch):
    """``source`` with three files per run; ``land(log, fail_at)`` makes the next runs land through a
    ``RecordedLanding``."""
    name, file, s3 = source
    monkeypatch.setattr(collection, "build_extractor", lambda config: ThreeEntities(config.name))
    real_build = collection.build_landing

    def land(log: list[str], fail_at: int | None = None) -> None:
        monkeypatch.setattr(
            "flows.metadata.collect.build_landing",
            lambda config: RecordedLanding(real_build(config), log, fail_at),
        )

    return name, file, s3, land


def landed_keys(s3, bucket: str) -> list[str]:
    return sorted(
        i["Key"].removeprefix("catalog/landing/")
        for i in s3.list_objects_v2(Bucket=bucket, Prefix="catalog/landing/").get("Contents", [])
    )


def stored_hwm(s3, bucket: str) -> str | None:
    try:
        return s3.get_object(Bucket=bucket, Key=f"catalog/{bucket}_hwm.txt")["Body"].read().decode()
    except s3.exceptions.NoSuchKey:
        return None


def pending_record(s3, bucket: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=f"catalog/{bucket}_hwm_pending.json")["Body"].read())


@pytest.mark.slow(seconds=12)
def test_a_run_that_fails_on_the_third_file_is_finished_by_the_rerun_in_the_same_window(halfway, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    name, file, s3, land = halfway
    first_log: list[str] = []
    land(first_log, fail_at=3)
    with pytest.raises(LandingError, match="injected"):
        collect_metadata(name, sources_file=file, now=T0)
    window = f"{(T0 - dt.timedelta(days=1)):%Y%m%dT%H%M%S}_{T0:%Y%m%dT%H%M%S}"
    assert [n.split(f"{name}_")[1] for n in first_log] == [
        f"databases_{window}.csv.gz",
        f"tables_{window}.csv.gz",
        f"query_history_{window}.csv.gz",
    ]
    assert landed_keys(s3, name) == sorted(first_log[:2])  # 2 of 3 landed ...
    assert stored_hwm(s3, name) is None  # ... and the HWM stayed
    record = pending_record(s3, name)
    assert [f["name"] for f in record["landed"]] == first_log[:2]
    assert not record["published"]

    publishes: list[dt.datetime] = []
    real_publish = FileHwmStore.publish
    monkeypatch.setattr(FileHwmStore, "publish", lambda self, v: publishes.append(v) or real_publish(self, v))
    rerun_log: list[str] = []
    land(rerun_log)
    rerun = collect_metadata(name, sources_file=file, now=T0 + dt.timedelta(minutes=10))  # later: same window
    assert (rerun.window_start, rerun.window_end) == (T0 - dt.timedelta(days=1), T0)
    assert rerun_log == first_log[2:]  # only the file that had not landed: no file twice
    assert [f.file for f in rerun.files] == first_log  # the same names
    assert landed_keys(s3, name) == sorted(first_log)  # no file of another window
    assert all(f.landed and f.landed.endswith(f.file) for f in rerun.files)
    assert rerun.landed_before == first_log[:2]
    assert publishes == [T0]  # the HWM moved once
    assert stored_hwm(s3, name) == T0.strftime(HWM_FORMAT)
    assert pending_record(s3, name)["published"]
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"metadata-{name}"])), limit=1
        )
    assert "(2 of the files landed by an earlier attempt at this window)" in artifact.description
    assert f"HWM now {T0}" in artifact.description

    after = collect_metadata(name, sources_file=file, now=T0 + dt.timedelta(minutes=10))
    assert after.window_start == T0
    assert not after.landed_before  # then on, windows as usual


def test_a_stale_pending_window_does_not_land_again(halfway):
    """The run published the HWM, then died before it marked its pending window published."""
    name, file, s3, land = halfway
    first_log: list[str] = []
    land(first_log, fail_at=3)
    with pytest.raises(LandingError):
        collect_metadata(name, sources_file=file, now=T0)
    s3.put_object(Bucket=name, Key=f"catalog/{name}_hwm.txt", Body=T0.strftime(HWM_FORMAT).encode())

    log: list[str] = []
    land(log)
    run = collect_metadata(name, sources_file=file, now=T0 + SECOND)
    assert (run.window_start, run.window_end) == (T0, T0 + SECOND)
    assert log == [f.file for f in run.files]
    assert not set(log) & set(first_log)
    assert f"{T0:%Y%m%dT%H%M%S}_{T0 + SECOND:%Y%m%dT%H%M%S}" in log[0]
    assert first_log[2] not in landed_keys(s3, name)  # the stale window's third file never lands


def test_a_retry_of_a_run_whose_window_another_run_published_lands_nothing(halfway, tmp_path):
    """Run 1 fails halfway; run 2 finishes its window and publishes; then run 1 is retried with the
    window it planned (cached for the flow run): nothing lands, nothing is published again."""
    name, file, s3, land = halfway
    first_log: list[str] = []
    land(first_log, fail_at=3)
    with pytest.raises(LandingError):
        collect_metadata(name, sources_file=file, now=T0)
    landing = collection.build_landing(load_source(name, file))
    pending = PendingWindowFile(landing, name)
    window = pending.read().window  # run 1's window, as its retry holds it
    land([])
    collect_metadata(name, sources_file=file, now=T0 + SECOND)  # run 2
    before = {i["Key"]: i["LastModified"] for i in s3.list_objects_v2(Bucket=name)["Contents"]}

    retry_log: list[str] = []
    files = []
    for n in first_log:
        (tmp_path / n).write_bytes(b"x")
        files.append(WrittenFile("entity", tmp_path / n, 1, 1))
    result = collection.land_files(
        RecordedLanding(landing, retry_log), files, window, FileHwmStore(landing, name), pending
    )
    assert result.already_published
    assert result.landed == []
    assert retry_log == []
    assert {i["Key"]: i["LastModified"] for i in s3.list_objects_v2(Bucket=name)["Contents"]} == before


@pytest.mark.slow(seconds=15)
def test_a_pending_window_an_active_run_is_landing_is_left_to_it(halfway):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    name, file, s3, land = halfway
    first_log: list[str] = []
    land(first_log, fail_at=3)
    with pytest.raises(LandingError):
        collect_metadata(name, sources_file=file, now=T0)

    @flow(name="collect-metadata-elsewhere")
    def elsewhere() -> None:
        pass

    with get_client(sync_client=True) as client:
        active = client.create_flow_run(elsewhere, state=Running())
    key = f"catalog/{name}_hwm_pending.json"
    record = pending_record(s3, name)
    s3.put_object(Bucket=name, Key=key, Body=json.dumps({**record, "flow_run_id": str(active.id)}).encode())

    log: list[str] = []
    land(log)
    with pytest.raises(WindowInProgressError, match=f"Flow run {active.id} is landing window"):
        collect_metadata(name, sources_file=file, now=T0 + SECOND)
    assert log == []
    assert stored_hwm(s3, name) is None

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(active.id, Crashed(), force=True)
    run = collect_metadata(name, sources_file=file, now=T0 + SECOND)  # takes the window over
    assert log == first_log[2:]
    assert run.window_end == T0
    assert stored_hwm(s3, name) == T0.strftime(HWM_FORMAT)


def test_now_later_than_the_current_time_is_refused(source):
    name, file, s3 = source
    future = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    with pytest.raises(ValueError) as raised:
        collect_metadata(name, sources_file=file, now=future)
    message = str(raised.value)
    assert message.startswith(f"now {future.isoformat()} is later than the current time (")
    assert "leave now unset, or give an instant in the past" in message
    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0  # nothing landed, no HWM


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


@pytest.mark.slow(seconds=15)
def test_three_athena_runs_land_every_query_once(athena_source):
    name, file, landing, _ = athena_source
    # Each run's window ends at its start (now, the default): the seeded executions completed before.
    runs = [collect_metadata(name, sources_file=file) for _ in range(3)]
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
    assert lineage <= set(first)
    assert all(first[e].landed for e in lineage)
    assert first["openlineage"].file.endswith(".jsonl.gz")
    assert first["openlineage"].rows > 0
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
    assert partial.value.files
    assert all(f.startswith(f"{name}_") for f in partial.value.files)
    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0  # no file, no HWM file
    # The rerun, once the source answers whole, extracts the same window.
    monkeypatch.setattr(collection, "build_extractor", lambda config: HistoryExtractor(config.name))
    rerun = collect_metadata(name, sources_file=file, now=T0)
    assert rerun.window_start == T0 - dt.timedelta(days=1)
    assert rerun.hwm == T0


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
    assert all("secret-note" not in sql for _, _, sql in rows)
    assert all("?" in sql for _, _, sql in rows)


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
