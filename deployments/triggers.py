"""Deployment triggers of the domain refresh deployments, derived from the domain configuration.

Each domain deployment runs when its upstream flow run completes: an event trigger on
``prefect.flow-run.Completed`` whose related resources include the upstream flow (and, if the
domain names it, the upstream deployment). ``deployments.domains`` writes them into ``prefect.yaml``;
``devstack.serve_domains`` serves the same triggers with :func:`upstream_trigger`.
"""

from __future__ import annotations

from typing import Any

from prefect.events import DeploymentEventTrigger

from tasks.tableau.domains import Domain

COMPLETED_EVENT = "prefect.flow-run.Completed"


def upstream_trigger_spec(domain: Domain) -> dict[str, Any]:
    """The trigger of ``domain``'s deployment, as written under ``triggers:`` in prefect.yaml."""
    related = [{"prefect.resource.role": "flow", "prefect.resource.name": domain.upstream.flow}]
    if domain.upstream.deployment:
        related.append(
            {"prefect.resource.role": "deployment", "prefect.resource.name": domain.upstream.deployment}
        )
    return {
        "type": "event",
        "enabled": True,
        "match": {"prefect.resource.id": "prefect.flow-run.*"},
        "match_related": related,
        "expect": [COMPLETED_EVENT],
        "posture": "Reactive",
        "threshold": 1,
        "parameters": {"domain": domain.name},
    }


def upstream_trigger(domain: Domain, **parameters: Any) -> DeploymentEventTrigger:
    """The same trigger as a ``DeploymentEventTrigger``, for ``flow.to_deployment``/``serve``.

    ``parameters`` are added to the run's parameters (the domain name is always set).
    """
    spec = upstream_trigger_spec(domain)
    spec.pop("type")
    spec["parameters"] = {**spec["parameters"], **parameters}
    return DeploymentEventTrigger(name=f"{domain.name} after {domain.upstream.flow}", **spec)
