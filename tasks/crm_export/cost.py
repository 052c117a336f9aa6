"""An estimate of what a finished Dataflow batch job cost, from its resource metrics and list prices.

The resource metrics are the job-level service metrics (origin ``dataflow/v1b3``) that
``DataflowLauncher.job_metrics`` returns under ``"resources"``. Their units, per the ``original_name``
the service reports with each of them:

======================================  ==============================  ================
metric                                  service name                    unit
======================================  ==============================  ================
``TotalVcpuTime``                       ``Service-cpu_num_seconds``     vCPU-seconds
``TotalMemoryUsage``                    ``Service-mem_mb_seconds``      MB-seconds
``TotalPdUsage``                        ``Service-pd_gb_seconds``       GB-seconds (HDD)
``TotalSsdUsage``                       ``Service-pd_ssd_gb_seconds``   GB-seconds (SSD)
``TotalShuffleDataProcessed``           ``Service-shuffle_service_actual_gb``      GB
``BillableShuffleDataProcessed``        ``Service-shuffle_service_chargeable_gb``  GB
``TotalStreamingDataProcessed``         ``Service-streaming_service_gb``           GB
======================================  ==============================  ================

Memory is converted with 1 GB = 1024 MB (an n1-standard worker's 3.75 GB is reported as 3840 MB).
Shuffle is billed on ``BillableShuffleDataProcessed`` (the volume after Dataflow Shuffle's volume
discounts); when a job reports only ``TotalShuffleDataProcessed``, that (undiscounted) figure is used.
Streaming Engine data (streaming jobs) is not priced here.

It is an estimate: list prices differ per region, FlexRS and committed-use discounts change them, and
the bill is the authority. Pricing: https://cloud.google.com/dataflow/pricing
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

    Defaults: the figures of the reference article (``shared/seeds/002_…``, "Cost") for a FlexRS batch job:
    vCPU $0.0354/h, memory $0.0025032/GB-h, standard persistent disk $0.000054/GB-h, shuffle data
    processed $0.011/GB. ``ssd_gb_hour`` is not in the article: $0.000298/GB-h is Dataflow's long-standing
    SSD PD list price in US regions — check it too.
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
