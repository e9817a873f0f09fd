"""Load for the rate-limiter tests: processes x threads hammering one organization.

Lives in its own module so that ``multiprocessing`` (spawn) children can import it.
"""

from __future__ import annotations

import bisect
import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    admitted_us: list[int]  # Redis TIME of every admission, sorted
    attempts: int
    refused: int


def _client(url: str, cluster: bool):
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url)
    import redis

    return redis.Redis.from_url(url)


def _hammer(url, cluster, limits, org, seconds, threads, barrier, results) -> None:
    from worker.ratelimit import RateLimiter

    limiter = RateLimiter(_client(url, cluster), limits)
    limiter.try_acquire("warm-up-" + org)  # load the script before the race starts
    admitted: list[int] = []
    counts = {"attempts": 0, "refused": 0}
    lock = threading.Lock()

    def loop(deadline: float) -> None:
        mine, attempts, refused = [], 0, 0
        while time.monotonic() < deadline:
            decision = limiter.try_acquire(org)
            attempts += 1
            if decision.allowed:
                mine.append(decision.server_time_us)
            else:
                refused += 1
        with lock:
            admitted.extend(mine)
            counts["attempts"] += attempts
            counts["refused"] += refused

    barrier.wait(timeout=60)
    deadline = time.monotonic() + seconds
    pool = [threading.Thread(target=loop, args=(deadline,)) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((admitted, counts["attempts"], counts["refused"]))


def hammer(
    url: str,
    limits: dict[str, tuple[int, float]],
    org: str,
    *,
    seconds: float,
    processes: int,
    threads: int,
    cluster: bool = False,
) -> LoadResult:
    """Run ``processes`` x ``threads`` loops of ``try_acquire(org)`` for ``seconds``."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_hammer, args=(url, cluster, limits, org, seconds, threads, barrier, results)
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    parts = []
    deadline = time.monotonic() + seconds + 90
    try:
        while len(parts) < processes:
            try:
                parts.append(results.get(timeout=0.5))
            except queue.Empty:
                crashed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if crashed or time.monotonic() > deadline:
                    raise RuntimeError(f"load processes failed: exit codes {crashed}") from None
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    admitted = sorted(t for part in parts for t in part[0])
    return LoadResult(admitted, sum(p[1] for p in parts), sum(p[2] for p in parts))


def max_in_any_interval(times_us: list[int], length_us: int) -> int:
    """Most admissions in one closed interval [s, s + length] (it suffices to try s = each t)."""
    return max(
        (bisect.bisect_right(times_us, t + length_us) - i for i, t in enumerate(times_us)),
        default=0,
    )


def utilization(times_us: list[int], limit: int, length_us: int, windows: int) -> float:
    """Rate of admission under overload relative to ``limit`` per ``length``.

    Admitting ``windows * limit`` more requests after the first one took at least
    ``windows * length`` (the guarantee); this is that ideal time over the time it took.
    """
    needed = windows * limit
    if len(times_us) <= needed:
        raise AssertionError(f"only {len(times_us)} admissions; need more than {needed}")
    return windows * length_us / (times_us[needed] - times_us[0])
