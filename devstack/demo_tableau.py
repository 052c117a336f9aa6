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
