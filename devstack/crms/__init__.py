"""Stand-ins for real CRMs' APIs: HubSpot (contacts batch upsert) and Braze (``/users/track``), Starlette
apps (``HubSpotStandIn`` in ``hubspot``, ``BrazeStandIn`` in ``braze``) served by uvicorn in a subprocess, with a
``/devstack/*`` API (stats, reset, config, users). What each follows of its CRM's documentation:
docs/crm-export.md, "The HubSpot and Braze stand-ins".

    with HubSpotServer(api_key="pat-…") as hubspot:
        HubSpot(access_token="pat-…", host=hubspot.url).crm.contacts.batch_api.upsert(...)
"""

from devstack.crms.standin import BrazeServer, HubSpotServer

__all__ = ["BrazeServer", "HubSpotServer"]
