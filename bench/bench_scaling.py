"""Scaling benchmark: measured throughput of worker replicas against Little's law.

With the simulated backend scaled to W = 0.5 s per job, one replica of 25 slots can at
best complete 25 / 0.5 = 50 jobs/s (L = lambda x W). This runs, side by side on one
Redis: 1 and 2 replicas at concurrency 25 (ratio to that bound, and 2-vs-1 scaling), then
one replica at rising concurrency until throughput stops growing, with its memory per
slot. Prints a table; writes docs/img/throughput-vs-concurrency.png.

    .venv/bin/python bench/bench_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import redis

from stack.fleet import Replica, replica_env
from stack.servers import redis_server
from worker.app import setup
from worker.config import MAX_THREADS_PER_PROCESS, Settings
from worker.redis_keys import RedisKeys

ROOT = Path(__file__).resolve().parent.parent

JOB_SECONDS = 0.5


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def run(redis_url: str, workdir: Path, replicas: int, concurrency: int, seconds: float):
    """Throughput (jobs/s) in the steady middle of a run, and peak RSS per replica."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    bound = replicas * concurrency / JOB_SECONDS
    n = int(bound * seconds)
    setup(Settings(_env_file=None, REDIS_URL=redis_url))
    from worker import actors

    with client.pipeline(transaction=False):
        for i in range(n):
            actors.agent_run.send(job_id=f"j{i}", org_id=f"org-{i % 50}", prompt="x")
    env = replica_env(
        redis_url,
        SIM_LATENCY_SECONDS=str(JOB_SECONDS),
        JOB_CONCURRENCY=concurrency,
        WORKER_PROCESSES=-(-concurrency // MAX_THREADS_PER_PROCESS),
        METRICS_PORT=0,
        COMPLETED_JOBS_MAX=n,
    )
    procs = [Replica(env, workdir / f"r{i}.log").start() for i in range(replicas)]
    peak_rss = 0
    # Past the knee a replica falls far behind its bound: measure what it did by then.
    deadline = time.monotonic() + seconds * 3 + 10
    try:
        while client.xlen(RedisKeys().completed) < n and time.monotonic() < deadline:
            peak_rss = max(peak_rss, max(rss_bytes(p.proc.pid) for p in procs))
            time.sleep(0.2)
    finally:
        for p in procs:
            p.stop()
    stamps = sorted(int(i.split(b"-")[0]) / 1000 for i, _ in client.xrange(RedisKeys().completed))
    if len(stamps) < 2 * replicas * concurrency:
        raise RuntimeError(f"only {len(stamps)} of {n} jobs completed")
    # Slots start together and finish in waves: the first wave ends at stamps[0], so the
    # time from the first to the last completion holds the n - slots later completions.
    slots = replicas * concurrency
    throughput = (len(stamps) - slots) / (stamps[-1] - stamps[0])
    return throughput, bound, peak_rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer points")
    parser.add_argument("--plot", default=str(ROOT / "docs/img/throughput-vs-concurrency.png"))
    args = parser.parse_args()
    seconds = 6 if args.quick else 12
    # Up to JOB_CONCURRENCY's bound: 256 threads per process, 512 slots per replica.
    sweep = [25, 50, 100, 200] if args.quick else [25, 50, 100, 200, 256, 512]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = redis_server(work / "redis", None, "--appendonly", "no").start()
        try:
            one, bound1, _ = run(server.url, work, 1, 25, seconds)
            two, bound2, _ = run(server.url, work, 2, 25, seconds)
            points = []
            for c in sweep:
                tput, bound, rss = run(server.url, work, 1, c, seconds)
                points.append((c, tput, bound, rss))
                print(
                    f"  concurrency {c:4d}: {tput:7.1f} jobs/s of {bound:7.1f} bound "
                    f"({tput / bound:.2f}), RSS {rss / 2**20:6.1f} MiB",
                    flush=True,
                )
        finally:
            server.stop()

    print(f"\nscaling benchmark (W = {JOB_SECONDS} s simulated, {os.cpu_count()} cores)")
    print(f"{'case':38} {'measured':>10} {'bound':>8} {'ratio':>6}")
    print(f"{'1 replica x 25 slots':38} {one:10.1f} {bound1:8.1f} {one / bound1:6.2f}")
    print(f"{'2 replicas x 25 slots':38} {two:10.1f} {bound2:8.1f} {two / bound2:6.2f}")
    print(f"{'2 replicas / 1 replica':38} {'':10} {'':8} {two / one:6.2f}")
    best = max(points, key=lambda p: p[1])
    knee = next((p for p in points if p[1] < 0.9 * p[2]), None)
    print(
        f"one replica peaks at {best[1]:.0f} jobs/s with {best[0]} slots; "
        + (
            f"below 0.9 of the bound from {knee[0]} slots"
            if knee
            else "stays within 0.9 of the bound over the whole sweep"
        )
    )
    (c0, _, _, r0), (c1, _, _, r1) = points[0], points[-1]
    print(
        f"memory per slot: {(r1 - r0) / (c1 - c0) / 2**10:.0f} KiB "
        f"({r0 / 2**20:.0f} MiB at {c0} slots, {r1 / 2**20:.0f} MiB at {c1})"
    )
    plot(points, Path(args.plot))
    print(f"plot: {args.plot}")
    return 0


def plot(points, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(cs, [p[2] for p in points], "--", color="grey", label="Little's law bound (C / W)")
    ax.plot(cs, [p[1] for p in points], "o-", label="measured, 1 replica")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ticks = [b for b in (50, 100, 200, 400, 800, 1600, 3200) if b <= 2 * points[-1][2]]
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("job slots (threads) in one replica")
    ax.set_ylabel("jobs completed per second")
    ax.set_title(f"Throughput vs concurrency, I/O-bound jobs of {JOB_SECONDS} s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
