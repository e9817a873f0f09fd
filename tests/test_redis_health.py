"""Redis health: the probe's status, counted reconnects with bounded backoff, recovery
without a worker restart, and the broker's own connection lost mid-job."""

from __future__ import annotations

import logging
import time

import pytest
import redis

from stack.fleet import scraped
from stack.poll import wait_until
from stack.servers import free_port, redis_server
from tests.support.fleet import settings_for
from worker.app import setup
from worker.middleware.redis_health import RedisWatch, probe_client
from worker.redis_keys import RedisKeys

pytestmark = pytest.mark.slow  # replicas and servers per test: outside the quick tier

KEYS = RedisKeys()


def status(port: int) -> float:
    return scraped(port).value("worker_redis_connection_status")


def reconnects(port: int) -> float:
    return scraped(port).value("worker_redis_reconnect_attempts_total")


def test_outage_sets_status_0_counts_reconnects_and_recovers_without_restart(
    redis_srv, tmp_path, metrics_env, start_replica
):
    port = free_port()
    env = metrics_env(
        redis_srv.url, port, WORKER_PROCESSES=2, JOB_CONCURRENCY=2, SIM_LATENCY_SECONDS="0.1"
    )
    replica = start_replica(env, tmp_path / "worker.log")
    try:
        wait_until(lambda: status(port) == 1, timeout=5)
        assert reconnects(port) == 0

        redis_srv.stop()
        down_at = time.monotonic()
        wait_until(lambda: status(port) == 0, timeout=5)
        time.sleep(3)
        during = reconnects(port)
        elapsed = time.monotonic() - down_at
        # three processes reconnect (the probe, two workers' broker connections), each
        # at most once per 0.5 s (the first backoff, capped at the 0.5 s interval here)
        assert 3 <= during <= 3 * (elapsed / 0.5 + 1), during
        assert replica.proc.poll() is None

        redis_srv.start()
        wait_until(lambda: status(port) == 1, timeout=5)
        time.sleep(1.5)  # every process has reconnected by now (backoff capped at 0.5 s)
        settled = reconnects(port)
        time.sleep(1.5)
        assert reconnects(port) == settled, "attempts stop once Redis answers"
        assert settled >= during

        # the same worker processes consume again: no restart was needed
        setup(settings_for(redis_srv.url))
        from worker import actors

        actors.job_status_update.send(job_id="after", org_id="o", status="completed")
        wait_until(
            lambda: (
                scraped(port).value(
                    "worker_jobs_completed_total", queue="fast", job_type="job.status_update"
                )
                == 1
            ),
            timeout=20,
        )
    finally:
        assert replica.stop() == 0, replica.output[-3000:]
    log = replica.output
    # one line per process and state change, however many attempts were made
    assert 1 <= log.count("unreachable (") <= 3, log[-3000:]
    assert log.count("unreachable (") == log.count("reachable again after")
    assert log.count("Consumer encountered a connection error") <= 2 * 3, log[-3000:]


def test_broker_connection_lost_mid_job_is_counted(redis_srv, tmp_path, metrics_env, start_replica):
    """The probe is idle (30 s interval) while Redis drops under a running job: the
    broker's own reconnects are counted, the job completes once, the slot frees."""
    port = free_port()
    env = metrics_env(
        redis_srv.url,
        port,
        REDIS_HEALTH_INTERVAL_SECONDS=30,
        JOB_CONCURRENCY=1,
        SIM_LATENCY_SECONDS="2",
    )
    replica = start_replica(env, tmp_path / "worker.log")
    labels = {"queue": "default", "job_type": "agent.run"}
    try:
        setup(settings_for(redis_srv.url))
        from worker import actors

        actors.agent_run.send(job_id="mid", org_id="o", prompt="p")
        wait_until(lambda: scraped(port).value("worker_jobs_processing", **labels) == 1, 10)
        redis_srv.stop()
        time.sleep(3)  # the job ends while Redis is down: its ack has to wait
        assert scraped(port).value("worker_jobs_processing", **labels) == 0
        redis_srv.start()
        wait_until(lambda: reconnects(port) >= 1, timeout=10)
        wait_until(lambda: scraped(port).value("worker_jobs_completed_total", **labels), 10)
        assert status(port) == 1, "the probe never ran during the outage"
        client = redis.Redis.from_url(redis_srv.url)
        wait_until(
            lambda: not any(client.scard(k) for k in client.keys(KEYS.claimed_pattern)),
            15,
        )
        s = scraped(port)
    finally:
        assert replica.stop() == 0, replica.output[-3000:]
    assert s.value("worker_jobs_total", **labels) == 1
    assert s.value("worker_jobs_completed_total", **labels) == 1
    assert s.value("worker_redis_reconnect_attempts_total") >= 1
    assert "Redis (broker) unreachable" in replica.output


def test_reconnects_back_off_to_a_bound_and_log_once(tmp_path, caplog):
    server = redis_server(tmp_path / "redis", port=free_port())  # not started: refused
    statuses: list[bool] = []
    attempts: list[float] = []
    client = probe_client(server.url, timeout=0.5)

    def ping():
        attempts.append(time.monotonic())
        return client.ping()

    watch = RedisWatch(
        ping, interval=0.2, first_backoff=0.05, max_backoff=0.4, on_status=statuses.append
    )
    with caplog.at_level(logging.INFO, logger="worker.middleware.redis_health"):
        watch.start()
        try:
            time.sleep(2.5)
            assert not watch.connected and statuses == [False]
            gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
            expected = [0.05, 0.1, 0.2] + [0.4] * (len(gaps) - 3)
            # never sooner than the backoff (no spinning), never much later (bounded);
            # the slack is for a busy machine's scheduling
            assert len(gaps) >= 5, gaps
            assert all(e - 0.005 <= g <= e + 0.15 for g, e in zip(gaps, expected, strict=True)), (
                gaps
            )
            server.start()
            started = time.monotonic()
            assert watch.wait_connected(2)
            assert time.monotonic() - started <= 0.4 + 0.3
            assert statuses == [False, True]
        finally:
            watch.stop()
            server.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert len([m for m in lines if "unreachable" in m]) == 1, lines
    assert len([m for m in lines if "reachable again after" in m]) == 1, lines
