"""Domain configuration of the Tableau refresh job: which content each business domain refreshes.

The file (default ``tableau_domains.yaml`` at the project root; ``TABLEAU_DOMAINS_FILE`` or a flow
parameter point elsewhere) holds ``defaults`` and one entry per domain under ``domains``::

    defaults: {pat_pool_block: tableau-pat-pool, timeout_seconds: 3600, cron: "0 7 * * *"}
    domains:
      sales:
        upstream: {flow: sales-pipeline}
        datasources: [{project: Sales, name: Orders}]
        workbooks: [{project: Sales, name: Sales Overview}]

A domain signs in through a PAT pool (``pat_pool_block``) or a connected app
(``connected_app_block``); what a domain's entry sets wins over ``defaults``. Adding a domain adds an
entry there; ``python -m deployments.domains`` writes its deployment into ``prefect.yaml``. No code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.tableau.refresh import ContentRef

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = PROJECT_ROOT / "tableau_domains.yaml"
FILE_ENV_VAR = "TABLEAU_DOMAINS_FILE"
_AUTH_FIELDS = {"pat_pool_block", "connected_app_block"}


class DomainConfigError(ValueError):
    """The domain configuration file is missing, malformed, or lacks the requested domain."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContentName(_Strict):
    """A data source or workbook by name, and by project unless the name is unique on the site."""

    project: str | None = Field(default=None, min_length=1)
    name: str = Field(min_length=1)


class Upstream(_Strict):
    """The flow (and optionally deployment) whose ``prefect.flow-run.Completed`` event starts the domain."""

    flow: str = Field(min_length=1, description="Name of the upstream flow.")
    deployment: str | None = Field(
        default=None, description="Name of the upstream deployment, to narrow the match."
    )


class Domain(_Strict):
    """One business domain: its Tableau content, its upstream, its limits."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    pat_pool_block: str | None = Field(
        default=None, description="Name of the Tableau PAT Pool block to lease from."
    )
    connected_app_block: str | None = Field(
        default=None,
        description="Name of the Tableau Connected App block to sign in with (instead of a PAT pool).",
    )
    upstream: Upstream
    cron: str | None = Field(default=None, description="Fallback schedule if the upstream never completes.")
    timeout_seconds: float = Field(
        default=3600, gt=0, description="Bound on triggering and waiting, in seconds."
    )
    incremental: bool = Field(default=False, description="Request incremental refreshes (REST API 3.25+).")
    datasources: tuple[ContentName, ...] = ()
    workbooks: tuple[ContentName, ...] = ()

    @model_validator(mode="after")
    def _has_content(self) -> Domain:
        if not self.datasources and not self.workbooks:
            raise ValueError(f"domain {self.name!r} lists no datasources and no workbooks")
        if (self.pat_pool_block is None) == (self.connected_app_block is None):
            raise ValueError(
                f"domain {self.name!r} must name exactly one of pat_pool_block and connected_app_block"
            )
        return self

    def content(self) -> list[ContentRef]:
        """Every content of the domain as ``ContentRef``s (data sources first)."""
        return [ContentRef("datasource", c.project, c.name) for c in self.datasources] + [
            ContentRef("workbook", c.project, c.name) for c in self.workbooks
        ]


def domains_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file to read: ``path``, else ``$TABLEAU_DOMAINS_FILE``, else the default."""
    return Path(path or os.environ.get(FILE_ENV_VAR) or DEFAULT_FILE)


def load_domains(path: str | os.PathLike[str] | None = None) -> dict[str, Domain]:
    """Read and validate every domain of the configuration file.

    Raises:
        DomainConfigError: the file is missing or not valid, naming the file and the domain.
    """
    file = domains_file(path)
    try:
        raw: dict[str, Any] = yaml.safe_load(file.read_text()) or {}
    except FileNotFoundError:
        raise DomainConfigError(
            f"Domain configuration file {file} does not exist (set {FILE_ENV_VAR})."
        ) from None
    except yaml.YAMLError as exc:
        raise DomainConfigError(f"Domain configuration file {file} is not valid YAML: {exc}") from None
    defaults = raw.get("defaults") or {}
    domains = {}
    for name, entry in (raw.get("domains") or {}).items():
        entry = entry or {}
        # The sign-in a domain names replaces the default's other kind.
        inherited = {
            k: v for k, v in defaults.items() if not (k in _AUTH_FIELDS and _AUTH_FIELDS & set(entry))
        }
        try:
            domains[name] = Domain.model_validate({**inherited, **entry, "name": name})
        except ValidationError as exc:
            raise DomainConfigError(f"Domain {name!r} in {file} is not valid:\n{exc}") from None
    return domains


def load_domain(name: str, path: str | os.PathLike[str] | None = None) -> Domain:
    """The configuration of one domain.

    Raises:
        DomainConfigError: the domain is not in the file (the message lists those that are).
    """
    domains = load_domains(path)
    if name not in domains:
        raise DomainConfigError(
            f"Unknown domain {name!r}: {domains_file(path)} defines {sorted(domains)}. "
            "Add an entry under 'domains:' or fix the deployment's 'domain' parameter."
        )
    return domains[name]
