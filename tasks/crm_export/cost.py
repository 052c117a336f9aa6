"""An estimate of what a finished Dataflow batch job cost, from its resource metrics and list prices.

The metrics' units and what is priced: docs/crm-export.md, "Cost estimate".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

SECONDS_PER_HOUR = 3600.0
MB_PER_GB = 1024.0

#: The resource metric names this module reads.
RESOURCE_METRICS = (
    "TotalVcpuTime",
    "TotalMemoryUsage",
    "TotalPdUsage",
    "TotalSsdUsage",
    "TotalShuffleDataProcessed",
    "BillableShuffleDataProcessed",
)


class DataflowPrices(BaseModel):
    """Dataflow batch list prices in USD. Check them for your region at https://cloud.google.com/dataflow/pricing.

    Defaults: the prices of a FlexRS batch job that docs/benchmarks.md ("Dataflow cost") uses: vCPU $0.0354/h,
    memory $0.0025032/GB-h, standard persistent disk $0.000054/GB-h, shuffle data processed $0.011/GB;
    SSD persistent disk $0.000298/GB-h, Dataflow's long-standing SSD list price in US regions.
    """

    model_config = ConfigDict(frozen=True)

    vcpu_hour: float = Field(default=0.0354, ge=0, description="USD per vCPU hour.")
    memory_gb_hour: float = Field(default=0.0025032, ge=0, description="USD per GB hour of worker memory.")
    pd_gb_hour: float = Field(
        default=0.000054, ge=0, description="USD per GB hour of standard persistent disk."
    )
    ssd_gb_hour: float = Field(default=0.000298, ge=0, description="USD per GB hour of SSD persistent disk.")
    shuffle_gb: float = Field(
        default=0.011, ge=0, description="USD per GB of (billable) shuffle data processed."
    )


@dataclass(frozen=True)
class CostEstimate:
    """A job's usage as ``DataflowPrices`` prices it (vCPU hours, GB hours, GB) and its estimated cost in USD."""

    vcpu_hours: float
    memory_gb_hours: float
    pd_gb_hours: float
    ssd_gb_hours: float
    shuffle_gb: float
    usd: float


def estimate_cost(resources: Mapping[str, float], prices: DataflowPrices) -> CostEstimate | None:
    """The usage and estimated USD cost of a job from its resource metrics (see the module doc for units).

    ``None`` when ``resources`` holds none of the resource metrics (the job has not reported any yet,
    or ran elsewhere).
    """
    if not any(name in resources for name in RESOURCE_METRICS):
        return None

    def metric(name: str) -> float:
        return float(resources.get(name) or 0.0)

    vcpu_hours = metric("TotalVcpuTime") / SECONDS_PER_HOUR
    memory_gb_hours = metric("TotalMemoryUsage") / MB_PER_GB / SECONDS_PER_HOUR
    pd_gb_hours = metric("TotalPdUsage") / SECONDS_PER_HOUR
    ssd_gb_hours = metric("TotalSsdUsage") / SECONDS_PER_HOUR
    if resources.get("BillableShuffleDataProcessed") is not None:
        shuffle_gb = metric("BillableShuffleDataProcessed")
    else:
        shuffle_gb = metric("TotalShuffleDataProcessed")
    usd = (
        vcpu_hours * prices.vcpu_hour
        + memory_gb_hours * prices.memory_gb_hour
        + pd_gb_hours * prices.pd_gb_hour
        + ssd_gb_hours * prices.ssd_gb_hour
        + shuffle_gb * prices.shuffle_gb
    )
    return CostEstimate(vcpu_hours, memory_gb_hours, pd_gb_hours, ssd_gb_hours, shuffle_gb, usd)
