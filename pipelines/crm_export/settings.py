"""The CRM export's settings contract, the destination interface and Dataflow's name rules; imports
neither Beam nor Prefect.

The flow makes ``PipelineSettings`` from the CRM's block (``DestinationSettings``) and its ``crm``
parameter (``SendSettings``, through ``tasks.crm_export.tasks.CrmSettings``), hands them to the pipeline
as flags (``pipeline_args``), and the pipeline reads them back (``settings_from_options``).
Each setting is defined once, as a field here; docs/crm-export.md, "Settings", lists them. A CRM is a
``Destination`` (its request shape, batch limit and answers); the implementations are in
``pipelines.crm_export.destinations``.
"""

from __future__ import annotations

import abc
import argparse
import datetime as dt
import json
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

#: The typed value columns of a union, in the order their value is taken (GA4/BigQuery naming).
UNION_FIELDS = ("string_value", "int_value", "float_value", "double_value", "bool_value")
#: The CRMs the export speaks (``pipelines.crm_export.destinations``).
DestinationName = Literal["generic", "hubspot", "braze"]


@dataclass(frozen=True)
class BatchLimit:
    """Records per request a CRM takes (its ``Destination.max_batch_size``), and what the error of a too
    large ``objects_per_request`` adds about it."""

    records: int
    note: str


#: Each CRM's batch limit: the generic batch API's; HubSpot's batch endpoints (CRM API: 100 inputs per
#: request); Braze's /users/track attributes objects (https://braze.com/docs/api/api_limits).
BATCH_LIMITS: Mapping[DestinationName, BatchLimit] = {
    "generic": BatchLimit(5000, " (the generic batch API's limit)"),
    "hubspot": BatchLimit(100, " (HubSpot's batch endpoints take 100 inputs per request)"),
    "braze": BatchLimit(75, " (Braze: 75 objects per /users/track request, 50 on MAU-based contracts)"),
}

#: The version of what the pipeline makes of a row: the shaping (``users.py``) and each destination's
#: request body (``destinations.py``). It is part of every row's fingerprint in the sync state, so that
#: a change of what would be sent sends every row again. Bump it with any change of that output:
#: tests/crm_export/test_shaping_version.py fails until you do (docs/crm-export.md, "Sync state").
SHAPING_VERSION = 2  # 2: HubSpot inputs carry an objectWriteTraceId
#: Prefix of the columns the export's plan adds to each row it sends; they are never sent to the CRM.
PLAN_COLUMN_PREFIX = "_crm_sync_"
#: The plan's fingerprint of a row (hex MD5 of what is sent for it), recorded in the sync state when the
#: CRM accepts the row.
FINGERPRINT_COLUMN = PLAN_COLUMN_PREFIX + "fingerprint"
#: Set on a row whose key another row of the shard has (the one exported): the row is dead-lettered.
DUPLICATE_OF_COLUMN = PLAN_COLUMN_PREFIX + "duplicate_of"


@dataclass(frozen=True)
class Flag:
    """Marks a setting the pipeline takes as the flag ``--<name>``; a field without it is never a flag."""

    name: str


class DestinationSettings(BaseModel):
    """Which CRM the records go to and what it receives: its API, URL, field map and HubSpot's ``idProperty``.

    A team sets them in the CRM's block (``blocks.crm_export.crm``: ``HubSpotCrm``, ``BrazeCrm``,
    ``GenericCrmEndpoint``), which gives them with ``destination_settings()``; every field is a pipeline
    flag. Raises ``pydantic.ValidationError`` (a ``ValueError``) naming the field of an invalid value.
    """

    url: Annotated[str, Flag("crm_url")] = Field(description="the CRM's batch import endpoint")
    destination: Annotated[DestinationName, Flag("crm_destination")] = Field(
        default="generic",
        description="the CRM's API: generic (a JSON batch endpoint, url is the endpoint), hubspot (url is "
        "the API base, e.g. https://api.hubapi.com) or braze (url is the instance's REST endpoint, e.g. "
        "https://rest.iad-01.braze.com)",
    )
    field_map: Annotated[dict[str, str], Flag("field_map")] = Field(
        default_factory=dict,
        description="BigQuery field (a column, or a union's column without its type suffix, e.g. "
        "properties.plan) → CRM property; required for hubspot and braze; generic sends the whole record "
        "when empty",
    )
    id_property: Annotated[str, Flag("hubspot_id_property")] = Field(
        default="",
        description="hubspot: the unique contact property the key is upserted by (idProperty), e.g. email "
        "or a custom unique property such as external_id",
    )
    objects_per_request: Annotated[int, Flag("crm_objects_per_request")] = Field(
        default=0,
        ge=0,
        description="records per request the CRM's contract allows (Braze: 75, or 50 on MAU-based contracts); "
        "0: the destination's own limit",
    )
    rate_limit_requests: Annotated[int, Flag("crm_rate_limit_requests")] = Field(
        default=0,
        ge=0,
        description="requests the CRM allows per rate_limit_seconds (HubSpot: 100 or 190 per 10 s by tier; "
        "Braze: 3,000 per 3 s); the job's workers pace themselves below it; 0: not paced",
    )
    rate_limit_seconds: Annotated[float, Flag("crm_rate_limit_seconds")] = Field(
        default=10.0, gt=0, description="the interval of rate_limit_requests, in seconds"
    )
    daily_request_limit: Annotated[int, Flag("crm_daily_request_limit")] = Field(
        default=0,
        ge=0,
        description="requests the CRM allows per day (HubSpot: 250,000, 625,000 or 1,000,000 by tier); "
        "reported against the export's plan; 0: none",
    )

    @model_validator(mode="after")
    def _destination_needs(self) -> DestinationSettings:
        empty = sorted(k for k, v in self.field_map.items() if not k.strip() or not v.strip())
        if empty:
            raise ValueError(
                f"field_map: {empty} — every entry maps a non-empty field to a non-empty property"
            )
        if self.destination in ("hubspot", "braze") and not self.field_map:
            raise ValueError(
                f"field_map is required for {self.destination}: map each BigQuery field to its CRM property, "
                'e.g. {"email": "email", "properties.plan": "plan"}'
            )
        if self.destination == "hubspot" and not self.id_property:
            raise ValueError(
                "id_property is required for hubspot: the unique contact property the key is upserted by "
                "(HubSpot's idProperty), e.g. email or a custom unique property"
            )
        limit = BATCH_LIMITS[self.destination]
        if self.objects_per_request > limit.records:
            raise ValueError(
                f"objects_per_request {self.objects_per_request}: {self.destination} takes at most "
                f"{limit.records} records per request{limit.note}"
            )
        return self


class SendSettings(BaseModel):
    """How rows become records and how they are sent: batch size, key column, nulls, column naming,
    timeouts, retries and requests in flight. The flow's ``crm`` parameter holds them (with the CRM's
    block), with these defaults; every field is a pipeline flag.

    A field is ``str``, ``int``, ``float``, ``bool`` (a flag that turns it on, so it defaults to False)
    or ``list[str]`` (a comma-separated flag). Raises ``pydantic.ValidationError`` (a ``ValueError``)
    naming the field of an invalid value.
    """

    batch_size: Annotated[int, Flag("batch_size")] = Field(
        default=5000, ge=1, description="records per request (at most)"
    )
    key_field: Annotated[str, Flag("key_field")] = Field(
        default="external_id", description="the column holding the CRM's record key"
    )
    keep_null: Annotated[list[str], Flag("keep_null")] = Field(
        default_factory=list, description="dotted fields sent as null to clear them; other nulls are dropped"
    )
    read_timeout_seconds: Annotated[float, Flag("crm_read_timeout_seconds")] = Field(
        default=60.0, gt=0, description="seconds to wait for the CRM's answer to one request"
    )
    max_attempts: Annotated[int, Flag("crm_max_attempts")] = Field(
        default=8, ge=1, description="requests per batch before it is dead-lettered"
    )
    max_backoff_seconds: Annotated[float, Flag("crm_max_backoff_seconds")] = Field(
        default=60.0, gt=0, description="longest backoff between two requests of a batch, in seconds"
    )
    max_in_flight: Annotated[int, Flag("crm_max_in_flight")] = Field(
        default=4, ge=1, description="concurrent requests per worker"
    )
    send_nulls: Annotated[bool, Flag("send_nulls")] = Field(
        default=False, description="send every null (overwrites values in the CRM)"
    )
    union_fields: Annotated[list[str], Flag("union_fields")] = Field(
        default_factory=lambda: list(UNION_FIELDS), description="typed value columns of a union, in order"
    )
    flat_separator: Annotated[str, Flag("flat_separator")] = Field(
        default=".", min_length=1, description="separator of flattened column names"
    )

    @model_validator(mode="after")
    def _one_name_per_entry(self) -> SendSettings:
        for name, (flag, field_info) in _flags(type(self)).items():
            if field_info.annotation == list[str]:
                bad = [entry for entry in getattr(self, name) if not entry or "," in entry]
                if bad:
                    raise ValueError(
                        f"{name}: {bad} — one non-empty name per entry, without commas (--{flag} is comma-separated)"
                    )
        return self


class PipelineSettings(DestinationSettings, SendSettings):
    """Every setting of the pipeline: the CRM's (``DestinationSettings``, from its block) and how records
    are sent (``SendSettings``, from the flow's ``crm`` parameter); each field is a pipeline flag.

    Adding a field to either adds its flag and its conversions both ways (``pipeline_args``,
    ``add_setting_flags``, ``settings_from_options``).
    """

    def pipeline_args(self) -> list[str]:
        """The settings as pipeline flags, e.g. ``["--crm_url=https://…", "--batch_size=5000", …]``.

        A ``list[str]`` is comma-joined; a ``bool`` gives its bare flag when True and nothing when False.
        """
        args = []
        for name, (flag, _) in _flags(type(self)).items():
            value = getattr(self, name)
            if isinstance(value, bool):
                args += [f"--{flag}"] if value else []
            elif isinstance(value, list):
                args.append(f"--{flag}={','.join(value)}")
            elif isinstance(value, dict):
                args.append(f"--{flag}={json.dumps(value, separators=(',', ':'))}")
            else:
                args.append(f"--{flag}={value}")
        return args

    def batch_limit(self) -> int:
        """Records per request: ``batch_size``, capped at the destination's own limit (HubSpot 100, Braze 75)
        and at the contract's ``objects_per_request`` (Braze's MAU contracts: 50)."""
        return min(self.batch_size, self.objects_per_request or BATCH_LIMITS[self.destination].records)

    def requests_per_second(self, parallelism: int) -> float:
        """The pace of one of ``parallelism`` processes sending at once: 90 % of ``rate_limit_requests`` per
        ``rate_limit_seconds``, shared evenly; 0 (not paced) without a rate limit."""
        if not self.rate_limit_requests:
            return 0.0
        return 0.9 * self.rate_limit_requests / self.rate_limit_seconds / max(1, parallelism)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add a flag per ``PipelineSettings`` field to ``parser`` (Beam's ``_add_argparse_args``), with its default.

    The required ``url`` defaults to None here; ``settings_from_options`` rejects it then.
    """
    for name, (flag, field_info) in _flags(PipelineSettings).items():
        default = None if field_info.is_required() else field_info.get_default(call_default_factory=True)
        annotation, description = field_info.annotation, field_info.description
        if annotation is bool:
            if default:
                raise TypeError(f"setting {name}: a bool setting defaults to False (its flag turns it on)")
            parser.add_argument(f"--{flag}", action="store_true", help=description)
        elif annotation == list[str]:
            parser.add_argument(
                f"--{flag}", default=",".join(default), help=f"{description}; comma-separated"
            )
        elif annotation == dict[str, str]:
            parser.add_argument(
                f"--{flag}", default=json.dumps(default), help=f"{description}; a JSON object"
            )
        elif typing.get_origin(annotation) is Literal:
            parser.add_argument(
                f"--{flag}", default=default, help=f"{description}; one of {typing.get_args(annotation)}"
            )
        elif annotation in (str, int, float):
            parser.add_argument(f"--{flag}", type=annotation, default=default, help=description)
        else:
            raise TypeError(f"setting {name}: a {annotation} cannot be a pipeline flag")


def settings_from_options(options: Any) -> PipelineSettings:
    """The settings from parsed flags: an object with an attribute per flag (Beam's
    ``options.view_as(CrmExportOptions)``, or an ``argparse.Namespace``).

    Raises ``ValueError`` naming the flag of each missing or invalid setting, e.g.
    ``--crm_url is required (the CRM's batch import endpoint)``.
    """
    flags = _flags(PipelineSettings)
    values = {}
    problems = []
    for name, (flag, field_info) in flags.items():
        value = getattr(options, flag)
        if value is None:
            continue
        if field_info.annotation == list[str]:
            value = [entry for entry in value.split(",") if entry]
        elif field_info.annotation == dict[str, str] and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                problems.append(f"--{flag}={value!r}: not a JSON object ({exc})")
                continue
        values[name] = value
    if problems:
        raise ValueError("; ".join(problems))
    try:
        return PipelineSettings(**values)
    except ValidationError as exc:
        for error in exc.errors():
            name = error["loc"][0] if error["loc"] else None
            if name not in flags:
                problems.append(error["msg"])
            elif error["type"] == "missing":
                problems.append(f"--{flags[name][0]} is required ({flags[name][1].description})")
            else:
                problems.append(f"--{flags[name][0]}={values.get(name)!r}: {error['msg']}")
        raise ValueError("; ".join(problems)) from None


def _flags(model: type[BaseModel]) -> dict[str, tuple[str, FieldInfo]]:
    """Field name → (flag name, field) of every field of ``model`` marked with ``Flag``."""
    return {
        name: (marker.name, field)
        for name, field in model.model_fields.items()
        for marker in field.metadata
        if isinstance(marker, Flag)
    }


# -- the destination interface ------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one request to the CRM got, in the CRM's own terms; positions are in the request.

    ``status``: the HTTP status, None when no response came (timeout, refused or reset connection).
    ``accepted``: the positions the answer says the CRM wrote (never inferred from a status code).
    ``rejected``: position → why the CRM refused that record, its own code and text
    (``"INVALID_EMAIL: Email address … is invalid"``). On a success, a position in neither is
    unconfirmed: the answer does not say (``reason`` says why), and it is sent again. ``retry``: worth
    sending again (429, 5xx, no response, an answer that does not say anything: a protocol error);
    ``retry_after_seconds``: the CRM's hint, if it gave one. ``credentials_rejected``: the key is wrong or
    lacks the permission (the job fails). ``settings_rejected``: the CRM refused a setting every request
    carries (HubSpot's ``idProperty`` without unique values): no request can succeed, the job fails.
    ``refused_whole``: an input error refused the whole request:
    split it to isolate the bad inputs. ``daily_limit``: the CRM's daily limit is used up: stop sending.
    ``reason``: why a request did not succeed, or why positions are unconfirmed.
    """

    status: int | None
    accepted: frozenset[int] = frozenset()
    rejected: Mapping[int, str] = field(default_factory=dict)
    retry: bool = False
    retry_after_seconds: float | None = None
    credentials_rejected: bool = False
    settings_rejected: bool = False
    refused_whole: bool = False
    daily_limit: bool = False
    reason: str = ""

    @property
    def succeeded(self) -> bool:
        return (
            self.status is not None
            and 200 <= self.status < 300
            and not (self.retry or self.refused_whole or self.daily_limit or self.settings_rejected)
        )


class Connection(abc.ABC):
    """A destination's client on one worker (made in the sink's ``setup``): sends one request at a time
    per thread; thread-safe."""

    @abc.abstractmethod
    def send(self, payload: Any, keys: Sequence[str], idempotency_key: str | None) -> Answer:
        """POST one batch (``payload`` from ``Destination.encode``, records keyed ``keys``); never raises
        for an HTTP error or a broken connection: the ``Answer`` says what happened."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the connection pool."""


class Destination(abc.ABC):
    """One CRM's batch API: its batch limit, request shape and answers.

    ``max_batch_size``: records per request the CRM takes. ``idempotency_keys``: whether it takes an
    ``Idempotency-Key`` (a retried request is then applied once); without one a re-sent batch stays
    harmless because every destination upserts by the record key. ``encode(records)`` returns
    ``(payload, keys, unserialisable)``: what ``Connection.send`` sends, the record keys in order, and
    dead-letter entries for records it cannot send (they are left out of the payload).
    ``connect(api_key, timeout, max_in_flight)`` opens the client (``timeout``: (connect, read) seconds).
    ``subset(payload, positions)``: the request of the records at ``positions`` only (to resend the
    unconfirmed ones, or to split a request refused whole into halves).
    ``key_permission``: what the key must be allowed, named in the error when the CRM refuses it.
    ``keys_case_insensitive``: the CRM takes two keys that differ in case only for one record (HubSpot's
    email): the sync state and the shard's duplicates compare them lowercased.
    """

    name: ClassVar[str]
    max_batch_size: ClassVar[int]
    idempotency_keys: ClassVar[bool] = False
    key_permission: ClassVar[str]

    def __init__(self, settings: PipelineSettings):
        self.settings = settings

    @property
    def keys_case_insensitive(self) -> bool:
        return False

    @abc.abstractmethod
    def encode(self, records: Sequence[dict[str, Any]]) -> tuple[Any, list[str], list[dict[str, Any]]]: ...

    @abc.abstractmethod
    def subset(self, payload: Any, positions: Sequence[int]) -> Any: ...

    @abc.abstractmethod
    def connect(self, api_key: str, timeout: tuple[float, float], max_in_flight: int) -> Connection: ...


# -- Dataflow's name rules ----------------------------------------------------------------------

#: A Dataflow job name, at most 1024 characters
#: (https://cloud.google.com/dataflow/docs/reference/rest/v1b3/projects.jobs#Job.FIELDS.name).
JOB_NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]{0,1022}[a-z0-9])?")
#: GCP resource labels, which Dataflow jobs carry: key and value patterns, and at most 64 labels
#: (https://cloud.google.com/compute/docs/labeling-resources#requirements).
LABEL_KEY_PATTERN = re.compile(r"[a-z][-_a-z0-9]{0,62}")
LABEL_VALUE_PATTERN = re.compile(r"[-_a-z0-9]{0,63}")
MAX_LABELS = 64


def validate_job_name(name: str) -> str:
    """Return ``name`` if Dataflow accepts it as a job name, else raise ``ValueError`` saying why."""
    if not JOB_NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a valid Dataflow job name: lowercase letters, digits and '-', starting with "
            "a letter, not ending with '-', at most 1024 characters"
        )
    return name


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Return ``labels`` as a dict if they are valid Dataflow (GCP resource) labels, else raise ``ValueError``.

    Keys: 1-63 characters, lowercase letter first, then lowercase letters, digits, ``-`` and ``_``.
    Values: 0-63 of the same characters. At most 64 labels.
    """
    bad = [
        f"{key}={value!r}"
        for key, value in labels.items()
        if not LABEL_KEY_PATTERN.fullmatch(str(key))
        or not isinstance(value, str)
        or not LABEL_VALUE_PATTERN.fullmatch(value)
    ]
    if bad:
        raise ValueError(
            f"invalid Dataflow labels {', '.join(bad)}: keys start with a lowercase letter; keys and values use "
            "lowercase letters, digits, '-' and '_' and are at most 63 characters"
        )
    if len(labels) > MAX_LABELS:
        raise ValueError(f"a Dataflow job takes at most {MAX_LABELS} labels, got {len(labels)}")
    return dict(labels)


def job_name(pipeline: str, shard_date: dt.date) -> str:
    """The deterministic job name of one export: ``<pipeline>-<YYYYMMDD>`` (e.g. ``crm-export-20261116``).

    ``pipeline`` is lowercased and every run of other characters than letters and digits becomes one
    ``-``. The same shard always gets the same name, which is what lets a retried launch find its job.
    Raises ``ValueError`` if the result is no valid job name (e.g. ``pipeline`` starts with a digit).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", pipeline.lower()).strip("-")
    return validate_job_name(f"{slug}-{shard_date:%Y%m%d}")
