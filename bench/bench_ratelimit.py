"""This rate limiter vs Dramatiq's WindowRateLimiter, side by side against one redis-server.

Run with ``make bench`` (or ``.venv/bin/python bench/bench_ratelimit.py --seconds 3``).
Every phase but the last hammers one key with limits high enough that every acquire is
admitted, so both limiters do their full work; the last one measures refusals. Redis
commands and server time per acquire come from ``INFO commandstats`` deltas around each
phase. Dramatiq's limiter only runs with a 60 s
window: with an hour or a day it WATCHes 3,600 or 86,400 keys per acquire and blocks Redis.

Targets (printed with their measured ratio; exit code 1 if one is missed):
  - exactly 1 command sent per acquire, for the three default windows together;
  - at least 10x Dramatiq's acquires/s under 8-thread contention;
  - server time per acquire within 2x across 60 s, 3,600 s and 86,400 s windows.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from dramatiq.rate_limits import WindowRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

from stack.servers import redis_server, running
from worker.ratelimit import RateLimiter

HUGE = 10**12
#: Commands of the benchmark itself or of connection setup, not of an acquire.
OVERHEAD = ("cmdstat_info", "cmdstat_config", "cmdstat_client", "cmdstat_hello", "cmdstat_ping")
SCRIPT_COMMANDS = ("cmdstat_evalsha", "cmdstat_eval")


@dataclass
class Phase:
    name: str
    threads: int
    acquires: int
    seconds: float
    sent: float  # commands sent by the client per acquire
    in_script: float  # commands run inside the Lua script per acquire
    server_us: float  # Redis server time per acquire

    @property
    def rate(self) -> float:
        return self.acquires / self.seconds


def command_stats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    return {
        name: (stats["calls"], stats["usec"])
        for name, stats in client.info("commandstats").items()
        if not name.startswith(OVERHEAD)
    }


def measure(
    client: redis.Redis, name: str, acquire: Callable[[], bool], threads: int, seconds: float
) -> Phase:
    warm = [threading.Thread(target=acquire) for _ in range(threads)]  # open the connections
    for thread in warm:
        thread.start()
    for thread in warm:
        thread.join()
    counts = [0] * threads

    def loop(slot: int, deadline: float) -> None:
        done = 0
        while time.monotonic() < deadline:
            done += acquire()
        counts[slot] = done

    before = command_stats(client)
    started = time.monotonic()
    pool = [threading.Thread(target=loop, args=(i, started + seconds)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.monotonic() - started
    after = command_stats(client)

    delta = {
        k: (v[0] - before.get(k, (0, 0))[0], v[1] - before.get(k, (0, 0))[1])
        for k, v in after.items()
    }
    acquires = sum(counts)
    scripted = any(k in SCRIPT_COMMANDS and v[0] for k, v in delta.items())
    if scripted:
        sent = sum(v[0] for k, v in delta.items() if k in SCRIPT_COMMANDS)
        in_script = sum(v[0] for k, v in delta.items() if k not in SCRIPT_COMMANDS)
        # EVALSHA's time includes the commands it runs
        server = sum(v[1] for k, v in delta.items() if k in SCRIPT_COMMANDS)
    else:
        sent = sum(v[0] for v in delta.values())
        in_script = 0
        server = sum(v[1] for v in delta.values())
    return Phase(
        name, threads, acquires, elapsed, sent / acquires, in_script / acquires, server / acquires
    )


def prefill(client: redis.Redis, limiter: RateLimiter, org: str) -> None:
    """Fill every bucket of every window, as for an organization busy all day."""
    seconds, micros = client.time()
    now = seconds * 1_000_000 + micros
    for key, window in zip(limiter.keys_for(org), limiter.windows_for(org), strict=True):
        width = limiter.bucket_micros(window)
        current = now // width
        client.delete(key)
        client.hset(key, mapping={str(i): 1 for i in range(current - limiter.buckets, current + 1)})
        client.pexpire(key, width * (limiter.buckets + 1) // 1000 + 1000)


def ours(client: redis.Redis, limits: dict[str, tuple[int, int]], org: str) -> Callable[[], bool]:
    limiter = RateLimiter(client, limits)
    limiter.try_acquire(org)  # load the script
    prefill(client, limiter, org)
    return lambda: limiter.try_acquire(org).allowed


def dramatiqs(client: redis.Redis, window: int) -> Callable[[], bool]:
    limiter = WindowRateLimiter(
        RedisBackend(client=client), "bench-dramatiq", limit=HUGE, window=window
    )

    def acquire() -> bool:
        with limiter.acquire(raise_on_failure=False) as acquired:
            return acquired

    return acquire


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    args = parser.parse_args()

    default = {"minute": (HUGE, 60), "hour": (HUGE, 3600), "day": (HUGE, 86400)}
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(redis_server(Path(tmp), None, "--appendonly", "no")) as server,
    ):
        client = redis.Redis(port=server.port)
        print(
            f"redis-server {client.info('server')['redis_version']}, Python "
            f"{platform.python_version()}, {len(__import__('os').sched_getaffinity(0))} cores, "
            f"{args.seconds:g} s per phase, steady-state keys (every bucket filled)\n"
        )
        phases = []
        for threads in (1, 8):
            phases.append(
                measure(
                    client,
                    "this limiter, minute+hour+day",
                    ours(client, default, f"org-{threads}"),
                    threads,
                    args.seconds,
                )
            )
            phases.append(
                measure(
                    client,
                    "dramatiq WindowRateLimiter 60 s",
                    dramatiqs(client, 60),
                    threads,
                    args.seconds,
                )
            )
        by_window = {}
        for name, seconds in (("minute", 60), ("hour", 3600), ("day", 86400)):
            phase = measure(
                client,
                f"this limiter, {name} window only",
                ours(client, {name: (HUGE, seconds)}, f"org-{name}"),
                1,
                args.seconds,
            )
            phases.append(phase)
            by_window[seconds] = phase
        limiter = RateLimiter(client, {**default, "minute": (1, 60)})
        limiter.try_acquire("org-over")  # its minute is full for the rest of the run
        phases.append(
            measure(
                client,
                "this limiter, refusals (minute full)",
                lambda: not limiter.try_acquire("org-over").allowed,
                1,
                args.seconds,
            )
        )
        client.close()

    header = ("limiter", "threads", "acquires/s", "cmds sent", "in script", "server us")
    print("{:<38} {:>7} {:>11} {:>9} {:>9} {:>9}".format(*header))
    for p in phases:
        row = (p.name, p.threads, f"{p.rate:,.0f}", f"{p.sent:.2f}", f"{p.in_script:.1f}")
        print("{:<38} {:>7} {:>11} {:>9} {:>9} {:>9.1f}".format(*row, p.server_us))

    ours_1, dram_1, ours_8, dram_8 = phases[:4]
    server_ratio = max(p.server_us for p in by_window.values()) / min(
        p.server_us for p in by_window.values()
    )
    checks = [
        (
            "commands sent per acquire, 3 windows (target 1)",
            ours_8.sent,
            abs(ours_8.sent - 1) < 0.001 and abs(ours_1.sent - 1) < 0.001,
        ),
        ("dramatiq commands per acquire (60 s window)", dram_8.sent, True),
        ("acquires/s vs dramatiq, 1 thread", ours_1.rate / dram_1.rate, True),
        (
            "acquires/s vs dramatiq, 8 threads (target >= 10)",
            ours_8.rate / dram_8.rate,
            ours_8.rate >= 10 * dram_8.rate,
        ),
        (
            "server time per acquire vs dramatiq, 8 threads",
            ours_8.server_us / dram_8.server_us,
            True,
        ),
        ("server time max/min over 60 s, 1 h, 1 d (target <= 2)", server_ratio, server_ratio <= 2),
    ]
    print()
    missed = 0
    for label, value, ok in checks:
        missed += not ok
        print(f"{label:<56} {value:>8.2f}  {'ok' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
