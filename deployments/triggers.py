"""Deployment triggers of the domain refresh deployments, derived from the domain configuration.

A domain deployment runs when its upstream flow run completes (an event trigger on
``prefect.flow-run.Completed`` whose related resources include the upstream flow and, if the domain
names it, the upstream deployment), and, for a domain with ``upstream_tables``, once the
materializations of those tables have gone quiet for ``debounce_seconds`` (a proactive trigger on
``prefect.asset.materialization.succeeded``: one run for a burst of materializations, not one per
table). ``deployments.domains`` writes them into ``prefect.yaml``; ``devstack.serve_domains`` serves
the same triggers with :func:`domain_triggers`. Why this trigger debounces, and its measured delay:
docs/tableau-refresh.md, "Triggered by asset materializations".
"""

from __future__ import annotations

from typing import Any

from prefect.events import DeploymentEventTrigger

from tasks.tableau.assets import MATERIALIZED_EVENT
from tasks.tableau.domains import Domain

COMPLETED_EVENT = "prefect.flow-run.Completed"
#: A label no materialization's resource carries: every event of the domain's tables gets the same
#: (empty) bucketing key, so they share one bucket. A proactive trigger needs some ``for_each``: without
#: one, Prefect 3.9's proactive evaluation opens an empty bucket by itself every window and fires it
#: (``prefect/server/events/triggers.py``, ``proactive_evaluation``), with no materialization at all.
ONE_BUCKET_LABEL = "prefect.resource.role"


def _jinja(template: str) -> dict[str, str]:
    """A run parameter rendered by the automation as text (a plain ``jinja`` placeholder)."""
    return {"__prefect_kind": "jinja", "template": template}


#: What an asset-triggered run is told about the materialization that ended the quiet window (the
#: bucket's last event): ``refresh_domain``'s ``materialization`` parameter.
MATERIALIZATION_PARAMETER = {
    "asset_key": _jinja("{{ event.resource.id }}"),
    "occurred": _jinja("{{ event.occurred }}"),
    "event_id": _jinja("{{ event.id }}"),
}


def upstream_trigger_spec(domain: Domain) -> dict[str, Any]:
    """The upstream-completion trigger of ``domain``'s deployment, as written under ``triggers:``.

    Raises:
        ValueError: the domain has no ``upstream`` (it runs on its tables' materializations only).
    """
    if domain.upstream is None:
        raise ValueError(f"domain {domain.name!r} has no upstream flow: it has no completion trigger")
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


def asset_trigger_spec(domain: Domain) -> dict[str, Any]:
    """The materialization trigger of a domain with ``upstream_tables``, as written under ``triggers:``.

    Proactive, with ``prefect.asset.materialization.succeeded`` of the domain's tables (the event's
    resource id is the asset key) both as ``after`` and as ``expect``, ``threshold`` 1 and ``within``
    the domain's ``debounce_seconds``: each materialization starts a new window and the trigger fires
    when a window ends with none (a trailing-edge debounce, the pattern of Prefect's own crash detection
    on heartbeats). The run gets the last materialization of the burst (``MATERIALIZATION_PARAMETER``).

    Raises:
        ValueError: the domain has no ``upstream_tables``.
    """
    if not domain.upstream_tables:
        raise ValueError(f"domain {domain.name!r} has no upstream_tables: it has no materialization trigger")
    return {
        "type": "event",
        "enabled": True,
        "match": {"prefect.resource.id": list(domain.upstream_tables)},
        "after": [MATERIALIZED_EVENT],
        "expect": [MATERIALIZED_EVENT],
        "for_each": [ONE_BUCKET_LABEL],
        "posture": "Proactive",
        "threshold": 1,
        "within": int(domain.debounce_seconds)
        if domain.debounce_seconds.is_integer()
        else domain.debounce_seconds,
        "parameters": {"domain": domain.name, "materialization": MATERIALIZATION_PARAMETER},
    }


def trigger_specs(domain: Domain) -> list[dict[str, Any]]:
    """Every trigger of ``domain``'s deployment: upstream completion (if it names an upstream), then its
    tables' materializations (if it names ``upstream_tables``)."""
    specs = [upstream_trigger_spec(domain)] if domain.upstream is not None else []
    if domain.upstream_tables:
        specs.append(asset_trigger_spec(domain))
    return specs


def _trigger(spec: dict[str, Any], name: str, parameters: dict[str, Any]) -> DeploymentEventTrigger:
    spec = dict(spec)
    spec.pop("type")
    spec["parameters"] = {**spec["parameters"], **parameters}
    return DeploymentEventTrigger(name=name, **spec)


def upstream_trigger(domain: Domain, **parameters: Any) -> DeploymentEventTrigger:
    """The upstream-completion trigger as a ``DeploymentEventTrigger``, for ``flow.to_deployment``/``serve``.

    ``parameters`` are added to the run's parameters (the domain name is always set).
    """
    assert domain.upstream is not None, domain.name
    return _trigger(upstream_trigger_spec(domain), f"{domain.name} after {domain.upstream.flow}", parameters)


def domain_triggers(domain: Domain, **parameters: Any) -> list[DeploymentEventTrigger]:
    """Every trigger of ``trigger_specs(domain)`` as a ``DeploymentEventTrigger`` (``parameters`` added)."""
    triggers = [upstream_trigger(domain, **parameters)] if domain.upstream is not None else []
    if domain.upstream_tables:
        triggers.append(
            _trigger(
                asset_trigger_spec(domain),
                f"{domain.name} after its tables' materializations",
                parameters,
            )
        )
    return triggers
