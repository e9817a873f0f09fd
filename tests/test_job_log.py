"""The job log records every completion exactly once, bounded, whichever Redis it lives in.

A real in-process worker and real redis-servers. On the broker's own Redis the record
rides in the ack's round trip (``WorkerRedisBroker.write_with_ack``); these tests pin
what that must not change: one record per job, the count bound, the message acked.
"""

from __future__ import annotations

import pytest
import redis

from stack.poll import wait_until
from stack.servers import redis_server, running
from tests.support.fleet import completed_ids, in_process_worker, settings_for
from worker.app import setup
from worker.jobs import job
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()

pytestmark = pytest.mark.timeout(60)


def claimed(client: redis.Redis) -> int:
    """Messages fetched and not acknowledged, on every queue."""
    return sum(client.scard(key) for key in client.keys(KEYS.claimed_pattern))


def test_every_completion_is_recorded_once_and_the_record_keeps_the_newest(redis_url):
    broker = setup(settings_for(redis_url, COMPLETED_JOBS_MAX=5))

    @job("test.answer", "fast")
    def answer(n: int, **kwargs):
        return {"n": n}

    client = redis.Redis.from_url(redis_url)
    with in_process_worker(broker, threads=1):
        first = [answer.send(n, job_id=f"j{n}", org_id="o").message_id for n in range(3)]
        wait_until(lambda: len(completed_ids(client)) == 3, timeout=10)
        later = [answer.send(n, job_id=f"j{n}", org_id="o").message_id for n in range(3, 8)]
        wait_until(lambda: set(completed_ids(client)) == set(later), timeout=10)
        wait_until(lambda: claimed(client) == 0, timeout=5)
    records = client.xrange(KEYS.completed)
    assert sorted(completed_ids(client)) == sorted(later)  # 5 kept, each once
    assert not set(first) & set(completed_ids(client))
    assert {r[b"result"] for _, r in records} == {f'{{"n": {n}}}'.encode() for n in range(3, 8)}
    assert client.llen(KEYS.queue("fast")) == 0 and claimed(client) == 0


def test_a_completion_after_redis_lost_its_scripts_is_recorded_once_and_acked(redis_url):
    """A restarted Redis has no scripts: the ack sent with the record meets NOSCRIPT.
    The record must not be written a second time when the ack is sent again."""
    broker = setup(settings_for(redis_url))
    client = redis.Redis.from_url(redis_url)

    @job("test.flushes_scripts", "fast")
    def flushes_scripts(**kwargs):
        client.script_flush()  # what a restart does, just before this job's ack
        return "done"

    with in_process_worker(broker, threads=1):
        sent = [flushes_scripts.send(job_id=f"j{i}", org_id="o").message_id for i in range(3)]
        wait_until(lambda: claimed(client) == 0 and len(completed_ids(client)) >= 3, timeout=20)
    assert sorted(completed_ids(client)) == sorted(sent)
    assert client.llen(KEYS.queue("fast")) == 0
    assert "errorstat_NOSCRIPT" in client.info("errorstats")  # the case did happen


def test_records_go_to_the_job_log_redis_when_the_broker_uses_another(redis_url, tmp_path):
    with running(redis_server(tmp_path / "broker-redis")) as broker_redis:
        broker = setup(settings_for(redis_url, BROKER_URL=broker_redis.url))

        @job("test.elsewhere", "fast")
        def elsewhere(**kwargs):
            return "done"

        log_client = redis.Redis.from_url(redis_url)
        broker_client = redis.Redis.from_url(broker_redis.url)
        with in_process_worker(broker, threads=2):
            sent = [elsewhere.send(job_id=f"j{i}", org_id="o").message_id for i in range(4)]
            wait_until(lambda: len(completed_ids(log_client)) == 4, timeout=10)
            wait_until(lambda: claimed(broker_client) == 0, timeout=5)
        assert sorted(completed_ids(log_client)) == sorted(sent)
        assert not broker_client.exists(KEYS.completed)
        assert broker_client.llen(KEYS.queue("fast")) == 0
