"""The worker as an operator runs it: ``python -m worker`` processes against a real Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import redis

from stack.fleet import ROOT, Replica, replica_env
from stack.poll import wait_until
from tests.support.fleet import completed_ids, dead_letters
from worker.app import setup
from worker.config import Settings
from worker.redis_keys import RedisKeys

pytestmark = pytest.mark.slow  # replicas and servers per test: outside the quick tier

KEYS = RedisKeys()


def enqueue(redis_url: str, n: int, actor: str = "agent_run", **kwargs) -> list[str]:
    """Send n jobs from a producer, as an application would; returns their message ids."""
    setup(Settings(REDIS_URL=redis_url))
    from worker import actors

    send = getattr(actors, actor).send
    defaults = {"agent_run": {"prompt": "hello"}}.get(actor, {})
    return [
        send(job_id=f"job-{i}", org_id=f"org-{i % 3}", **{**defaults, **kwargs}).message_id
        for i in range(n)
    ]


def test_processes_jobs_of_all_three_classes(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    replica = Replica(
        replica_env(redis_url, SIM_LATENCY_SECONDS="0.1", JOB_CONCURRENCY=4, WORKER_PROCESSES=2),
        tmp_path / "worker.log",
    ).start()
    try:
        ids = enqueue(redis_url, 3, "agent_run")
        ids += enqueue(redis_url, 2, "crm_sync", record={"name": "Ada"})
        ids += enqueue(redis_url, 2, "message_send", channel="sms", recipient="+1", text="hi")
        ids += enqueue(redis_url, 2, "job_status_update", status="running")
        wait_until(lambda: len(completed_ids(client)) >= len(ids), timeout=30)
    finally:
        assert replica.stop() == 0, replica.output
    assert sorted(completed_ids(client)) == sorted(ids)
    queues = {f[b"queue"] for _, f in client.xrange(KEYS.completed)}
    assert queues == {b"critical", b"default", b"fast"}
    assert client.hgetall(KEYS.job("job-1"))[b"status"] == b"running"


def test_sigterm_finishes_running_jobs_and_loses_nothing(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    env = replica_env(
        redis_url, SIM_LATENCY_SECONDS="1.5", JOB_CONCURRENCY=4, SHUTDOWN_GRACE_SECONDS=20
    )
    first = Replica(env, tmp_path / "first.log").start()
    ids = enqueue(redis_url, 20)
    wait_until(
        lambda: client.scard(next(iter(client.keys(KEYS.claimed_pattern)), "x")),
        timeout=15,
    )
    time.sleep(0.5)  # jobs are mid-flight now
    started = time.monotonic()
    assert first.stop() == 0, first.output
    stop_took = time.monotonic() - started
    done_by_first = completed_ids(client)
    # the in-flight jobs were finished (not abandoned), the rest are still in the broker
    assert 1 <= len(done_by_first) < 20
    assert stop_took < 15
    second = Replica(env, tmp_path / "second.log").start()
    try:
        wait_until(lambda: len(completed_ids(client)) >= 20, timeout=60)
        time.sleep(1)
    finally:
        assert second.stop() == 0
    done = completed_ids(client)
    assert sorted(done) == sorted(ids), "every job completes exactly once"
    assert client.llen(KEYS.queue("default")) == 0


def test_long_job_is_not_redelivered_while_its_worker_lives(redis_url, tmp_path):
    """A job longer than the lock timeout runs once: 4.5 s under a 3 s lock (45 s / 30 s)."""
    client = redis.Redis.from_url(redis_url)
    env = replica_env(
        redis_url, SIM_LATENCY_SECONDS="4.5", JOB_CONCURRENCY=1, JOB_LOCK_TIMEOUT_SECONDS=3
    )
    replicas = [Replica(env, tmp_path / f"r{i}.log").start() for i in range(2)]
    try:
        [job] = enqueue(redis_url, 1)
        wait_until(lambda: len(completed_ids(client)) >= 1, timeout=20)
        time.sleep(6)  # a redelivered copy would complete within this
    finally:
        for r in replicas:
            r.stop()
    assert completed_ids(client) == [job]


def test_job_of_a_killed_worker_is_redelivered_after_the_lock_timeout(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    env = replica_env(
        redis_url, SIM_LATENCY_SECONDS="2", JOB_CONCURRENCY=1, JOB_LOCK_TIMEOUT_SECONDS=3
    )
    doomed = Replica(env, tmp_path / "doomed.log").start()
    [job] = enqueue(redis_url, 1)
    wait_until(
        lambda: any(client.scard(k) for k in client.keys(KEYS.claimed_pattern)),
        timeout=15,
    )
    doomed.kill()
    killed_at = time.monotonic()
    survivor = Replica(env, tmp_path / "survivor.log").start()
    try:
        wait_until(lambda: completed_ids(client), timeout=30)
        took = time.monotonic() - killed_at
    finally:
        survivor.stop()
    assert completed_ids(client) == [job]
    # lock timeout 3 s + heartbeat interval 1.5 s + the 2 s job + process start
    assert 3 <= took <= 12, took


def test_malformed_message_is_dead_lettered_and_the_worker_survives(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    client.hset(KEYS.messages("fast"), "bad-1", b"\xff{not json")
    client.rpush(KEYS.queue("fast"), "bad-1")
    replica = Replica(
        replica_env(redis_url, SIM_LATENCY_SECONDS="0.1", JOB_CONCURRENCY=2), tmp_path / "w.log"
    ).start()
    try:
        wait_until(lambda: client.zscore(KEYS.dead_letters("fast"), "bad-1"), timeout=20)
        ids = enqueue(redis_url, 2, "job_status_update", status="completed")
        wait_until(lambda: len(completed_ids(client)) == 2, timeout=20)
        assert replica.proc.poll() is None, "the worker survived"
    finally:
        replica.stop()
    assert sorted(completed_ids(client)) == sorted(ids)
    [dead] = dead_letters(client)
    assert dead["message_id"] == "bad-1" and dead["reason"].startswith("undecodable message")
    assert not client.hexists(KEYS.messages("fast"), "bad-1")


def run_worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_bad_configuration_exits_2_with_one_line_and_no_secret():
    secret = "sk-or-v1-very-secret-value"
    cases = {
        "JOB_CONCURRENCY": ("zero", "JOB_CONCURRENCY"),
        "ENCRYPTION_KEY": (secret, "ENCRYPTION_KEY: must be 32 random bytes"),
        "REDIS_URL": (f"http://user:{secret}@host", "REDIS_URL: must start with"),
        "SIM_LATENCY_SECONDS": ("20-15", "SIM_LATENCY_SECONDS"),
        "RATE_LIMITS": ("minute=100", "RATE_LIMITS: 'minute=100' is not name=count/seconds"),
    }
    for name, (value, expected) in cases.items():
        env = replica_env("redis://127.0.0.1:1/0", **{name: value})
        result = run_worker(env)
        assert result.returncode == 2, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (name, result.stderr)
        assert secret not in result.stderr and "Traceback" not in result.stderr
    env = replica_env("redis://x")
    del env["REDIS_URL"]
    result = run_worker(env)
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "configuration error: REDIS_URL: required, not set "
        "(or REDIS_SENTINELS with REDIS_SENTINEL_MASTER)",
    )


def test_help_explains_itself():
    result = run_worker(replica_env("redis://x"), "run", "--help")
    assert result.returncode == 0
    assert "JOB_CONCURRENCY" in result.stdout and "SIGTERM" in result.stdout


def test_node_env_is_accepted_for_environment():
    settings = Settings(_env_file=None, REDIS_URL="redis://x", NODE_ENV="production")
    assert settings.environment == "production"
    assert signal.SIGTERM  # keep the import honest for readers of the shutdown test


def test_agent_runs_are_rate_limited_per_organization_without_spending_attempts(
    redis_url, tmp_path
):
    client = redis.Redis.from_url(redis_url)
    replica = Replica(
        replica_env(
            redis_url, SIM_LATENCY_SECONDS="0.05", JOB_CONCURRENCY=4, RATE_LIMITS="burst=3/2"
        ),
        tmp_path / "w.log",
    ).start()
    try:
        setup(Settings(_env_file=None, REDIS_URL=redis_url))
        from worker import actors

        busy = [
            actors.agent_run.send(job_id=f"a{i}", org_id="org-a", prompt="p").message_id
            for i in range(9)
        ]
        quiet = actors.agent_run.send(job_id="b", org_id="org-b", prompt="p").message_id
        wait_until(lambda: quiet in completed_ids(client), timeout=10)
        wait_until(lambda: set(busy) <= set(completed_ids(client)), timeout=30)
    finally:
        replica.stop()
    entries = {
        f[b"message_id"].decode(): int(i.split(b"-")[0]) / 1000
        for i, f in client.xrange(KEYS.completed)
    }
    done = sorted(entries[m] for m in busy)
    # 3 per 2 s: 9 jobs need at least two further windows, and no 2 s holds more than 3
    assert done[-1] - done[0] >= 4.0
    assert all(b - a > 2.0 - 0.1 for a, b in zip(done, done[3:], strict=False)), done
    # the other organization did not wait behind org-a's deferrals
    assert entries[quiet] - done[0] < 1.0
    assert dead_letters(client) == [], "a deferral never spends an attempt"


def test_a_replica_at_the_concurrency_bound_stops_within_the_grace_period(redis_url, tmp_path):
    """JOB_CONCURRENCY at its maximum (512 slots: 2 processes x 256 threads) still stops on
    SIGTERM within SHUTDOWN_GRACE_SECONDS, with its running jobs finished."""
    from stack.fleet import scraped
    from stack.servers import free_port
    from worker.config import MAX_JOB_CONCURRENCY, MAX_THREADS_PER_PROCESS

    client = redis.Redis.from_url(redis_url)
    port, grace = free_port(), 10
    processes = MAX_JOB_CONCURRENCY // MAX_THREADS_PER_PROCESS
    env = replica_env(
        redis_url,
        METRICS_PORT=port,
        JOB_CONCURRENCY=MAX_JOB_CONCURRENCY,
        WORKER_PROCESSES=processes,
        SHUTDOWN_GRACE_SECONDS=grace,
        SIM_LATENCY_SECONDS="1",
    )
    replica = Replica(env, tmp_path / "worker.log").start()
    try:
        wait_until(lambda: _concurrency(scraped, port) == MAX_JOB_CONCURRENCY, timeout=60)
        ids = enqueue(redis_url, 40)
        wait_until(lambda: completed_ids(client), timeout=30)  # jobs are flowing
    finally:
        started = time.monotonic()
        code = replica.stop(timeout=grace + 20)
        took = time.monotonic() - started
    print(f"\n{MAX_JOB_CONCURRENCY} slots: stopped in {took:.1f}s (grace {grace}s)")
    assert code == 0, replica.output[-3000:]
    assert took <= grace + 5, took
    done = completed_ids(client)
    assert set(done) <= set(ids) and len(done) == len(set(done))  # none twice


def _concurrency(scraped, port: int) -> float | None:
    try:
        return scraped(port).value("worker_concurrency")
    except OSError:
        return None
