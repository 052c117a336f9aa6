"""Benchmark: PAT lease latency on a Prefect server as teams run it on several hosts, and how soon a
killed holder's PAT comes back.

    python -m bench.multihost_lease [--contenders 50] [--pats 10] [--hold 1.0] [--lease 60]

Starts PostgreSQL, Redis, two Prefect API servers (``--no-services``) and one background-services
process on them (``devstack.multihost``), and two contender processes standing for two worker hosts,
each talking to its own API server, with ``contenders / 2`` threads each. Prints:

1. free PAT: every contender leases a PAT once (``tasks.tableau.pat_pool.lease_pat``), arrivals
   staggered so that a PAT is always free (at most ``ceil(hold / gap)`` are held at once), and holds
   it ``--hold`` seconds; lease-acquire latency p50/p99. Targets: p50 <= 0.5 s, p99 <= 2 s.
2. burst: all contenders at once on the same pool, holding ``--hold`` seconds; p50/p99 of the wait,
   which includes waiting for a PAT by design (contenders > PATs).
3. PAT return: a holder process leases the only PAT of a 1-PAT pool (lease ``--lease`` seconds) and
   is SIGKILLed while another process waits for it; the time from the kill until the waiter holds
   that PAT. Target: <= lease + 15 s.
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
import threading
import time
import uuid

from devstack.multihost import ROOT, MultiHostStack

SITE = "bench"
REPOSSESSOR_LOOP_SECONDS = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def contend(pool_block: str, count: int, first_offset: float, gap: float, hold: float) -> list[float]:
    """Lease a PAT of ``pool_block`` once per thread, thread i starting at first_offset + i * gap
    seconds; returns the lease-acquire latencies (seconds). Runs in a contender process."""
    from blocks import TableauPatPool
    from tasks.tableau.pat_pool import lease_pat

    pool = TableauPatPool.load(pool_block)
    latencies: list[float] = []
    start = time.monotonic() + 2.0  # every thread is ready before the first arrival

    def one(i: int) -> None:
        time.sleep(max(0.0, start + first_offset + i * gap - time.monotonic()))
        asked = time.monotonic()
        with lease_pat(pool, pool_block_name=pool_block):
            latencies.append(time.monotonic() - asked)
            time.sleep(hold)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


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
    from blocks import TableauPatPool, TableauPersonalAccessToken, TableauSite
    from deployments.bootstrap import bootstrap_pool_limits

    for i in range(pats):
        TableauPersonalAccessToken(token_name=f"pat-{i}", token_secret=f"secret-{i}").save(
            f"{name}-pat-{i}", overwrite=True
        )
    pool = TableauPatPool(
        site=TableauSite(server_url="http://127.0.0.1:9", site_content_url=SITE),  # never signed in to
        pat_block_names=[f"{name}-pat-{i}" for i in range(pats)],
        concurrency_limit_prefix=name,
        lease_duration_seconds=lease_seconds,
        acquire_timeout_seconds=600,
    )
    pool.save(name, overwrite=True)
    assert bootstrap_pool_limits(pool).ok


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
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def phase(stack: MultiHostStack, pool: str, contenders: int, gap: float, hold: float) -> list[float]:
    """Two contender processes, one per API server, ``contenders / 2`` threads each, interleaved."""
    per_host = contenders // 2
    processes = [
        child(
            stack,
            replica,
            "--role",
            "contend",
            "--pool",
            pool,
            "--count",
            str(per_host),
            "--first-offset",
            str(replica * gap),
            "--gap",
            str(2 * gap),
            "--hold",
            str(hold),
        )
        for replica in (0, 1)
    ]
    latencies = []
    for process in processes:
        out, _ = process.communicate(timeout=900)
        if process.returncode:
            raise RuntimeError(f"a contender process failed ({process.returncode})")
        latencies += json.loads(out.strip().splitlines()[-1])
    return latencies


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
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first-offset", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--gap", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "contend":
        print(json.dumps(contend(args.pool, args.count, args.first_offset, args.gap, args.hold)), flush=True)
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
        report("free PAT", phase(stack, "bench-free", args.contenders, gap, args.hold))
        report("burst", phase(stack, "bench-burst", args.contenders, 0.0, args.hold))

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
