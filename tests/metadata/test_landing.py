"""Landing targets (tasks/metadata/landing/) against real servers: moto's S3 server, Azurite with SAS tokens,
a local directory, and GCS through the real google-cloud-storage client talking to a fake of the GCS JSON
API (the only part faked: nothing real runs GCS here).

Every target runs the same cases (upload + verify, text round trip, gzip round trip, size mismatch);
then failures per target: server stopped, permission denied, missing credentials/container/root.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import random
import re
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import boto3
import pytest

from devstack.azurite_server import Azurite
from devstack.moto_server import MotoServer
from tasks.metadata.landing import (
    AzureBlobLanding,
    GcsLanding,
    LandedFile,
    LandingError,
    LandingTarget,
    LocalLanding,
    S3Landing,
)

LANDING_DIR = "catalog/athena/landing"
HWM_KEY = "catalog/athena/athena_hwm.txt"  # next to the landing directory


def tag() -> str:
    return uuid.uuid4().hex[:8]


def formatted(exc: BaseException) -> str:
    """The exception as a log would show it: message, traceback and chained causes."""
    return "".join(traceback.format_exception(exc))


# --- servers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    with Azurite() as server:
        yield server


def raw_s3(url: str, key_id: str = "testing", secret: str = "testing") -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


def s3_bucket_block(
    url: str, bucket: str, *, folder: str = "", key_id: str = "testing", secret: str = "testing"
):
    """An S3Bucket block whose AwsCredentials point at moto (one attempt per call: failures are immediate)."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    credentials = AwsCredentials(
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=url, config={"retries": {"max_attempts": 1}}),
    )
    return S3Bucket(bucket_name=bucket, credentials=credentials, bucket_folder=folder)


def azure_landing(
    azurite: Azurite, container: str, sas: str, landing_dir: str = LANDING_DIR
) -> AzureBlobLanding:
    from prefect.blocks.system import Secret

    secret_name = f"landing-sas-{tag()}"
    Secret(value=sas).save(secret_name, overwrite=True)
    return AzureBlobLanding(azurite.account_url, container, secret_name, landing_dir, retry_total=0)


# --- a fake of the GCS JSON API, for the real google-cloud-storage client -----------------------------


@dataclass
class FakeGcsApi:
    """The GCS JSON API calls the client makes for small objects: multipart upload (POST
    /upload/storage/v1/b/B/o?uploadType=multipart), object metadata (GET /storage/v1/b/B/o/NAME) and media
    download (GET /download/storage/v1/b/B/o/NAME?alt=media), with GCS's JSON error bodies.

    Knobs: ``forbidden`` (403 on every call), ``size_delta`` (added to the size the metadata reports).
    """

    buckets: set[str]
    objects: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)
    forbidden: bool = False
    size_delta: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeGcsApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api.handle(self, "GET")

            def do_POST(self) -> None:
                api.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def resource(self, bucket: str, name: str) -> dict[str, Any]:
        data, content_type = self.objects[(bucket, name)]
        crc = __import__("google_crc32c").value(data).to_bytes(4, "big")
        return {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/1",
            "bucket": bucket,
            "name": name,
            "generation": "1",
            "metageneration": "1",
            "contentType": content_type,
            "size": str(len(data) + self.size_delta),
            "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "crc32c": base64.b64encode(crc).decode(),
        }

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        url = urlparse(request.path)
        parts = url.path.split("/")
        if self.forbidden:
            return self.error(
                request, 403, "caller does not have storage.objects.create access to the object."
            )
        # /upload/storage/v1/b/B/o, /storage/v1/b/B/o/NAME, /download/storage/v1/b/B/o/NAME
        if method == "POST" and url.path.startswith("/upload/storage/v1/b/"):
            bucket = parts[5]
            if bucket not in self.buckets:
                return self.error(request, 404, "The specified bucket does not exist.")
            metadata, data, content_type = self.parse_multipart(request.headers["Content-Type"], body)
            self.objects[(bucket, metadata["name"])] = (data, content_type)
            return self.reply(request, 200, json.dumps(self.resource(bucket, metadata["name"])).encode())
        if method == "GET" and len(parts) >= 7 and parts[-2] == "o":
            bucket, name = parts[-3], unquote(parts[-1])
            if bucket not in self.buckets:
                return self.error(request, 404, "The specified bucket does not exist.")
            if (bucket, name) not in self.objects:
                return self.error(request, 404, f"No such object: {bucket}/{name}")
            if parse_qs(url.query).get("alt") == ["media"]:
                data, content_type = self.objects[(bucket, name)]
                resource = self.resource(bucket, name)
                headers = {"x-goog-hash": f"crc32c={resource['crc32c']},md5={resource['md5Hash']}"}
                return self.reply(request, 200, data, content_type, headers)
            return self.reply(request, 200, json.dumps(self.resource(bucket, name)).encode())
        return self.error(request, 400, f"the fake does not implement {method} {url.path}")

    @staticmethod
    def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes, str]:
        boundary = content_type.split("boundary=")[1].strip('"').encode()
        sections = body.split(b"--" + boundary)[1:-1]
        parsed = []
        for section in sections:
            head, _, data = section.removeprefix(b"\r\n").partition(b"\r\n\r\n")
            headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
            parsed.append(({k.lower(): v for k, v in headers.items()}, data.removesuffix(b"\r\n")))
        (_, metadata), (media_headers, data) = parsed
        return json.loads(metadata), data, media_headers["content-type"]

    @staticmethod
    def reply(
        request: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)

    def error(self, request: BaseHTTPRequestHandler, status: int, message: str) -> None:
        reason = {403: "forbidden", 404: "notFound"}.get(status, "invalid")
        body = {
            "error": {"code": status, "message": message, "errors": [{"message": message, "reason": reason}]}
        }
        self.reply(request, status, json.dumps(body).encode())


@pytest.fixture(scope="module")
def service_account_info() -> dict[str, str]:
    """A throwaway service account key: GcpCredentials builds (never used) credentials from it offline."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "analytics-prod",
        "private_key_id": "0" * 40,
        "private_key": pem,
        "client_email": "collector@analytics-prod.iam.gserviceaccount.com",
        "client_id": "1" * 21,
        "token_uri": "https://oauth2.googleapis.com/token",
    }


@pytest.fixture
def fake_gcs(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGcsApi]:
    """The fake API, and GcpCredentials.get_cloud_storage_client returning a real client pointed at it."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    from prefect_gcp.credentials import GcpCredentials  # ~10 s to import the first time

    api = FakeGcsApi(buckets={"landing-bucket"}).start()

    def client(self: Any, project: str | None = None) -> storage.Client:
        return storage.Client(
            project="analytics-prod",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": api.url},
        )

    monkeypatch.setattr(GcpCredentials, "get_cloud_storage_client", client)
    yield api
    api.stop()


def gcs_landing(service_account_info: dict[str, str], **kwargs: Any) -> GcsLanding:
    from prefect_gcp.cloud_storage import GcsBucket
    from prefect_gcp.credentials import GcpCredentials

    bucket = GcsBucket(
        bucket=kwargs.pop("bucket", "landing-bucket"),
        bucket_folder="exports",
        gcp_credentials=GcpCredentials(service_account_info=service_account_info),
    )
    return GcsLanding(bucket, LANDING_DIR, **kwargs)


# --- one case per target -----------------------------------------------------------------------------


@dataclass
class Case:
    landing: LandingTarget
    download: Callable[[str], bytes]  # a key from the target's root → the stored bytes
    fake_wrong_size: Callable[[pytest.MonkeyPatch], None]  # make the verification see one byte more or less


@pytest.fixture(params=["s3", "azure", "gcs", "local"])
def case(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Case]:
    kind = request.param
    if kind == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        bucket = f"landing-{tag()}"
        raw = raw_s3(moto.url)
        raw.create_bucket(Bucket=bucket)
        landing = S3Landing(s3_bucket_block(moto.url, bucket, folder="exports/"), LANDING_DIR)
        handlers: list[Callable[..., None]] = []

        def s3_wrong_size(mp: pytest.MonkeyPatch) -> None:
            def add_one(parsed: dict[str, Any], **kwargs: Any) -> None:
                parsed["ContentLength"] += 1

            handlers.append(add_one)
            landing.client.meta.events.register("after-call.s3.HeadObject", add_one)

        yield Case(
            landing,
            lambda key: raw.get_object(Bucket=bucket, Key=f"exports/{key}")["Body"].read(),
            s3_wrong_size,
        )
        for handler in handlers:  # the client is cached by prefect-aws and shared with later tests
            landing.client.meta.events.unregister("after-call.s3.HeadObject", handler)
    elif kind == "azure":
        from azure.storage.blob import BlobClient

        azurite: Azurite = request.getfixturevalue("azurite")
        container = f"landing-{tag()}"
        service = azurite.service_client()
        service.create_container(container)
        landing = azure_landing(azurite, container, azurite.sas_token(container, "rcw"))

        def azure_wrong_size(mp: pytest.MonkeyPatch) -> None:
            real = BlobClient.get_blob_properties

            def properties(self: BlobClient, **kwargs: Any) -> Any:
                result = real(self, **kwargs)
                result.size += 1
                return result

            mp.setattr(BlobClient, "get_blob_properties", properties)

        yield Case(
            landing,
            lambda key: service.get_blob_client(container, key).download_blob().readall(),
            azure_wrong_size,
        )
    elif kind == "gcs":
        api: FakeGcsApi = request.getfixturevalue("fake_gcs")
        landing = gcs_landing(request.getfixturevalue("service_account_info"))
        yield Case(
            landing,
            lambda key: api.objects[("landing-bucket", f"exports/{key}")][0],
            lambda mp: mp.setattr(api, "size_delta", 1),
        )
    else:
        root = tmp_path / "landing-root"
        root.mkdir()

        def truncated_copy(mp: pytest.MonkeyPatch) -> None:
            def copy(source: Any, target: Any, length: int = 0) -> None:
                target.write(source.read()[:-1])  # a short write, as from a full disk that did not say so

            mp.setattr("tasks.metadata.landing.local.shutil.copyfileobj", copy)

        yield Case(LocalLanding(root, LANDING_DIR), lambda key: (root / key).read_bytes(), truncated_copy)


def write_file(path: Path, size: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def test_upload_writes_into_the_landing_dir_and_verifies(case: Case, tmp_path: Path) -> None:
    assert isinstance(case.landing, LandingTarget)
    assert case.landing.landing_dir == LANDING_DIR
    assert case.landing.describe().endswith(LANDING_DIR)
    name = "athena_tables_20261121T000000_20261122T000000.csv"
    data = write_file(tmp_path / name, 100_000)

    landed = case.landing.upload(tmp_path / name, name)

    assert landed == LandedFile(name=name, uri=landed.uri, bytes=100_000)
    assert landed.uri.endswith(f"{LANDING_DIR}/{name}")
    assert case.download(f"{LANDING_DIR}/{name}") == data

    # a rerun uploads the same name again: it replaces the file
    smaller = write_file(tmp_path / name, 10, seed=1)
    assert case.landing.upload(tmp_path / name, name).bytes == 10
    assert case.download(f"{LANDING_DIR}/{name}") == smaller


def test_text_files_round_trip_and_a_missing_one_is_none(case: Case) -> None:
    assert case.landing.read_text(HWM_KEY) is None

    case.landing.write_text(HWM_KEY, "2026-11-21 00:00:00")
    assert case.landing.read_text(HWM_KEY) == "2026-11-21 00:00:00"
    assert case.download(HWM_KEY) == b"2026-11-21 00:00:00"

    case.landing.write_text("/" + HWM_KEY, "2026-11-22 00:00:00")  # a leading slash is the same key
    assert case.landing.read_text(HWM_KEY) == "2026-11-22 00:00:00"


def test_gzip_file_round_trips_byte_for_byte(case: Case, tmp_path: Path) -> None:
    rows = "query_id,workgroup,query\n" + "".join(f"q{i},primary,SELECT {i} -- é\n" for i in range(5000))
    path = tmp_path / "athena_queries.csv.gz"
    path.write_bytes(gzip.compress(rows.encode("utf-8")))

    landed = case.landing.upload(path, path.name)

    stored = case.download(f"{LANDING_DIR}/{path.name}")
    assert stored == path.read_bytes()  # no transcoding on the way
    assert landed.bytes == len(stored)
    assert gzip.decompress(stored).decode("utf-8") == rows


def test_a_size_mismatch_fails_the_upload(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_file(tmp_path / "athena_tables.csv", 4096)
    case.fake_wrong_size(monkeypatch)

    with pytest.raises(LandingError) as raised:
        case.landing.upload(tmp_path / "athena_tables.csv", "athena_tables.csv")

    assert raised.value.reason == "verification"
    assert raised.value.file == "athena_tables.csv"
    stored = re.search(r"\(4096 bytes\) to .*, but the stored file has (\d+) bytes", str(raised.value))
    assert stored
    assert stored[1] in {"4095", "4097"}
    assert "Rerun the collector" in str(raised.value)


def test_names_and_keys_stay_inside_the_target(tmp_path: Path) -> None:
    landing = LocalLanding(tmp_path, "/catalog//athena/landing/")
    assert landing.landing_dir == LANDING_DIR
    for bad in ("../escape.csv", "a/../../b", "a\\b.csv", "", "/"):
        with pytest.raises(ValueError):
            landing.upload(tmp_path / "x", bad)
    with pytest.raises(ValueError, match=r"'\.\.'"):
        landing.read_text("../../etc/passwd")


# --- S3 (moto) -----------------------------------------------------------------------------------------


def test_s3_upload_fails_clearly_when_the_server_is_down(tmp_path: Path) -> None:
    server = MotoServer().start()
    try:
        raw_s3(server.url).create_bucket(Bucket="landing-bucket")
        landing = S3Landing(s3_bucket_block(server.url, "landing-bucket"), LANDING_DIR)
        write_file(tmp_path / "a.csv", 100)
        landing.upload(tmp_path / "a.csv", "a.csv")
    finally:
        server.stop()

    with pytest.raises(LandingError) as raised:
        landing.upload(tmp_path / "a.csv", "a.csv")
    assert raised.value.reason == "connection"
    assert f"s3://landing-bucket/{LANDING_DIR}/a.csv" in str(raised.value)
    assert f"cannot reach {server.url}" in str(raised.value)
    with pytest.raises(LandingError, match="cannot reach"):
        landing.read_text(HWM_KEY)


def test_s3_access_denied_names_the_permission_and_hides_the_keys(moto: MotoServer, tmp_path: Path) -> None:
    """moto enforces IAM after the next 4 requests (the setup): a user who may only read gets AccessDenied."""
    bucket, user = f"landing-{tag()}", f"reader-{tag()}"
    moto.enforce_iam(after_requests=4)
    try:
        raw = raw_s3(moto.url)
        iam = boto3.client(
            "iam",
            endpoint_url=moto.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        raw.create_bucket(Bucket=bucket)
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        iam.put_user_policy(UserName=user, PolicyName="read-only", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        block = s3_bucket_block(moto.url, bucket, key_id=key["AccessKeyId"], secret=key["SecretAccessKey"])
        landing = S3Landing(block, LANDING_DIR)
        write_file(tmp_path / "a.csv", 100)

        assert landing.read_text(HWM_KEY) is None  # reading is allowed (and missing reads as missing)
        with pytest.raises(LandingError) as raised:
            landing.upload(tmp_path / "a.csv", "a.csv")
        with pytest.raises(LandingError) as raised_text:
            landing.write_text(HWM_KEY, "2026-11-22 00:00:00")
    finally:
        moto.enforce_iam(after_requests=None)

    for error in (raised.value, raised_text.value):
        assert error.reason == "permission"
        assert "AccessDenied" in str(error)
        assert "s3:PutObject" in str(error)
        assert f"arn:aws:s3:::{bucket}/*" in str(error)
        assert key["SecretAccessKey"] not in formatted(error)


def test_s3_missing_bucket(moto: MotoServer, tmp_path: Path) -> None:
    landing = S3Landing(s3_bucket_block(moto.url, f"absent-{tag()}"), LANDING_DIR)
    write_file(tmp_path / "a.csv", 10)
    with pytest.raises(LandingError) as raised:
        landing.upload(tmp_path / "a.csv", "a.csv")
    assert raised.value.reason == "not_found"
    assert "does not exist" in str(raised.value)


def test_s3_block_saved_in_prefect_keeps_the_endpoint(moto: MotoServer, tmp_path: Path) -> None:
    from prefect_aws import S3Bucket

    bucket = f"landing-{tag()}"
    raw_s3(moto.url).create_bucket(Bucket=bucket)
    s3_bucket_block(moto.url, bucket).save(f"landing-{bucket}", overwrite=True)

    landing = S3Landing(S3Bucket.load(f"landing-{bucket}", _sync=True), LANDING_DIR)
    write_file(tmp_path / "a.csv", 10)
    assert landing.upload(tmp_path / "a.csv", "a.csv").uri == f"s3://{bucket}/{LANDING_DIR}/a.csv"
    assert landing.describe() == f"s3://{bucket}/{LANDING_DIR}"


# --- Azure Blob (Azurite) ------------------------------------------------------------------------------


def assert_no_sas(error: BaseException, sas: str) -> None:
    text = formatted(error)
    assert sas not in text
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    assert signature not in text


def test_azure_upload_fails_clearly_when_azurite_is_down(tmp_path: Path) -> None:
    server = Azurite().start()
    try:
        server.service_client().create_container("landing")
        sas = server.sas_token("landing", "rcw")
        landing = azure_landing(server, "landing", sas)
        write_file(tmp_path / "a.csv", 100)
        landing.upload(tmp_path / "a.csv", "a.csv")
    finally:
        server.stop()

    with pytest.raises(LandingError) as raised:
        landing.upload(tmp_path / "a.csv", "a.csv")
    assert raised.value.reason == "connection"
    assert f"cannot reach {server.account_url}" in str(raised.value)
    assert f"{server.account_url}/landing/{LANDING_DIR}/a.csv" in str(raised.value)
    assert_no_sas(raised.value, sas)


@pytest.mark.parametrize(
    ("permissions", "expiry", "problem"),
    # Azurite 3.33 answers an expired SAS with AuthorizationFailure (Azure: AuthenticationFailed, "credentials").
    [("r", timedelta(hours=1), "does not grant"), ("rcw", timedelta(hours=-1), "may be expired")],
    ids=["read-only", "expired"],
)
def test_azure_sas_that_does_not_allow_writing(
    azurite: Azurite, tmp_path: Path, permissions: str, expiry: timedelta, problem: str
) -> None:
    container = f"landing-{tag()}"
    azurite.service_client().create_container(container)
    sas = azurite.sas_token(container, permissions, expiry)
    landing = azure_landing(azurite, container, sas)
    write_file(tmp_path / "a.csv", 100)

    with pytest.raises(LandingError) as raised:
        landing.upload(tmp_path / "a.csv", "a.csv")

    assert raised.value.reason == "permission"
    message = str(raised.value)
    assert problem in message
    assert landing.sas_token_secret in message
    assert "rcw" in message
    assert f"{azurite.account_url}/{container}/{LANDING_DIR}/a.csv" in message
    assert_no_sas(raised.value, sas)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_azure_missing_container_and_missing_secret(azurite: Azurite, tmp_path: Path) -> None:
    write_file(tmp_path / "a.csv", 10)
    absent = f"absent-{tag()}"
    with pytest.raises(LandingError) as raised:
        azure_landing(azurite, absent, azurite.sas_token(absent, "rcw")).upload(tmp_path / "a.csv", "a.csv")
    assert raised.value.reason == "not_found"
    assert f"container {absent!r} does not exist" in str(raised.value)

    landing = AzureBlobLanding(azurite.account_url, "landing", f"no-such-secret-{tag()}", LANDING_DIR)
    with pytest.raises(LandingError) as raised:
        landing.read_text(HWM_KEY)
    assert raised.value.reason == "credentials"
    assert f"Secret block {landing.sas_token_secret!r}, needed by" in str(raised.value)
    assert "does not exist in this Prefect workspace" in str(raised.value)


@pytest.mark.parametrize(("stored", "problem"), [("  ", "holds an empty string"), (123, "holds a int")])
def test_azure_secret_without_a_sas_token_string_is_a_credentials_error(stored: Any, problem: str) -> None:
    from prefect.blocks.system import Secret

    name = f"landing-sas-{tag()}"
    Secret(value=stored).save(name)
    landing = AzureBlobLanding("http://127.0.0.1:10000/devstoreaccount1", "landing", name, LANDING_DIR)
    with pytest.raises(LandingError) as raised:
        landing.read_text(HWM_KEY)
    assert raised.value.reason == "credentials"
    assert f"Secret block {name!r} {problem}" in str(raised.value)


def test_azure_account_url_with_a_sas_is_refused_without_echoing_it(azurite: Azurite) -> None:
    sas = azurite.sas_token("landing")
    with pytest.raises(ValueError) as raised:
        AzureBlobLanding(f"{azurite.account_url}?{sas}", "landing", "landing-sas", LANDING_DIR)
    assert sas not in str(raised.value)


# --- GCS (fake JSON API) ---------------------------------------------------------------------------------


def test_gcs_forbidden(fake_gcs: FakeGcsApi, service_account_info: dict[str, str], tmp_path: Path) -> None:
    fake_gcs.forbidden = True
    write_file(tmp_path / "a.csv", 10)
    with pytest.raises(LandingError) as raised:
        gcs_landing(service_account_info).upload(tmp_path / "a.csv", "a.csv")
    assert raised.value.reason == "permission"
    assert "roles/storage.objectUser" in str(raised.value)
    assert f"gs://landing-bucket/exports/{LANDING_DIR}/a.csv" in str(raised.value)


def test_gcs_missing_bucket_and_server_down(
    fake_gcs: FakeGcsApi, service_account_info: dict[str, str], tmp_path: Path
) -> None:
    write_file(tmp_path / "a.csv", 10)
    with pytest.raises(LandingError) as raised:
        gcs_landing(service_account_info, bucket="absent").upload(tmp_path / "a.csv", "a.csv")
    assert raised.value.reason == "not_found"
    with pytest.raises(LandingError) as raised:
        gcs_landing(service_account_info, bucket="absent").read_text(HWM_KEY)
    assert raised.value.reason == "not_found"

    fake_gcs.stop()
    with pytest.raises(LandingError) as raised:
        gcs_landing(service_account_info, retry_deadline_seconds=1).upload(tmp_path / "a.csv", "a.csv")
    assert raised.value.reason == "connection"


# --- local directory -----------------------------------------------------------------------------------


def test_local_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    (root / LANDING_DIR).mkdir(parents=True)
    (root / LANDING_DIR).chmod(0o555)
    if os.geteuid() == 0:  # root ignores the mode bits: refuse the rename as the kernel would

        def refuse(source: Any, target: Any) -> None:
            raise PermissionError(13, "Permission denied", str(target))

        monkeypatch.setattr("tasks.metadata.landing.local.os.replace", refuse)
    write_file(tmp_path / "a.csv", 10)
    try:
        with pytest.raises(LandingError) as raised:
            LocalLanding(root, LANDING_DIR).upload(tmp_path / "a.csv", "a.csv")
    finally:
        (root / LANDING_DIR).chmod(0o755)
    assert raised.value.reason == "permission"
    assert not [p.name for p in (root / LANDING_DIR).iterdir()]  # no temporary file left behind


def test_local_root_must_exist(tmp_path: Path) -> None:
    landing = LocalLanding(tmp_path / "unmounted", LANDING_DIR)
    write_file(tmp_path / "a.csv", 10)
    for attempt in (lambda: landing.upload(tmp_path / "a.csv", "a.csv"), lambda: landing.read_text(HWM_KEY)):
        with pytest.raises(LandingError) as raised:
            attempt()
        assert raised.value.reason == "not_found"
        assert "create or mount it" in str(raised.value)
    assert not (tmp_path / "unmounted").exists()


# --- the launchers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", [MotoServer, Azurite], ids=["moto", "azurite"])
def test_launchers_leave_no_process(launcher: type[MotoServer] | type[Azurite]) -> None:
    with launcher() as server:
        pid = server.pid
        assert pid is not None
        os.kill(pid, 0)  # running
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # neither the process nor anything of its group is left
    server.stop()  # idempotent


def test_moto_client_env_points_boto3_at_the_server(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto.client_env().items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=f"env-{tag()}")
    assert client.meta.endpoint_url == moto.url
