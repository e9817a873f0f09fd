"""What the metrics cost: throughput, scrape time, series count. Prints measured figures.

  python bench/bench_metrics.py            (or: make bench)

1. Throughput of no-op jobs, one worker process of 8 threads on one private Redis, in
   five variants measured in alternation (median of the rounds): bare Dramatiq (no
   middleware), Dramatiq with its own default middleware, the worker's whole middleware
   stack with multiprocess metrics, the same stack without JobMetrics (what the metrics
   alone cost) and without JobLog (the record of each completion, sent with the ack);
   and the CPU time of JobMetrics' hooks per attempt, measured alone (steady even on a
   busy machine). Two regimes: Dramatiq's default prefetch (2 x threads), as the worker
   runs, where no-op jobs are bounded by the consumer's fetch polling; and a prefetch of
   256, where the worker process's CPU is the limit, so every microsecond of middleware
   shows.
2. Scrape time of a live replica (``python -m worker``) with 2 and with 16 worker
   processes, after jobs of every actor ran in every process.
3. Scrape time as processes come and go: 100 exited processes' files, first scrape (which
   folds them) and the scrapes after it.
4. Series one replica exports under a demo load (every actor, failures, retries, dead
   letters).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

from stack.fleet import Replica, replica_env, scrape
from stack.poll import wait_until
from stack.servers import free_port, redis_server, running

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = ("bare", "dramatiq-defaults", "stack", "stack-no-metrics", "stack-no-joblog")
PREFETCH = {"default prefetch (2 x threads)": None, "prefetch 256 (CPU-bound)": 256}


# --- 1. throughput (each variant runs in a fresh process: metrics files, clean state) --------


def throughput_child(variant: str, redis_url: str, jobs: int, threads: int) -> None:
    """Enqueue ``jobs`` no-op messages, then time one worker until all have run."""
    if variant != "bare":
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from worker.redis_keys import RedisKeys

    namespace = f"bench-{variant}"
    client = redis.Redis.from_url(redis_url)
    client.delete(*client.keys(RedisKeys(namespace).everything) or ["-"])
    if variant == "bare":
        broker = RedisBroker(client=client, namespace=namespace, middleware=[])
    elif variant == "dramatiq-defaults":
        broker = RedisBroker(client=client, namespace=namespace)
    else:
        from worker.app import build_broker
        from worker.config import Settings
        from worker.middleware.job_log import JobLog
        from worker.middleware.metrics import JobMetrics

        settings = Settings(_env_file=None, REDIS_URL=redis_url, JOB_QUEUE_NAME=namespace)
        broker = build_broker(settings)
        left_out = {"stack-no-metrics": JobMetrics, "stack-no-joblog": JobLog}.get(variant)
        if left_out is not None:
            broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, left_out)]
    dramatiq.set_broker(broker)
    done = 0
    finished = threading.Event()
    lock = threading.Lock()

    def noop() -> None:
        nonlocal done
        with lock:
            done += 1
            if done == jobs:
                finished.set()

    actor = dramatiq.actor(noop, actor_name="bench.noop", queue_name="fast", broker=broker)
    for _ in range(jobs):
        actor.send()
    worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=threads)
    started, cpu = time.perf_counter(), time.process_time()
    worker.start()
    finished.wait(300)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    worker.stop()
    print(f"{jobs / elapsed:.1f} {cpu / jobs * 1e6:.1f}")


def throughput(
    redis_url: str, jobs: int, threads: int, rounds: int, prefetch: int | None
) -> dict[str, tuple]:
    """variant -> (median jobs/s, median CPU microseconds per job in the worker process).
    CPU per job is the steadier figure on a shared machine: others' load changes the
    wall clock, not the work this process does per job."""
    env = {**os.environ, "dramatiq_queue_prefetch": str(prefetch or 0)}
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, redis_url, str(jobs), str(threads)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
                env=env,
                timeout=600,
            )
            rate, cpu = out.stdout.strip().splitlines()[-1].split()
            results[variant].append((float(rate), float(cpu)))
    return {
        v: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
        for v, runs in results.items()
    }


def hooks_child(attempts: int, queue_wait: bool = True) -> None:
    """CPU time of JobMetrics' hooks for one successful attempt, multiprocess mode, one
    thread: the cost the middleware adds to every job, free of others' load. Without
    ``queue_wait``, the queue-wait histogram is left out (what it costs is the difference)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")
    import dramatiq
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from worker.middleware.metrics import JobMetrics

    class WithoutQueueWait(JobMetrics):
        @staticmethod
        def observe_wait(metric, message) -> None:
            pass

    broker = StubBroker(middleware=[])
    middleware = JobMetrics() if queue_wait else WithoutQueueWait()
    broker.add_middleware(middleware)
    dramatiq.actor(lambda: None, actor_name="bench.noop", queue_name="fast", broker=broker)
    messages = [
        MessageProxy(dramatiq.Message("fast", "bench.noop", (), {}, {})) for _ in range(attempts)
    ]
    cpu = time.process_time()
    for message in messages:
        middleware.before_process_message(broker, message)
        middleware.after_process_message(broker, message, result=None)
        middleware.after_ack(broker, message)
    print(f"{(time.process_time() - cpu) / attempts * 1e6:.1f}")


def oldest_age_cost(redis_url: str, samples: int) -> dict[str, float]:
    """Median milliseconds of one backlog sample with and without reading each queue's
    oldest ready message, with 1,000 messages waiting per queue."""
    from worker.app import setup
    from worker.brokers.redis import redis_backlog
    from worker.config import Settings
    from worker.exposition import redis_oldest_ages
    from worker.jobs import QUEUES
    from worker.redis_keys import DEFAULT_NAMESPACE

    client = redis.Redis.from_url(redis_url)
    client.flushall()
    broker = setup(Settings(_env_file=None, REDIS_URL=redis_url))
    from worker import actors

    for i in range(1000):
        actors.agent_run.send(job_id=f"a{i}", org_id="o", prompt="p")
        actors.crm_sync.send(job_id=f"c{i}", org_id="o", record={})
        actors.job_status_update.send(job_id=f"s{i}", org_id="o", status="running")
    counts = redis_backlog(client, DEFAULT_NAMESPACE, QUEUES)
    oldest = redis_oldest_ages(client, DEFAULT_NAMESPACE, QUEUES)
    times: dict[str, list[float]] = {"backlog_ms": [], "both_ms": []}
    for _ in range(samples):
        started = time.perf_counter()
        counts()
        times["backlog_ms"].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        counts(), oldest()
        times["both_ms"].append((time.perf_counter() - started) * 1000)
    client.flushall()
    assert broker is not None
    return {k: statistics.median(v) for k, v in times.items()}


# --- 2-4. live replicas ---------------------------------------------------------------------


def demo_load(redis_url: str, per_actor: int) -> int:
    from worker.app import setup
    from worker.config import Settings

    setup(Settings(_env_file=None, REDIS_URL=redis_url))
    from worker import actors

    sent = 0
    for i in range(per_actor):
        org, job_id = f"org-{i % 7}", f"job-{i}"
        actors.agent_run.send(job_id=job_id, org_id=org, prompt="hello")
        actors.crm_sync.send(job_id=job_id, org_id=org, record={"n": i})
        actors.message_send.send(
            job_id=job_id, org_id=org, channel="sms", recipient="+1", text="hi"
        )
        actors.job_status_update.send(job_id=job_id, org_id=org, status="running")
        sent += 4
    actors.job_status_update.send(job_id="bad", org_id="o", status="bogus")  # dead at once
    return sent + 1


def scrape_times(port: int, n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        scrape(port)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def series_count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def live_replica(redis_url: str, processes: int, workdir: Path, scrapes: int) -> dict:
    port = free_port()
    env = replica_env(
        redis_url,
        METRICS_PORT=port,
        WORKER_PROCESSES=processes,
        JOB_CONCURRENCY=processes * 2,
        SIM_LATENCY_SECONDS="0.02-0.05",
        SIM_FAILURE_RATIO=0.2,
        SIM_429_RATIO=0.05,
        RETRY_TIME_SCALE=0.01,
        METRICS_QUEUE_SAMPLE_SECONDS=10,
        METRICS_DIR=workdir / f"metrics-{processes}",
    )
    replica = Replica(env, workdir / f"replica-{processes}.log").start()
    try:
        wait_until(lambda: _up(port), timeout=120, interval=0.2)
        sent = demo_load(redis_url, per_actor=10 * processes)

        def drained() -> bool:
            text = scrape(port)
            done = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(("worker_jobs_completed_total", "worker_jobs_dead_lettered_t"))
            )
            return done >= sent

        wait_until(drained, timeout=300, interval=0.5)
        median, p95 = scrape_times(port, scrapes)
        text = scrape(port)
        files = len(list((workdir / f"metrics-{processes}").glob("*.db")))
    finally:
        replica.stop()
    return {"median_ms": median, "p95_ms": p95, "series": series_count(text), "files": files}


def _up(port: int) -> bool:
    try:
        return "worker_jobs_total" in scrape(port, timeout=1)
    except OSError:
        return False


_CHILD = """
from worker import metrics
for q, a in [("default", "agent.run"), ("critical", "crm.sync"), ("critical", "message.send"),
             ("fast", "job.status_update")]:
    metrics.jobs_started.labels(q, a).inc()
    metrics.jobs_completed.labels(q, a).inc()
    metrics.job_duration.labels(q, a).observe(17.0)
    metrics.jobs_processing.labels(q, a).set(0)
"""


def churn(processes: int, scrapes: int) -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from worker.exposition import replica_registry

    with tempfile.TemporaryDirectory() as path:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": path}
        for start in range(0, processes, 10):
            procs = [
                subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=ROOT)
                for _ in range(min(10, processes - start))
            ]
            for p in procs:
                p.wait()
        files_before = len(list(Path(path).glob("*.db")))
        from prometheus_client import CollectorRegistry

        plain = CollectorRegistry()
        MultiProcessCollector(plain, path=path)
        t = time.perf_counter()
        generate_latest(plain)
        uncompacted_ms = (time.perf_counter() - t) * 1000
        registry = replica_registry(path)
        t = time.perf_counter()
        generate_latest(registry)
        first_ms = (time.perf_counter() - t) * 1000
        times = []
        for _ in range(scrapes):
            t = time.perf_counter()
            generate_latest(registry)
            times.append((time.perf_counter() - t) * 1000)
        files_after = len(list(Path(path).glob("*.db")))
    return {
        "files_before": files_before,
        "files_after": files_after,
        "uncompacted_ms": uncompacted_ms,
        "first_ms": first_ms,
        "after_ms": statistics.median(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--hooks-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hooks_child:
        attempts, variant = args.hooks_child
        hooks_child(int(attempts), queue_wait=variant == "with")
        return
    if args.child:
        variant, url, jobs, threads = args.child
        throughput_child(variant, url, int(jobs), int(threads))
        return

    with tempfile.TemporaryDirectory() as tmp, running(redis_server(Path(tmp) / "redis")) as srv:
        print(
            f"\n1. throughput, no-op jobs, 1 process x {args.threads} threads, "
            f"{args.jobs} jobs, median of {args.rounds} rounds"
        )
        for regime, prefetch in PREFETCH.items():
            tput = throughput(srv.url, args.jobs, args.threads, args.rounds, prefetch)
            print(f"   {regime}:")
            bare_rate, bare_cpu = tput["bare"]
            for variant in VARIANTS:
                rate, cpu = tput[variant]
                print(
                    f"     {variant:18} {rate:8.0f} jobs/s  {rate / bare_rate:5.2f} x bare   "
                    f"{cpu:6.0f} us CPU/job  (bare/this {bare_cpu / cpu:4.2f})"
                )
            (full, full_cpu), (no_m, no_m_cpu) = tput["stack"], tput["stack-no-metrics"]
            print(
                f"     metrics alone: stack / stack-no-metrics = {full / no_m:.2f} (jobs/s), "
                f"{full_cpu - no_m_cpu:.0f} us CPU per job"
            )
        hooks: dict[str, list[float]] = {"with": [], "without": []}
        for _ in range(5):  # alternated, so both see the same machine
            for variant in hooks:
                hooks[variant].append(
                    float(
                        subprocess.run(
                            [sys.executable, __file__, "--hooks-child", "20000", variant],
                            capture_output=True,
                            text=True,
                            check=True,
                            cwd=ROOT,
                        ).stdout
                    )
                )
        with_wait, without_wait = min(hooks["with"]), min(hooks["without"])
        print(f"   JobMetrics hooks alone: {with_wait:.1f} us CPU per attempt (best of 5)")
        print(
            f"   queue-wait histogram: hooks with it {with_wait:.1f} us, without it "
            f"{without_wait:.1f} us: {with_wait - without_wait:.1f} us CPU per job (target <= 5)"
        )
        ages = oldest_age_cost(srv.url, args.scrapes)
        print(
            f"   oldest-message age, per backlog sample (not per job): backlog read "
            f"{ages['backlog_ms']:.2f} ms, with the oldest-age read {ages['both_ms']:.2f} ms"
        )

        print("\n2. scrape time of a live replica after jobs of every actor in every process")
        live = {}
        for processes in (2, 16):
            redis.Redis.from_url(srv.url).flushall()
            live[processes] = r = live_replica(srv.url, processes, Path(tmp), args.scrapes)
            print(
                f"   {processes:2} worker processes: median {r['median_ms']:.1f} ms, "
                f"p95 {r['p95_ms']:.1f} ms ({r['files']} files, {r['series']} series)"
            )

    c = churn(100, args.scrapes)
    print("\n3. processes that come and go: 100 exited processes")
    print(f"   files before {c['files_before']}, after the first scrape {c['files_after']}")
    print(
        f"   scrape without folding {c['uncompacted_ms']:.1f} ms; first scrape (folds) "
        f"{c['first_ms']:.1f} ms; later scrapes median {c['after_ms']:.2f} ms"
    )

    print("\n4. series exported by one replica under the demo load")
    print(
        f"   2 processes: {live[2]['series']}, 16 processes: {live[16]['series']} "
        f"(target: under 300)"
    )


if __name__ == "__main__":
    main()
