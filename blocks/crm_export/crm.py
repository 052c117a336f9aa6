"""The CRM blocks: one per CRM the export speaks (``HubSpotCrm``, ``BrazeCrm``, ``GenericCrmEndpoint``).

A block holds the CRM's connection settings, the field map, and its key: the key itself (a secret field)
or the name of a secret block holding it (a Prefect ``Secret``, a ``VaultKvSecret`` or a
``KmsEncryptedGcsSecret``). The flow's ``crm.block`` names the block; ``destination_settings()`` gives
the pipeline's ``DestinationSettings``. A plaintext ``http://`` URL to a host that is not loopback is
refused unless the block's ``allow_insecure_transport`` is true (``pipelines.transport``): the key travels
with every request. Nothing here imports Beam or prefect-gcp.
"""

from __future__ import annotations

import abc
import re
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from blocks import run_logger
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.settings import DestinationName, DestinationSettings
from pipelines.transport import (
    ALLOW_INSECURE_TRANSPORT_DESCRIPTION,
    check_transport,
    url_without_credentials,
    warn_insecure_transport,
)

#: ``<block-type-slug>/<block-name>``, e.g. ``secret/hubspot-token`` or ``vault-kv-secret/braze-key``.
_BLOCK_SLUG = re.compile(r"[a-z0-9][-a-z0-9]*/[^/\s][^/]*")
_HTTP_URL = re.compile(r"https?://[^/\s?#]+(/[^\s?#]*)?")
FIELD_MAP_DESCRIPTION = (
    'BigQuery field → CRM property, e.g. {"email": "email", "identity.country": "country", '
    '"properties.plan": "plan"}. A field is a column, a RECORD\'s field as a dotted name, or a union\'s '
    "column without its type suffix (properties.plan for properties.plan.string_value, ...)."
)


class CrmBlock(Block, abc.ABC):
    """What every CRM block has: a field map, and the CRM's key or the name of a secret block holding it.

    Subclasses set ``destination`` (the pipeline's ``DestinationName``), ``url_field`` (the field holding
    the CRM's URL) and ``key_fields``: the name of the secret field holding the key and of the field naming
    a secret block instead; exactly one is set. Each defines its ``allow_insecure_transport`` after its URL
    and its ``field_map`` after its connection settings (the order the UI shows).
    ``destination_settings()`` returns the ``DestinationSettings``; ``key()`` the secret or the slug.
    Validation errors never quote the input (``hide_input_in_errors``), so a pasted key stays out of them,
    and URLs in messages and logs are shown without ``user:password@``.
    """

    destination: ClassVar[DestinationName]
    url_field: ClassVar[str]
    key_fields: ClassVar[tuple[str, str]] = ("api_key", "api_key_block")
    model_config = ConfigDict(hide_input_in_errors=True)

    @abc.abstractmethod
    def api_url(self) -> str:
        """The URL the pipeline sends to (``DestinationSettings.url``)."""

    def destination_settings(self) -> DestinationSettings:
        """The pipeline's settings of this CRM (its API, URL, field map and, for HubSpot, ``idProperty``): what
        the export's workers connect to. When ``allow_insecure_transport`` let a plaintext URL to a host that
        is not loopback through, logs a warning naming the block and the URL (never the key) on every call.

        Raises ``ValueError`` saying what is invalid (the block validates them when it is made or loaded),
        among them a plaintext URL to a host that is not loopback without ``allow_insecure_transport``.
        """
        url = self.api_url()
        if self._check_transport():
            warn_insecure_transport(url, owner=self._block_label(), logger=run_logger(__name__))
        return self._destination_settings()

    def _block_label(self) -> str:
        name = getattr(self, "_block_document_name", None)
        return (
            f"{self._block_type_name} block {name!r}" if name else f"{self._block_type_name} block (unsaved)"
        )

    def _check_transport(self) -> str | None:
        return check_transport(
            self.api_url(),
            owner=self._block_type_name,
            field=self.url_field,
            allow_insecure=self.allow_insecure_transport,  # each subclass's field, after its URL
        )

    def _destination_settings(self) -> DestinationSettings:
        try:
            return DestinationSettings(
                destination=self.destination,
                url=self.api_url(),
                field_map=self.field_map,
                **self._extra_settings(),
            )
        except ValidationError as exc:
            problems = "; ".join(error["msg"].removeprefix("Value error, ") for error in exc.errors())
            raise ValueError(problems) from None

    def _extra_settings(self) -> dict[str, Any]:
        return {}

    def key(self) -> SecretStr | str:
        """The CRM's key: the secret itself (a ``SecretStr``), or the slug of the secret block holding it."""
        secret, block = (getattr(self, name) for name in self.key_fields)
        return secret if secret is not None else block

    @model_validator(mode="after")
    def _check_key_and_settings(self) -> CrmBlock:
        secret_field, block_field = self.key_fields
        secret, block = getattr(self, secret_field), getattr(self, block_field)
        if (secret is None) == (block is None):
            raise ValueError(
                f"set either {secret_field} (the key itself, kept as a secret) or {block_field} (the "
                "'<block-type-slug>/<name>' of a Secret, Vault KV Secret or KMS Encrypted GCS Secret block "
                "holding it), not both or neither"
            )
        if secret is not None:
            try:
                ApiKey(secret.get_secret_value())  # the three CRMs take the key as a bearer token
            except ValueError as exc:
                raise ValueError(f"{secret_field}: {exc}") from None
        if block is not None and not _BLOCK_SLUG.fullmatch(block):
            raise ValueError(
                f"{block_field} {block!r} is not a block slug '<block-type-slug>/<name>', e.g. "
                "'secret/crm-api-key' or 'vault-kv-secret/crm-api-key'"
            )
        self._check_transport()
        if urlsplit(self.api_url()).username is not None:
            raise ValueError(
                f"{self.url_field} {url_without_credentials(self.api_url())!r} carries credentials "
                "(user:password@): the URL is an option of the export job, where every viewer of the job "
                f"would read them. Remove them and give the CRM's key in {secret_field} or {block_field}."
            )
        self._destination_settings()
        return self


def _http_url(value: str, what: str) -> str:
    value = value.strip().rstrip("/")
    if not _HTTP_URL.fullmatch(value):
        raise ValueError(
            f"{what} must be an http(s) URL without query string or fragment, e.g. https://host/path; got "
            f"{url_without_credentials(value)!r} (shown without user:password@, query string and fragment)"
        )
    return value


#: HubSpot's API limits of a private app by the account's tier: (requests per 10 s, requests per day)
#: (https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines). An API limit increase
#: raises the 10-second limit to 250 and adds 1,000,000 requests a day (two at most).
HUBSPOT_LIMITS = {
    "free": (100, 250_000),
    "starter": (100, 250_000),
    "professional": (190, 625_000),
    "enterprise": (190, 1_000_000),
}


class HubSpotCrm(CrmBlock):
    """HubSpot contacts, upserted in batches of up to 100 by a unique property (``idProperty``) through
    ``POST /crm/v3/objects/contacts/batch/upsert``
    (https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts),
    with a private app's access token (https://developers.hubspot.com/docs/apps/legacy-apps/private-apps/overview),
    which needs the scope ``crm.objects.contacts.write``. Its limits are the account's ``tier``'s
    (``HUBSPOT_LIMITS``; ``api_limit_increases``): the export's workers pace themselves below the
    10-second limit, and stop when HubSpot says the daily one is reached.

    Example:
        Save the block once, then load it by name where its settings are needed:
        ```python
        from blocks import HubSpotCrm

        HubSpotCrm(
            access_token="pat-na1-…",  # or access_token_block="vault-kv-secret/hubspot-token"
            id_property="external_id",
            field_map={"email": "email", "identity.country": "country", "properties.plan": "plan"},
        ).save("hubspot")

        hubspot = HubSpotCrm.load("BLOCK_NAME")  # e.g. "hubspot"
        settings = hubspot.destination_settings()
        ```
    """

    _block_type_name = "HubSpot CRM"
    _description = (
        "HubSpot contacts the CRM export upserts by a unique property: the private app's access token (or "
        "the secret block holding it), the idProperty and the field map."
    )
    _documentation_url = (
        "https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts"
    )
    _logo_url = "https://github.com/HubSpot.png?size=250"
    destination = "hubspot"
    url_field = "base_url"
    key_fields = ("access_token", "access_token_block")

    access_token: SecretStr | None = Field(
        default=None,
        description="The private app's access token (scope crm.objects.contacts.write). Or set access_token_block.",
    )
    access_token_block: str | None = Field(
        default=None,
        description="Instead of access_token: the secret block holding it, '<block-type-slug>/<name>': "
        "secret/…, vault-kv-secret/… or kms-encrypted-gcs-secret/….",
    )
    id_property: str = Field(
        description="The unique contact property the key column's value is upserted by (HubSpot's idProperty): "
        "email, or a custom contact property created with unique values required, such as external_id.",
    )
    field_map: dict[str, str] = Field(description=FIELD_MAP_DESCRIPTION)
    tier: Literal["free", "starter", "professional", "enterprise"] = Field(
        default="starter",
        description="The HubSpot account's subscription tier, which sets the private app's API limits: free "
        "and starter 100 requests per 10 s and 250,000 a day; professional 190 and 625,000; enterprise 190 "
        "and 1,000,000.",
    )
    api_limit_increases: int = Field(
        default=0,
        ge=0,
        le=2,
        description="API limit increases bought (at most two): each makes the 10-second limit 250 and adds "
        "1,000,000 requests a day.",
    )
    base_url: str = Field(
        default="https://api.hubapi.com",
        description="HubSpot's API base URL; change it only for a stand-in or a proxy. http:// only for a "
        "loopback host (a local stand-in), unless allow_insecure_transport is true.",
    )
    allow_insecure_transport: bool = Field(default=False, description=ALLOW_INSECURE_TRANSPORT_DESCRIPTION)

    @field_validator("id_property")
    @classmethod
    def _check_id_property(cls, value: str) -> str:
        if value.strip().lower() == "hs_object_id":
            raise ValueError(
                "id_property 'hs_object_id': HubSpot upserts only by a property with unique values, and answers "
                "'Unable to perform update/upsert by non-unique 0-1 property' for the record ID; use email, or "
                "a custom contact property created with unique values required (hasUniqueValue), such as "
                "external_id"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        value = _http_url(value, "base_url")
        if "/crm/" in value:
            raise ValueError(
                f"base_url {url_without_credentials(value)!r}: give the API base only, e.g. "
                "https://api.hubapi.com (the export adds /crm/v3/objects/contacts/batch/upsert)"
            )
        return value

    def api_url(self) -> str:
        return self.base_url

    def limits(self) -> tuple[int, int]:
        """(requests per 10 s, requests per day) of the private app: the tier's, with the increases."""
        per_ten_seconds, per_day = HUBSPOT_LIMITS[self.tier]
        if self.api_limit_increases:
            return 250, per_day + 1_000_000 * self.api_limit_increases
        return per_ten_seconds, per_day

    def _extra_settings(self) -> dict[str, Any]:
        per_ten_seconds, per_day = self.limits()
        return {
            "id_property": self.id_property,
            "rate_limit_requests": per_ten_seconds,
            "rate_limit_seconds": 10.0,
            "daily_request_limit": per_day,
        }


class BrazeCrm(CrmBlock):
    """Braze user profiles, whose attributes are set in batches of up to 75 attributes objects keyed by
    ``external_id`` through ``POST /users/track`` (https://braze.com/docs/api/endpoints/user_data/post_user_track)
    on the instance's REST endpoint (https://braze.com/docs/user_guide/administer/personal/sdk_endpoints/),
    with a REST API key that has the permission ``users.track``. On a contract priced by monthly active
    users a request takes 50 objects (``objects_per_request``); the export's workers pace themselves
    below ``requests_per_3_seconds`` (https://braze.com/docs/api/api_limits).

    Example:
        Save the block once, then load it by name where its settings are needed:
        ```python
        from blocks import BrazeCrm

        BrazeCrm(
            rest_endpoint="https://rest.iad-01.braze.com",
            api_key="…",  # or api_key_block="secret/braze-rest-api-key"
            field_map={"email": "email", "identity.country": "country", "properties.plan": "plan"},
        ).save("braze")

        braze = BrazeCrm.load("BLOCK_NAME")  # e.g. "braze"
        settings = braze.destination_settings()
        ```
    """

    _block_type_name = "Braze CRM"
    _description = (
        "Braze user profiles the CRM export sets attributes of, keyed by external_id: the instance's REST "
        "endpoint, the REST API key (or the secret block holding it) and the field map."
    )
    _documentation_url = "https://braze.com/docs/api/endpoints/user_data/post_user_track"
    _logo_url = "https://github.com/braze-inc.png?size=250"
    destination = "braze"
    url_field = "rest_endpoint"

    rest_endpoint: str = Field(
        description="The REST endpoint of your Braze instance, e.g. https://rest.iad-01.braze.com (US-01) or "
        "https://rest.fra-01.braze.eu (EU-01); Braze's 'API and SDK endpoints' page lists them. http:// only "
        "for a loopback host (a local stand-in), unless allow_insecure_transport is true.",
    )
    allow_insecure_transport: bool = Field(default=False, description=ALLOW_INSECURE_TRANSPORT_DESCRIPTION)
    api_key: SecretStr | None = Field(
        default=None, description="A REST API key with the permission users.track. Or set api_key_block."
    )
    api_key_block: str | None = Field(
        default=None,
        description="Instead of api_key: the secret block holding it, '<block-type-slug>/<name>': secret/…, "
        "vault-kv-secret/… or kms-encrypted-gcs-secret/….",
    )
    field_map: dict[str, str] = Field(description=FIELD_MAP_DESCRIPTION)
    objects_per_request: int = Field(
        default=75,
        ge=1,
        le=75,
        description="Attributes objects per /users/track request: 75 (Braze's limit), or 50 on contracts "
        "priced by monthly active users (Universal, Web or Mobile MAU).",
    )
    requests_per_3_seconds: int = Field(
        default=3_000,
        ge=1,
        description="The /users/track burst limit: 3,000 requests per 3 s; on MAU contracts the API Usage "
        "Dashboard (Settings > APIs and Identifiers) shows yours.",
    )

    @field_validator("rest_endpoint")
    @classmethod
    def _check_rest_endpoint(cls, value: str) -> str:
        value = _http_url(value, "rest_endpoint")
        if value.endswith("/users/track"):
            raise ValueError(
                f"rest_endpoint {url_without_credentials(value)!r}: give the instance's REST endpoint only, "
                "e.g. https://rest.iad-01.braze.com (the export adds /users/track)"
            )
        return value

    def api_url(self) -> str:
        return self.rest_endpoint

    def _extra_settings(self) -> dict[str, Any]:
        return {
            "objects_per_request": self.objects_per_request,
            "rate_limit_requests": self.requests_per_3_seconds,
            "rate_limit_seconds": 3.0,
        }


class GenericCrmEndpoint(CrmBlock):
    """An in-house JSON batch endpoint: ``POST <url>`` ``{"users": [record, ...]}`` with a bearer key and an
    ``Idempotency-Key``, up to 5,000 records per request (docs/crm-export.md, "The generic batch API").

    The contract is the project's own (no public page describes it): its documentation URL is Prefect's
    page on blocks, as for Prefect's own generic blocks.

    Example:
        Save the block once, then load it by name where its settings are needed:
        ```python
        from blocks import GenericCrmEndpoint

        GenericCrmEndpoint(
            url="https://crm.internal.example.com/v1/users/batch",
            api_key_block="vault-kv-secret/crm-api-key",  # or api_key="…"
        ).save("in-house-crm")

        crm = GenericCrmEndpoint.load("BLOCK_NAME")  # e.g. "in-house-crm"
        settings = crm.destination_settings()
        ```
    """

    _block_type_name = "Generic CRM Endpoint"
    _description = (
        'An in-house JSON batch endpoint the CRM export POSTs {"users": [...]} to: its URL, the bearer key (or '
        "the secret block holding it) and an optional field map (the whole record is sent without one)."
    )
    # The contract is in docs/crm-export.md ("The generic batch API"), which has no public URL.
    _documentation_url = "https://www.prefect.io/docs/latest/develop/blocks"
    # A generic HTTP endpoint: Prefect's own logo of its Webhook block.
    _logo_url = (
        "https://raw.githubusercontent.com/PrefectHQ/prefect/420d0d6a78bb6df1fc18bcf188fdad43c1d22ea9/"
        "assets/block-logos/webhook.png"
    )
    destination = "generic"
    url_field = "url"

    url: str = Field(
        description="The batch endpoint, e.g. https://crm.internal.example.com/v1/users/batch. http:// only for "
        "a loopback host (a local stand-in), unless allow_insecure_transport is true.",
    )
    allow_insecure_transport: bool = Field(default=False, description=ALLOW_INSECURE_TRANSPORT_DESCRIPTION)
    api_key: SecretStr | None = Field(
        default=None, description="The bearer key the endpoint takes. Or set api_key_block."
    )
    api_key_block: str | None = Field(
        default=None,
        description="Instead of api_key: the secret block holding it, '<block-type-slug>/<name>': secret/…, "
        "vault-kv-secret/… or kms-encrypted-gcs-secret/….",
    )
    field_map: dict[str, str] = Field(
        default_factory=dict, description=FIELD_MAP_DESCRIPTION + " Empty: the whole record is sent."
    )
    requests_per_second: int = Field(
        default=0,
        ge=0,
        description="The endpoint's rate limit, which the export's workers pace themselves below; 0: none.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value, "url")

    def api_url(self) -> str:
        return self.url

    def _extra_settings(self) -> dict[str, Any]:
        return {"rate_limit_requests": self.requests_per_second, "rate_limit_seconds": 1.0}
