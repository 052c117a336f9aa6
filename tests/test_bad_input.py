"""Bad input gets a clear error, everywhere: one table of bad inputs and the exact message each gets.

The inputs: the two configuration files (``tableau_domains.yaml``, ``metadata_sources.yaml``), the
blocks (constructed with bad values) and the flows' parameters. Each row is one line of data:
``(id, call, expected error type, expected message)``; ``call`` takes the test's ``tmp_path``.

How a row's message is matched:
- a string, for the project's own errors (``DomainConfigError``, ``SourceConfigError``, Prefect's
  ``ParameterTypeError`` ...): the whole message, exactly; ``{tmp}`` stands for the test's ``tmp_path``;
- a string, for a pydantic ``ValidationError`` (a block or a model rejecting a value): the whole
  message of the validator, as pydantic prints it on its own line (``  [Value error, ]<message> [type=``);
- a compiled pattern: matched with ``re.search``, for a message of which a part varies.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect.exceptions import ParameterTypeError
from pydantic import ValidationError

from blocks.crm_export.crm import BrazeCrm, GenericCrmEndpoint, HubSpotCrm
from blocks.crm_export.vault import VaultKvSecret
from blocks.tableau import TableauConnectedApp, TableauPatPool, TableauPersonalAccessToken, TableauSite
from deployments.automations import stuck_pending_flow_runs_automation, zombie_flow_runs_automation
from deployments.bootstrap import deployment_work_pools
from flows.crm_export.export import crm_export
from flows.metadata.collect import collect_metadata
from flows.tableau.refresh import refresh_domain, refresh_domains
from tasks.config_files import ConfigFileError
from tasks.crm_export.tasks import BigQuerySource
from tasks.metadata.sources import SourceConfigError, load_sources
from tasks.tableau.domains import DomainConfigError, DomainDefaults, DomainEntry, load_domains

# --- the inputs --------------------------------------------------------------------------------------


def domains(text: str, call: Callable[[str], Any] = load_domains) -> Callable[[Path], Any]:
    """``call`` on a domain configuration file holding ``text``."""
    return lambda tmp: call(_write(tmp / "tableau_domains.yaml", text))


def sources(text: str, call: Callable[[str], Any] = load_sources) -> Callable[[Path], Any]:
    """``call`` on a metadata sources file holding ``text``."""
    return lambda tmp: call(_write(tmp / "metadata_sources.yaml", text))


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def local_source(tmp: Path) -> str:
    """A sources file with one valid source, ``local``: a Tableau extractor, a local landing, a file HWM."""
    (tmp / "landing").mkdir()
    return _write(
        tmp / "metadata_sources.yaml",
        "sources:\n  local:\n    extractor: {kind: tableau, pat_pool_block: unused}\n"
        f"    landing: {{kind: local, root: '{tmp / 'landing'}', landing_dir: out}}\n    hwm: {{store: file}}\n",
    )


SITE = TableauSite(server_url="https://tableau.example.com")
PAT = {"token_name": "pat-1", "token_secret": "pat-secret"}
APP = {
    "site": SITE,
    "client_id": "client-1",
    "secret_id": "secret-1",
    "secret_value": "s3cret",
    "username": "svc",
}
HUBSPOT = {"access_token": "pat-na1-token", "id_property": "external_id", "field_map": {"email": "email"}}
BRAZE = {
    "rest_endpoint": "https://rest.iad-01.braze.com",
    "api_key": "braze-key",
    "field_map": {"email": "email"},
}
VAULT = {
    "url": "https://vault.example.com:8200",
    "path": "analytics/crm",
    "key": "api_key",
    "token": "hvs.token",
}
KMS_KEY = "projects/analytics-prod/locations/europe-west1/keyRings/analytics/cryptoKeys/crm"
BQ = {"project": "analytics-prod", "dataset": "crm", "table_prefix": "crm_users"}


def dataflow(**overrides: Any) -> Any:
    """A ``DataflowOptions`` block with ``overrides`` (its credentials a block's name, resolved only when used)."""
    from blocks.crm_export.dataflow import DataflowOptions

    fields = {
        "gcp_credentials_block": "gcp-crm-export",
        "region": "europe-west1",
        "temp_location": "gs://analytics-tmp/dataflow",
        "api_key_kms_key": KMS_KEY,
    }
    return DataflowOptions(**{**fields, **overrides})


def kms_secret(**overrides: Any) -> Any:
    """A ``KmsEncryptedGcsSecret`` block with ``overrides`` (its credentials a block's name, resolved only when used)."""
    from blocks.crm_export.kms_gcs import KmsEncryptedGcsSecret

    fields = {
        "bucket": "analytics-secrets",
        "blob": "crm/api-key.enc",
        "kms_key_name": KMS_KEY,
        "gcp_credentials_block": "gcp-crm-export",
    }
    return KmsEncryptedGcsSecret(**{**fields, **overrides})


def export(tmp: Path, **parameters: Any) -> Any:
    """``crm_export`` with valid parameters but ``parameters``."""
    valid = {
        "source": BQ,
        "crm": {"block": "hubspot-crm/hubspot"},
        "runner": {"kind": "local", "registry_dir": str(tmp / "jobs")},
        "dead_letter_location": str(tmp / "dead-letters"),
    }
    return crm_export(**{**valid, **parameters})


#: The pieces the file rows are made of.
POOL = "defaults: {pat_pool_block: tableau-pat-pool}\n"
SALES = "{upstream: {flow: sales-pipeline}, datasources: [{project: Sales, name: Orders}]}"
VALID_DOMAINS = POOL + f"domains:\n  sales: {SALES}\n  marketing: {SALES}\n"
TABLEAU = "{kind: tableau, pat_pool_block: tableau-pat-pool}"
S3 = "{kind: s3, s3_bucket_block: catalog-landing, landing_dir: landing}"
ATHENA = "kind: athena, aws_credentials_block: aws, region: eu-west-1, output_location"
#: The keys the messages list, in the models' order: ``defaults`` and a domain's entry.
DEFAULTS_KEYS = ", ".join(DomainDefaults.model_fields)
DOMAIN_KEYS = ", ".join(DomainEntry.model_fields)
YAML_FIX = "Fix the syntax there (indentation, a missing ':' or quotes around a value holding ': ' or '#')."
PREFECT_REF = "See Prefect's prefect.yaml reference (deployments[].work_pool.name)."
DUPLICATE = "YAML would silently keep only the last one. Remove one of them or merge them."
UNKNOWN = "Remove it or correct its spelling."
NO_CONTENT = (
    "lists no datasources, no workbooks and no upstream_tables: add at least one, e.g. datasources: "
    "[{project: Sales, name: Orders}] or upstream_tables: [athena://awsdatacatalog/sales/orders]."
)
NO_QUERY = "without query string or fragment, e.g. https://host/path"
SHOWN = "(shown without user:password@, query string and fragment)"
SLUG = "'<block-type-slug>/<name>' of a Secret, Vault KV Secret or KMS Encrypted GCS Secret block holding it"

F = "Domain configuration file {tmp}/tableau_domains.yaml"
S = "Metadata sources file {tmp}/metadata_sources.yaml"

# fmt: off
ROWS: list[tuple[str, Callable[[Path], Any], type[BaseException], str | re.Pattern[str]]] = [
    # --- tableau_domains.yaml
    ("domains: top level is a list", domains("- sales\n"), DomainConfigError, F + ", line 1: expected a mapping (key: value lines) at the top level, got a list."),
    ("domains: top level is a string", domains("sales\n"), DomainConfigError, F + ", line 1: expected a mapping (key: value lines) at the top level, got 'sales'."),
    ("domains: defaults is a list", domains("defaults: [tableau-pat-pool]\ndomains: {}\n"), DomainConfigError, F + f", line 1, defaults: expected a mapping with the keys {DEFAULTS_KEYS}, got a list."),
    ("domains: a domain is a string", domains(POOL + "domains:\n  sales: Orders\n"), DomainConfigError, F + f", line 3, domains.sales: expected a mapping with the keys {DOMAIN_KEYS}, got 'Orders'."),
    ("domains: domains is a list", domains(POOL + "domains: [sales]\n"), DomainConfigError, F + ", line 2, domains: expected a mapping (key: value lines), got a list."),
    ("domains: a domain twice", domains(POOL + f"domains:\n  sales: {SALES}\n  sales: {SALES}\n"), DomainConfigError, F + f", line 4, domains.sales: duplicate key 'sales' (first at line 3); {DUPLICATE}"),
    ("domains: defaults twice", domains(POOL + POOL + "domains: {}\n"), DomainConfigError, F + f", line 2, defaults: duplicate key 'defaults' (first at line 1); {DUPLICATE}"),
    ("domains: a key twice in a flow mapping", domains(POOL + "domains:\n  sales: {upstream: {flow: a}, upstream: {flow: b}}\n"), DomainConfigError, F + f", line 3, domains.sales.upstream: duplicate key 'upstream' (first at line 3); {DUPLICATE}"),
    ("domains: not YAML", domains(POOL + "domains: {sales: {upstream: {flow: a}\n"), DomainConfigError, F + f", line 3, column 1: not valid YAML: expected ',' or '}}', but got '<stream end>' (while parsing a flow mapping at line 2). {YAML_FIX}"),
    ("domains: a tab indents", domains(POOL + "domains:\n\tsales: {}\n"), DomainConfigError, F + f", line 3, column 1: not valid YAML: found character '\\t' that cannot start any token (while scanning for the next token). {YAML_FIX}"),
    ("domains: two documents", domains(POOL + "---\n" + POOL), DomainConfigError, F + f", line 2, column 1: not valid YAML: but found another document (expected a single document in the stream at line 1). {YAML_FIX}"),
    ("domains: the file is missing", lambda tmp: load_domains(tmp / "nowhere.yaml"), DomainConfigError, "Domain configuration file {tmp}/nowhere.yaml does not exist: create it, or point TABLEAU_DOMAINS_FILE or the flow's config_path at it."),
    ("domains: unknown top-level key", domains(POOL + f"domain:\n  sales: {SALES}\n"), DomainConfigError, F + ", line 2, domain: unknown key 'domain'; expected one of: defaults, domains. " + UNKNOWN),
    ("domains: unknown key in defaults", domains("defaults: {pat_pool: tableau-pat-pool}\n"), DomainConfigError, F + f", line 1, defaults.pat_pool: unknown key 'pat_pool'; expected one of: {DEFAULTS_KEYS}. " + UNKNOWN),
    ("domains: unknown key in a content", domains(POOL + "domains:\n  sales:\n    upstream: {flow: a}\n    datasources:\n      - {projct: Sales, name: Orders}\n"), DomainConfigError, F + ", line 6, domains.sales.datasources[0].projct: unknown key 'projct'; expected one of: project, name. " + UNKNOWN),
    ("domains: a project is a list", domains(POOL + "domains:\n  sales:\n    upstream: {flow: a}\n    datasources:\n      - {project: Sales, name: Orders}\n      - {project: [Sales], name: Leads}\n"), DomainConfigError, F + ", line 7, domains.sales.datasources[1].project: expected a string, got a list."),
    ("domains: datasources is a mapping", domains(POOL + "domains:\n  sales:\n    upstream: {flow: a}\n    datasources: {project: Sales, name: Orders}\n"), DomainConfigError, F + ", line 5, domains.sales.datasources: expected a list, got a mapping."),
    ("domains: an empty content name", domains(POOL + "domains:\n  sales: {upstream: {flow: a}, datasources: [{project: Sales, name: ''}]}\n"), DomainConfigError, F + ", line 3, domains.sales.datasources[0].name: expected a non-empty string, got ''."),
    ("domains: a content twice", domains(POOL + "domains:\n  sales: {upstream: {flow: a}, workbooks: [{name: Overview}, {name: Overview}]}\n"), DomainConfigError, F + ", line 3, domains.sales.workbooks: workbooks[1] repeats workbooks[0] (*/Overview): remove one."),
    ("domains: a name with capitals", domains(POOL + f"domains:\n  Sales: {SALES}\n"), DomainConfigError, F + ", line 3, domains.Sales: domain name 'Sales' is not valid: use lowercase letters, digits and '-', starting with a letter or digit (it names the deployment and the artifacts), e.g. 'sales' or 'supply-chain'."),
    ("domains: name inside an entry", domains(POOL + "domains:\n  sales: {name: marketing, upstream: {flow: a}, datasources: [{name: Orders}]}\n"), DomainConfigError, F + ", line 3, domains.sales.name: a domain's name is its key under 'domains:'; remove 'name:' (to rename the domain, rename its key)."),
    ("domains: no upstream", domains(POOL + "domains:\n  sales: {datasources: [{name: Orders}]}\n"), DomainConfigError, F + ", line 3, domains.sales: required key 'upstream' (the flow whose completion starts the refresh, e.g. {flow: sales-pipeline}) is missing: add it."),
    ("domains: an upstream without flow", domains(POOL + "domains:\n  sales: {upstream: {deployment: nightly}, datasources: [{name: Orders}]}\n"), DomainConfigError, F + ", line 3, domains.sales.upstream: required key 'flow' (Name of the upstream flow) is missing: add it."),
    ("domains: no content", domains(POOL + "domains:\n  sales: {upstream: {flow: a}}\n"), DomainConfigError, F + ", line 3, domains.sales: " + NO_CONTENT),
    ("domains: no sign-in", domains(f"domains:\n  sales: {SALES}\n"), DomainConfigError, F + ", line 2, domains.sales: domain 'sales' names no sign-in: set pat_pool_block (a Tableau PAT Pool block) or connected_app_block (a Tableau Connected App block), in its entry or under defaults."),
    ("domains: both sign-ins", domains(POOL + "domains:\n  sales: {pat_pool_block: p, connected_app_block: a, upstream: {flow: a}, datasources: [{name: O}]}\n"), DomainConfigError, F + ", line 3, domains.sales: sets both pat_pool_block and connected_app_block: keep one (a domain signs in through a PAT pool or through a connected app)."),
    ("domains: timeout of 0", domains("defaults: {pat_pool_block: p, timeout_seconds: 0}\n"), DomainConfigError, F + ", line 1, defaults.timeout_seconds: expected a number greater than 0, got 0."),
    ("domains: timeout in words", domains(POOL + "domains:\n  sales: {timeout_seconds: 30m, upstream: {flow: a}, datasources: [{name: O}]}\n"), DomainConfigError, F + ", line 3, domains.sales.timeout_seconds: expected a number, got '30m'."),
    ("domains: incremental not a boolean", domains(POOL + "domains:\n  sales: {incremental: sometimes, upstream: {flow: a}, datasources: [{name: O}]}\n"), DomainConfigError, F + ", line 3, domains.sales.incremental: expected true or false, got 'sometimes'."),
    ("domains: a cron in words", domains("defaults: {pat_pool_block: p, cron: every day}\n"), DomainConfigError, F + ", line 1, defaults.cron: cron 'every day' is not a cron expression Prefect takes: give five fields, minute hour day-of-month month day-of-week, e.g. '0 7 * * *' (07:00 UTC daily)."),
    ("domains: three problems at once", domains("defaults: {pat_pool: p}\ndomains:\n  sales: {upstream: {}, datasources: [{name: O}]}\n  hr: {upstream: {flow: a}}\n"), DomainConfigError, F + " has 3 problems:\n- line 1, defaults.pat_pool: unknown key 'pat_pool'; expected one of: " + DEFAULTS_KEYS + ". " + UNKNOWN + "\n- line 3, domains.sales.upstream: required key 'flow' (Name of the upstream flow) is missing: add it.\n- line 4, domains.hr: " + NO_CONTENT),
    ("domains: an endless timeout", domains("defaults: {pat_pool_block: p, timeout_seconds: .inf}\n"), DomainConfigError, F + ", line 1, defaults.timeout_seconds: expected a finite number, got inf."),
    ("domains: a number for a name", domains(POOL + f"domains:\n  1: {SALES}\n"), DomainConfigError, F + ", line 3, domains[1]: the key 1 is not a name: write it as a string, e.g. '1'."),
    ("domains: the file is a directory", lambda tmp: load_domains(tmp), DomainConfigError, "Domain configuration file {tmp} cannot be read (Is a directory): it must be a UTF-8 text file."),
    # --- metadata_sources.yaml
    ("sources: top level is a list", sources("- athena-prod\n"), SourceConfigError, S + ", line 1: expected a mapping (key: value lines) at the top level, got a list."),
    ("sources: an empty file", sources(""), SourceConfigError, S + ", line 1: required key 'sources' (one entry per source, keyed by its name) is missing: add it."),
    ("sources: sources is a list", sources("sources: [athena-prod]\n"), SourceConfigError, S + ", line 1, sources: expected a mapping (key: value lines), got a list."),
    ("sources: a source is a string", sources("sources:\n  prod: athena\n"), SourceConfigError, S + ", line 2, sources.prod: expected a mapping with the keys extractor, landing, hwm, compress, mask, schedule, got 'athena'."),
    ("sources: a source twice", sources(f"sources:\n  prod: {{extractor: {TABLEAU}, landing: {S3}}}\n  prod: {{extractor: {TABLEAU}, landing: {S3}}}\n"), SourceConfigError, S + f", line 3, sources.prod: duplicate key 'prod' (first at line 2); {DUPLICATE}"),
    ("sources: a key twice in an extractor", sources("sources:\n  prod:\n    extractor:\n      kind: tableau\n      kind: athena\n"), SourceConfigError, S + f", line 5, sources.prod.extractor.kind: duplicate key 'kind' (first at line 4); {DUPLICATE}"),
    ("sources: name inside an entry", sources(f"sources:\n  prod: {{name: other, extractor: {TABLEAU}, landing: {S3}}}\n"), SourceConfigError, S + ", line 2, sources.prod.name: a source's name is its key under 'sources:' (the HWM and the files are named after it); remove 'name:' (to rename the source, rename its key)."),
    ("sources: a name with a dot", sources(f"sources:\n  athena.prod: {{extractor: {TABLEAU}, landing: {S3}}}\n"), SourceConfigError, S + ", line 2, sources['athena.prod']: source name 'athena.prod' is not valid: use lowercase letters, digits, '-' and '_', starting with a letter or digit (it names the files, the HWM and the artifact), e.g. 'athena-prod'."),
    ("sources: unknown extractor kind", sources(f"sources:\n  prod:\n    extractor: {{kind: bigquery}}\n    landing: {S3}\n"), SourceConfigError, S + ", line 3, sources.prod.extractor.kind: 'bigquery' is not known: use one of athena, tableau."),
    ("sources: extractor without kind", sources(f"sources:\n  prod:\n    extractor: {{pat_pool_block: p}}\n    landing: {S3}\n"), SourceConfigError, S + ", line 3, sources.prod.extractor: required key 'kind' is missing: add it, one of athena, tableau."),
    ("sources: no landing", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n"), SourceConfigError, S + ", line 2, sources.prod: required key 'landing' (where the files land: kind s3, azure_blob, gcs or local) is missing: add it."),
    ("sources: unknown key in a landing", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {{kind: s3, bucket: b, s3_bucket_block: b, landing_dir: l}}\n"), SourceConfigError, S + ", line 4, sources.prod.landing.bucket: unknown key 'bucket'; expected one of: kind, s3_bucket_block, landing_dir. " + UNKNOWN),
    ("sources: athena results not on S3", sources(f"sources:\n  prod:\n    extractor: {{{ATHENA}: gs://results/}}\n    landing: {S3}\n"), SourceConfigError, S + ", line 3, sources.prod.extractor.output_location: expected text matching ^s3://, got 'gs://results/'."),
    ("sources: 90 days of Athena history", sources(f"sources:\n  prod:\n    extractor: {{{ATHENA}: s3://r/, history_days: 90}}\n    landing: {S3}\n"), SourceConfigError, S + ", line 3, sources.prod.extractor.history_days: expected a number less than or equal to 45, got 90."),
    ("sources: unknown HWM store", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {S3}\n    hwm: {{store: database}}\n"), SourceConfigError, S + ", line 5, sources.prod.hwm.store: expected 'variable' or 'file', got 'database'."),
    ("sources: a negative lag", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {S3}\n    hwm: {{lag_minutes: -5}}\n"), SourceConfigError, S + ", line 5, sources.prod.hwm.lag_minutes: expected a number greater than or equal to 0, got -5."),
    ("sources: compress not a boolean", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {S3}\n    compress: gzip\n"), SourceConfigError, S + ", line 5, sources.prod.compress: expected true or false, got 'gzip'."),
    ("sources: a SAS token in the account URL", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {{kind: azure_blob, account_url: 'https://acct.blob.core.windows.net/?sv=2024&sig=SECRET', container: c, sas_token_secret: sas, landing_dir: l}}\n"), SourceConfigError, S + ", line 4, sources.prod.landing.account_url: account_url 'https://acct.blob.core.windows.net/' (shown without query string) must be the account's URL alone, e.g. https://<account>.blob.core.windows.net: the SAS token goes in the Secret block named by sas_token_secret."),
    ("sources: plaintext http to an Azure account", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {{kind: azure_blob, account_url: 'http://acct.blob.example.com', container: c, sas_token_secret: sas, landing_dir: l}}\n"), SourceConfigError, S + ", line 4, sources.prod.landing: Azure Blob landing: landing.account_url 'http://acct.blob.example.com' is plaintext http:// to acct.blob.example.com, which is not a loopback host: what is sent there, credentials included, would cross the network unencrypted. Use https:// in landing.account_url; or, to accept that risk, set allow_insecure_transport: true (a warning is then logged each time a connection is set up). Loopback hosts need neither."),
    ("sources: an empty bucket block name", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {{kind: s3, s3_bucket_block: '', landing_dir: l}}\n"), SourceConfigError, S + ", line 4, sources.prod.landing.s3_bucket_block: expected a non-empty string, got ''."),
    ("sources: not YAML", sources("sources:\n  prod:\n    extractor: {kind: tableau\n"), SourceConfigError, S + f", line 4, column 1: not valid YAML: expected ',' or '}}', but got '<stream end>' (while parsing a flow mapping at line 3). {YAML_FIX}"),
    ("sources: the file is missing", lambda tmp: load_sources(tmp / "nowhere.yaml"), SourceConfigError, "Metadata sources file {tmp}/nowhere.yaml does not exist: create it, or point METADATA_SOURCES_FILE or the flow's sources_file at it."),
    ("sources: an Athena endpoint over http:// to another host", sources(f"sources:\n  prod:\n    extractor: {{{ATHENA}: s3://r/, endpoint_url: 'http://10.0.0.8:5000'}}\n    landing: {S3}\n"), SourceConfigError, S + ", line 3, sources.prod.extractor.endpoint_url: endpoint_url 'http://10.0.0.8:5000' is plaintext http:// to 10.0.0.8, which is not a loopback host: the AWS requests, their signature and session token included, would cross the network unencrypted. Use https:// (AWS and its VPC endpoints take it); http:// is for an emulator on this machine (localhost, 127.0.0.1) only."),
    ("sources: an Athena endpoint with credentials", sources(f"sources:\n  prod:\n    extractor: {{{ATHENA}: s3://r/, endpoint_url: 'https://AKIA:SECRET@athena.eu-west-1.amazonaws.com'}}\n    landing: {S3}\n"), SourceConfigError, S + ", line 3, sources.prod.extractor.endpoint_url: endpoint_url 'https://athena.eu-west-1.amazonaws.com' (shown without user:password@, query string and fragment) must be an endpoint's URL alone, https://host[:port], e.g. https://athena.eu-west-1.amazonaws.com or a VPC endpoint's; the credentials go in the AwsCredentials block."),
    ("sources: an Athena endpoint that is no URL", sources(f"sources:\n  prod:\n    extractor: {{{ATHENA}: s3://r/, endpoint_url: athena.eu-west-1.amazonaws.com}}\n    landing: {S3}\n"), SourceConfigError, S + ", line 3, sources.prod.extractor.endpoint_url: endpoint_url 'athena.eu-west-1.amazonaws.com' (shown without user:password@, query string and fragment) must be an endpoint's URL alone, https://host[:port], e.g. https://athena.eu-west-1.amazonaws.com or a VPC endpoint's; the credentials go in the AwsCredentials block."),
    ("sources: a landing_dir leaving the target", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {{kind: s3, s3_bucket_block: b, landing_dir: catalog/../../other}}\n"), SourceConfigError, S + ", line 4, sources.prod.landing.landing_dir: landing_dir 'catalog/../../other' must not contain '..': the files and the HWM stay inside the landing target; give a path under it, e.g. catalog/athena/landing."),
    ("sources: a landing_dir with backslashes", sources(f"sources:\n  prod:\n    extractor: {TABLEAU}\n    landing: {{kind: gcs, gcs_bucket_block: b, landing_dir: 'catalog\\landing'}}\n"), SourceConfigError, S + ", line 4, sources.prod.landing.landing_dir: landing_dir 'catalog\\\\landing': separate path segments with '/', not '\\'."),
    # --- blocks
    ("TableauSite: a URL without scheme", lambda _: TableauSite(server_url="tableau.example.com"), ValidationError, "server_url must start with http:// or https://, got 'tableau.example.com'"),
    ("TableauSite: a password in the URL", lambda _: TableauSite(server_url="https://admin:pa55@tableau.example.com"), ValidationError, "server_url 'https://tableau.example.com' must not carry user:password@ (left out here): runs sign in with a PAT or a connected app's JWT, and the URL is shown wherever the site is (the block, logs, messages). Remove them"),
    ("TableauSite: a timeout of 0", lambda _: TableauSite(server_url="https://t.example.com", request_timeout_seconds=0), ValidationError, "Input should be greater than 0"),
    ("TableauPatPool: a site with a misspelt field", lambda _: TableauPatPool(site={"server_url": "https://t.example.com", "site_url": "mysite"}, pat_block_names=["pat-1"]), ValidationError, "Extra inputs are not permitted"),
    ("TableauPatPool: a site given as its URL", lambda _: TableauPatPool(site="https://t.example.com", pat_block_names=["pat-1"]), ValidationError, "Input should be a valid dictionary or instance of TableauSite"),
    ("TableauConnectedApp: a site URL without scheme", lambda _: TableauConnectedApp(**{**APP, "site": {"server_url": "tableau.example.com"}}), ValidationError, "server_url must start with http:// or https://, got 'tableau.example.com'"),
    ("TableauPersonalAccessToken: no secret", lambda _: TableauPersonalAccessToken(token_name="pat-1"), ValidationError, "PAT 'pat-1': set exactly one of token_secret and token_secret_source"),
    ("TableauPersonalAccessToken: two secrets", lambda _: TableauPersonalAccessToken(**PAT, token_secret_source={"kind": "secret", "block": "pat-1"}), ValidationError, "PAT 'pat-1': set exactly one of token_secret and token_secret_source"),
    ("TableauPersonalAccessToken: SSM without parameter", lambda _: TableauPersonalAccessToken(token_name="pat-1", token_secret_source={"kind": "ssm-parameter", "block": "aws"}), ValidationError, "'parameter' is required for kind ssm-parameter, and only for it"),
    ("TableauPatPool: no PAT", lambda _: TableauPatPool(site=SITE, pat_block_names=[]), ValidationError, "a pool holds 1 to 10 PATs (Tableau caps PATs per user and device), got 0"),
    ("TableauPatPool: 11 PATs", lambda _: TableauPatPool(site=SITE, pat_block_names=[f"pat-{i}" for i in range(11)]), ValidationError, "a pool holds 1 to 10 PATs (Tableau caps PATs per user and device), got 11"),
    ("TableauPatPool: a PAT twice", lambda _: TableauPatPool(site=SITE, pat_block_names=["pat-1", "pat-1"]), ValidationError, "pat_block_names has duplicates: ['pat-1', 'pat-1']"),
    ("TableauPatPool: a lease of 30 s", lambda _: TableauPatPool(site=SITE, pat_block_names=["pat-1"], lease_duration_seconds=30), ValidationError, "Input should be greater than or equal to 60"),
    ("TableauPatPool: a prefix with a space", lambda _: TableauPatPool(site=SITE, pat_block_names=["pat-1"], concurrency_limit_prefix="tableau pat"), ValidationError, "global concurrency limit name 'tableau pat-pool' is not valid: use letters, digits, '-', '_' or '.'"),
    ("TableauConnectedApp: no secret", lambda _: TableauConnectedApp(**{**APP, "secret_value": None}), ValidationError, "connected app 'client-1': set exactly one of secret_value and secret_value_source"),
    ("TableauConnectedApp: a scope without prefix", lambda _: TableauConnectedApp(**APP, scopes=["tasks:run"]), ValidationError, "scopes look like tableau:<resource>:<action>, e.g. tableau:tasks:run; got ['tasks:run']"),
    ("TableauConnectedApp: a JWT for 15 minutes", lambda _: TableauConnectedApp(**APP, token_lifetime_seconds=900), ValidationError, "Input should be less than or equal to 600"),
    ("TableauConnectedApp: a refresh capacity of 0", lambda _: TableauConnectedApp(**APP, refresh_capacity=0), ValidationError, "Input should be greater than or equal to 1"),
    ("HubSpotCrm: upsert by the record ID", lambda _: HubSpotCrm(**{**HUBSPOT, "id_property": "hs_object_id"}), ValidationError, "id_property 'hs_object_id': HubSpot upserts only by a property with unique values, and answers 'Unable to perform update/upsert by non-unique 0-1 property' for the record ID; use email, or a custom contact property created with unique values required (hasUniqueValue), such as external_id"),
    ("HubSpotCrm: a token and a token block", lambda _: HubSpotCrm(**HUBSPOT, access_token_block="secret/hubspot"), ValidationError, f"set either access_token (the key itself, kept as a secret) or access_token_block (the {SLUG}), not both or neither"),
    ("HubSpotCrm: a token block that is no slug", lambda _: HubSpotCrm(**{**HUBSPOT, "access_token": None}, access_token_block="hubspot-token"), ValidationError, "access_token_block 'hubspot-token' is not a block slug '<block-type-slug>/<name>', e.g. 'secret/crm-api-key' or 'vault-kv-secret/crm-api-key'"),
    ("HubSpotCrm: a base URL with the path", lambda _: HubSpotCrm(**HUBSPOT, base_url="https://api.hubapi.com/crm/v3"), ValidationError, "base_url 'https://api.hubapi.com/crm/v3': give the API base only, e.g. https://api.hubapi.com (the export adds /crm/v3/objects/contacts/batch/upsert)"),
    ("HubSpotCrm: three limit increases", lambda _: HubSpotCrm(**HUBSPOT, api_limit_increases=3), ValidationError, "Input should be less than or equal to 2"),
    ("HubSpotCrm: an unknown tier", lambda _: HubSpotCrm(**HUBSPOT, tier="gold"), ValidationError, "Input should be 'free', 'starter', 'professional' or 'enterprise'"),
    ("HubSpotCrm: a token with a newline", lambda _: HubSpotCrm(**{**HUBSPOT, "access_token": "pat-na1-token\n"}), ValidationError, "access_token: the CRM API key (14 characters) holds whitespace or characters a bearer token cannot (RFC 6750): check the secret for a trailing newline or spaces"),
    ("BrazeCrm: the endpoint with /users/track", lambda _: BrazeCrm(**{**BRAZE, "rest_endpoint": "https://rest.iad-01.braze.com/users/track"}), ValidationError, "rest_endpoint 'https://rest.iad-01.braze.com/users/track': give the instance's REST endpoint only, e.g. https://rest.iad-01.braze.com (the export adds /users/track)"),
    ("BrazeCrm: an endpoint without scheme", lambda _: BrazeCrm(**{**BRAZE, "rest_endpoint": "rest.iad-01.braze.com"}), ValidationError, f"rest_endpoint must be an http(s) URL {NO_QUERY}; got 'rest.iad-01.braze.com' {SHOWN}"),
    ("BrazeCrm: 100 objects per request", lambda _: BrazeCrm(**BRAZE, objects_per_request=100), ValidationError, "Input should be less than or equal to 75"),
    ("GenericCrmEndpoint: an FTP URL", lambda _: GenericCrmEndpoint(url="ftp://crm.example.com/batch", api_key="k"), ValidationError, f"url must be an http(s) URL {NO_QUERY}; got 'ftp://crm.example.com/batch' {SHOWN}"),
    ("GenericCrmEndpoint: no key", lambda _: GenericCrmEndpoint(url="https://crm.example.com/batch"), ValidationError, f"set either api_key (the key itself, kept as a secret) or api_key_block (the {SLUG}), not both or neither"),
    ("GenericCrmEndpoint: a negative rate", lambda _: GenericCrmEndpoint(url="https://crm.example.com/batch", api_key="k", requests_per_second=-1), ValidationError, "Input should be greater than or equal to 0"),
    ("DataflowOptions: a zone for a region", lambda _: dataflow(region="europe-west1-b"), ValidationError, "'europe-west1-b' is not a Dataflow region such as 'europe-west1' or 'us-central1'"),
    ("DataflowOptions: a temp location on S3", lambda _: dataflow(temp_location="s3://bucket/tmp"), ValidationError, "'s3://bucket/tmp' is not a gs://BUCKET/PATH URL (Beam would otherwise fall back to a default bucket)"),
    ("DataflowOptions: a KMS key version", lambda _: dataflow(api_key_kms_key=KMS_KEY + "/cryptoKeyVersions/1"), ValidationError, f"'{KMS_KEY}/cryptoKeyVersions/1' is not a Cloud KMS key name: projects/P/locations/L/keyRings/R/cryptoKeys/K"),
    ("DataflowOptions: a subnetwork in another region", lambda _: dataflow(subnetwork="regions/us-central1/subnetworks/crm"), ValidationError, "subnetwork 'regions/us-central1/subnetworks/crm' is in us-central1, but the workers run in europe-west1: Dataflow needs a subnetwork of the job's region"),
    ("DataflowOptions: a network URL", lambda _: dataflow(network="https://www.googleapis.com/compute/v1/projects/p/global/networks/vpc"), ValidationError, "network 'https://www.googleapis.com/compute/v1/projects/p/global/networks/vpc': give the VPC network's name, not a URL"),
    ("DataflowOptions: a user for a service account", lambda _: dataflow(service_account_email="crm@example.com"), ValidationError, "'crm@example.com' is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)"),
    ("DataflowOptions: experiments joined by commas", lambda _: dataflow(experiments=["use_runner_v2,shuffle_mode=service"]), ValidationError, "experiments ['use_runner_v2,shuffle_mode=service']: one non-empty experiment per entry, without commas"),
    ("DataflowOptions: 0 workers", lambda _: dataflow(max_num_workers=0), ValidationError, "Input should be greater than or equal to 1"),
    ("DataflowOptions: the former nested credentials", lambda _: dataflow(gcp_credentials={"project": "analytics-prod"}), ValidationError, "gcp_credentials: this block no longer takes it; save the credentials as a GCP Credentials block of their own and give its name in gcp_credentials_block (empty: the process's Application Default Credentials), then save this block again"),
    ("DataflowOptions: a block slug for the credentials", lambda _: dataflow(gcp_credentials_block="gcp-credentials/gcp-crm-export"), ValidationError, "gcp_credentials_block 'gcp-credentials/gcp-crm-export': give the GCP Credentials block's name (e.g. 'gcp-crm-export'), not a block document slug"),
    ("VaultKvSecret: a URL without scheme", lambda _: VaultKvSecret(**{**VAULT, "url": "vault.example.com:8200"}), ValidationError, "url must start with http:// or https://, got 'vault.example.com:8200'"),
    ("VaultKvSecret: token auth without token", lambda _: VaultKvSecret(**{**VAULT, "token": None}), ValidationError, "auth_method 'token' needs token (a Vault token with read on the secret)"),
    ("VaultKvSecret: a token with a newline", lambda _: VaultKvSecret(**{**VAULT, "token": "hvs.token\n"}), ValidationError, "token is empty or holds whitespace (a trailing newline?)"),
    ("VaultKvSecret: Kubernetes auth without role", lambda _: VaultKvSecret(**VAULT, auth_method="kubernetes"), ValidationError, "auth_method 'kubernetes' needs kubernetes_role (the Vault role bound to the pod's service account)"),
    ("VaultKvSecret: AppRole auth without role ID", lambda _: VaultKvSecret(**VAULT, auth_method="approle"), ValidationError, "auth_method 'approle' needs approle_role_id (and usually approle_secret_id)"),
    ("VaultKvSecret: an empty path", lambda _: VaultKvSecret(**{**VAULT, "path": "/"}), ValidationError, "must not be empty"),
    ("KmsEncryptedGcsSecret: a folder for the blob", lambda _: kms_secret(blob="crm/"), ValidationError, "blob must be the path of an object, got 'crm/'"),
    ("KmsEncryptedGcsSecret: a key version", lambda _: kms_secret(kms_key_name=KMS_KEY + "/cryptoKeyVersions/3"), ValidationError, f"kms_key_name must be the full resource name of a Cloud KMS key, projects/<project>/locations/<location>/keyRings/<key ring>/cryptoKeys/<key> (e.g. projects/my-project/locations/europe-west1/keyRings/analytics/cryptoKeys/crm), got '{KMS_KEY}/cryptoKeyVersions/3'. Give the key, not a key version: decrypt finds the version from the ciphertext."),
    ("KmsEncryptedGcsSecret: the former nested bucket", lambda _: kms_secret(gcs_bucket={"bucket": "analytics-secrets"}), ValidationError, "gcs_bucket: this block no longer takes it; give the bucket's name in bucket and the object's full name in blob (with the former bucket_folder in front), and the name of a GCP Credentials block in gcp_credentials_block (empty: the process's Application Default Credentials), then save this block again"),
    ("KmsEncryptedGcsSecret: a gs:// URL for the bucket", lambda _: kms_secret(bucket="gs://analytics-secrets/crm"), ValidationError, "bucket must be the bucket's name, not a gs:// URL: 'analytics-secrets'; the object's path goes in blob ('crm')"),
    # --- flow parameters
    ("refresh_domain: an unknown domain", domains(VALID_DOMAINS, lambda file: refresh_domain("salse", file)), DomainConfigError, "Unknown domain 'salse': {tmp}/tableau_domains.yaml defines ['marketing', 'sales']. Add an entry under 'domains:' or fix the deployment's 'domain' parameter."),
    ("refresh_domain: a domain file with a duplicate", domains(POOL + f"domains:\n  sales: {SALES}\n  sales: {SALES}\n", lambda file: refresh_domain("sales", file)), DomainConfigError, F + f", line 4, domains.sales: duplicate key 'sales' (first at line 3); {DUPLICATE}"),
    ("refresh_domains: one unknown domain", domains(VALID_DOMAINS, lambda file: refresh_domains(["sales", "hr"], file)), DomainConfigError, "Unknown domain 'hr': {tmp}/tableau_domains.yaml defines ['marketing', 'sales']. Add an entry under 'domains:' or fix the deployment's 'domain' parameter."),
    ("refresh_domains: no domain configured", domains(POOL + "domains: {}\n", lambda file: refresh_domains(None, file)), DomainConfigError, "{tmp}/tableau_domains.yaml defines no domains: nothing to refresh."),
    ("collect_metadata: an unknown source", lambda tmp: collect_metadata("athena-dev", sources_file=local_source(tmp)), SourceConfigError, "unknown metadata source 'athena-dev' in {tmp}/metadata_sources.yaml; configured sources: local. Add an entry under 'sources:' or fix the flow's 'source' parameter."),
    ("collect_metadata: a source carrying name:", sources(f"sources:\n  prod: {{name: other, extractor: {TABLEAU}, landing: {S3}}}\n", lambda file: collect_metadata("other", sources_file=file)), SourceConfigError, S + ", line 2, sources.prod.name: a source's name is its key under 'sources:' (the HWM and the files are named after it); remove 'name:' (to rename the source, rename its key)."),
    ("collect_metadata: now in the future", lambda tmp: collect_metadata("local", sources_file=local_source(tmp), now=dt.datetime(2999, 1, 1, tzinfo=dt.UTC)), ValueError, re.compile(r"\Anow 2999-01-01T00:00:00\+00:00 is later than the current time \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\): a high-water mark in the future would skip the data until then for good; leave now unset, or give an instant in the past\Z")),
    ("collect_metadata: a naive now", lambda tmp: collect_metadata("local", sources_file=local_source(tmp), now=dt.datetime(2026, 1, 1)), ValueError, "now must be timezone-aware (UTC), got naive 2026-01-01T00:00:00"),
    # --- prefect.yaml, as the bootstrap reads its work pools (python -m deployments.bootstrap)
    ("prefect.yaml: deployments is a mapping", lambda tmp: deployment_work_pools(Path(_write(tmp / "prefect.yaml", "deployments: {work_pool: x}\n"))), ConfigFileError, "Prefect project file {tmp}/prefect.yaml, line 1, deployments: expected a list of deployments, got a mapping. " + PREFECT_REF),
    ("prefect.yaml: a work pool given by its name alone", lambda tmp: deployment_work_pools(Path(_write(tmp / "prefect.yaml", "deployments:\n  - work_pool: tableau\n"))), ConfigFileError, "Prefect project file {tmp}/prefect.yaml, line 2, deployments[0].work_pool: expected a mapping with the work pool's name, got 'tableau'. " + PREFECT_REF),
    ("prefect.yaml: a work pool name that is a number", lambda tmp: deployment_work_pools(Path(_write(tmp / "prefect.yaml", "deployments:\n  - name: a\n    work_pool: {name: 3}\n"))), ConfigFileError, "Prefect project file {tmp}/prefect.yaml, line 3, deployments[0].work_pool.name: expected the work pool's name (text), got 3. " + PREFECT_REF),
    # --- the automations' bounds (python -m deployments.bootstrap --pending-seconds)
    ("automations: a pending bound of 5 s", lambda _: stuck_pending_flow_runs_automation(pending_seconds=5), ValueError, "pending_seconds=5 must be a number of seconds of at least 10, longer than a worker takes from its claim to Running (3-15 s for a process worker, up to 35 s on a loaded host), or runs starting normally would be put back; the default is 120"),
    ("automations: an endless pending bound", lambda _: stuck_pending_flow_runs_automation(pending_seconds=float("inf")), ValueError, "pending_seconds=inf must be a number of seconds of at least 10, longer than a worker takes from its claim to Running (3-15 s for a process worker, up to 35 s on a loaded host), or runs starting normally would be put back; the default is 120"),
    ("automations: a crash window of one heartbeat", lambda _: zombie_flow_runs_automation(within_seconds=30), ValueError, "within_seconds=30 must exceed the heartbeat period (30 s), or every live run is marked Crashed between two heartbeats."),
    ("crm_export: a dead-letter ratio of 2", lambda tmp: export(tmp, max_dead_letter_ratio=2), ParameterTypeError, "Flow run received invalid parameters:\n - max_dead_letter_ratio: Input should be less than or equal to 1"),
    ("crm_export: BigQuery over http:// to another host", lambda tmp: export(tmp, source={**BQ, "api_endpoint": "http://bigquery.example.com"}), ParameterTypeError, "Flow run received invalid parameters:\n - source.api_endpoint: Value error, api_endpoint 'http://bigquery.example.com': http:// is for an emulator on this machine (a loopback host) only; BigQuery and its endpoints take https://"),
    ("BigQuerySource: Storage API over http:// to another host", lambda _: BigQuerySource(**BQ, storage_api_endpoint="http://10.0.0.8:9060"), ValidationError, "storage_api_endpoint 'http://10.0.0.8:9060': http:// is for an emulator on this machine (a loopback host) only; BigQuery and its endpoints take https://"),
    ("BigQuerySource: credentials over http://", lambda _: BigQuerySource(**BQ, gcp_credentials_block="gcp", api_endpoint="http://localhost:9050"), ValidationError, "gcp_credentials_block 'gcp' with the plaintext api_endpoint 'http://localhost:9050': credentials are never sent over http://; drop one of the two"),
]
# fmt: on


@pytest.mark.parametrize(
    ("call", "error", "expected"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_bad_input_gets_a_clear_error(
    call: Callable[[Path], Any], error: type[BaseException], expected: str | re.Pattern[str], tmp_path: Path
) -> None:
    if isinstance(expected, re.Pattern):
        pattern: str | re.Pattern[str] = expected
    else:
        message = expected.replace("{tmp}", str(tmp_path))
        if issubclass(error, ValidationError):  # the validator's whole message, on its own line
            pattern = rf"(?m)^  (?:Value error, )?{re.escape(message)} \[type="
        else:
            pattern = rf"\A{re.escape(message)}\Z"
    with pytest.raises(error, match=pattern):
        call(tmp_path)


@pytest.mark.parametrize("page", ["README.md", "docs/operations.md"])
def test_the_docs_state_how_many_bad_inputs_the_table_holds(page: str) -> None:
    """README.md and docs/operations.md ("Reliability") give the table's size; it stays the table's."""
    text = (Path(__file__).resolve().parents[1] / page).read_text()
    assert re.findall(r"\*\*(\d+) bad inputs\*\*", text) == [str(len(ROWS))]
    assert len(ROWS) >= 40  # issue 23: at least 40 bad inputs, each with its exact message


# --- beyond the table ------------------------------------------------------------------------------

#: One value of each YAML type (null, string, integer, float, boolean, sequence, mapping), put in place
#: of each value of a valid file in turn.
ODD_VALUES = [None, "", -1, 2.5, True, ["x"], {"kind": "x"}]


def _replaced(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    copy[head] = _replaced(tree[head], tuple(rest), value)
    return copy


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of ``tree``, into the first item of each list only."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree[:1]) if isinstance(tree, list) else []
    return [prefix] + [p for key, value in items for p in _paths(value, prefix + (key,))]


@pytest.mark.parametrize("name", ["tableau_domains.yaml", "metadata_sources.yaml"])
def test_any_value_anywhere_in_the_project_files_is_a_config_error(name: str, tmp_path: Path) -> None:
    """Each value of the project's own files replaced by a value of each YAML type: the file loads, or
    the file's own error (a ``ValueError`` naming the file and a line) says why; nothing else escapes."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    tree = yaml.safe_load((root / name).read_text())
    load, error = (
        (load_domains, DomainConfigError) if name.startswith("tableau") else (load_sources, SourceConfigError)
    )
    file = tmp_path / name
    tried = 0
    for path in _paths(tree):
        for value in ODD_VALUES:
            file.write_text(yaml.safe_dump(_replaced(tree, path, value)))
            tried += 1
            try:
                load(file)
            except error as exc:
                assert isinstance(exc, ConfigFileError)
                assert isinstance(exc, ValueError)
                assert str(exc).startswith(
                    f"{'Domain configuration' if error is DomainConfigError else 'Metadata sources'} file {file}"
                )
                assert re.search(r"\bline \d+\b", str(exc)), str(exc)
    assert tried > 100


@pytest.mark.parametrize(
    "make",
    [
        lambda: HubSpotCrm(**{**HUBSPOT, "access_token": "pat-na1 super-secret"}),
        lambda: BrazeCrm(**{**BRAZE, "api_key": "super-secret\n"}),
        lambda: VaultKvSecret(**{**VAULT, "token": "super-secret "}),
        lambda: VaultKvSecret(**VAULT, auth_method="approle", approle_secret_id="super-secret\n"),
        # A document saved before the credentials became a block's name: its nested key is never quoted.
        lambda: dataflow(gcp_credentials={"service_account_info": {"private_key": "super-secret"}}),
        lambda: kms_secret(
            gcs_bucket={"gcp_credentials": {"service_account_info": {"private_key": "super-secret"}}}
        ),
    ],
)
def test_a_block_refusing_a_secret_never_quotes_it(make: Callable[[], Any]) -> None:
    with pytest.raises(ValidationError) as raised:
        make()
    assert "super-secret" not in str(raised.value)
