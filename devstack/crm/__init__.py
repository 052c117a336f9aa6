"""An HTTP stand-in for a CRM's batch user-import API, storing into SQLite; its API, faults and
``/devstack/*`` endpoints: docs/crm-export.md, "The CRM stand-in".

    with CrmStandIn(api_key="k") as crm:
        requests.post(crm.batch_url, json={"users": [...]}, headers={"Authorization": "Bearer k"})
        assert crm.stats()["duplicate_deliveries"] == 0
"""

from devstack.crm.faults import FaultConfig
from devstack.crm.standin import CrmStandIn

__all__ = ["CrmStandIn", "FaultConfig"]
