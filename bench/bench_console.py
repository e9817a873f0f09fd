"""The console's pages at the retention caps: overview and dead letters, server time.

Run with ``.venv/bin/python bench/bench_console.py``. One private redis-server holding 3
queues, 5,000 dead letters over them (``stack.dead_letter_seed``) and 1,000 completed
records (the job log's default cap), and one ``worker console`` process on it. Each page
is fetched ``--repeat`` times over one kept-alive connection on loopback, so the time is
the server's (loopback adds well under a millisecond). Printed: median and p95 of each.
Target: both under 300 ms (exit 1 if not).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from stack.console_server import console_server
from stack.dead_letter_seed import seed_dead_letters, varied_seeds
from stack.servers import redis_server, running
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()
TARGET_MS = 300.0
PASSWORD = "bench-console-password"
PAGES = {
    "overview": "/",
    "dead letters (page 1)": "/dead-letters",
    "dead letters (filtered)": "/dead-letters?org=org-3&error=401",
    "dead letters (page 50)": "/dead-letters?page=50",
    "completed jobs (search)": "/completed?org=org-7",
}


def seed(url: str, dead: int, completed: int) -> None:
    client = redis.Redis.from_url(url)
    seed_dead_letters(client, KEYS.namespace, varied_seeds(dead))
    with client.pipeline(transaction=False) as pipe:
        for i in range(completed):
            queue = ("default", "critical", "fast")[i % 3]
            fields = {
                "message_id": f"m-{i}",
                "queue": queue,
                "job_type": "agent.run",
                "job_id": f"job-{i}",
                "org_id": f"org-{i % 50}",
                "result": '{"ok": true}',
            }  # noqa: E501
            pipe.xadd(KEYS.completed, fields)
        pipe.execute()


def signed_in(url: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=60)
    token = re.search(r'name="csrf" value="([^"]*)"', http.get("/login").text)[1]
    response = http.post("/login", data={"csrf": token, "password": PASSWORD})
    assert response.status_code == 303, response.status_code
    return http


def measure(http: httpx.Client, path: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = http.get(path)
        times.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dead", type=int, default=5_000)
    parser.add_argument("--completed", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    failed = False
    with tempfile.TemporaryDirectory() as tmp, running(redis_server(Path(tmp) / "redis")) as r:
        seed(r.url, args.dead, args.completed)
        with running(console_server(Path(tmp), r.url, PASSWORD)) as server:
            http = signed_in(server.url)
            print(f"{args.dead:,} dead letters over 3 queues, {args.completed:,} completed")
            print(f"{'page':<26} {'median ms':>10} {'p95 ms':>8}")
            for name, path in PAGES.items():
                measure(http, path, 3)  # warm: templates compiled, connections open
                times = measure(http, path, args.repeat)
                median, high = statistics.median(times), p95(times)
                mark = "" if high < TARGET_MS else "  over target"
                failed |= name.startswith(("overview", "dead letters (page 1)")) and bool(mark)
                print(f"{name:<26} {median:>10.1f} {high:>8.1f}{mark}")
    print(f"target: overview and dead letters under {TARGET_MS:.0f} ms (median and p95)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
