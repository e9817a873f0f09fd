"""Dead letters at the retention cap: ``list`` over 5,000, and requeue throughput vs ``--rate``.

Run with ``.venv/bin/python bench/bench_dead_letters.py``. One private redis-server;
dead letters are written straight into Redis (``stack.dead_letter_seed``) as the worker
leaves them. Printed:
  - ``worker dead-letters list`` over 5,000 (the whole command, start-up included, and the
    library's read alone), and ``list --json --limit 0``;
  - for each ``--rate``, the rate Redis saw (requeues / elapsed) and its ratio to the rate;
  - the unthrottled ceiling of one command (one round trip per message).
Target: every measured rate within 10 % of ``--rate`` below the ceiling (exit 1 if not).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from stack.dead_letter_seed import seed_dead_letters, varied_seeds
from stack.fleet import python_env
from stack.servers import redis_server, running
from worker.dead_letters import DeadLetters, Selection
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()
NS = KEYS.namespace


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def command(url: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "worker", "dead-letters", *args],
        env=python_env(REDIS_URL=url),
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=120,
    )


def bench_list(url: str, client: redis.Redis, n: int) -> None:
    client.flushall()
    seed_dead_letters(client, NS, varied_seeds(n))
    store = DeadLetters(client, namespace=NS)
    read = timed(lambda: store.select(Selection()), 5)
    filtered = timed(lambda: store.select(Selection(error="401", org="org-3")), 5)
    cli = timed(lambda: command(url, "list"), 3)
    cli_json = timed(lambda: command(url, "list", "--json", "--limit", "0"), 3)
    startup = timed(lambda: command(url, "audit", "--limit", "1"), 3)
    print(f"list over {n:,} dead letters (median):")
    print(f"  library read + sort          {read * 1000:8.1f} ms  ({n / read:,.0f} letters/s)")
    print(f"  library, two filters         {filtered * 1000:8.1f} ms")
    print(f"  worker dead-letters list     {cli * 1000:8.1f} ms", end="")
    print(f"  (start-up alone {startup * 1000:.0f} ms)")
    print(f"  list --json --limit 0        {cli_json * 1000:8.1f} ms")


def measure_rate(client: redis.Redis, n: int, rate: float) -> float:
    """Requeue ``n`` fresh dead letters at ``rate``; the rate Redis saw."""
    client.flushall()
    seed_dead_letters(client, NS, varied_seeds(n))
    store = DeadLetters(client, namespace=NS)
    letters = store.all()
    stamps: list[float] = []
    store.requeue(letters, rate=rate, on_each=lambda *_: stamps.append(time.monotonic()))
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letters", type=int, default=5000, help="dead letters listed")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each rate run")
    args = parser.parse_args()
    missed = False
    with tempfile.TemporaryDirectory() as tmp, running(redis_server(Path(tmp) / "r")) as srv:
        client = redis.Redis.from_url(srv.url)
        bench_list(srv.url, client, args.letters)
        ceiling = measure_rate(client, 3000, 1e9)
        print(f"requeue ceiling, unthrottled: {ceiling:,.0f}/s (one Lua call per message)")
        print("requeue at --rate (Redis-side rate over the run):")
        for rate in (5, 20, 100, 500):
            if rate > ceiling * 0.8:
                continue
            n = max(10, int(rate * args.seconds))
            measured = measure_rate(client, n, rate)
            ratio = measured / rate
            missed |= abs(ratio - 1) > 0.1
            print(f"  --rate {rate:>4}: {measured:8.2f}/s over {n:>5} messages, ratio {ratio:.3f}")
        client.close()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
