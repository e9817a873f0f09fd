"""The metrics contract on a live replica: ``python -m worker`` processes, a real Redis,
scraped over HTTP and linted by ``promtool check metrics``."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import pytest
import redis
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from stack.fleet import Replica, Scrape, replica_env, scrape, scraped
from stack.poll import wait_until
from stack.servers import free_port, redis_server, require_binary, running
from tests.support.fleet import settings_for
from worker import __version__
from worker.app import setup
from worker.brokers.redis import redis_backlog
from worker.exposition import compact_dead_processes, redis_oldest_ages, replica_registry
from worker.jobs import QUEUES as QUEUE_NAMES
from worker.metrics import DURATION_BUCKETS, QUEUE_WAIT_BUCKETS
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()

JOB_METRICS = {
    # family name as the parser gives it -> (type, labels)
    "worker_jobs": ("counter", {"queue", "job_type"}),
    "worker_jobs_completed": ("counter", {"queue", "job_type"}),
    "worker_jobs_failed": ("counter", {"queue", "job_type"}),
    "worker_jobs_retried": ("counter", {"queue", "job_type"}),
    "worker_jobs_dead_lettered": ("counter", {"queue", "job_type"}),
    "worker_jobs_processing": ("gauge", {"queue", "job_type"}),
    "worker_job_duration_seconds": ("histogram", {"queue", "job_type"}),
    "worker_job_queue_wait_seconds": ("histogram", {"queue", "job_type"}),
}
REPLICA_METRICS = {
    "worker_redis_connection_status": ("gauge", set()),
    "worker_redis_reconnect_attempts": ("counter", set()),
    "worker_concurrency": ("gauge", set()),
    "worker_queue_messages": ("gauge", {"queue", "state"}),
    "worker_queue_oldest_message_age_seconds": ("gauge", {"queue"}),
    "worker_build_info": ("gauge", {"version"}),
    "worker_dead_letters_requeued": ("counter", {"queue"}),
    "worker_dead_letters_purged": ("counter", {"queue"}),
    "worker_dead_letters_oldest_age_seconds": ("gauge", {"queue"}),
}


def promtool_problems(text: str) -> str:
    done = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return (
        ""
        if done.returncode == 0 and not (done.stdout + done.stderr).strip()
        else (f"exit {done.returncode}: {done.stdout}{done.stderr}")
    )


def per_queue(s: Scrape, name: str) -> dict[str, float]:
    """queue -> value of a metric whose only label is ``queue``."""
    return {dict(labels)["queue"]: v for labels, v in s.series(name).items()}


def jobs(s: Scrape, queue: str, job_type: str) -> dict[str, float]:
    labels = {"queue": queue, "job_type": job_type}
    names = ["total", "completed_total", "failed_total", "retried_total", "dead_lettered_total"]
    got = {n: s.value(f"worker_jobs_{n}", **labels) for n in names}
    got["processing"] = s.value("worker_jobs_processing", **labels)
    got["observed"] = s.value("worker_job_duration_seconds_count", **labels)
    got["waited"] = s.value("worker_job_queue_wait_seconds_count", **labels)
    return got


@dataclass
class Workload:
    """What one replica of two worker processes reported about a known mix of jobs."""

    before: Scrape  # as the replica started, before any job
    after: Scrape  # once every attempt was counted, and requeues and purges were counted
    dead_since: dict[str, float]  # queue -> when (epoch s) its first dead letter was made
    scraping: tuple[float, float]  # when the scrape of ``after`` began and ended (epoch s)
    ids: set[str]  # organization, job and message ids the jobs carried
    metrics_dir: Path
    exit_code: int | None


@pytest.fixture(scope="module")
def workload(tmp_path_factory, metrics_env) -> Workload:
    """N jobs with K failures, retries, dead letters, an unknown actor, an undecodable
    message and a delayed job, through a replica of 2 processes; scraped when settled."""
    tmp = tmp_path_factory.mktemp("contract")
    with running(redis_server(tmp / "redis")) as redis_srv:
        client = redis.Redis.from_url(redis_srv.url)
        port, metrics_dir = free_port(), tmp / "metrics"
        env = metrics_env(
            redis_srv.url,
            port,
            # one thread per process: while one is busy the other fetches, so both take part
            WORKER_PROCESSES=2,
            JOB_CONCURRENCY=2,
            SIM_FAILURE_RATIO=1,  # every simulated LLM call fails: agent.run never succeeds
            SIM_LATENCY_SECONDS="0.2",
            RETRY_TIME_SCALE=0.01,
            METRICS_DIR=metrics_dir,
        )
        replica = Replica(env, tmp / "worker.log").start(timeout=30).wait_for_metrics()
        try:
            before = scraped(port)
            broker = setup(settings_for(redis_srv.url))
            from worker import actors

            sent = []
            for i in range(20):
                job = {"job_id": f"job-{i}", "org_id": f"org-{i % 3}", "status": "running"}
                sent.append(actors.job_status_update.send(**job))
            # An invalid payload: dead-lettered by ValidatePayload before it is an attempt.
            for i in range(2):
                job = {"job_id": f"bad-{i}", "org_id": "org-9", "status": "bogus"}
                sent.append(actors.job_status_update.send(**job))
            for i in range(4):  # 5 attempts each (standard class), then dead-lettered
                sent.append(
                    actors.agent_run.send(job_id=f"llm-{i}", org_id=f"org-{i}", prompt="hi")
                )
            sent.append(
                actors.agent_run.send_with_options(
                    kwargs={"job_id": "later", "org_id": "org-1", "prompt": "hi"}, delay=600_000
                )
            )
            kwargs = {"job_id": "x", "org_id": "y"}
            unknown = dramatiq.Message("critical", "no.such.actor", (), kwargs, options={})
            broker.enqueue(unknown)
            client.hset(KEYS.messages("fast"), "garbage-1", b"\xff{not json")
            client.rpush(KEYS.queue("fast"), "garbage-1")

            def settled() -> Scrape | None:
                s = scraped(port)
                dead = sum(s.series("worker_jobs_dead_lettered_total").values())
                done = s.value(
                    "worker_jobs_completed_total", queue="fast", job_type="job.status_update"
                )
                return s if dead >= 8 and done >= 20 else None

            wait_until(settled, timeout=60, interval=0.2)
            time.sleep(1.0)  # nothing more may happen: every attempt has been counted
            # What `worker dead-letters requeue` and `purge` count, in no replica: the
            # replica exports it; `critical` is never touched.
            client.hincrby(RedisKeys(KEYS.namespace).dead_letters_counted("requeued"), "default", 3)
            client.hincrby(RedisKeys(KEYS.namespace).dead_letters_counted("requeued"), "fast", 1)
            client.hincrby(RedisKeys(KEYS.namespace).dead_letters_counted("purged"), "fast", 2)
            firsts = {
                q: client.zrange(KEYS.dead_letters(q), 0, 0, withscores=True) for q in QUEUE_NAMES
            }
            dead_since = {q: first[0][1] / 1000 for q, first in firsts.items()}
            began = time.time()
            after, scraping = scraped(port), (began, time.time())
        finally:
            exit_code = replica.stop()
        ids = {f"org-{i}" for i in range(10)} | {f"job-{i}" for i in range(20)}
        ids |= {m.message_id for m in sent} | {"garbage-1", "bad-0", "bad-1", "x", "y"}
        yield Workload(before, after, dead_since, scraping, ids, metrics_dir, exit_code)


def test_replica_starts_with_every_job_series_at_zero_and_stops_cleanly(workload):
    assert jobs(workload.before, "fast", "job.status_update") == dict.fromkeys(
        ["total", "completed_total", "failed_total", "retried_total",
         "dead_lettered_total", "processing", "observed", "waited"], 0.0,
    )  # fmt: skip
    assert workload.exit_code == 0


def test_attempts_outcomes_retries_and_dead_letters_are_counted_exactly(workload):
    """N jobs with K failures give exactly those numbers, added up over 2 processes."""
    s = workload.after
    assert jobs(s, "fast", "job.status_update") == {
        "total": 20, "completed_total": 20, "failed_total": 0, "retried_total": 0,
        "dead_lettered_total": 2, "processing": 0, "observed": 20, "waited": 20,
    }  # fmt: skip
    assert jobs(s, "default", "agent.run") == {
        "total": 20, "completed_total": 0, "failed_total": 20, "retried_total": 16,
        "dead_lettered_total": 4, "processing": 0, "observed": 20, "waited": 20,
    }  # fmt: skip
    assert s.value("worker_jobs_dead_lettered_total", queue="critical", job_type="unknown") == 1
    assert s.value("worker_jobs_dead_lettered_total", queue="fast", job_type="unknown") == 1
    assert all(v == 0 for v in s.series("worker_jobs_processing").values())


def test_backlog_is_reported_as_the_broker_holds_it(workload):
    """One delayed job; the dead letters per queue."""
    backlog = {
        (dict(k)["queue"], dict(k)["state"]): v
        for k, v in workload.after.series("worker_queue_messages").items()
    }
    assert backlog == {
        ("default", "ready"): 0, ("default", "delayed"): 1, ("default", "dead"): 4,
        ("fast", "ready"): 0, ("fast", "delayed"): 0, ("fast", "dead"): 3,
        ("critical", "ready"): 0, ("critical", "delayed"): 0, ("critical", "dead"): 1,
    }  # fmt: skip
    # nothing waits: every queue's oldest ready message is 0 s old (the delayed job is not
    # ready yet, and the dead letters are not waiting)
    assert workload.after.series("worker_queue_oldest_message_age_seconds") == {
        frozenset({("queue", q)}): 0.0 for q in ("default", "fast", "critical")
    }


def test_dead_letters_requeued_purged_and_their_oldest_age_are_exported_per_queue(workload):
    """Every declared queue at 0 from the start; then what `worker dead-letters` counted in
    Redis, 0 for the queue it never touched, and the age of each queue's first dead letter
    (from the score Dramatiq gave it), sampled while the scrape ran."""
    for name in ("requeued_total", "purged_total", "oldest_age_seconds"):
        assert per_queue(workload.before, f"worker_dead_letters_{name}") == dict.fromkeys(
            QUEUE_NAMES, 0.0
        ), name
    after = {
        n: per_queue(workload.after, f"worker_dead_letters_{n}")
        for n in ("requeued_total", "purged_total", "oldest_age_seconds")
    }
    assert after["requeued_total"] == {"default": 3, "fast": 1, "critical": 0}
    assert after["purged_total"] == {"default": 0, "fast": 2, "critical": 0}
    (began, ended), ages = workload.scraping, after["oldest_age_seconds"]
    assert set(ages) == set(workload.dead_since) == set(QUEUE_NAMES)
    for queue, since in workload.dead_since.items():  # scores are whole milliseconds
        assert 0 < began - since <= ages[queue] <= ended - since + 0.001, (queue, ages, since)


def test_replica_gauges(workload):
    s = workload.after
    assert s.value("worker_concurrency") == 2
    assert s.value("worker_build_info", version=__version__) == 1
    assert s.value("worker_redis_connection_status") == 1
    assert s.value("worker_redis_reconnect_attempts_total") == 0


def test_every_contract_metric_has_its_type_labels_and_buckets(workload):
    s = workload.after
    for name, (typ, labels) in {**JOB_METRICS, **REPLICA_METRICS}.items():
        family = s.families[name]
        assert family.type == typ, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    edges = {
        float(dict(k)["le"])
        for k in s.series("worker_job_duration_seconds_bucket")
        if dict(k)["le"] != "+Inf"
    }
    assert {15.0, 20.0, 30.0, 60.0} <= edges == set(map(float, DURATION_BUCKETS))
    wait_edges = {
        float(dict(k)["le"])
        for k in s.series("worker_job_queue_wait_seconds_bucket")
        if dict(k)["le"] != "+Inf"
    }
    assert min(wait_edges) == 0.05 and max(wait_edges) == 3600
    assert wait_edges == set(map(float, QUEUE_WAIT_BUCKETS))
    assert promtool_problems(s.text) == ""


def test_no_label_value_is_an_organization_job_or_message_id(workload):
    values = {v for (_, labels) in workload.after.samples for _, v in labels}
    assert not values & workload.ids
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
    assert not [v for v in values if uuid.search(v)]


def test_counts_come_from_two_worker_processes_each_with_its_own_file(workload):
    workers_with_jobs = {
        f.name
        for f in workload.metrics_dir.glob("counter_*.db")
        if any(
            json.loads(key)[0] == "worker_jobs" and value > 0
            for key, value, _, _ in MmapedDict.read_all_values_from_file(str(f))
        )
    }
    assert len(workers_with_jobs) == 2, workers_with_jobs


def test_openmetrics_and_liveness(redis_url, tmp_path, metrics_env, start_replica):
    port = free_port()
    replica = start_replica(metrics_env(redis_url, port), tmp_path / "w.log")
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.read().decode().rstrip().endswith("# EOF")
        assert scrape(port, "/healthz") == "ok\n"
        with pytest.raises(urllib.error.HTTPError) as missing:
            scrape(port, "/nothing")
        assert missing.value.code == 404
    finally:
        assert replica.stop() == 0
    with pytest.raises(OSError):
        scrape(port, "/healthz", timeout=1)  # the endpoint stops with the replica


def test_stale_metrics_directory_does_not_leak_old_counts(
    redis_url, tmp_path, metrics_env, start_replica
):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # What a replica killed with SIGKILL leaves behind: its processes' files, full counts.
    stale = MmapedDict(str(metrics_dir / "counter_4242.db"))
    labels = ["fast", "job.status_update"]
    help_text, names = "Job attempts started.", ["queue", "job_type"]
    key = mmap_key("worker_jobs", "worker_jobs_total", names, labels, help_text)
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    (metrics_dir / "gauge_livesum_4243.db").write_bytes(b"\0" * 8)
    (metrics_dir / "notes.txt").write_text("not ours: kept")

    port = free_port()
    replica = start_replica(
        metrics_env(redis_url, port, METRICS_DIR=metrics_dir), tmp_path / "w.log"
    )
    try:
        assert (
            scraped(port).value("worker_jobs_total", queue="fast", job_type="job.status_update")
            == 0
        )
        assert not (metrics_dir / "counter_4242.db").exists()
        assert not (metrics_dir / "gauge_livesum_4243.db").exists()
        assert (metrics_dir / "notes.txt").read_text() == "not ours: kept"

        setup(settings_for(redis_url))
        from worker import actors

        for i in range(2):
            actors.job_status_update.send(job_id=f"j{i}", org_id="o", status="queued")
        total = lambda: scraped(port).value(  # noqa: E731
            "worker_jobs_completed_total", queue="fast", job_type="job.status_update"
        )
        wait_until(lambda: total() == 2, timeout=20)

        # a second replica given the same directory would add its counts to this one's
        second = run_worker(metrics_env(redis_url, free_port(), METRICS_DIR=metrics_dir))
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"configuration error: METRICS_DIR: {metrics_dir} is in use by another running "
            "replica; give each replica a directory of its own"
        )
        assert (
            scraped(port).value("worker_jobs_total", queue="fast", job_type="job.status_update")
            == 2
        )
    finally:
        assert replica.stop() == 0, replica.output[-3000:]


def run_worker(env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m worker`` to its end: what a replica refused at start says."""
    return subprocess.run(
        [sys.executable, "-m", "worker"], env=env, capture_output=True, text=True, timeout=30
    )


def test_metrics_port_in_use_stops_the_replica_at_start(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_worker(replica_env("redis://127.0.0.1:1/0", METRICS_PORT=port))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"configuration error: METRICS_PORT: cannot listen on 127.0.0.1:{port} "
        "(Address already in use)"
    )


# --- processes that come and go --------------------------------------------------------------

_CHILD = """
import os, sys
from worker import metrics

metrics.jobs_started.labels("fast", "job.status_update").inc(3)
metrics.job_duration.labels("fast", "job.status_update").observe(17.0)
metrics.jobs_processing.labels("fast", "job.status_update").inc()  # dies mid-job
sys.stdout.flush()
os._exit(0)  # like SIGKILL: no mark_process_dead
"""


def run_children(metrics_dir, n: int) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD], env=env) for _ in range(n)]
    assert all(p.wait(60) == 0 for p in procs)


def test_dead_processes_leave_no_gauge_and_are_folded_into_one_file(tmp_path):
    from prometheus_client import generate_latest

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    run_children(metrics_dir, 12)
    # per process: counters, histograms, livesum gauges, livemax gauges
    assert len(list(metrics_dir.glob("*.db"))) == 12 * 4
    registry = replica_registry(str(metrics_dir))

    s = Scrape(generate_latest(registry).decode())
    labels = {"queue": "fast", "job_type": "job.status_update"}
    assert s.value("worker_jobs_total", **labels) == 36
    assert s.value("worker_job_duration_seconds_count", **labels) == 12
    assert s.value("worker_job_duration_seconds_bucket", le="20.0", **labels) == 12
    assert s.value("worker_job_duration_seconds_bucket", le="15.0", **labels) == 0
    assert s.value("worker_jobs_processing", **labels) is None  # no gauge of a dead process
    assert sorted(p.name for p in metrics_dir.glob("*.db")) == [
        "counter_archive.db",
        "histogram_archive.db",
    ]

    run_children(metrics_dir, 3)  # more come and go: folded into the same archive
    s = Scrape(generate_latest(registry).decode())
    assert s.value("worker_jobs_total", **labels) == 45
    assert s.value("worker_job_duration_seconds_sum", **labels) == pytest.approx(15 * 17.0)
    assert len(list(metrics_dir.glob("*.db"))) == 2
    assert compact_dead_processes(str(metrics_dir)) == 0


def test_backlog_reads_ready_delayed_and_dead_from_the_broker(redis_url):
    broker = setup(settings_for(redis_url))
    from worker import actors

    client = redis.Redis.from_url(redis_url)
    for i in range(5):
        actors.agent_run.send(job_id=f"j{i}", org_id="o", prompt="p")
    for i in range(2):
        actors.crm_sync.send_with_options(
            kwargs={"job_id": f"c{i}", "org_id": "o", "record": {}}, delay=60_000
        )
    client.zadd(KEYS.dead_letters("fast"), {"dead-1": time.time() * 1000})
    read = redis_backlog(client, KEYS.namespace, ["default", "critical", "fast"])
    assert read() == {"default": (5, 0, 0), "critical": (0, 2, 0), "fast": (0, 0, 1)}
    assert broker is not None


def test_every_rate_limit_window_and_decision_is_exported_at_zero_from_the_start(
    redis_url, tmp_path, metrics_env, start_replica
):
    port = free_port()
    env = metrics_env(
        redis_url,
        port,
        RATE_LIMITS="minute=100/60,hour=5000/3600",
        RATE_LIMIT_OVERRIDES='{"org-vip": "burst=10/1"}',
    )
    replica = start_replica(env, tmp_path / "worker.log")
    try:
        wait_until(lambda: scraped(port).series("worker_rate_limit_decisions_total"), timeout=15)
        series = scraped(port).series("worker_rate_limit_decisions_total")
    finally:
        replica.stop()
    assert {tuple(sorted(dict(k).items())): v for k, v in series.items()} == {
        (("decision", d), ("window", w)): 0.0
        for w in ("minute", "hour", "burst")
        for d in ("allowed", "throttled", "unavailable")
    }


def test_oldest_ready_message_age_counts_from_when_it_became_runnable(redis_url):
    """The head of each ready queue is its oldest message: its age counts from its enqueue,
    or from the eta of its last delay (a retry or a deferral is not waiting)."""
    broker = setup(settings_for(redis_url))
    from worker import actors

    now_ms = int(time.time() * 1000)  # Dramatiq's timestamps are whole milliseconds
    enqueued_long_ago = actors.agent_run.message(job_id="a", org_id="o", prompt="p")
    broker.enqueue(dataclasses.replace(enqueued_long_ago, message_timestamp=now_ms - 120_000))
    actors.agent_run.send(job_id="b", org_id="o", prompt="p")  # younger, behind it
    # sent 1,000 s ago, delayed by a retry until 30 s ago
    retried = actors.crm_sync.message(job_id="c", org_id="o", record={})
    retried = dataclasses.replace(
        retried, message_timestamp=now_ms - 1_000_000, options={"ready_at": now_ms - 30_000}
    )
    broker.enqueue(retried)
    read = redis_oldest_ages(redis.Redis.from_url(redis_url), KEYS.namespace, QUEUE_NAMES)
    ages = read()
    assert set(ages) == set(QUEUE_NAMES)
    assert 120 <= ages["default"] < 130
    assert 30 <= ages["critical"] < 40
    assert ages["fast"] == 0
