"""The CRM blocks (HubSpot, Braze, generic endpoint): the settings each gives the pipeline, their checks,
and their key (its own secret field, or a secret block it names) read through the real Prefect server."""

from __future__ import annotations

import uuid

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from pydantic import ValidationError

from blocks import BrazeCrm, GenericCrmEndpoint, HubSpotCrm
from blocks.loading import BlockNotFoundError
from pipelines.crm_export.settings import DestinationSettings, PipelineSettings
from tasks.crm_export.secrets import SecretBlockNotFoundError, load_crm_block, read_api_key

FIELDS = {"email": "email", "identity.country": "country", "properties.plan": "plan"}
TOKEN = "pat-na1-7f3e0c1a-blocktest"


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_hubspot_limits_follow_the_tier_and_the_api_limit_increases() -> None:
    def limits(**fields) -> tuple[int, int]:
        return HubSpotCrm(access_token=TOKEN, id_property="email", field_map=FIELDS, **fields).limits()

    assert [limits(tier=t) for t in ("free", "starter", "professional", "enterprise")] == [
        (100, 250_000),
        (100, 250_000),
        (190, 625_000),
        (190, 1_000_000),
    ]
    assert limits(tier="professional", api_limit_increases=2) == (250, 2_625_000)
    with pytest.raises(ValidationError, match="api_limit_increases"):
        limits(api_limit_increases=3)


def test_a_braze_block_refuses_more_objects_per_request_than_braze_takes() -> None:
    with pytest.raises(ValidationError, match="objects_per_request"):
        BrazeCrm(
            rest_endpoint="https://rest.iad-01.braze.com",
            api_key="k",
            field_map=FIELDS,
            objects_per_request=76,
        )


def test_each_crm_block_gives_the_pipeline_its_destination_settings() -> None:
    hubspot = HubSpotCrm(access_token=TOKEN, id_property="external_id", field_map=FIELDS)
    assert hubspot.destination_settings() == DestinationSettings(
        destination="hubspot",
        url="https://api.hubapi.com",
        id_property="external_id",
        field_map=FIELDS,
        rate_limit_requests=100,  # the default tier, starter: the strictest limits
        rate_limit_seconds=10.0,
        daily_request_limit=250_000,
    )
    braze = BrazeCrm(
        rest_endpoint="https://rest.fra-01.braze.eu/", api_key_block="secret/b", field_map=FIELDS
    )
    assert braze.destination_settings() == DestinationSettings(
        destination="braze",
        url="https://rest.fra-01.braze.eu",
        field_map=FIELDS,
        objects_per_request=75,
        rate_limit_requests=3_000,
        rate_limit_seconds=3.0,
    )
    generic = GenericCrmEndpoint(url="https://crm.internal.example.com/v1/users/batch", api_key="k-1")
    assert generic.destination_settings() == DestinationSettings(
        url="https://crm.internal.example.com/v1/users/batch", rate_limit_seconds=1.0
    )
    mau = braze.model_copy(update={"objects_per_request": 50})
    limits = [
        PipelineSettings(**b.destination_settings().model_dump()).batch_limit()
        for b in (hubspot, braze, generic, mau)
    ]
    assert limits == [100, 75, 5000, 50]
    assert hubspot.key().get_secret_value() == TOKEN
    assert braze.key() == "secret/b"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "set either access_token .* or access_token_block .*, not both or neither"),
        ({"access_token": TOKEN, "access_token_block": "secret/t"}, "not both or neither"),
        (
            {"access_token": TOKEN + "\n"},
            r"access_token: the CRM API key \(\d+ characters\) holds whitespace",
        ),
        ({"access_token": "pat na1"}, "access_token: .*trailing newline or spaces"),
        ({"access_token_block": "hubspot-token"}, "access_token_block 'hubspot-token' is not a block slug"),
        ({"access_token": TOKEN, "id_property": ""}, "id_property is required for hubspot"),
        (
            {"access_token": TOKEN, "id_property": "hs_object_id"},
            r"id_property 'hs_object_id': HubSpot upserts only by a property with unique values.*use email, or a "
            r"custom contact property created with unique values required",
        ),
        ({"access_token": TOKEN, "field_map": {}}, "field_map is required for hubspot"),
        ({"access_token": TOKEN, "field_map": {"email": " "}}, r"field_map: \['email'\] — every entry maps"),
        (
            {
                "access_token": TOKEN,
                "base_url": "https://api.hubapi.com/crm/v3/objects/contacts/batch/upsert",
            },
            "give the API base only",
        ),
        ({"access_token": TOKEN, "base_url": "api.hubapi.com"}, "base_url must be an http"),
    ],
)
def test_a_hubspot_block_is_checked_when_it_is_made_without_quoting_its_token(fields, message) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        HubSpotCrm(**{"id_property": "external_id", "field_map": FIELDS, **fields})
    assert TOKEN not in str(refused.value)
    assert "pat na1" not in str(refused.value)


def test_braze_and_generic_blocks_name_a_wrong_url_or_a_missing_field_map() -> None:
    with pytest.raises(ValidationError, match="give the instance's REST endpoint only"):
        BrazeCrm(rest_endpoint="https://rest.iad-01.braze.com/users/track", api_key="k", field_map=FIELDS)
    with pytest.raises(ValidationError, match="field_map is required for braze"):
        BrazeCrm(rest_endpoint="https://rest.iad-01.braze.com", api_key="k", field_map={})
    with pytest.raises(ValidationError, match="set either api_key .* or api_key_block"):
        GenericCrmEndpoint(url="https://crm.example.com/batch")
    with pytest.raises(ValidationError, match="url must be an http"):
        GenericCrmEndpoint(url="crm.example.com/batch", api_key="k")


def test_a_saved_block_keeps_its_key_secret_and_is_loaded_by_its_slug() -> None:
    name = unique("hubspot")
    HubSpotCrm(access_token=TOKEN, id_property="external_id", field_map=FIELDS).save(name)
    schema = HubSpotCrm.model_json_schema()["properties"]
    assert schema["access_token"]["anyOf"][0]["format"] == "password"  # a secret field in the UI
    with get_client(sync_client=True) as client:
        shown = client.read_block_document_by_name(name, "hubspot-crm", include_secrets=False)
    assert TOKEN not in str(shown.data)
    assert shown.data["id_property"] == "external_id"

    loaded = load_crm_block(f"hubspot-crm/{name}")
    assert isinstance(loaded, HubSpotCrm)
    assert loaded.destination_settings().field_map == FIELDS
    assert read_api_key(f"hubspot-crm/{name}").get_secret_value() == TOKEN


def test_the_key_is_read_from_the_secret_block_a_crm_block_names() -> None:
    secret, name = unique("braze-key"), unique("braze")
    Secret(value="braze-rest-key-1").save(secret)
    BrazeCrm(
        rest_endpoint="https://rest.iad-01.braze.com", api_key_block=f"secret/{secret}", field_map=FIELDS
    ).save(name)
    assert read_api_key(f"braze-crm/{name}").get_secret_value() == "braze-rest-key-1"

    GenericCrmEndpoint(url="https://crm.example.com/batch", api_key_block="secret/absent-key").save(name)
    with pytest.raises(
        SecretBlockNotFoundError,
        match=rf"'secret/absent-key' .*needed by CRM block 'generic-crm-endpoint/{name}' \(api_key_block\)",
    ):
        read_api_key(f"generic-crm-endpoint/{name}")


def test_a_missing_crm_block_or_a_block_of_another_type_is_named() -> None:
    with pytest.raises(BlockNotFoundError) as missing:
        load_crm_block("braze-crm/absent")
    assert "'braze-crm/absent'" in str(missing.value)
    assert "crm.block" in str(missing.value)
    assert "BrazeCrm(rest_endpoint=..., api_key=..., field_map={...}).save('absent')" in str(missing.value)
    secret = unique("not-a-crm")
    Secret(value="x").save(secret)
    with pytest.raises(TypeError, match=rf"'secret/{secret}' \(crm.block\) is a Secret, not a CRM block"):
        load_crm_block(f"secret/{secret}")
    with pytest.raises(ValueError, match="<block-type-slug>/<block-name>"):
        load_crm_block("hubspot")


def test_the_crm_block_types_are_registered_with_the_other_blocks() -> None:
    import blocks

    for name, slug in (
        ("HubSpotCrm", "hubspot-crm"),
        ("BrazeCrm", "braze-crm"),
        ("GenericCrmEndpoint", "generic-crm-endpoint"),
    ):
        assert name in blocks.__all__
        assert name in dir(blocks)  # what `prefect block register -m blocks` lists
        cls = getattr(blocks, name)
        cls.register_type_and_schema()
        with get_client(sync_client=True) as client:
            schema = client.get_most_recent_block_schema_for_block_type(
                client.read_block_type_by_slug(slug).id
            )
        assert cls.get_block_type_slug() == slug
        assert "field_map" in schema.fields["properties"]
