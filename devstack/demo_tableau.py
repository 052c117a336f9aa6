"""The demo's connected-app domain and progress artifacts (``make demo``).

The stand-in gets a connected app (direct trust) and the user it signs in as; the demo saves a
Tableau Connected App block whose secret lives in a Prefect Secret block, bootstraps its
refresh-capacity limit, and, once the refreshes ended, prints each domain run's progress artifact.
Imports Prefect only inside functions (``devstack.demo`` sets the API URL first).
"""

from __future__ import annotations

CONNECTED_APP_BLOCK = "tableau-connected-app"
CLIENT_ID = "analytics-flows-refresh"
SECRET_ID = "refresh-secret-1"
SECRET_VALUE = "demo-connected-app-secret-of-at-least-32-bytes"
SECRET_BLOCK = "tableau-connected-app-secret"
USER = "svc-refresh@example.com"


def connected_app_seed() -> dict:
    """Stand-in seed entries: the connected app and the users (the demo's admin and the app's user)."""
    return {
        "connected_apps": [{"client_id": CLIENT_ID, "secrets": [{"id": SECRET_ID, "value": SECRET_VALUE}]}],
        "users": [{"name": "admin", "password": "pw"}, {"name": USER, "password": "unused"}],
    }


def create_connected_app(tableau_url: str, site: str) -> str:
    """Save the connected app's blocks and bootstrap its refresh-capacity limit; a line to print."""
    from prefect.blocks.system import Secret

    from blocks.secrets import SecretSource
    from blocks.tableau import TableauConnectedApp, TableauSite
    from deployments.bootstrap import bootstrap_connected_app_limits

    Secret(value=SECRET_VALUE).save(SECRET_BLOCK, overwrite=True)
    app = TableauConnectedApp(
        site=TableauSite(server_url=tableau_url, site_content_url=site),
        client_id=CLIENT_ID,
        secret_id=SECRET_ID,
        secret_value_source=SecretSource(kind="secret", block=SECRET_BLOCK),
        username=USER,
        refresh_capacity=2,
        lease_duration_seconds=60,
    )
    app.save(CONNECTED_APP_BLOCK, overwrite=True)
    report = bootstrap_connected_app_limits(app)
    return f"Connected app {CONNECTED_APP_BLOCK!r} (secret in Secret block {SECRET_BLOCK!r}): " + ", ".join(
        report.created + report.unchanged
    )


def print_progress(runs: dict) -> None:
    """Print the last progress artifact of each domain run (``refresh_domain``'s bar in the UI)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    print("\n=== Progress artifacts (tableau-refresh-<domain>-progress) ===")
    with get_client(sync_client=True) as client:
        for domain, run in sorted(runs.items()):
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                    type=ArtifactFilterType(any_=["progress"]),
                )
            )
            for artifact in found:
                print(f"{domain:<10} {artifact.data:5.0f} %  {artifact.description}")


# --- The lineage domain: content from Tableau's lineage, started by its tables' materializations ----

LINEAGE_DOMAIN = "marketing"
LINEAGE_PIPELINE = "marketing-pipeline"
_ATHENA = {"type": "athena", "server_address": "athena.eu-west-1.amazonaws.com", "server_port": 443}
#: The lineage domain's data sources and the tables (of its upstream_tables) each extract is built on.
LINEAGE_DATASOURCES = {
    "Campaigns": ("campaigns",),
    "Leads": ("leads", "crm_contacts"),
    "Web Sessions": ("web_sessions",),
    "Email Events": ("email_events",),
    "Ad Spend": ("ad_spend",),
    "Attribution": ("touchpoints", "conversions"),
    "Segments": ("segments", "crm_contacts"),
    "Conversions": ("conversions",),
}
#: Its workbook with an extract of its own (an embedded data source) on two tables.
LINEAGE_WORKBOOKS = {"Campaign Dashboard": ("campaigns", "ad_spend")}
#: The table the demo's pipeline does not rebuild (a weekly load): what is only downstream of it is
#: not refreshed.
NOT_REBUILT = ("ad_spend",)


def _schema_and_project(domain) -> tuple[str, str]:
    from tasks.tableau.assets import parse_table_key

    return parse_table_key(domain.upstream_tables[0]).schema, domain.name.title()


def lineage_seed(domain) -> dict:
    """Stand-in seed entries of the lineage domain: its content on Athena, and the Metadata API's
    lineage of each extract to the domain's tables (``metadata_api``)."""
    schema, project = _schema_and_project(domain)

    def tables(names: tuple[str, ...]) -> list[dict]:
        return [
            {"connection_type": "athena", "database": "AwsDataCatalog", "schema": schema, "name": n}
            for n in names
        ]

    return {
        "datasources": [
            {"project": project, "name": name, "duration_seconds": [300, 900], "connections": [_ATHENA]}
            for name in LINEAGE_DATASOURCES
        ],
        "workbooks": [
            {"project": project, "name": name, "duration_seconds": [120, 300]} for name in LINEAGE_WORKBOOKS
        ],
        "metadata_api": {
            "datasources": {f"{project}/{n}": {"tables": tables(t)} for n, t in LINEAGE_DATASOURCES.items()},
            "workbooks": {
                f"{project}/{n}": {"embedded": {f"{n} extract": {"tables": tables(t), "has_extracts": True}}}
                for n, t in LINEAGE_WORKBOOKS.items()
            },
        },
    }


def pipelines(domains: dict) -> list[tuple[str, list[str]]]:
    """The stand-in upstream pipelines the demo runs: (flow name, asset keys of the tables it
    materializes). A domain listing its content: its upstream flow, on one table per data source; the
    lineage domain: its pipeline, rebuilding every table of its ``upstream_tables`` but ``NOT_REBUILT``."""
    runs = []
    for domain in domains.values():
        if domain.upstream is not None:
            keys = [
                f"athena://awsdatacatalog/{domain.name}/{c.name.lower().replace(' ', '_')}"
                for c in domain.datasources
            ]
            runs.append((domain.upstream.flow, keys))
        else:
            keys = [k for k in domain.upstream_tables if k.rsplit("/", 1)[-1] not in NOT_REBUILT]
            runs.append((LINEAGE_PIPELINE, keys))
    return runs


def print_lineage_domain(domain, run, summary, tableau_url: str, site: str) -> bool:
    """Print how the lineage domain ran: one run for its pipeline's burst of materializations, and the
    delay from the last one; the tables that changed; what each content was brought in by; the
    Tableau assets its run materialized. True when exactly one run was started by the materializations."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
    )

    from tasks.tableau.assets import last_materializations, tableau_site_key

    print(f"\n=== {domain.name}: content from Tableau's lineage, started by its tables' materializations ===")
    materialized = last_materializations(domain.upstream_tables)
    with get_client(sync_client=True) as client:
        runs = [
            r
            for r in client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[domain.name]))
            )
            if r.created_by and r.created_by.type == "AUTOMATION"
        ]
    last = max(materialized.values()) if materialized else None
    delay = f"{(run.created - last).total_seconds():.1f} s" if last else "?"
    print(
        f"{LINEAGE_PIPELINE} materialized {len(materialized)} of the domain's {len(domain.upstream_tables)} "
        f"tables: {len(runs)} refresh run(s), created {delay} after the last materialization "
        f"(debounce_seconds {domain.debounce_seconds:g})"
    )
    if isinstance(summary, str):
        print(f"  ✗ {summary}")
        return False
    print(
        f"changed tables ({len(summary.changed_tables or [])}): {', '.join(k.rsplit('/', 1)[-1] for k in summary.changed_tables or [])}"
    )
    for key in summary.tables_without_extracts:
        print(f"WARNING no extract downstream of {key}")
    for row in summary.refreshes:
        tables = ", ".join(k.rsplit("/", 1)[-1] for k in row.brought_in_by.split(", "))
        print(f"  {row.kind:<10} {row.project}/{row.content:<22} {row.status:<10} brought in by {tables}")
    refreshed = {r.content for r in summary.refreshes}
    for name in [*LINEAGE_DATASOURCES, *LINEAGE_WORKBOOKS]:
        if name not in refreshed:
            print(f"  not refreshed: {name} (no changed table upstream)")
    prefix = tableau_site_key(tableau_url, site)
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(prefix=["prefect.asset.materialization."]),
                resource=EventResourceFilter(id_prefix=[prefix], distinct=True),
            ),
            limit=50,
        )
    ours = [e for e in page.events if e.payload.get("domain") == domain.name]
    print(
        f"\n=== Tableau assets (Prefect events API; the Event Feed in the UI): {page.total} under {prefix}, "
        f"{len(ours)} from {domain.name} ==="
    )
    for event in sorted(ours, key=lambda e: e.resource.id):
        deps = sorted(r.id.rsplit("/", 1)[-1] for r in event.related if r.role == "asset")
        print(
            f"  {event.resource.id.removeprefix(prefix)}  {event.resource.get('prefect.resource.name'):<20} "
            f"{event.event.rsplit('.', 1)[-1]:<9} ← {', '.join(deps)}"
        )
    return len(runs) == 1
