"""Domain configuration of the Tableau refresh job: which content each business domain refreshes.

The file (default ``tableau_domains.yaml`` at the project root; ``TABLEAU_DOMAINS_FILE`` or a flow
parameter point elsewhere) holds ``defaults`` and one entry per domain under ``domains``::

    defaults: {pat_pool_block: tableau-pat-pool, timeout_seconds: 3600, cron: "0 7 * * *"}
    domains:
      sales:
        upstream: {flow: sales-pipeline}
        datasources: [{project: Sales, name: Orders}]
        workbooks: [{project: Sales, name: Sales Overview}]

A domain's content is listed by hand (``datasources``, ``workbooks``), taken from lineage
(``upstream_tables``: the Prefect asset keys of warehouse tables, ``tasks.tableau.assets``; the run
refreshes the extracts downstream of them), or both. A domain with ``upstream_tables`` also runs when
those tables are materialized (debounced by ``debounce_seconds``); ``refresh: stale_only`` skips the
content none of whose upstream tables changed since its last extract refresh. A domain signs in
through a PAT pool (``pat_pool_block``) or a connected app (``connected_app_block``); what a domain's
entry sets wins over ``defaults``. Adding a domain adds an entry there; ``python -m
deployments.domains`` writes its deployment into ``prefect.yaml``. No code. The file is read strictly
(``tasks.config_files``): duplicate and unknown keys are errors that name the line and the key path.
The keys: docs/tableau-refresh.md, "Domains".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.config_files import ConfigFileError, StrictModel, load_yaml_mapping, name_key
from tasks.tableau.assets import TableKey, parse_table_key
from tasks.tableau.refresh import ContentRef

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = PROJECT_ROOT / "tableau_domains.yaml"
FILE_ENV_VAR = "TABLEAU_DOMAINS_FILE"
_AUTH_FIELDS = {"pat_pool_block", "connected_app_block"}
_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
#: Default of ``debounce_seconds``: quiet time after a domain's last table materialization before its run.
DEFAULT_DEBOUNCE_SECONDS = 300.0


class DomainConfigError(ConfigFileError):
    """The domain configuration file is missing or not valid (the message names the file, the line and
    the key path), or lacks the requested domain (the message lists those it has). A ``ValueError``."""


DomainName = name_key(
    _NAME_PATTERN,
    "domain name",
    "use lowercase letters, digits and '-', starting with a letter or digit (it names the deployment and "
    "the artifacts), e.g. 'sales' or 'supply-chain'",
)


class ContentName(StrictModel):
    """A data source or workbook by name, and by project unless the name is unique on the site."""

    project: str | None = Field(default=None, min_length=1, description="the Tableau project holding it")
    name: str = Field(min_length=1, description="the data source's or workbook's name on the site")


class Upstream(StrictModel):
    """The flow (and optionally deployment) whose ``prefect.flow-run.Completed`` event starts the domain."""

    flow: str = Field(min_length=1, description="Name of the upstream flow.")
    deployment: str | None = Field(
        default=None, min_length=1, description="Name of the upstream deployment, to narrow the match."
    )


class DomainDefaults(StrictModel):
    """``defaults:``: the settings a domain takes unless its entry sets them. A domain that names either
    sign-in (``pat_pool_block`` or ``connected_app_block``) takes neither from here."""

    pat_pool_block: str | None = Field(
        default=None, min_length=1, description="Name of the Tableau PAT Pool block to lease from."
    )
    connected_app_block: str | None = Field(
        default=None,
        min_length=1,
        description="Name of the Tableau Connected App block to sign in with (instead of a PAT pool).",
    )
    cron: str | None = Field(
        default=None, description="Fallback schedule (UTC) if the upstream never completes."
    )
    timeout_seconds: float = Field(
        default=3600, gt=0, allow_inf_nan=False, description="Bound on triggering and waiting, in seconds."
    )
    incremental: bool = Field(default=False, description="Request incremental refreshes (REST API 3.25+).")
    refresh: Literal["all", "stale_only"] = Field(
        default="all",
        description="'all' refreshes every content; 'stale_only' skips content whose upstream tables were "
        "not materialized since its last extract refresh.",
    )
    debounce_seconds: float = Field(
        default=DEFAULT_DEBOUNCE_SECONDS,
        ge=10,  # Prefect refuses a proactive trigger's `within` under 10 s
        le=86400,
        allow_inf_nan=False,
        description="Quiet time after the last materialization of the domain's upstream tables before an "
        "asset-triggered run starts, in seconds.",
    )

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, cron: str | None) -> str | None:
        if cron is None:
            return None
        from prefect.client.schemas.schedules import CronSchedule  # the check `prefect deploy` makes

        try:
            CronSchedule(cron=cron, timezone="UTC")
        except ValidationError:
            raise ValueError(
                f"cron {cron!r} is not a cron expression Prefect takes: give five fields, minute hour "
                "day-of-month month day-of-week, e.g. '0 7 * * *' (07:00 UTC daily)"
            ) from None
        return cron

    @model_validator(mode="after")
    def _not_both_sign_ins(self) -> DomainDefaults:
        if self.pat_pool_block is not None and self.connected_app_block is not None:
            raise ValueError(
                "sets both pat_pool_block and connected_app_block: keep one (a domain signs in through a "
                "PAT pool or through a connected app)"
            )
        return self


def _table_key(key: str) -> str:
    parse_table_key(key)  # ValueError naming the key and the accepted forms
    return key


TableKeyString = Annotated[str, AfterValidator(_table_key)]


class DomainEntry(DomainDefaults):
    """One entry under ``domains:``, keyed by the domain's name: its content and upstream, and any of
    the ``defaults`` settings it overrides."""

    refused_keys: ClassVar[dict[str, str]] = {
        "name": "a domain's name is its key under 'domains:'; remove 'name:' (to rename the domain, "
        "rename its key)."
    }

    upstream: Upstream | None = Field(
        description="the flow whose completion starts the refresh, e.g. {flow: sales-pipeline}"
    )
    upstream_tables: tuple[TableKeyString, ...] = Field(
        default=(),
        description="asset keys of the warehouse tables whose downstream extracts the domain refreshes, "
        "e.g. athena://awsdatacatalog/sales/orders",
    )
    datasources: tuple[ContentName, ...] = ()
    workbooks: tuple[ContentName, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _upstream_optional_with_tables(cls, data: Any) -> Any:
        # A domain driven by its tables' materializations needs no upstream flow; otherwise it is required.
        if isinstance(data, dict) and data.get("upstream_tables") and "upstream" not in data:
            return {**data, "upstream": None}
        return data

    @field_validator("datasources", "workbooks", "upstream_tables")
    @classmethod
    def _no_repeats(cls, content: tuple[Any, ...], info: Any) -> tuple[Any, ...]:
        seen: dict[Any, int] = {}
        for i, item in enumerate(content):
            if item in seen:
                what = f"{item.project or '*'}/{item.name}" if isinstance(item, ContentName) else item
                raise ValueError(
                    f"{info.field_name}[{i}] repeats {info.field_name}[{seen[item]}] ({what}): remove one"
                )
            seen[item] = i
        return content

    @model_validator(mode="after")
    def _has_content(self) -> DomainEntry:
        if not self.datasources and not self.workbooks and not self.upstream_tables:
            raise ValueError(
                "lists no datasources, no workbooks and no upstream_tables: add at least one, e.g. "
                "datasources: [{project: Sales, name: Orders}] or upstream_tables: "
                "[athena://awsdatacatalog/sales/orders]"
            )
        return self


class Domain(DomainEntry):
    """One business domain, with the defaults applied: its Tableau content, its upstream, its limits."""

    name: str = Field(pattern=_NAME_PATTERN)

    @model_validator(mode="after")
    def _one_sign_in(self) -> Domain:
        if self.pat_pool_block is None and self.connected_app_block is None:
            raise ValueError(
                f"domain {self.name!r} names no sign-in: set pat_pool_block (a Tableau PAT Pool block) or "
                "connected_app_block (a Tableau Connected App block), in its entry or under defaults"
            )
        return self

    def content(self) -> list[ContentRef]:
        """The content the domain lists by hand as ``ContentRef``s (data sources first)."""
        return [ContentRef("datasource", c.project, c.name) for c in self.datasources] + [
            ContentRef("workbook", c.project, c.name) for c in self.workbooks
        ]

    def tables(self) -> list[TableKey]:
        """The domain's ``upstream_tables``, parsed (``tasks.tableau.assets.parse_table_key``)."""
        return [parse_table_key(key) for key in self.upstream_tables]


class DomainsFile(StrictModel):
    """The whole file: ``defaults`` and ``domains`` (name → entry), in the file's order."""

    defaults: DomainDefaults = Field(default=DomainDefaults(), description="settings every domain takes")
    domains: dict[DomainName, DomainEntry] = Field(default_factory=dict, description="one entry per domain")


def domains_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file to read: ``path``, else ``$TABLEAU_DOMAINS_FILE``, else the default."""
    return Path(path or os.environ.get(FILE_ENV_VAR) or DEFAULT_FILE)


def load_domains(path: str | os.PathLike[str] | None = None) -> dict[str, Domain]:
    """Read and validate every domain of the configuration file: name → ``Domain``, in file order.

    Raises:
        DomainConfigError: the file is missing, not YAML, holds a duplicate or unknown key or an invalid
            value; the message names the file, the line and the key path (every problem found).
    """
    file = domains_file(path)
    document = load_yaml_mapping(
        file,
        what="Domain configuration file",
        error=DomainConfigError,
        missing_hint=f"create it, or point {FILE_ENV_VAR} or the flow's config_path at it",
    )
    parsed = document.validate(DomainsFile)
    inherited = parsed.defaults.model_dump(exclude_unset=True)
    domains = {}
    for name, entry in parsed.domains.items():
        own = entry.model_dump(exclude_unset=True)
        # The sign-in a domain names replaces the default's other kind.
        taken = {k: v for k, v in inherited.items() if not (k in _AUTH_FIELDS and _AUTH_FIELDS & set(own))}
        try:
            domains[name] = Domain.model_validate({**taken, **own, "name": name})
        except ValidationError as exc:
            raise document.validation_error(exc, Domain, at=("domains", name)) from None
    return domains


def load_domain(name: str, path: str | os.PathLike[str] | None = None) -> Domain:
    """The configuration of one domain.

    Raises:
        DomainConfigError: the domain is not in the file (the message lists those that are), or the
            file is not valid (``load_domains``).
    """
    domains = load_domains(path)
    if name not in domains:
        raise DomainConfigError(
            f"Unknown domain {name!r}: {domains_file(path)} defines {sorted(domains)}. "
            "Add an entry under 'domains:' or fix the deployment's 'domain' parameter."
        )
    return domains[name]
