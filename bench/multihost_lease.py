"""Benchmark: PAT lease latency on a Prefect server as teams run it on several hosts, and how soon a
killed holder's PAT comes back.

    python -m bench.multihost_lease [--contenders 50] [--pats 10] [--hold 1.0] [--lease 60]

Starts PostgreSQL, Redis, two Prefect API servers (``--no-services``) and one background-services
process on them (``devstack.multihost``), and ``--contenders`` contender processes, as many flow
runs, half of them on each API server (two worker hosts). Each has loaded the pool block before the
clock starts, so the figures are the lease alone (``tasks.tableau.pat_pool.lease_pat``). Prints:

1. free PAT: every contender leases a PAT once, arrivals staggered so that a PAT is always free (at
   most ``ceil(hold / gap)`` are held at once), and holds it ``--hold`` seconds; lease-acquire
   latency p50/p99. Targets: p50 <= 0.5 s, p99 <= 2 s.
2. burst: all contenders at once on another pool, holding ``--hold`` seconds; p50/p99 of the wait,
   which includes waiting for a PAT by design (contenders > PATs).
3. PAT return: a holder process leases the only PAT of a 1-PAT pool (lease ``--lease`` seconds) and
   is SIGKILLed while another process waits for it; the time from the kill until the waiter holds
   that PAT. Target: <= lease + 15 s.

One process per contender, as one flow run per process leases a PAT in production: threads of one
process would measure Prefect's client instead, which serialises a process's acquisitions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from devstack.multihost import ROOT, MultiHostStack

SITE = "bench"
REPOSSESSOR_LOOP_SECONDS = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def contend(pool_blocks: list[str], hold: float) -> None:
    """One contender (a flow run): load the pools, say it is ready, then for each pool read from stdin
    the instant to ask at (unix seconds), lease a PAT, hold it ``hold`` seconds, and print the
    lease-acquire latency (seconds)."""
    from blocks import TableauPatPool
    from tasks.tableau.pat_pool import lease_pat

    pools = {name: TableauPatPool.load(name) for name in pool_blocks}
    print(json.dumps({"ready": True}), flush=True)
    for name, pool in pools.items():
        time.sleep(max(0.0, float(sys.stdin.readline()) - time.time()))
        asked = time.monotonic()
        with lease_pat(pool, pool_block_name=name):
            latency = time.monotonic() - asked
            time.sleep(hold)
        print(json.dumps({"latency": latency}), flush=True)


def hold_forever(pool_block: str) -> None:
    """Lease a PAT, say which, and hold it until killed (the holder that dies)."""
    from blocks import TableauPatPool
    from tasks.tableau.pat_pool import lease_pat

    with lease_pat(TableauPatPool.load(pool_block), pool_block_name=pool_block) as lease:
        print(json.dumps({"held": lease.pat_block_name}), flush=True)
        time.sleep(3600)


def wait_for_pat(pool_block: str) -> None:
    """Say when ready, lease a PAT (waiting as long as it takes), print when it was granted (unix s)."""
    from blocks import TableauPatPool
    from tasks.tableau.pat_pool import lease_pat

    pool = TableauPatPool.load(pool_block)
    print(json.dumps({"ready": time.time()}), flush=True)
    with lease_pat(pool, pool_block_name=pool_block) as lease:
        print(json.dumps({"granted": time.time(), "pat": lease.pat_block_name}), flush=True)


def create_pool(name: str, pats: int, lease_seconds: float) -> None:
    from blocks import TableauSite
    from devstack.pat_pool import save_pat_pool

    save_pat_pool(
        name,
        TableauSite(server_url="http://127.0.0.1:9", site_content_url=SITE),  # never signed in to
        {f"{name}-pat-{i}": (f"pat-{i}", f"secret-{i}") for i in range(pats)},
        concurrency_limit_prefix=name,
        lease_duration_seconds=lease_seconds,
        acquire_timeout_seconds=600,
    )


def child(stack: MultiHostStack, replica: int, *args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        **stack.client_env(replica),
        "PYTHONPATH": str(ROOT),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env["PREFECT_HOME"] = str(stack.workdir / f"contender-{replica}-{uuid.uuid4().hex[:6]}")
    return subprocess.Popen(
        [sys.executable, "-m", "bench.multihost_lease", *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def contention(
    stack: MultiHostStack, pools: dict[str, float], contenders: int, hold: float
) -> dict[str, list[float]]:
    """``contenders`` processes, alternately on API server 0 and 1, lease a PAT of each pool in turn;
    ``pools`` maps a pool block to the gap (seconds) between two arrivals (0: all at once). Returns
    each pool's lease-acquire latencies."""
    processes = [
        child(stack, i % 2, "--role", "contend", "--pool", ",".join(pools), "--hold", str(hold))
        for i in range(contenders)
    ]
    try:
        for process in processes:  # every contender has imported Prefect and loaded the pools
            said(process, "ready")
        latencies: dict[str, list[float]] = {}
        for pool, gap in pools.items():
            start = time.time() + 1.0
            for i, process in enumerate(processes):
                process.stdin.write(f"{start + i * gap}\n")
                process.stdin.flush()
            latencies[pool] = [said(p, "latency") for p in processes]
        for process in processes:
            process.wait(timeout=60)
        return latencies
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def said(process: subprocess.Popen[str], what: str) -> Any:
    """The ``what`` of the next line ``process`` prints; RuntimeError if it exited instead (its
    traceback is on this run's stderr)."""
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"contender {process.pid} exited with {process.wait()} before saying {what!r}")
    return json.loads(line)[what]


def report(label: str, latencies: list[float]) -> None:
    print(
        f"  {label:<10} n={len(latencies)}  p50 {percentile(latencies, 0.5):.3f} s  "
        f"p99 {percentile(latencies, 0.99):.3f} s  max {max(latencies):.3f} s  mean {statistics.fmean(latencies):.3f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.multihost_lease", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--contenders", type=int, default=50)
    parser.add_argument("--pats", type=int, default=10)
    parser.add_argument("--hold", type=float, default=1.0, help="seconds each contender holds its PAT")
    parser.add_argument("--lease", type=float, default=60.0, help="lease_duration_seconds of the pool")
    parser.add_argument(
        "--role", choices=["main", "contend", "hold", "wait"], default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "contend":
        contend(args.pool.split(","), args.hold)
        return
    if args.role == "hold":
        hold_forever(args.pool)
        return
    if args.role == "wait":
        wait_for_pat(args.pool)
        return

    from prefect.settings import PREFECT_API_URL, temporary_settings

    started = time.monotonic()
    with MultiHostStack(api_replicas=2, repossessor_loop_seconds=REPOSSESSOR_LOOP_SECONDS) as stack:
        print(
            f"PostgreSQL {stack.postgres.version[0]}.{stack.postgres.version[1]}, Redis, 2 API servers + services "
            f"up in {time.monotonic() - started:.0f} s"
        )
        with temporary_settings({PREFECT_API_URL: stack.api_url}):
            create_pool("bench-free", args.pats, args.lease)
            create_pool("bench-burst", args.pats, args.lease)
            create_pool("bench-return", 1, args.lease)
        # At most ceil(hold / gap) PATs held at once: keep that below the pool's size.
        gap = args.hold / max(1, args.pats // 2)
        print(
            f"Lease-acquire latency, {args.contenders} contenders on 2 hosts, {args.pats} PATs, hold {args.hold} s:"
        )
        latencies = contention(stack, {"bench-free": gap, "bench-burst": 0.0}, args.contenders, args.hold)
        report("free PAT", latencies["bench-free"])
        report("burst", latencies["bench-burst"])

        holder = child(stack, 0, "--role", "hold", "--pool", "bench-return")
        waiter = None
        try:
            held = json.loads(holder.stdout.readline())["held"]
            waiter = child(stack, 1, "--role", "wait", "--pool", "bench-return")
            json.loads(waiter.stdout.readline())  # it is about to ask for the (held) PAT
            holder.send_signal(signal.SIGKILL)
            killed_at = time.time()
            holder.wait()
            granted = json.loads(waiter.stdout.readline())
            waiter.wait(timeout=60)
        finally:
            for process in (holder, waiter):
                if process is not None and process.poll() is None:
                    process.kill()
        print(
            f"PAT return after SIGKILL of its holder: {held} leased again {granted['granted'] - killed_at:.1f} s "
            f"after the kill (lease {args.lease:.0f} s, repossessor loop {REPOSSESSOR_LOOP_SECONDS:.0f} s; "
            f"target <= {args.lease + 15:.0f} s)"
        )


if __name__ == "__main__":
    main()
