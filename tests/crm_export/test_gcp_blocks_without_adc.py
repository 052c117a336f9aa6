"""The CRM export's GCP blocks (``DataflowOptions``, ``KmsEncryptedGcsSecret``) where there are no GCP
credentials at all, as on the laptop a team registers its blocks from.

Both blocks name their credentials (``gcp_credentials_block``, a GCP Credentials block's name; empty:
Application Default Credentials) rather than nest prefect-gcp blocks, whose creation looks for ADC. So they
are created, saved and loaded (through the session's Prefect server) without looking for credentials, and
using them without credentials fails naming the block, the field and what to do.

"No ADC" is made real, not mocked: google-auth's own lookup runs and finds nothing (``no_adc``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth
import pytest
from google.auth.compute_engine import _metadata
from google.auth.exceptions import DefaultCredentialsError
from prefect_gcp.credentials import GcpCredentials

from blocks.crm_export.dataflow import DataflowOptions
from blocks.crm_export.kms_gcs import KmsEncryptedGcsSecret
from blocks.loading import BlockNotFoundError
from blocks.secrets import SecretAuthError
from tasks.crm_export.launchers.dataflow import DataflowLauncher

PROJECT = "analytics-prod"
KMS_KEY = f"projects/{PROJECT}/locations/europe-west1/keyRings/crm/cryptoKeys/api-key"
DATAFLOW = {
    "region": "europe-west1",
    "temp_location": "gs://analytics-dataflow/tmp",
    "api_key_kms_key": KMS_KEY,
    "max_num_workers": 4,
    "labels": {"team": "growth"},
}
KMS_SECRET = {"bucket": "analytics-secrets", "blob": "crm/api-key.enc", "kms_key_name": KMS_KEY}
#: What every "no credentials" message tells to do about ADC.
ADC_HOW = "GOOGLE_APPLICATION_CREDENTIALS pointing at a service account key file"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def no_adc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This process without Application Default Credentials, whatever the machine has.

    google-auth looks (``google.auth.default``) at GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file in its
    configuration directory (CLOUDSDK_CONFIG), App Engine, then the GCE metadata server (GCE_METADATA_IP,
    or a GCE VM's product name in /sys). Each is pointed at nothing; the metadata server at 127.0.0.1:1,
    which refuses at once. What google-auth reads only when imported is set as those variables would have
    set it, and its metadata ping makes one attempt instead of three with back-off between them.
    """
    for variable in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"):
        monkeypatch.delenv(variable, raising=False)
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:1")
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:1")
    monkeypatch.setattr(_metadata, "_GCE_METADATA_HOST", "127.0.0.1:1")
    monkeypatch.setattr(_metadata, "_GCE_PRODUCT_NAME_FILE", str(tmp_path / "no-product-name"))
    monkeypatch.setattr(_metadata.ping, "__defaults__", (_metadata._METADATA_DEFAULT_TIMEOUT, 1))
    with pytest.raises(DefaultCredentialsError):
        google.auth.default()


@pytest.fixture
def adc_lookups(no_adc: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every ``google.auth.default`` call from here on (prefect-gcp and the blocks call it by that name)."""
    calls: list[Any] = []
    real = google.auth.default

    def default(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(google.auth, "default", default)
    yield calls


@pytest.fixture(scope="module")
def service_account_info() -> dict[str, str]:
    """A throwaway service account key: parsed locally, never sent anywhere."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0" * 40,
        "private_key": pem,
        "client_email": f"crm-export@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1" * 21,
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def test_here_nested_gcp_credentials_cannot_even_be_created(no_adc: None) -> None:
    """What the blocks avoid: prefect-gcp looks for ADC when a key-less GcpCredentials is created."""
    with pytest.raises(DefaultCredentialsError):
        GcpCredentials()


@pytest.mark.parametrize("credentials_block", [None, "gcp-crm-export"])
def test_dataflow_options_are_created_saved_and_loaded_without_credentials(
    adc_lookups: list[Any], credentials_block: str | None
) -> None:
    options = DataflowOptions(**DATAFLOW, project=PROJECT, gcp_credentials_block=credentials_block)
    name = unique("dataflow")
    options.save(name)
    loaded = DataflowOptions.load(name)

    assert loaded.model_dump() == options.model_dump()
    assert loaded.gcp_credentials_block == credentials_block
    # With a project, the flags need no credentials either.
    assert f"--project={PROJECT}" in loaded.pipeline_args("crm-export-20261116", {})
    assert adc_lookups == []


@pytest.mark.parametrize("credentials_block", [None, "gcp-crm-secrets"])
def test_the_kms_secret_is_created_saved_and_loaded_without_credentials(
    adc_lookups: list[Any], credentials_block: str | None
) -> None:
    secret = KmsEncryptedGcsSecret(**KMS_SECRET, gcp_credentials_block=credentials_block)
    name = unique("kms-secret")
    secret.save(name)
    loaded = KmsEncryptedGcsSecret.load(name)

    assert loaded.model_dump() == secret.model_dump()
    assert loaded.gcp_credentials_block == credentials_block
    assert adc_lookups == []


def test_dataflow_options_used_without_credentials_name_the_block_and_what_to_do(no_adc: None) -> None:
    name = unique("dataflow")
    DataflowOptions(**DATAFLOW).save(name)  # no project, no credentials block: ADC's
    loaded = DataflowOptions.load(name)

    for use in (loaded.credentials, loaded.project_id, lambda: DataflowLauncher(loaded)):
        with pytest.raises(DefaultCredentialsError) as caught:
            use()
        message = str(caught.value)
        assert message.startswith(
            f"Dataflow Options block {name!r} has no gcp_credentials_block and this process has no "
            "Application Default Credentials ("
        )
        assert (
            "Set gcp_credentials_block to the name of a GCP Credentials block, or give the process ADC: "
            in (message)
        )
        assert ADC_HOW in message


def test_the_kms_secret_used_without_credentials_names_the_block_and_what_to_do(
    no_adc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_client(*args: Any) -> None:
        raise AssertionError("no client is built without credentials")

    monkeypatch.setattr(KmsEncryptedGcsSecret, "_storage_client", no_client)
    monkeypatch.setattr(KmsEncryptedGcsSecret, "_kms_client", no_client)
    name = unique("kms-secret")
    KmsEncryptedGcsSecret(**KMS_SECRET).save(name)
    loaded = KmsEncryptedGcsSecret.load(name)

    with pytest.raises(SecretAuthError) as caught:
        loaded.get()
    message = str(caught.value)
    assert isinstance(caught.value, PermissionError)
    assert message.startswith(
        f"Cannot read gs://analytics-secrets/crm/api-key.enc: KMS Encrypted GCS Secret block {name!r} has no "
        "gcp_credentials_block and this process has no Application Default Credentials ("
    )
    assert (
        "Set gcp_credentials_block to the name of a GCP Credentials block" in message and ADC_HOW in message
    )


def test_a_keyless_credentials_block_used_without_adc_names_both_blocks(
    no_adc: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GCP Credentials block without a key stands for ADC (one created on a machine that had them)."""
    credentials = unique("gcp-adc")
    GcpCredentials.model_construct(project=PROJECT).save(credentials)  # as if created where ADC exist
    options, secret = unique("dataflow"), unique("kms-secret")
    DataflowOptions(**DATAFLOW, gcp_credentials_block=credentials).save(options)
    KmsEncryptedGcsSecret(**KMS_SECRET, gcp_credentials_block=credentials).save(secret)

    with pytest.raises(DefaultCredentialsError) as caught:
        DataflowOptions.load(options).credentials()
    assert str(caught.value).startswith(
        f"GCP Credentials block {credentials!r} (gcp_credentials_block of Dataflow Options block {options!r}) "
        "holds no service account key, so it stands for Application Default Credentials, and this process "
        "has none ("
    )
    assert "Give the block a service account key (service_account_info or service_account_file)" in str(
        caught.value
    )
    with pytest.raises(
        SecretAuthError, match=f"gcp_credentials_block of KMS Encrypted GCS Secret block '{secret}'"
    ):
        KmsEncryptedGcsSecret.load(secret).get()


def test_a_missing_credentials_block_is_named_with_the_block_and_field(no_adc: None) -> None:
    name = unique("dataflow")
    DataflowOptions(**DATAFLOW, gcp_credentials_block="no-such-gcp").save(name)
    with pytest.raises(BlockNotFoundError) as caught:
        DataflowOptions.load(name).project_id()
    assert str(caught.value).startswith(
        f"GCP Credentials block 'no-such-gcp', needed by Dataflow Options block {name!r} (field "
        "gcp_credentials_block), does not exist in this Prefect workspace: create it"
    )


def test_a_credentials_block_with_a_key_needs_no_adc(
    adc_lookups: list[Any], service_account_info: dict[str, str]
) -> None:
    credentials = unique("gcp-key")
    GcpCredentials(service_account_info=service_account_info).save(credentials)
    options, secret = unique("dataflow"), unique("kms-secret")
    DataflowOptions(**DATAFLOW, gcp_credentials_block=credentials).save(options)
    KmsEncryptedGcsSecret(**KMS_SECRET, gcp_credentials_block=credentials).save(secret)

    loaded = DataflowOptions.load(options)
    google_credentials, project = loaded.credentials()
    assert google_credentials.service_account_email == f"crm-export@{PROJECT}.iam.gserviceaccount.com"
    assert project == loaded.project_id() == PROJECT  # the key's project
    launcher = DataflowLauncher(loaded)  # real clients; they connect only when called
    assert launcher.project == PROJECT
    assert launcher.jobs_client._transport._credentials.service_account_email == (
        google_credentials.service_account_email
    )
    kms_credentials, kms_project = KmsEncryptedGcsSecret.load(secret).credentials()
    assert (kms_credentials.service_account_email, kms_project) == (
        google_credentials.service_account_email,
        PROJECT,
    )
    assert adc_lookups == []
