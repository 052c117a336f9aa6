"""Stand-ins for the CRMs' APIs: the generic JSON batch endpoint (``generic``, storing into SQLite),
HubSpot (contacts batch upsert, ``hubspot``) and Braze (``/users/track``, ``braze``). Each is a Starlette
app served by uvicorn in a subprocess (``python -m devstack.crms {generic,hubspot,braze}``), with a
``/devstack/*`` API (stats, reset, config, users); ``CrmStandIn``, ``HubSpotServer`` and
``BrazeServer`` launch them. What each follows of its CRM's documentation: docs/crm-export.md, "The
generic CRM stand-in" and "The HubSpot and Braze stand-ins".

    with CrmStandIn(api_key="k") as crm:
        requests.post(crm.batch_url, json={"users": [...]}, headers={"Authorization": "Bearer k"})
        assert crm.stats()["duplicate_deliveries"] == 0

    with HubSpotServer(api_key="pat-…") as hubspot:
        HubSpot(access_token="pat-…", host=hubspot.url).crm.contacts.batch_api.upsert(...)
"""

from devstack.crms.generic import FaultConfig
from devstack.crms.standin import BrazeServer, CrmStandIn, HubSpotServer

__all__ = ["BrazeServer", "CrmStandIn", "FaultConfig", "HubSpotServer"]
