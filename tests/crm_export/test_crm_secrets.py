"""Secret sources of the CRM API key: Vault KV v2 (against a local HTTP Vault stand-in), Cloud KMS + GCS
(faked at the client boundary; their GCP Credentials block saved to the Prefect server) and
``read_secret_block`` against the real Prefect server of the test session.

The Vault stand-in answers as Vault's HTTP API documents:
https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2#read-secret-version,
https://developer.hashicorp.com/vault/api-docs/auth/kubernetes#login,
https://developer.hashicorp.com/vault/api-docs/auth/approle#login-with-approle.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google_crc32c
import pytest
from google.api_core import exceptions as google_exceptions
from google.cloud import kms, storage
from prefect.blocks.system import Secret
from prefect_gcp.credentials import GcpCredentials
from pydantic import ValidationError

from blocks import KmsEncryptedGcsSecret, TableauPersonalAccessToken, VaultKvSecret
from blocks.loading import BlockNotFoundError
from blocks.secrets import (
    SecretAccessDeniedError,
    SecretAuthError,
    SecretDecryptionError,
    SecretIntegrityError,
    SecretKeyError,
    SecretNotFoundError,
    SecretSourceError,
    SecretTypeError,
    SecretUnavailableError,
)
from tasks.crm_export.secrets import SecretBlockNotFoundError, read_secret_block

API_KEY = "sk-live-4f9c2e7a1b"
OLD_API_KEY = "sk-live-0ld0ld0ld"
OTHER_VALUE = "webhook-s3cr3t-value"
ROOT_TOKEN = "hvs.R00tT0kenForTests"
K8S_TOKEN = "hvs.K8sIssuedT0ken"
APPROLE_TOKEN = "hvs.AppR0leIssuedT0ken"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YW5hbHl0aWNzOmNybSJ9.c2lnbmF0dXJl"
ROLE_ID = "6d1c0f3a-role-id"
SECRET_ID = "9b8e-secret-id-f00d"
NUMBER_VALUE = 73519864  # 8 digits: cannot be confused with a port number in a message

SECRET_VALUES = [API_KEY, OLD_API_KEY, OTHER_VALUE, ROOT_TOKEN, K8S_TOKEN, APPROLE_TOKEN, JWT, SECRET_ID]


# --- Vault stand-in -----------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeVault:
    """A Vault that knows KV v2 reads, Kubernetes and AppRole logins, policies, namespaces and sealing."""

    url: str = ""
    namespace: str | None = None  # requests must carry X-Vault-Namespace equal to this
    sealed: bool = False
    # (mount, path) -> versions 1..n; a version is a dict, or "deleted" / "destroyed"
    secrets: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    # token -> the paths ("<mount>/data/<path>") its policy may read
    tokens: dict[str, set[str]] = field(default_factory=dict)
    kubernetes_mounts: set[str] = field(default_factory=lambda: {"kubernetes"})
    approle_mounts: set[str] = field(default_factory=lambda: {"approle"})
    k8s_roles: dict[str, tuple[str, str]] = field(default_factory=dict)  # role -> (jwt, issued token)
    approles: dict[str, tuple[str, str]] = field(default_factory=dict)  # role_id -> (secret_id, issued token)
    requests: list[Recorded] = field(default_factory=list)

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        split = urlsplit(raw_path)
        self.requests.append(Recorded(method, split.path, parse_qs(split.query), headers, body))
        if self.sealed:
            return 503, {"errors": ["Vault is sealed"]}
        if not split.path.startswith("/v1/"):
            return 404, {"errors": []}
        route = split.path[len("/v1/") :]
        if method == "POST" and route.startswith("auth/") and route.endswith("/login"):
            return self._login(route[len("auth/") : -len("/login")], headers, body or {})
        if method == "GET" and "/data/" in route:
            mount, _, path = route.partition("/data/")
            return self._read(mount, path, parse_qs(split.query), headers)
        return 404, {"errors": []}

    def _namespace_ok(self, headers: dict[str, str]) -> bool:
        return headers.get("X-Vault-Namespace") == self.namespace

    def _login(self, mount: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        if not self._namespace_ok(headers):
            return 400, {"errors": ["no handler for route"]}
        if mount in self.kubernetes_mounts:
            role = body.get("role")
            if role not in self.k8s_roles:
                return 400, {"errors": [f'invalid role name "{role}"']}
            jwt, token = self.k8s_roles[role]
            if body.get("jwt") != jwt:
                return 403, {"errors": ["permission denied"]}
            return 200, self._auth(token, ["crm-read"], {"role": role})
        if mount in self.approle_mounts:
            role_id = body.get("role_id")
            if role_id not in self.approles or self.approles[role_id][0] != body.get("secret_id"):
                return 400, {"errors": ["invalid role or secret ID"]}
            return 200, self._auth(self.approles[role_id][1], ["crm-read"], {"role_name": "crm-export"})
        return 404, {"errors": [f"no handler for route 'auth/{mount}/login'"]}

    @staticmethod
    def _auth(token: str, policies: list[str], metadata: dict[str, str]) -> dict[str, Any]:
        return {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": None,
            "wrap_info": None,
            "warnings": None,
            "auth": {
                "client_token": token,
                "accessor": "acc-" + uuid.uuid4().hex[:12],
                "policies": ["default", *policies],
                "token_policies": ["default", *policies],
                "metadata": metadata,
                "lease_duration": 3600,
                "renewable": True,
                "entity_id": str(uuid.uuid4()),
                "token_type": "service",
                "orphan": True,
            },
        }

    def _read(
        self, mount: str, path: str, query: dict[str, list[str]], headers: dict[str, str]
    ) -> tuple[int, Any]:
        token = headers.get("X-Vault-Token")
        if not self._namespace_ok(headers) or token not in self.tokens:
            return 403, {"errors": ["permission denied"]}
        if f"{mount}/data/{path}" not in self.tokens[token]:
            return 403, {"errors": ["permission denied"]}
        versions = self.secrets.get((mount, path))
        if not versions:
            return 404, {"errors": []}
        number = int(query["version"][0]) if "version" in query else len(versions)
        if not 1 <= number <= len(versions):
            return 404, {"errors": []}
        value = versions[number - 1]
        metadata = {
            "created_time": "2025-03-01T09:30:00.123456789Z",
            "custom_metadata": None,
            "deletion_time": "",
            "destroyed": False,
            "version": number,
        }
        body = {
            "request_id": str(uuid.uuid4()),
            "lease_id": "",
            "renewable": False,
            "lease_duration": 0,
            "data": {"data": value, "metadata": metadata},
            "wrap_info": None,
            "warnings": None,
            "auth": None,
        }
        if value == "deleted":
            metadata["deletion_time"] = "2025-03-02T10:00:00.000000000Z"
            body["data"]["data"] = None
            return 404, body
        if value == "destroyed":
            metadata["destroyed"] = True
            body["data"]["data"] = None
            return 404, body
        return 200, body

    def requests_to(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]


def _serve(vault: FakeVault) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, payload = vault.handle(self.command, self.path, dict(self.headers.items()), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    vault.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture
def vault() -> Iterator[FakeVault]:
    fake = FakeVault(
        secrets={
            ("secret", "analytics/crm"): [
                {"api_key": OLD_API_KEY, "webhook_secret": OTHER_VALUE},
                {"api_key": API_KEY, "webhook_secret": OTHER_VALUE, "batch_size": NUMBER_VALUE},
            ],
            ("secret", "analytics/history"): [{"api_key": OLD_API_KEY}, "deleted", {"api_key": API_KEY}],
            ("kv-prod", "crm"): [{"api_key": API_KEY}],
        },
        tokens={
            ROOT_TOKEN: {"secret/data/analytics/crm", "secret/data/analytics/history", "secret/data/missing"},
            K8S_TOKEN: {"secret/data/analytics/crm", "kv-prod/data/crm"},
            APPROLE_TOKEN: {"secret/data/analytics/crm"},
            "hvs.NoPolicyToken": set(),
        },
        kubernetes_mounts={"kubernetes", "k8s-prod"},
        k8s_roles={"crm-export": (JWT, K8S_TOKEN)},
        approles={ROLE_ID: (SECRET_ID, APPROLE_TOKEN)},
    )
    server = _serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def jwt_file(tmp_path) -> str:
    path = tmp_path / "token"
    path.write_text(JWT)
    return str(path)


def token_block(vault: FakeVault, **fields: Any) -> VaultKvSecret:
    return VaultKvSecret(
        **{"url": vault.url, "path": "analytics/crm", "key": "api_key", "token": ROOT_TOKEN, **fields}
    )


def kubernetes_block(vault: FakeVault, jwt_path: str, **fields: Any) -> VaultKvSecret:
    """A block logging in with the Kubernetes auth method as role crm-export, with the JWT at ``jwt_path``."""
    return VaultKvSecret(
        **{
            "url": vault.url,
            "path": "analytics/crm",
            "key": "api_key",
            "auth_method": "kubernetes",
            "kubernetes_role": "crm-export",
            "kubernetes_jwt_path": jwt_path,
            **fields,
        }
    )


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRET_VALUES:
            assert secret not in text, f"{secret!r} leaked into: {text}"
        assert str(NUMBER_VALUE) not in text, f"a secret value leaked into: {text}"


def assert_clean_logs(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert_no_secrets(record.getMessage(), record.exc_text or "")


# --- Vault: construction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, missing",
    [
        ({"auth_method": "token"}, "token"),
        ({"auth_method": "token", "token": ""}, "token"),
        ({"auth_method": "kubernetes"}, "kubernetes_role"),
        ({"auth_method": "approle", "approle_secret_id": SECRET_ID}, "approle_role_id"),
    ],
)
def test_vault_block_needs_what_its_auth_method_needs(fields: dict[str, Any], missing: str) -> None:
    with pytest.raises(ValidationError) as caught:
        VaultKvSecret(url="https://vault.example.com:8200", path="analytics/crm", key="api_key", **fields)
    assert missing in str(caught.value)
    assert fields["auth_method"] in str(caught.value)
    assert_no_secrets(str(caught.value))


def test_vault_block_validation_errors_do_not_quote_the_input() -> None:
    with pytest.raises(ValidationError) as caught:
        VaultKvSecret(
            token=ROOT_TOKEN,
            approle_secret_id=SECRET_ID,
            url="https://vault.example.com",
            path="p",
            key="k",
            auth_method="approle",
        )
    assert_no_secrets(str(caught.value))


def test_vault_block_normalises_url_paths_and_rejects_bad_values() -> None:
    block = VaultKvSecret(
        url="https://vault.example.com:8200/",
        path="/analytics/crm/",
        key="api_key",
        token="t",
        mount_point="/kv/",
    )
    assert (block.url, block.path, block.mount_point) == (
        "https://vault.example.com:8200",
        "analytics/crm",
        "kv",
    )
    with pytest.raises(ValidationError, match="http:// or https://"):
        VaultKvSecret(url="vault.example.com", path="p", key="k", token="t")
    with pytest.raises(ValidationError):
        VaultKvSecret(url="https://vault.example.com", path="p", key="k", token="t", version=0)


# --- Vault: the three auth methods --------------------------------------------------------------


def test_token_auth_reads_latest_version_with_namespace_header(vault: FakeVault) -> None:
    vault.namespace = "admin/analytics"
    block = token_block(vault, namespace="admin/analytics")

    assert block.get() == API_KEY

    [read] = vault.requests
    assert (read.method, read.path, read.query) == ("GET", "/v1/secret/data/analytics/crm", {})
    assert read.headers["X-Vault-Token"] == ROOT_TOKEN
    assert read.headers["X-Vault-Namespace"] == "admin/analytics"


def test_token_auth_reads_a_pinned_version(vault: FakeVault) -> None:
    assert token_block(vault, version=1).get() == OLD_API_KEY
    [read] = vault.requests
    assert read.query == {"version": ["1"]}


def test_the_block_makes_a_client_that_logs_in_and_reads(vault: FakeVault, jwt_file: str) -> None:
    with kubernetes_block(vault, jwt_file).get_client() as client:
        client.login()
        assert [r.path for r in vault.requests] == ["/v1/auth/kubernetes/login"]
        assert client.read() == API_KEY  # logs in again, then reads
    assert [r.path for r in vault.requests][-1] == "/v1/secret/data/analytics/crm"


def test_kubernetes_auth_logs_in_with_role_and_jwt_then_reads_with_the_issued_token(
    vault: FakeVault, jwt_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "hvs.FromTheEnvironment")  # must not be picked up by hvac
    vault.namespace = "admin"
    block = VaultKvSecret(
        url=vault.url,
        namespace="admin",
        mount_point="kv-prod",
        path="crm",
        key="api_key",
        auth_method="kubernetes",
        kubernetes_role="crm-export",
        kubernetes_jwt_path=jwt_file,
        kubernetes_mount_point="k8s-prod",
    )

    assert block.get() == API_KEY

    login, read = vault.requests
    assert (login.method, login.path) == ("POST", "/v1/auth/k8s-prod/login")
    assert login.body == {"role": "crm-export", "jwt": JWT}
    assert "X-Vault-Token" not in login.headers
    assert login.headers["X-Vault-Namespace"] == "admin"
    assert (read.method, read.path) == ("GET", "/v1/kv-prod/data/crm")
    assert read.headers["X-Vault-Token"] == K8S_TOKEN
    assert read.headers["X-Vault-Namespace"] == "admin"


def test_approle_auth_logs_in_with_role_id_and_secret_id(vault: FakeVault) -> None:
    vault.approle_mounts = {"approle-ci"}
    block = VaultKvSecret(
        url=vault.url,
        path="analytics/crm",
        key="api_key",
        auth_method="approle",
        approle_role_id=ROLE_ID,
        approle_secret_id=SECRET_ID,
        approle_mount_point="approle-ci",
    )

    assert block.get() == API_KEY

    login, read = vault.requests
    assert (login.method, login.path) == ("POST", "/v1/auth/approle-ci/login")
    assert login.body == {"role_id": ROLE_ID, "secret_id": SECRET_ID}
    assert "X-Vault-Namespace" not in login.headers
    assert read.headers["X-Vault-Token"] == APPROLE_TOKEN


# --- Vault: errors ------------------------------------------------------------------------------


def test_missing_jwt_file_says_not_in_a_pod(vault: FakeVault, tmp_path) -> None:
    block = kubernetes_block(vault, str(tmp_path / "absent"))
    with pytest.raises(SecretAuthError, match="not running in a Kubernetes pod") as caught:
        block.get()
    assert str(tmp_path / "absent") in str(caught.value)
    assert vault.requests == []


def test_kubernetes_login_with_unknown_role_names_method_and_role(
    vault: FakeVault, jwt_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    block = kubernetes_block(vault, jwt_file, kubernetes_role="crm-exporter")
    with pytest.raises(SecretAuthError) as caught:
        block.get()
    message = str(caught.value)
    assert isinstance(caught.value, PermissionError)
    assert "kubernetes login" in message
    assert "'crm-exporter'" in message
    assert 'invalid role name "crm-exporter"' in message
    assert vault.url in message
    assert_no_secrets(message)
    assert_clean_logs(caplog)
    assert len(vault.requests) == 1  # no read without a token


def test_kubernetes_login_with_a_rejected_jwt(vault: FakeVault, tmp_path) -> None:
    other_jwt = tmp_path / "other"
    other_jwt.write_text("eyJ.other-service-account.sig\n")
    block = kubernetes_block(vault, str(other_jwt))
    with pytest.raises(SecretAuthError, match="permission denied") as caught:
        block.get()
    assert "eyJ.other-service-account.sig" not in str(caught.value)
    assert vault.requests[0].body["jwt"] == "eyJ.other-service-account.sig"  # trailing newline stripped


def test_approle_login_with_wrong_secret_id(vault: FakeVault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    block = VaultKvSecret(
        url=vault.url,
        path="analytics/crm",
        key="api_key",
        auth_method="approle",
        approle_role_id=ROLE_ID,
        approle_secret_id="wrong-" + SECRET_ID,
    )
    with pytest.raises(SecretAuthError) as caught:
        block.get()
    message = str(caught.value)
    assert "approle login" in message
    assert ROLE_ID in message
    assert "invalid role or secret ID" in message
    assert "secret-id" in message  # says how to get a new one
    assert_no_secrets(message)
    assert "wrong-" not in message
    assert_clean_logs(caplog)


def test_forbidden_read_names_the_policy_path(vault: FakeVault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SecretAccessDeniedError) as caught:
        token_block(vault, token="hvs.NoPolicyToken").get()
    message = str(caught.value)
    assert isinstance(caught.value, PermissionError)
    assert "must allow read on secret/data/analytics/crm" in message
    assert vault.url in message
    assert "'api_key'" in message
    assert "hvs.NoPolicyToken" not in message
    assert_clean_logs(caplog)


def test_forbidden_read_after_kubernetes_login_names_the_role(vault: FakeVault, jwt_file: str) -> None:
    block = kubernetes_block(vault, jwt_file, path="analytics/history")  # the role's policy does not cover it
    with pytest.raises(
        PermissionError, match="the policy of this role must allow read on secret/data/analytics/history"
    ):
        block.get()


def test_missing_secret_is_a_lookup_error(vault: FakeVault) -> None:
    with pytest.raises(SecretNotFoundError) as caught:
        token_block(vault, path="missing").get()
    assert isinstance(caught.value, LookupError)
    assert "no secret at secret/data/missing" in str(caught.value)
    assert vault.url in str(caught.value)


def test_missing_version_and_deleted_version(vault: FakeVault) -> None:
    with pytest.raises(LookupError, match=r"no secret at secret/data/analytics/crm \(version 7\)"):
        token_block(vault, version=7).get()
    with pytest.raises(
        SecretNotFoundError, match="Version 2 of secret secret/data/analytics/history .* was deleted"
    ) as caught:
        token_block(vault, path="analytics/history", version=2).get()
    assert "vault kv undelete" in str(caught.value)
    assert vault.requests[-1].query == {"version": ["2"]}


def test_missing_key_lists_key_names_only(vault: FakeVault) -> None:
    with pytest.raises(SecretKeyError) as caught:
        token_block(vault, key="apikey").get()
    message = str(caught.value)
    assert isinstance(caught.value, KeyError)
    assert "no key 'apikey'" in message
    assert "['api_key', 'batch_size', 'webhook_secret']" in message
    assert vault.url in message
    assert "secret/data/analytics/crm" in message
    assert_no_secrets(message)


def test_non_string_value_is_a_type_error_naming_the_key(vault: FakeVault) -> None:
    with pytest.raises(SecretTypeError) as caught:
        token_block(vault, key="batch_size").get()
    assert isinstance(caught.value, TypeError)
    assert "'batch_size'" in str(caught.value)
    assert "int" in str(caught.value)
    assert_no_secrets(str(caught.value))


def test_sealed_vault(vault: FakeVault, jwt_file: str) -> None:
    vault.sealed = True
    with pytest.raises(SecretUnavailableError, match="Vault is sealed") as caught:
        token_block(vault).get()
    assert isinstance(caught.value, ConnectionError)
    assert vault.url in str(caught.value)
    with pytest.raises(SecretUnavailableError, match="sealed"):
        kubernetes_block(vault, jwt_file).get()


def test_unreachable_vault() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens on that port any more
    block = VaultKvSecret(
        url=f"http://127.0.0.1:{port}",
        path="analytics/crm",
        key="api_key",
        token=ROOT_TOKEN,
        timeout_seconds=5,
    )
    with pytest.raises(SecretUnavailableError, match=f"Cannot reach Vault http://127.0.0.1:{port}") as caught:
        block.get()
    assert_no_secrets(str(caught.value))


def test_no_secret_in_any_error_or_log(
    vault: FakeVault, jwt_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cases = [
        token_block(vault),
        token_block(vault, key="nope"),
        token_block(vault, key="batch_size"),
        token_block(vault, path="missing"),
        token_block(vault, token="hvs.NoPolicyToken"),
        kubernetes_block(vault, jwt_file),
        kubernetes_block(vault, jwt_file, path="analytics/history"),
        token_block(
            vault, token=None, auth_method="approle", approle_role_id=ROLE_ID, approle_secret_id=SECRET_ID
        ),
    ]
    messages = []
    for block in cases:
        try:
            block.get()
        except SecretSourceError as exc:
            messages.append(str(exc))
    vault.sealed = True
    for block in cases[:1] + cases[5:6]:
        with pytest.raises(SecretSourceError) as caught:
            block.get()
        messages.append(str(caught.value))
    assert len(messages) == 7
    assert_no_secrets(*messages)
    assert_clean_logs(caplog)
    assert any("Read key 'api_key'" in r.getMessage() for r in caplog.records)


# --- KMS + GCS ----------------------------------------------------------------------------------

KEY_NAME = "projects/analytics-prod/locations/europe-west1/keyRings/analytics/cryptoKeys/crm"
OTHER_KEY = "projects/analytics-prod/locations/europe-west1/keyRings/analytics/cryptoKeys/other"


@pytest.fixture(scope="module")
def service_account_info() -> dict[str, str]:
    """A throwaway service account key: GcpCredentials builds real (never used) credentials from it offline."""
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
        "client_email": "crm-export@analytics-prod.iam.gserviceaccount.com",
        "client_id": "1" * 21,
        "token_uri": "https://oauth2.googleapis.com/token",
    }


@pytest.fixture(scope="module")
def gcp_credentials_block(service_account_info: dict[str, str]) -> str:
    """The name of a GCP Credentials block holding the throwaway key, saved to the session's Prefect server."""
    name = f"gcp-kms-{uuid.uuid4().hex[:8]}"
    GcpCredentials(service_account_info=service_account_info).save(name)
    return name


class FakeGcs:
    """Stands in for google-cloud-storage's ``Client``: ``client.bucket(b).blob(name).download_as_bytes()``
    returns the object (bucket, name), or raises ``NotFound`` as the JSON API's 404 reads. Records the
    credentials and project each client was built with, and every read."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.reads: list[tuple[str, str, dict[str, Any]]] = []
        self.clients: list[tuple[Any, str | None]] = []

    def client(self, credentials: Any, project: str | None) -> FakeGcs:
        self.clients.append((credentials, project))
        return self

    def bucket(self, bucket: str) -> Any:
        fake = self

        class Bucket:
            def blob(self, name: str) -> Any:
                class Blob:
                    def download_as_bytes(self, **kwargs: Any) -> bytes:
                        return fake.read(bucket, name, **kwargs)

                return Blob()

        return Bucket()

    def read(self, bucket: str, name: str, **kwargs: Any) -> bytes:
        self.reads.append((bucket, name, kwargs))
        try:
            return self.objects[(bucket, name)]
        except KeyError:
            raise google_exceptions.NotFound(
                f"GET https://storage.googleapis.com/download/storage/v1/b/{bucket}/o/"
                f"{name.replace('/', '%2F')}?alt=media: No such object: {bucket}/{name}"
            ) from None


class FakeKms:
    """Checks decrypt requests as Cloud KMS documents them; 'ciphertexts' are mapped to their key and plaintext."""

    def __init__(self) -> None:
        self.ciphertexts: dict[bytes, tuple[str, bytes]] = {}
        self.requests: list[dict[str, Any]] = []
        self.corrupt_responses = 0
        self.deny = False

    def encrypt(self, key: str, plaintext: bytes) -> bytes:
        ciphertext = b"\x0a\x24" + uuid.uuid4().bytes + b"\x12" + bytes(len(plaintext))
        self.ciphertexts[ciphertext] = (key, plaintext)
        return ciphertext

    def decrypt(self, request: dict[str, Any]) -> kms.DecryptResponse:
        self.requests.append(request)
        assert set(request) == {"name", "ciphertext", "ciphertext_crc32c"}
        assert isinstance(request["ciphertext"], bytes)
        if self.deny:
            raise google_exceptions.PermissionDenied(
                f"Permission 'cloudkms.cryptoKeyVersions.useToDecrypt' denied on resource '{request['name']}' "
                "(or it may not exist)."
            )
        if request["ciphertext_crc32c"] != google_crc32c.value(request["ciphertext"]):
            raise google_exceptions.InvalidArgument("Request integrity verification failed.")
        key, plaintext = self.ciphertexts.get(request["ciphertext"], (None, b""))
        if key != request["name"]:
            raise google_exceptions.InvalidArgument(
                "Decryption failed: verify that 'name' refers to the correct CryptoKey."
            )
        crc = google_crc32c.value(plaintext)
        if self.corrupt_responses:
            self.corrupt_responses -= 1
            crc ^= 1
        return kms.DecryptResponse(plaintext=plaintext, plaintext_crc32c=crc)


@pytest.fixture
def fake_gcs(monkeypatch: pytest.MonkeyPatch) -> FakeGcs:
    fake = FakeGcs()
    monkeypatch.setattr(
        KmsEncryptedGcsSecret,
        "_storage_client",
        lambda self, credentials, project: fake.client(credentials, project),
    )
    return fake


@pytest.fixture
def fake_kms(monkeypatch: pytest.MonkeyPatch) -> FakeKms:
    fake = FakeKms()
    monkeypatch.setattr(KmsEncryptedGcsSecret, "_kms_client", lambda self, credentials: fake)
    return fake


def kms_block(gcp_credentials_block: str, **fields: Any) -> KmsEncryptedGcsSecret:
    return KmsEncryptedGcsSecret(
        **{
            "bucket": "analytics-secrets",
            "blob": "crm/api-key.enc",
            "kms_key_name": KEY_NAME,
            "gcp_credentials_block": gcp_credentials_block,
            **fields,
        }
    )


def test_kms_decrypts_the_gcs_object_and_strips_one_newline(
    gcp_credentials_block: str, fake_gcs: FakeGcs, fake_kms: FakeKms, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ciphertext = fake_kms.encrypt(KEY_NAME, (API_KEY + "\n").encode())
    fake_gcs.objects[("analytics-secrets", "crm/api-key.enc")] = ciphertext

    assert kms_block(gcp_credentials_block).get() == API_KEY

    [(bucket, path, kwargs)] = fake_gcs.reads
    assert (bucket, path, kwargs) == ("analytics-secrets", "crm/api-key.enc", {})
    [(credentials, project)] = fake_gcs.clients  # the credentials block's key and its project
    assert credentials.service_account_email == "crm-export@analytics-prod.iam.gserviceaccount.com"
    assert project == "analytics-prod"
    [request] = fake_kms.requests
    assert request == {
        "name": KEY_NAME,
        "ciphertext": ciphertext,
        "ciphertext_crc32c": google_crc32c.value(ciphertext),
    }
    assert_clean_logs(caplog)


@pytest.mark.parametrize(
    "plaintext, expected",
    [(b"abc", "abc"), (b"abc\n\n", "abc\n"), (b"abc\r\n", "abc"), ("clé-ü\n".encode(), "clé-ü")],
)
def test_kms_strips_exactly_one_trailing_newline(
    gcp_credentials_block: str, fake_gcs: FakeGcs, fake_kms: FakeKms, plaintext: bytes, expected: str
) -> None:
    fake_gcs.objects[("analytics-secrets", "crm/api-key.enc")] = fake_kms.encrypt(KEY_NAME, plaintext)
    assert kms_block(gcp_credentials_block).get() == expected


def test_kms_retries_a_corrupted_response_then_raises(
    gcp_credentials_block: str, fake_gcs: FakeGcs, fake_kms: FakeKms
) -> None:
    fake_gcs.objects[("analytics-secrets", "crm/api-key.enc")] = fake_kms.encrypt(KEY_NAME, API_KEY.encode())
    fake_kms.corrupt_responses = 1
    assert kms_block(gcp_credentials_block).get() == API_KEY  # one bad response is discarded and retried
    assert len(fake_kms.requests) == 2

    fake_kms.requests.clear()
    fake_kms.corrupt_responses = 10
    with pytest.raises(SecretIntegrityError, match="CRC32C") as caught:
        kms_block(gcp_credentials_block).get()
    assert len(fake_kms.requests) == 3
    assert "gs://analytics-secrets/crm/api-key.enc" in str(caught.value)
    assert_no_secrets(str(caught.value))


def test_kms_permission_denied_names_key_and_role(
    gcp_credentials_block: str, fake_gcs: FakeGcs, fake_kms: FakeKms
) -> None:
    fake_gcs.objects[("analytics-secrets", "crm/api-key.enc")] = fake_kms.encrypt(KEY_NAME, API_KEY.encode())
    fake_kms.deny = True
    with pytest.raises(SecretAccessDeniedError) as caught:
        kms_block(gcp_credentials_block).get()
    assert isinstance(caught.value, PermissionError)
    assert KEY_NAME in str(caught.value)
    assert "roles/cloudkms.cryptoKeyDecrypter" in str(caught.value)


def test_kms_wrong_key_is_a_clear_error(
    gcp_credentials_block: str, fake_gcs: FakeGcs, fake_kms: FakeKms
) -> None:
    fake_gcs.objects[("analytics-secrets", "crm/api-key.enc")] = fake_kms.encrypt(OTHER_KEY, API_KEY.encode())
    with pytest.raises(SecretDecryptionError, match="encrypted with another key") as caught:
        kms_block(gcp_credentials_block).get()
    assert KEY_NAME in str(caught.value)
    assert "gs://analytics-secrets/crm/api-key.enc" in str(caught.value)


def test_kms_plaintext_that_is_not_utf8(
    gcp_credentials_block: str, fake_gcs: FakeGcs, fake_kms: FakeKms
) -> None:
    fake_gcs.objects[("analytics-secrets", "crm/api-key.enc")] = fake_kms.encrypt(
        KEY_NAME, b"\xff\xfe\x00key"
    )
    with pytest.raises(SecretDecryptionError, match="not UTF-8"):
        kms_block(gcp_credentials_block).get()


def test_kms_missing_blob_names_bucket_and_blob(
    gcp_credentials_block: str, fake_gcs: FakeGcs, fake_kms: FakeKms
) -> None:
    with pytest.raises(SecretNotFoundError) as caught:
        kms_block(gcp_credentials_block, blob="crm/absent.enc").get()
    message = str(caught.value)
    assert isinstance(caught.value, LookupError)
    assert "gs://analytics-secrets/crm/absent.enc" in message
    assert "'analytics-secrets'" in message
    assert "'crm/absent.enc'" in message
    assert fake_kms.requests == []


@pytest.mark.parametrize(
    "name",
    [
        "crm",
        "projects/analytics-prod/locations/europe-west1/keyRings/analytics",
        f"{KEY_NAME}/cryptoKeyVersions/1",
        "projects/analytics-prod/keyRings/analytics/cryptoKeys/crm",
        "projects//locations/europe-west1/keyRings/analytics/cryptoKeys/crm",
    ],
)
def test_kms_key_name_is_validated(gcp_credentials_block: str, name: str) -> None:
    with pytest.raises(ValidationError, match="full resource name of a Cloud KMS key"):
        kms_block(gcp_credentials_block, kms_key_name=name)


def test_kms_and_storage_clients_use_the_credentials_block(gcp_credentials_block: str) -> None:
    block = kms_block(gcp_credentials_block)
    credentials, project = block.credentials()
    assert credentials.service_account_email == "crm-export@analytics-prod.iam.gserviceaccount.com"
    assert project == "analytics-prod"
    client = block._kms_client(credentials)
    assert isinstance(client, kms.KeyManagementServiceClient)
    assert (
        client._transport._credentials.service_account_email
        == "crm-export@analytics-prod.iam.gserviceaccount.com"
    )
    storage_client = block._storage_client(credentials, project)
    assert isinstance(storage_client, storage.Client)
    assert storage_client._credentials is credentials
    assert storage_client.project == "analytics-prod"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bucket": "gs://analytics-secrets/crm"}, "bucket must be the bucket's name, not a gs:// URL"),
        ({"bucket": "Analytics Secrets"}, "bucket must be a GCS bucket name"),
        ({"blob": "gs://analytics-secrets/crm/api-key.enc"}, "blob must be the object's name in the bucket"),
        ({"gcp_credentials_block": "gcp-credentials/crm"}, "give the GCP Credentials block's name"),
    ],
)
def test_kms_bucket_blob_and_credentials_block_are_validated(
    gcp_credentials_block: str, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        kms_block(**{"gcp_credentials_block": gcp_credentials_block, **fields})


def test_a_missing_credentials_block_is_named(fake_gcs: FakeGcs, fake_kms: FakeKms) -> None:
    name = unique("kms-secret")
    kms_block("no-such-gcp").save(name)
    loaded = KmsEncryptedGcsSecret.load(name)
    with pytest.raises(BlockNotFoundError) as caught:
        loaded.get()
    assert str(caught.value).startswith(
        f"GCP Credentials block 'no-such-gcp', needed by KMS Encrypted GCS Secret block {name!r} "
        "(field gcp_credentials_block), does not exist in this Prefect workspace"
    )
    assert fake_gcs.reads == []
    assert fake_kms.requests == []


# --- read_secret_block (the secret block a CRM block names) against the real Prefect server -----------------


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("value", ["123", "sk-live-abc", "1e3", "true", '{"a": 1}'])
def test_read_secret_returns_the_raw_prefect_secret_string(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name = unique("crm-api-key")
    Secret(value=value).save(name)

    key = read_secret_block(f"secret/{name}")

    assert key == value
    assert type(key) is str  # Secret.get() would give 123, 1000.0, True, a dict
    if len(value) > 5:  # short values ("123") could match unrelated log text
        assert value not in "".join(r.getMessage() for r in caplog.records)


def test_read_secret_rejects_non_string_and_empty_prefect_secrets() -> None:
    name = unique("crm-api-key-json")
    Secret(value={"key": "sk"}).save(name)
    with pytest.raises(TypeError, match="not a string"):
        read_secret_block(f"secret/{name}")
    name = unique("crm-api-key-empty")
    Secret(value="").save(name)
    with pytest.raises(ValueError, match="empty"):
        read_secret_block(f"secret/{name}")


def test_read_secret_from_a_saved_vault_block(vault: FakeVault, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    name = unique("crm-api-key")
    token_block(vault).save(name)

    assert read_secret_block(f"vault-kv-secret/{name}") == API_KEY
    assert vault.requests[-1].headers["X-Vault-Token"] == ROOT_TOKEN
    assert_clean_logs(caplog)


def test_read_secret_from_a_saved_kms_block(
    gcp_credentials_block: str, fake_gcs: FakeGcs, fake_kms: FakeKms
) -> None:
    fake_gcs.objects[("analytics-secrets", "crm/api-key.enc")] = fake_kms.encrypt(KEY_NAME, b"sk-live-abc\n")
    name = unique("crm-api-key")
    kms_block(gcp_credentials_block).save(name)

    assert read_secret_block(f"kms-encrypted-gcs-secret/{name}") == "sk-live-abc"


def test_read_secret_missing_block() -> None:
    slug = f"vault-kv-secret/{unique('absent')}"
    with pytest.raises(SecretBlockNotFoundError) as caught:
        read_secret_block(slug)
    assert isinstance(caught.value, LookupError)
    assert slug in str(caught.value)
    assert "prefect block create vault-kv-secret" in str(caught.value)
    assert ".save(" in str(caught.value)


@pytest.mark.parametrize("slug", ["crm-api-key", "secret/", "/crm-api-key", ""])
def test_read_secret_malformed_slug(slug: str) -> None:
    with pytest.raises(ValueError, match="<block-type-slug>/<block-name>"):
        read_secret_block(slug)


def test_read_secret_refuses_other_block_types() -> None:
    name = unique("not-a-secret")
    TableauPersonalAccessToken(token_name="pat-1", token_secret="s").save(name)
    with pytest.raises(TypeError, match="not a secret block"):
        read_secret_block(f"tableau-personal-access-token/{name}")
