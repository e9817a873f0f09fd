"""The backtest's Alertmanager stage on a week: time, cost per day and peak memory.

Run with ``.venv/bin/python bench/bench_backtest_alertmanager.py``. The committed
``alertmanager/alertmanager.yml``; a week of firing intervals for 2 replicas and 3 queues
(seeded, so every run replays the same week): the Watchdog all week, and each worker alert
firing ``--per-day`` times a day per replica or queue for 1 to 60 minutes, at Prometheus'
defaults (evaluation every 15 s, re-sent after 1m). Printed: intervals, posts,
notifications, seconds, seconds per day of history, peak memory. Target: under 10 s for the
week, a sixth of the whole backtest's 60 s budget (exit 1 if not).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc

import yaml

from alerts.routes import ALERTMANAGER_CONFIG
from stack.backtest.alertmanager import prometheus_posts, simulate
from stack.backtest.model import AlertInterval

DAY = 86400.0
STEP = 15.0
TARGET_SECONDS = 10.0
#: (alertname, severity, per what: "instance", "queue" or None).
ALERTS = [
    ("WorkerDown", "critical", "instance"),
    ("RedisDisconnected", "critical", "instance"),
    ("HighRedisReconnectAttempts", "warning", "instance"),
    ("HighJobFailureRate", "warning", "queue"),
    ("HighJobProcessingQueue", "warning", "queue"),
    ("LowWorkerThroughput", "warning", None),
    ("JobQueueWaitBudgetBurn", "critical", "queue"),
]


def week_of_intervals(days: int, per_day: float, seed: int = 26) -> list[AlertInterval]:
    rng = random.Random(seed)
    end = days * DAY
    found = [AlertInterval({"alertname": "Watchdog", "severity": "none"}, 0.0, 0.0, None)]
    scopes = {
        "instance": ["worker-1:9191", "worker-2:9191"],
        "queue": ["critical", "default", "fast"],
    }
    for name, severity, scope in ALERTS:
        for value in scopes.get(scope, [None]) if scope else [None]:
            labels = {"alertname": name, "severity": severity, "job": "worker"}
            if scope:
                labels[scope] = value
            t = rng.uniform(0, DAY / per_day)
            while t < end:
                fired = round(t / STEP) * STEP
                resolved = fired + round(rng.uniform(60, 3600) / STEP) * STEP
                found.append(AlertInterval(labels, fired - 60, fired, resolved))
                t = resolved + rng.expovariate(per_day / DAY) + 120
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="default %(default)s")
    parser.add_argument("--per-day", type=float, default=4.0, help="default %(default)s")
    args = parser.parse_args()
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    intervals = week_of_intervals(args.days, args.per_day)
    end = args.days * DAY
    posts = len(prometheus_posts(intervals, end=end))
    tracemalloc.start()
    started = time.perf_counter()
    sent = simulate(config, intervals, start=0.0, end=end)
    took = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    counts = {r: sum(n.receiver == r for n in sent) for r in ("pager", "chat", "deadman")}
    print(f"history: {args.days} days, {len(intervals)} firing intervals, {posts} posts")
    print(f"notifications: {len(sent)} {counts}")
    print(f"time: {took:.2f} s ({took / args.days:.3f} s per day of history)")
    print(f"peak memory (traced): {peak / 2**20:.1f} MiB")
    ok = took < TARGET_SECONDS * args.days / 7
    print(f"target: under {TARGET_SECONDS:.0f} s a week: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
