"""The helpers every job shares (``blocks.loading``, ``blocks.secrets``, ``tasks.common``), against the
session's real Prefect server (and moto's server for the AWS secret sources)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from prefect import flow, task
from prefect.blocks.system import Secret
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

from blocks.loading import BlockNotFoundError, load_block, load_block_by_slug
from blocks.secrets import SecretKeyError, SecretNotFoundError, SecretSource, read_secret, secret_string
from tasks.common import ONCE_PER_FLOW_RUN, ProgressReport, to_utc


def test_a_missing_block_is_named_with_who_needs_it_and_how_to_create_it() -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BlockNotFoundError) as caught:
        load_block(Secret, name, needed_by="domain 'sales'")
    message = str(caught.value)
    assert f"Secret block {name!r}, needed by domain 'sales', does not exist" in message
    assert f"Secret(...).save({name!r})" in message
    assert isinstance(caught.value, LookupError)


def test_a_missing_block_slug_is_named_and_a_malformed_one_says_the_form() -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(BlockNotFoundError, match=f"Block 'secret/{name}' .* needed by the CRM export"):
        load_block_by_slug(f"secret/{name}", needed_by="the CRM export")
    with pytest.raises(ValueError, match="'<block-type-slug>/<block-name>'"):
        load_block_by_slug("crm-api-key", needed_by="the CRM export")


def test_a_saved_block_loads_and_its_secret_string_is_the_raw_value() -> None:
    name = f"key-{uuid.uuid4().hex[:8]}"
    Secret(value="123").save(name)
    loaded = load_block(Secret, name, needed_by="a test")
    assert secret_string(loaded, name) == "123"  # Secret.get() would give the integer 123
    assert load_block_by_slug(f"secret/{name}", needed_by="a test").get() == 123


def test_a_json_secret_is_a_type_error_that_names_the_block_not_the_value() -> None:
    with pytest.raises(TypeError, match="Secret block 'json-key' holds a dict") as caught:
        secret_string(Secret(value={"token": "s3cr3t"}), "json-key")
    assert "s3cr3t" not in str(caught.value)


def test_to_utc_makes_every_form_an_aware_utc_datetime() -> None:
    expected = dt.datetime(2026, 11, 30, 6, 0, tzinfo=dt.UTC)
    assert to_utc(expected.replace(tzinfo=None)) == expected
    assert to_utc(expected.astimezone(dt.timezone(dt.timedelta(hours=2)))) == expected
    assert to_utc(expected.timestamp()) == expected
    assert to_utc(None) is None
    assert to_utc(expected.astimezone(dt.timezone(dt.timedelta(hours=-5)))).tzinfo is dt.UTC


def test_once_per_flow_run_caches_across_calls_of_one_run_and_not_across_runs() -> None:
    calls = []

    @task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
    def pick(value: int) -> int:
        calls.append(value)
        return value

    @flow
    def run(first: int, second: int) -> tuple[int, int]:
        return pick(first), pick(second)

    assert run(1, 2) == (1, 1)  # the second call gets the first result, whatever its input
    assert run(3, 4) == (3, 3)  # a new flow run computes again
    assert calls == [1, 3]


# --- Secrets where teams keep them (against moto's server) ------------------------------------------


@pytest.fixture(scope="module")
def aws():
    """moto's server and an AwsCredentials block pointing at it (saved under a fresh name)."""
    from prefect_aws import AwsClientParameters, AwsCredentials

    from devstack.moto_server import MotoServer

    with MotoServer() as server:
        credentials = AwsCredentials(
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=server.url),
        )
        name = f"aws-{uuid.uuid4().hex[:8]}"
        credentials.save(name)
        yield server, credentials, name


def test_a_secret_source_reads_a_prefect_secret_and_a_key_of_a_json_secret() -> None:
    name = f"pat-{uuid.uuid4().hex[:8]}"
    Secret(value='{"name": "pat-1", "secret": "s3cr3t"}').save(name)
    assert (
        read_secret(SecretSource(kind="secret", block=name, json_key="secret"), needed_by="a test")
        == "s3cr3t"
    )
    with pytest.raises(SecretKeyError, match="not a JSON object with key 'nope'") as caught:
        read_secret(SecretSource(kind="secret", block=name, json_key="nope"), needed_by="a test")
    assert "s3cr3t" not in str(caught.value)
    assert isinstance(caught.value, KeyError)  # each secret error is also the matching built-in


def test_a_secret_source_reads_aws_secrets_manager_through_an_aws_secret_block(aws) -> None:
    from prefect_aws.secrets_manager import AwsSecret

    server, credentials, _ = aws
    secret_name = f"tableau/pat-{uuid.uuid4().hex[:8]}"
    credentials.get_secrets_manager_client().create_secret(
        Name=secret_name, SecretString="from-secrets-manager"
    )
    block = f"aws-secret-{uuid.uuid4().hex[:8]}"
    AwsSecret(aws_credentials=credentials, secret_name=secret_name).save(block)
    assert (
        read_secret(SecretSource(kind="aws-secret", block=block), needed_by="a test")
        == "from-secrets-manager"
    )

    AwsSecret(aws_credentials=credentials, secret_name="tableau/missing").save(block, overwrite=True)
    with pytest.raises(
        SecretNotFoundError, match=r"'tableau/missing' of AwsSecret block .*ResourceNotFoundException"
    ):
        read_secret(SecretSource(kind="aws-secret", block=block), needed_by="a test")


def test_a_secret_source_reads_an_ssm_securestring_parameter_and_names_a_missing_one(aws) -> None:
    server, credentials, block = aws
    parameter = f"/tableau/pat-{uuid.uuid4().hex[:8]}"
    credentials.get_client("ssm").put_parameter(Name=parameter, Value="from-ssm", Type="SecureString")
    source = SecretSource(kind="ssm-parameter", block=block, parameter=parameter)
    assert read_secret(source, needed_by="a test") == "from-ssm"

    from blocks import TableauPersonalAccessToken

    pat = TableauPersonalAccessToken(token_name="pat-1", token_secret_source=source)
    assert pat.read_secret("tableau-pat-1") == "from-ssm"  # read when signing in, not when loaded
    assert "from-ssm" not in repr(pat)
    assert "from-ssm" not in pat.model_dump_json()

    missing = SecretSource(kind="ssm-parameter", block=block, parameter="/tableau/none")
    with pytest.raises(
        SecretNotFoundError, match=r"PAT block 'p': SSM parameter '/tableau/none' .*\(ParameterNotFound\)"
    ):
        read_secret(missing, needed_by="PAT block 'p'")


def test_a_secret_source_needs_its_parameter_for_ssm_only_and_a_pat_exactly_one_secret() -> None:
    from pydantic import ValidationError

    from blocks import TableauPersonalAccessToken

    with pytest.raises(ValidationError, match="'parameter' is required for kind ssm-parameter"):
        SecretSource(kind="ssm-parameter", block="aws")
    with pytest.raises(ValidationError, match="'parameter' is required for kind ssm-parameter, and only"):
        SecretSource(kind="secret", block="s", parameter="/x")
    with pytest.raises(ValidationError, match="exactly one of token_secret and token_secret_source"):
        TableauPersonalAccessToken(token_name="pat-1")
    assert TableauPersonalAccessToken(token_name="pat-1", token_secret="plain").read_secret() == "plain"


# --- Progress artifacts ----------------------------------------------------------------------------


def read_artifact(artifact_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))[
            0
        ]


def test_a_progress_report_writes_percent_and_a_description_and_skips_unchanged_updates(monkeypatch) -> None:
    import prefect.artifacts

    key = f"progress-{uuid.uuid4().hex[:8]}"
    writes = []

    @flow
    def poll() -> ProgressReport:
        progress = ProgressReport(
            key, total=8, unit="refreshes finished", title="Tableau refresh of **sales**"
        )
        progress.update(2, note="2 succeeded, 6 running")
        with monkeypatch.context() as patched:
            patched.setattr(prefect.artifacts, "update_progress_artifact", lambda *a, **k: writes.append(a))
            progress.update(2, note="2 succeeded, 6 running")  # what a poll that saw no change reports
        return progress

    progress = poll()
    artifact = read_artifact(progress.artifact_id)
    assert (artifact.key, artifact.type, artifact.data) == (key, "progress", 25.0)
    assert (
        artifact.description
        == "Tableau refresh of **sales**; 2 of 8 refreshes finished; 2 succeeded, 6 running"
    )
    assert artifact.flow_run_id is not None
    assert writes == []

    progress.update(0, total=None, note="JOB_STATE_RUNNING; 1,234 records read")  # the total unknown
    artifact = read_artifact(progress.artifact_id)
    assert artifact.data == 0.0
    assert artifact.description == "Tableau refresh of **sales**; JOB_STATE_RUNNING; 1,234 records read"
    with pytest.raises(ValueError, match="lowercase letters, digits and '-'"):
        ProgressReport("Bad_Key", total=1, unit="x")


# --- Fast start ------------------------------------------------------------------------------------

LOAD_EVERY_BLOCK_TYPE = """
import json, sys
from importlib.metadata import entry_points

import blocks
from blocks.loading import load_block_by_slug

collections = sorted({ep.value.split(":")[0].split(".")[0] for ep in entry_points(group="prefect.collections")})
types = {name: getattr(blocks, name) for name in blocks.BLOCK_TYPES}  # what the block modules import
imported_with_the_types = [c for c in collections if c in sys.modules]
loaded = {}
for label, (type_name, name) in json.loads(sys.argv[1]).items():
    block = types[type_name].load(name)
    by_slug = load_block_by_slug(f"{types[type_name].get_block_type_slug()}/{name}", needed_by="a test")
    assert type(block) is type(by_slug) is types[type_name], (label, type(block), type(by_slug))
    loaded[label] = block.site.server_url if hasattr(block, "site") else type(block).__name__
print(json.dumps({
    "collections": collections,
    "imported_with_the_types": imported_with_the_types,
    "imported_after_loading": [c for c in collections if c in sys.modules],
    "loaded": loaded,
}))
"""


@pytest.mark.slow(seconds=15)
def test_loading_every_block_type_imports_no_prefect_collection(prefect_api_url) -> None:
    """Prefect resolves a block type it is not given (a block nested in another's document,
    ``Block.load("<type>/<name>")``) by importing every installed collection first: prefect-gcp alone
    takes seconds, in every flow-run process. No block type of the project nests another, and
    ``load_block_by_slug`` loads an imported type through its class, so a fresh process loads a block of
    every type, by its class and by its slug, without importing a collection its block types do not
    import themselves (none do) — Prefect unpatched. Blocks saved while the Tableau site was a block of
    its own (a reference to a Site block, or a site saved with the block) load so too."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from old_site_shape import save_in_old_shape

    import blocks
    from blocks import TableauSite

    tag = uuid.uuid4().hex[:8]
    site = TableauSite(server_url="https://tableau.example.com", site_content_url="mysite")
    app = {"client_id": "c", "secret_id": "s", "secret_value": "v", "username": "u@example.com"}
    kms_key = "projects/analytics-prod/locations/europe-west1/keyRings/analytics/cryptoKeys/crm"
    samples = {
        "TableauPersonalAccessToken": {"token_name": "pat-1", "token_secret": "s"},
        "TableauPatPool": {"site": site, "pat_block_names": ["pat-1"]},
        "TableauConnectedApp": {"site": site, **app},
        "VaultKvSecret": {"url": "https://vault.example.com:8200", "path": "crm", "key": "k", "token": "t"},
        "KmsEncryptedGcsSecret": {
            "bucket": "secrets",
            "blob": "crm/api-key.enc",
            "kms_key_name": kms_key,
            "gcp_credentials_block": "gcp",
        },
        "DataflowOptions": {
            "gcp_credentials_block": "gcp",
            "region": "europe-west1",
            "temp_location": "gs://analytics-tmp/dataflow",
            "api_key_kms_key": kms_key,
        },
        "HubSpotCrm": {"access_token": "t", "id_property": "external_id", "field_map": {"email": "email"}},
        "BrazeCrm": {
            "rest_endpoint": "https://rest.iad-01.braze.com",
            "api_key": "k",
            "field_map": {"email": "email"},
        },
        "GenericCrmEndpoint": {"url": "https://crm.example.com/batch", "api_key": "k"},
    }
    assert set(samples) == set(blocks.BLOCK_TYPES)
    names = {}
    for type_name, fields in samples.items():
        getattr(blocks, type_name)(**fields).save(f"every-type-{tag}")
        names[type_name] = (type_name, f"every-type-{tag}")
    old = {"server_url": "https://old.example.com", "site_content_url": "old"}
    save_in_old_shape("pool", f"old-pool-{tag}", f"old-site-{tag}", old, pat_block_names=["pat-1"])
    save_in_old_shape("app", f"old-app-{tag}", "", old, **app)
    names["old pool (Site block)"] = ("TableauPatPool", f"old-pool-{tag}")
    names["old app (site saved with it)"] = ("TableauConnectedApp", f"old-app-{tag}")

    root = Path(__file__).resolve().parents[1]
    answer = subprocess.run(
        [sys.executable, "-c", LOAD_EVERY_BLOCK_TYPE, json.dumps(names)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(answer.stdout.strip().splitlines()[-1])
    assert {"prefect_aws", "prefect_gcp", "prefect_redis"} <= set(out["collections"])  # installed here
    assert out["imported_with_the_types"] == []
    assert out["imported_after_loading"] == out["imported_with_the_types"]
    assert out["loaded"]["TableauPatPool"] == "https://tableau.example.com"
    assert out["loaded"]["old pool (Site block)"] == "https://old.example.com"
    assert out["loaded"]["old app (site saved with it)"] == "https://old.example.com"
    assert len(out["loaded"]) == len(names)


def test_load_block_by_slug_finds_the_class_that_defines_an_imported_type() -> None:
    from blocks import TableauPatPool
    from blocks.loading import imported_block_type

    assert imported_block_type("tableau-pat-pool") is TableauPatPool
    assert imported_block_type("secret") is Secret  # not a generic Secret[...] of the same type
    assert imported_block_type("no-such-type") is None
