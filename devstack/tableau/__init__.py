"""An HTTP stand-in for the Tableau REST API: the calls tableauserverclient makes to refresh extracts
and to collect the site's metadata.

It serves sign-in/sign-out (one session per personal access token), the site, projects, data sources
and their connections, workbooks and their views, users, scheduled extract-refresh tasks,
extract-refresh jobs on a simulated backgrounder, and the documented failure modes (401001, 401002,
409093, 429000). Responses follow Tableau's REST API 3.29 XML schema. `/devstack/...` endpoints
expose an audit of what clients did (JSON) and let tests expire sessions or reset the site.

    with TableauStandIn(load_config("tableau.yaml")) as standin:
        server = TSC.Server(standin.url, use_server_version=True)

From a shell: ``python -m devstack.tableau --config tableau.yaml --port 0``.
"""

from devstack.tableau.config import Config, ContentSpec, load_config
from devstack.tableau.server import TableauStandIn

__all__ = ["Config", "ContentSpec", "TableauStandIn", "load_config"]
