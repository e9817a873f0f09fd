"""What a rule backtest costs: a week of 15 s history for 2 replicas, every committed rule.

  python bench/bench_backtest.py [--days 7] [--rules prometheus/rules/*.yml]

1. The series of one real replica's /metrics (``python -m worker run`` on a private
   Redis), for two instances, synthesized every 15 s over ``--days`` days (counters that
   grow, gauges that hold) and backfilled with promtool into a Prometheus: the user's
   history. Made once and kept in ``.run/bench-backtest/`` (its making is timed apart).
2. ``stack.backtest.rules.evaluate`` over the whole history with the committed rules,
   timed; the peak memory of the processes it runs (this one's peak plus the largest of
   the scratch Prometheus' and promtool's, from getrusage); the cost per day of history,
   and a week's cost as a ratio to the target (issue 26: under 60 s on the 2-core machine).
3. Each rule's range query alone against the source over one day at its group's interval,
   the slowest first: what the time is made of.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from stack import prom
from stack.backtest import rules as backtest
from stack.fleet import Replica, replica_env, scrape
from stack.poll import wait_until
from stack.servers import free_port, prometheus_server, redis_server, running

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / ".run" / "bench-backtest"
STEP = 15
INSTANCES = ("worker-1:9191", "worker-2:9191")
#: Seconds a backtest of a week may take (issue 26).
TARGET_WEEK_SECONDS = 60
#: History ends on a whole day, well in the past (the samples are blocks, not the head).
END = 1_790_000_000 - 1_790_000_000 % 86400


def replica_series() -> list[tuple[str, dict[str, str]]]:
    """Name and labels of every sample line of a fresh replica's /metrics."""
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        with running(redis_server(Path(tmp) / "redis")) as redis:
            port = free_port()
            env = replica_env(redis.url, METRICS_PORT=port, METRICS_DIR=Path(tmp) / "m")
            replica = Replica(env, Path(tmp) / "replica.log").start()
            try:
                text = wait_until(lambda: scrape(port), 60, ignore=(OSError,))
            finally:
                replica.stop()
    return [
        (sample.name, dict(sample.labels))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def synthesize(series: list[tuple[str, dict[str, str]]], days: int, workdir: Path) -> int:
    """Backfill ``days`` of 15 s samples of ``series`` for each instance, a day per file
    (promtool reads a file whole); return the number of series written."""
    steps = days * 86400 // STEP
    start = END - days * 86400
    heads = []
    for instance in INSTANCES:
        heads.append(("up", f'up{{instance="{instance}",job="worker"}}', False, 0.0))
        for name, labels in series:
            labels = {**labels, "instance": instance, "job": "worker"}
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            grows = name.endswith(("_total", "_count", "_sum", "_bucket"))
            seed = int(hashlib.sha256(f"{name}{text}".encode()).hexdigest()[:6], 16)
            heads.append((name, f"{name}{{{text}}}", grows, 0.05 + (seed % 100) / 100))
    per_day = 86400 // STEP
    for day in range(days):
        lines = []
        for name, head, grows, rate in heads:
            for k in range(day * per_day, min((day + 1) * per_day, steps)):
                t = start + k * STEP
                if name == "up":
                    value = 1
                elif grows:
                    value = int(rate * k * STEP)
                elif name == "worker_redis_connection_status":
                    value = 1
                else:
                    value = int(rate * 10)
                lines.append(f"{head} {value} {t}")
        lines += ["# EOF", ""]
        prom.backfill_openmetrics("\n".join(lines), workdir, max_block_duration="486h")
        (workdir / "backfill.om").unlink()
    return len(heads)


def peak_memory() -> int:
    """This process's peak resident bytes plus the largest peak of the processes it started
    and has waited for (the scratch Prometheus, promtool): the kernel keeps both."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--rules", nargs="+", type=Path)
    parser.add_argument("--fresh", action="store_true", help="synthesize the history again")
    args = parser.parse_args(argv)
    rule_files = args.rules or sorted((ROOT / "prometheus" / "rules").glob("*.yml"))

    workdir = STORE / f"{args.days}d"
    if args.fresh or not (workdir / "done").exists():
        shutil.rmtree(workdir, ignore_errors=True)
        began = time.monotonic()
        series = replica_series()
        written = synthesize(series, args.days, workdir)
        (workdir / "done").write_text(f"{written}\n")
        print(
            f"1. history: {len(series)} series a replica, {written} in all, every {STEP} s "
            f"for {args.days} d, synthesized and backfilled in {time.monotonic() - began:.0f} s"
        )
    else:
        print(f"1. history: {(workdir / 'done').read_text().strip()} series, kept in {workdir}")

    config = f"global: {{evaluation_interval: {STEP}s}}\nscrape_configs: []\n"
    source = prometheus_server(workdir, config, None, "--storage.tsdb.retention.time=100y")
    with running(source):
        start, end = END - args.days * 86400, END
        began = time.monotonic()
        run = backtest.evaluate(source.url, rule_files, start=start, end=end)
        took = time.monotonic() - began
        peak = peak_memory()  # the source Prometheus still runs: not counted
        print(
            f"2. evaluate(): {len(run.alertnames)} alerts, {len(run.intervals)} firing "
            f"intervals over {args.days} d in {took:.1f} s ({took / args.days:.1f} s per day "
            f"of history); peak memory {peak / 2**20:.0f} MiB (this process and the largest "
            "process it started: the scratch Prometheus, promtool, or when the history was "
            "made in this run, the replica)"
        )
        week = took * 7 / args.days
        print(
            f"   a week: {week:.1f} s, {week / TARGET_WEEK_SECONDS:.2f}x the "
            f"{TARGET_WEEK_SECONDS} s target"
        )
        print(
            "3. each rule's range query alone over one day of the source at its group's "
            "interval, slowest first (* not evaluated by evaluate(): no alert reads it):"
        )
        rules = backtest._load(rule_files, STEP * 1000)
        backtest._stage(rules)
        needed = {r.order for r in backtest._needed(rules)}
        costs = []
        for rule in rules:
            t0 = time.monotonic()
            with contextlib.suppress(prom.PrometheusError):
                prom.query_range(
                    source.url,
                    rule.expr,
                    end - 86400,
                    end,
                    rule.interval_ms / 1000,
                    backtest.QUERY_TIMEOUT,
                )
            name = rule.record or rule.alert
            costs.append((time.monotonic() - t0, name if rule.order in needed else f"{name} *"))
        for seconds, name in sorted(costs, reverse=True)[:8]:
            print(f"   {seconds:6.2f} s  {name}")
        print(f"   all {len(costs)} rules: {sum(s for s, _ in costs):.1f} s per day")
    return 0


if __name__ == "__main__":
    sys.exit(main())
