"""Benchmark: the CRM export end to end on Beam's local runner, next to the bare pipeline.

    python -m bench.crm_export [--users 1000000] [--repeat 3]

Prints records/s of both (in process, and with 2 worker processes; ``--repeat`` runs of each), their
ratio and its median, and the CPU time per record; checks that every record was accepted or
dead-lettered once; then prints the Dataflow cost model for 100 M records: this pipeline (no shuffle)
next to a measured GroupByKey job, scaled.

In process, the pipeline (bare and end to end) runs on one CPU and the CRM stand-in on another, as a
Dataflow worker of the default n1-standard-1 shape (one vCPU) sends to a CRM on other machines.
Unpinned on 2 CPUs, the scheduler moves the pipeline's thread between them whenever a posting thread
or the stand-in wakes, which costs the end-to-end run ~15 % (measured; docs/benchmarks.md, "CRM export: end to end against the bare pipeline").
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from devstack.crms import CrmStandIn
from devstack.user_rows import write_user_rows
from pipelines.crm_export.accounting import check_accounting
from pipelines.crm_export.api_key import ApiKey
from pipelines.crm_export.pipeline import ReadRows, build_pipeline, pipeline_metrics
from tasks.crm_export.cost import DataflowPrices, estimate_cost

API_KEY = "bench-key"
WORKDIR = Path(".bench/crm")
#: The resources of a measured Dataflow job that batched with GroupByKey (docs/benchmarks.md, "Dataflow cost"):
#: 87 M records, n1-standard workers.
GROUPBYKEY_JOB = {
    "records": 87e6,
    "vcpu_hours": 8.019,
    "memory_gb_hours": 30.073,
    "pd_gb_hours": 100.242,
    "shuffle_gb": 12.33,
}
#: n1-standard-1: 1 vCPU, 3.75 GB; Dataflow batch workers get a 25 GB boot disk with Dataflow Shuffle.
GB_PER_VCPU, PD_GB_PER_WORKER = 3.75, 25


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(pipeline: beam.Pipeline) -> tuple[float, float, beam.runners.runner.PipelineResult]:
    cpu, start = _cpu_seconds(), time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    return time.perf_counter() - start, _cpu_seconds() - cpu, result


#: Runner configurations measured: Beam's Python runner in this process, and with 2 worker processes.
CONFIGURATIONS = {
    "1 worker (in process)": [],
    "2 worker processes": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
}


def _cpus() -> tuple[set[int], set[int]] | None:
    """(the pipeline's CPU, the CRM stand-in's CPU) to pin them to, or None (one CPU, or not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, {cpus[-1]}) if len(cpus) > 1 else None


def bare(source: Path, batch_size: int, runner_args: list[str]) -> tuple[float, float]:
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner", *runner_args]))
    (
        (pipeline | ReadRows(input_file=str(source))).rows
        | beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
        | beam.Map(len)
        | beam.CombineGlobally(sum)
    )
    seconds, cpu, _ = _run(pipeline)
    return seconds, cpu


def end_to_end(
    source: Path, crm: CrmStandIn, batch_size: int, runner_args: list[str]
) -> tuple[float, float, dict]:
    options = PipelineOptions(
        [
            "--runner=FnApiRunner",
            *runner_args,
            f"--input_file={source}",
            f"--crm_url={crm.batch_url}",
            f"--batch_size={batch_size}",
            f"--dead_letter_prefix={WORKDIR / 'dead-letter' / 'dl'}",
            f"--accepted_prefix={WORKDIR / 'accepted' / 'accepted'}",  # what the sync state records
            "--idempotency_namespace=bench",
        ]
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, ApiKey(API_KEY))
    seconds, cpu, result = _run(pipeline)
    return seconds, cpu, pipeline_metrics(result)


def cost_model(records: float, cpu_seconds_per_record: float) -> None:
    prices = DataflowPrices()
    scale = records / GROUPBYKEY_JOB["records"]
    groupbykey = {k: v * scale for k, v in GROUPBYKEY_JOB.items() if k != "records"}
    vcpu_hours = records * cpu_seconds_per_record / 3600
    ours = {
        "vcpu_hours": vcpu_hours,
        "memory_gb_hours": vcpu_hours * GB_PER_VCPU,
        "pd_gb_hours": vcpu_hours * PD_GB_PER_WORKER,
        "shuffle_gb": 0.0,  # BatchElements batches within a bundle: no shuffle
    }
    print(f"Dataflow cost model for {records / 1e6:,.0f} M records (prices: {prices.model_dump()})")
    print(f"{'':34}{'vCPU-h':>9}{'GB-h':>9}{'PD GB-h':>9}{'shuffle GB':>12}{'USD':>8}")
    for label, figures in (
        ("GroupByKey job (87 M), scaled", groupbykey),
        ("this pipeline (no shuffle)", ours),
    ):
        usd = estimate_cost(
            {
                "TotalVcpuTime": figures["vcpu_hours"] * 3600,
                "TotalMemoryUsage": figures["memory_gb_hours"] * 1024 * 3600,
                "TotalPdUsage": figures["pd_gb_hours"] * 3600,
                "BillableShuffleDataProcessed": figures["shuffle_gb"],  # the service reports GB
            },
            prices,
        ).usd
        print(
            f"{label:34}{figures['vcpu_hours']:9.2f}{figures['memory_gb_hours']:9.1f}"
            f"{figures['pd_gb_hours']:9.1f}{figures['shuffle_gb']:12.2f}{usd:8.2f}"
        )
    print(
        "  (ours: worker CPU measured here, n1-standard-1 memory and 25 GB disks per vCPU; the CRM's own "
        "rate limit, not worker CPU, bounds a real run's duration)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="bare and end-to-end runs per configuration; the ratio's median is the figure",
    )
    args = parser.parse_args()
    source = WORKDIR / f"users_{args.users}.jsonl"
    if not source.exists():
        made = write_user_rows(source, args.users, invalid_every=1_000)
        print(f"generated {made['rows']:,} users ({made['bytes'] / 2**20:,.0f} MiB) in {source}")
    n, pinned = args.users, _cpus()
    print(
        f"\nCRM export, {n:,} users, batches of {args.batch_size:,}, FnApiRunner, CRM endpoint in its own process"
        + (" (in process: the pipeline on one CPU, the CRM on another)" if pinned else "")
    )
    print(f"{'':58}{'seconds':>9}{'records/s':>12}{'CPU µs/record':>15}")
    cpu_per_record = []
    if pinned:
        everywhere = os.sched_getaffinity(0)
        os.sched_setaffinity(0, pinned[1])  # the stand-in, started next, inherits its CPU
    with CrmStandIn(api_key=API_KEY, db_path=WORKDIR / "crm.sqlite3") as crm:
        for label, runner_args in CONFIGURATIONS.items():
            if pinned:  # in process: the pipeline's CPU; worker processes: every CPU, as unpinned
                os.sched_setaffinity(0, everywhere if runner_args else pinned[0])
            in_process = not runner_args  # worker processes' CPU is not this process's
            cpu = (lambda c: f"{c / n * 1e6:15.1f}") if in_process else (lambda c: f"{'-':>15}")
            ratios = []
            for run in range(1, args.repeat + 1):
                crm.reset()
                bare_s, bare_cpu = bare(source, args.batch_size, runner_args)
                e2e_s, e2e_cpu, metrics = end_to_end(source, crm, args.batch_size, runner_args)
                stats = crm.stats()
                check_accounting(metrics.counters)
                ratios.append(bare_s / e2e_s)
                first = label if run == 1 else ""
                print(
                    f"{first:26}{f'run {run}: bare (read→batch→count)':32}{bare_s:9.1f}{n / bare_s:12,.0f}{cpu(bare_cpu)}"
                )
                print(
                    f"{'':26}{'       end to end into the CRM':32}{e2e_s:9.1f}{n / e2e_s:12,.0f}{cpu(e2e_cpu)}"
                )
                print(
                    f"{'':33}ratio {ratios[-1]:.2f}; accepted {metrics.counters.records_accepted:,}, dead-lettered "
                    f"{metrics.counters.records_dead_lettered:,}, duplicate deliveries {stats['duplicate_deliveries']}, "
                    f"max batch {metrics.batch_size.max:,}"
                )
                if in_process:
                    cpu_per_record.append(e2e_cpu / n)
            print(
                f"{'':26}ratio, median of {len(ratios)} runs: {statistics.median(ratios):.2f} (target ≥ 0.7; runs "
                f"{', '.join(f'{r:.2f}' for r in ratios)})\n"
            )
    cost_model(100e6, statistics.median(cpu_per_record))


if __name__ == "__main__":
    main()
