"""No credential over cleartext to another host (``pipelines.transport``): every block with an endpoint, and
the Azure Blob landing target, refuse ``http://`` — and disabled TLS verification — to a host that is not
loopback unless told ``allow_insecure_transport``; then they log a warning naming the block and the
endpoint (never a credential) each time they are used. Loopback (the local stand-ins) needs no flag."""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from blocks import (
    BrazeCrm,
    GenericCrmEndpoint,
    HubSpotCrm,
    TableauConnectedApp,
    TableauPatPool,
    TableauPersonalAccessToken,
    TableauSite,
    VaultKvSecret,
)
from pipelines.transport import (
    check_transport,
    insecure_transport,
    is_loopback,
    url_without_credentials,
    warn_insecure_transport,
)

PASSWORD = "pa55-w0rd-in-url"
TOKEN = "hvs.T0kenForTransportTests"
FIELDS = {"email": "email"}


def name() -> str:
    return f"transport-{uuid.uuid4().hex[:10]}"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def assert_refused(raised: pytest.ExceptionInfo[BaseException], *expected: str) -> None:
    message = str(raised.value)
    for part in expected:
        assert part in message, message
    assert "allow_insecure_transport: true" in message
    assert PASSWORD not in message
    assert TOKEN not in message


# --- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "verify", "reason"),
    [
        ("http://crm.example.com/v1", True, "plaintext http://"),
        ("http://10.0.0.5:8200", True, "plaintext http://"),
        ("https://vault.example.com:8200", False, "TLS certificate verification turned off"),
        ("https://vault.example.com:8200", "/etc/ssl/ca.pem", None),
        ("https://vault.example.com:8200", True, None),
        ("http://127.0.0.1:8200", False, None),
        ("http://localhost:10000/devstoreaccount1", True, None),
        ("http://[::1]:8080", True, None),
        ("https://127.0.0.2", False, None),
    ],
)
def test_insecure_transport_is_plaintext_or_unverified_tls_to_another_host(
    url: str, verify: bool | str, reason: str | None
) -> None:
    assert insecure_transport(url, verify) == reason


def test_loopback_hosts() -> None:
    assert is_loopback("localhost")
    assert is_loopback("127.8.9.10")
    assert is_loopback("[::1]")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("tableau.example.com")
    assert not is_loopback("")


def test_urls_in_messages_lose_credentials_query_and_fragment() -> None:
    assert (
        url_without_credentials(f"http://crm:{PASSWORD}@crm.example.com:8080/v1/batch?sig=abc#x")
        == "http://crm.example.com:8080/v1/batch"
    )
    assert url_without_credentials("crm.example.com/batch") == "crm.example.com/batch"


def test_check_transport_names_owner_field_url_and_both_fixes() -> None:
    url = f"http://svc:{PASSWORD}@crm.example.com/v1"
    with pytest.raises(ValueError) as raised:
        check_transport(url, owner="Some Block", field="url", allow_insecure=False)
    assert_refused(raised, "Some Block: url 'http://crm.example.com/v1' is plaintext http://", "Use https://")

    with pytest.raises(ValueError) as raised:
        check_transport(
            "https://vault.example.com", owner="B", field="url", allow_insecure=False, verify=False
        )
    assert_refused(raised, "B: verify is false for url 'https://vault.example.com'", "Set verify to true")

    assert check_transport(url, owner="B", field="url", allow_insecure=True) == "plaintext http://"
    assert check_transport("http://127.0.0.1:1/v1", owner="B", field="url", allow_insecure=False) is None


def test_warning_names_owner_and_url_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    url = f"http://svc:{PASSWORD}@crm.example.com/v1"
    assert warn_insecure_transport(url, owner="Generic CRM Endpoint block 'x'")
    assert not warn_insecure_transport("https://crm.example.com/v1", owner="B")
    assert not warn_insecure_transport("http://127.0.0.1:9/v1", owner="B")
    [warning] = warnings_of(caplog)
    assert "Generic CRM Endpoint block 'x'" in warning
    assert "http://crm.example.com/v1" in warning
    assert PASSWORD not in caplog.text


# --- Tableau -------------------------------------------------------------------------------------


def test_tableau_site_refuses_plaintext_and_unverified_tls_to_another_host() -> None:
    with pytest.raises(ValidationError) as raised:
        TableauSite(server_url="http://tableau.example.com/")
    assert_refused(raised, "Tableau Site: server_url 'http://tableau.example.com' is plaintext http://")

    with pytest.raises(ValidationError) as raised:
        TableauSite(server_url="https://tableau.example.com", verify_ssl=False)
    assert_refused(raised, "verify_ssl is false for server_url 'https://tableau.example.com'")


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("block", ["site", "pool", "connected app"])
def test_tableau_site_refuses_credentials_in_its_url_and_never_quotes_them(scheme: str, block: str) -> None:
    """Also through the blocks that hold the site: pydantic would otherwise print the input it refused."""
    site = {"server_url": f"{scheme}://admin:{PASSWORD}@tableau.example.com"}
    make = {
        "site": lambda: TableauSite(**site),
        "pool": lambda: TableauPatPool(site=site, pat_block_names=["pat-1"]),
        "connected app": lambda: TableauConnectedApp(
            site=site, client_id="c", secret_id="s", secret_value=TOKEN, username="u@example.com"
        ),
    }[block]
    with pytest.raises(ValidationError) as raised:
        make()
    message = str(raised.value)
    assert f"server_url '{scheme}://tableau.example.com' must not carry user:password@" in message, message
    assert PASSWORD not in message
    assert TOKEN not in message


def test_tableau_site_on_loopback_needs_no_flag(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    TableauSite(server_url="http://127.0.0.1:8080", verify_ssl=False)
    TableauSite(server_url="http://localhost:8080")
    assert warnings_of(caplog) == []


def test_tableau_site_allowed_insecure_warns_each_time_a_client_is_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    site = TableauSite(server_url="http://tableau.example.com", allow_insecure_transport=True)
    pool_name, app_name = name(), name()
    TableauPatPool(site=site, pat_block_names=["pat-1"]).save(pool_name)
    TableauConnectedApp(
        site=TableauSite(
            server_url="https://tableau.example.com", verify_ssl=False, allow_insecure_transport=True
        ),
        client_id="c",
        secret_id="s",
        secret_value="v",
        username="u@example.com",
    ).save(app_name)
    assert warnings_of(caplog) == []  # built, saved: no client made yet

    assert site.http_options(owner=f"Tableau site of pool {pool_name!r}") == {"verify": True, "timeout": 60}
    pool_site = TableauPatPool.load(pool_name).site
    pool_site.http_options()
    pool_site.http_options()
    TableauConnectedApp.load(app_name).site.http_options()
    warnings = warnings_of(caplog)
    assert len(warnings) == 4
    assert (
        f"Tableau site of pool {pool_name!r} connects to http://tableau.example.com with plaintext"
        in warnings[0]
    )
    assert "Tableau site connects to http://tableau.example.com with plaintext http://" in warnings[2]
    assert (
        "connects to https://tableau.example.com with TLS certificate verification turned off" in warnings[3]
    )


# --- CRM blocks ----------------------------------------------------------------------------------

CRM_CASES = [
    pytest.param(
        HubSpotCrm,
        "base_url",
        {"access_token": "t", "id_property": "email", "field_map": FIELDS},
        id="hubspot",
    ),
    pytest.param(BrazeCrm, "rest_endpoint", {"api_key": "k", "field_map": FIELDS}, id="braze"),
    pytest.param(GenericCrmEndpoint, "url", {"api_key": "k"}, id="generic"),
]


@pytest.mark.parametrize(("block_type", "field", "values"), CRM_CASES)
def test_crm_block_refuses_plaintext_to_another_host(
    block_type: type[Any], field: str, values: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError) as raised:
        block_type(**values, **{field: f"http://svc:{PASSWORD}@crm.example.com"})
    assert_refused(
        raised,
        f"{block_type._block_type_name}: {field} 'http://crm.example.com' is plaintext http://",
        "Use https://",
    )


@pytest.mark.parametrize(("block_type", "field", "values"), CRM_CASES)
def test_crm_block_allowed_insecure_warns_each_time_its_settings_are_used(
    block_type: type[Any], field: str, values: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    block_name = name()
    block_type(**values, **{field: "http://crm.example.com"}, allow_insecure_transport=True).save(block_name)
    assert warnings_of(caplog) == []  # built and saved, not used yet

    loaded = block_type.load(block_name)
    assert loaded.destination_settings().url == "http://crm.example.com"
    loaded.destination_settings()
    warnings = warnings_of(caplog)
    assert len(warnings) == 2
    assert f"{block_type._block_type_name} block {block_name!r}" in warnings[0]
    assert "http://crm.example.com with plaintext http://" in warnings[0]


@pytest.mark.parametrize(("block_type", "field", "values"), CRM_CASES)
def test_crm_block_on_loopback_needs_no_flag(
    block_type: type[Any], field: str, values: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    block = block_type(**values, **{field: "http://127.0.0.1:8080"})
    assert block.destination_settings().url == "http://127.0.0.1:8080"
    assert warnings_of(caplog) == []


def test_crm_url_errors_never_show_url_credentials() -> None:
    with pytest.raises(ValidationError) as raised:
        GenericCrmEndpoint(url=f"https://svc:{PASSWORD}@crm.example.com/v1 batch", api_key="k")
    assert "url must be an http(s) URL" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    with pytest.raises(ValidationError) as raised:
        HubSpotCrm(
            base_url=f"https://svc:{PASSWORD}@api.hubapi.com/crm/v3",
            access_token="t",
            id_property="email",
            field_map=FIELDS,
        )
    assert "give the API base only" in str(raised.value)
    assert PASSWORD not in str(raised.value)


# --- Vault ---------------------------------------------------------------------------------------


class FakeHvacClient:
    """Stands for ``hvac.Client`` (no Vault on another host here): records how it was made, answers a read."""

    made: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any):
        FakeHvacClient.made.append(kwargs)
        self.adapter = SimpleNamespace(close=lambda: None)
        answer = {"data": {"data": {"api_key": "the-key"}, "metadata": {"version": 1}}}
        self.secrets = SimpleNamespace(
            kv=SimpleNamespace(v2=SimpleNamespace(read_secret_version=lambda **_: answer))
        )


def vault_block(**changes: Any) -> VaultKvSecret:
    return VaultKvSecret(
        **{
            "url": "https://vault.example.com:8200",
            "path": "crm",
            "key": "api_key",
            "token": TOKEN,
            **changes,
        }
    )


def test_vault_refuses_plaintext_and_verify_false_to_another_host() -> None:
    with pytest.raises(ValidationError) as raised:
        vault_block(url="http://vault.example.com:8200")
    assert_refused(raised, "Vault KV Secret: url 'http://vault.example.com:8200' is plaintext http://")

    with pytest.raises(ValidationError) as raised:
        vault_block(verify=False)
    assert_refused(raised, "Vault KV Secret: verify is false for url 'https://vault.example.com:8200'")

    vault_block(verify="/etc/ssl/certs/ca-certificates.crt")  # a CA bundle: verified


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"url": "http://vault.example.com:8200"}, "plaintext http://"),
        ({"verify": False}, "TLS certificate verification turned off"),
    ],
)
def test_vault_allowed_insecure_warns_each_time_it_makes_a_client(
    changes: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("blocks.crm_export.vault_client.hvac.Client", FakeHvacClient)
    caplog.set_level(logging.WARNING)
    block_name = name()
    vault_block(**changes, allow_insecure_transport=True).save(block_name)
    assert warnings_of(caplog) == []

    secret = VaultKvSecret.load(block_name)
    assert secret.get() == "the-key"
    assert secret.get() == "the-key"
    warnings = warnings_of(caplog)
    assert len(warnings) == 2
    assert f"Vault KV Secret block {block_name!r}" in warnings[0]
    assert reason in warnings[0]
    assert "vault.example.com:8200" in warnings[0]
    assert TOKEN not in caplog.text


def test_vault_on_loopback_needs_no_flag(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("blocks.crm_export.vault_client.hvac.Client", FakeHvacClient)
    caplog.set_level(logging.WARNING)
    assert vault_block(url="http://127.0.0.1:8200", verify=False).get() == "the-key"
    assert warnings_of(caplog) == []


def test_vault_url_changed_after_validation_is_checked_when_the_client_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("blocks.crm_export.vault_client.hvac.Client", FakeHvacClient)
    secret = vault_block()
    secret.url = "http://vault.example.com:8200"
    FakeHvacClient.made.clear()
    with pytest.raises(ValueError, match="plaintext http://"):
        secret.get()
    assert FakeHvacClient.made == []


# --- Azure Blob landing --------------------------------------------------------------------------


def test_azure_landing_refuses_plaintext_to_another_host() -> None:
    from tasks.metadata.landing import AzureBlobLanding

    with pytest.raises(ValueError) as raised:
        AzureBlobLanding("http://myaccount.blob.core.windows.net", "landing", "sas", "catalog")
    assert_refused(
        raised, "Azure Blob landing target: account_url 'http://myaccount.blob.core.windows.net' is plaintext"
    )
    with pytest.raises(ValueError, match="must not carry user:password@") as raised:
        AzureBlobLanding(f"https://u:{PASSWORD}@myaccount.blob.core.windows.net", "landing", "sas", "catalog")
    assert PASSWORD not in str(raised.value)


def test_azure_landing_allowed_insecure_warns_when_its_client_is_made(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect.blocks.system import Secret

    from tasks.metadata.landing import AzureBlobLanding

    sas = "sv=2024-08-04&sp=rcw&sig=S1gnatureOfTheSas"
    secret_name = name()
    Secret(value=sas).save(secret_name)
    caplog.set_level(logging.WARNING)
    landing = AzureBlobLanding(
        "http://myaccount.blob.example.net", "landing", secret_name, "catalog", allow_insecure_transport=True
    )
    assert warnings_of(caplog) == []
    landing._container_client()  # made on first use (upload, verify, read or write the HWM)
    [warning] = warnings_of(caplog)
    assert "Landing target http://myaccount.blob.example.net/landing/catalog" in warning
    assert "plaintext http://" in warning
    assert "S1gnature" not in caplog.text


def test_azure_landing_on_loopback_needs_no_flag(caplog: pytest.LogCaptureFixture) -> None:
    from tasks.metadata.landing import AzureBlobLanding

    caplog.set_level(logging.WARNING)
    AzureBlobLanding("http://127.0.0.1:10000/devstoreaccount1", "landing", "sas", "catalog")
    assert warnings_of(caplog) == []


def test_a_tableau_session_on_an_allowed_insecure_site_warns_as_it_connects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tasks.tableau.session import TableauSession

    caplog.set_level(logging.WARNING)
    site = TableauSite(server_url="http://tableau.example.com", allow_insecure_transport=True)
    session = TableauSession(site, TableauPersonalAccessToken(token_name="pat-1", token_secret="s"), "pat")
    assert session.server.http_options == {"verify": True, "timeout": 60}
    (warning,) = warnings_of(caplog)
    assert (
        "Tableau site of PAT block 'pat' connects to http://tableau.example.com with plaintext http://"
        in warning
    )


@pytest.mark.parametrize(("block_type", "field", "values"), CRM_CASES)
def test_crm_block_refuses_credentials_in_its_url(
    block_type: type[Any], field: str, values: dict[str, Any]
) -> None:
    """The URL is an option of the export job (``--crm_url``), shown to every viewer of the job."""
    with pytest.raises(ValidationError) as raised:
        block_type(**values, **{field: f"https://svc:{PASSWORD}@crm.example.com"})
    message = str(raised.value)
    assert f"{field} 'https://crm.example.com' carries credentials (user:password@)" in message
    assert "Remove them and give the CRM's key in" in message
    assert PASSWORD not in message


# --- Athena extractor (metadata_sources.yaml) ------------------------------------------------------

ATHENA = {
    "kind": "athena",
    "aws_credentials_block": "aws",
    "region": "eu-west-1",
    "output_location": "s3://r/",
}


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:5000", "http://localhost:5000", "https://athena.eu-west-1.amazonaws.com"]
)
def test_athena_endpoint_takes_https_or_plaintext_to_loopback(url: str) -> None:
    from tasks.metadata.sources import AthenaExtractorConfig

    assert AthenaExtractorConfig(**ATHENA, endpoint_url=url).endpoint_url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://moto.example.com:5000", "endpoint_url 'http://moto.example.com:5000' is plaintext http://"),
        (f"http://svc:{PASSWORD}@127.0.0.1:5000", "endpoint_url 'http://127.0.0.1:5000' (shown without"),
        (f"https://athena.example.com/?X-Amz-Security-Token={TOKEN}", "must be an endpoint's URL alone"),
    ],
)
def test_athena_endpoint_refuses_plaintext_to_another_host_and_credentials(url: str, expected: str) -> None:
    """No flag here: AWS and its VPC endpoints take https://; only an emulator on this machine takes http://."""
    from tasks.metadata.sources import AthenaExtractorConfig

    with pytest.raises(ValidationError) as raised:
        AthenaExtractorConfig(**ATHENA, endpoint_url=url)
    message = str(raised.value)
    assert expected in message, message
    assert PASSWORD not in message
    assert TOKEN not in message
