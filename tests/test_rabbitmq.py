"""The same worker on RabbitMQ (BROKER_URL=amqp://...), against a real rabbitmq-server."""

from __future__ import annotations

import pytest
import redis

from stack.fleet import Replica, replica_env
from stack.poll import wait_until
from stack.servers import running
from tests.support.fleet import completed_ids, dead_letters
from tests.support.servers import rabbitmq_server
from worker.app import setup
from worker.brokers.redis import dead_letter_queue_name
from worker.config import Settings
from worker.exposition import rabbitmq_backlog

pytestmark = pytest.mark.rabbitmq


def test_round_trip_with_retries_and_dead_letters(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    with running(rabbitmq_server(tmp_path / "rabbitmq")) as rabbit:
        env = replica_env(
            redis_url,
            BROKER_URL=rabbit.url,
            SIM_LATENCY_SECONDS="0.05",
            JOB_CONCURRENCY=4,
            RETRY_TIME_SCALE=0.05,
        )
        replica = Replica(env, tmp_path / "worker.log").start()
        try:
            setup(Settings(_env_file=None, REDIS_URL=redis_url, BROKER_URL=rabbit.url))
            from worker import actors

            ids = [
                actors.agent_run.send(job_id="a", org_id="o", prompt="hi").message_id,
                actors.crm_sync.send(job_id="c", org_id="o", record={}).message_id,
                actors.job_status_update.send(job_id="s", org_id="o", status="queued").message_id,
            ]
            bad = actors.message_send.send(
                job_id="m", org_id="o", channel="", recipient="x", text="t"
            ).message_id
            wait_until(lambda: len(completed_ids(client)) == 3 and dead_letters(client), timeout=60)
        finally:
            assert replica.stop() == 0, replica.output
    assert sorted(completed_ids(client)) == sorted(ids)
    [dead] = dead_letters(client)
    assert dead["message_id"] == bad and dead["reason"].startswith("permanent error: invalid")


def test_backlog_reads_ready_delayed_and_dead_from_rabbitmq(redis_url, tmp_path):
    with running(rabbitmq_server(tmp_path / "rabbitmq")) as rabbit:
        broker = setup(Settings(_env_file=None, REDIS_URL=redis_url, BROKER_URL=rabbit.url))
        read = rabbitmq_backlog(rabbit.url, ["default", "critical", "fast"])
        assert read() == {"default": (0, 0, 0), "critical": (0, 0, 0), "fast": (0, 0, 0)}
        from worker import actors

        for i in range(5):
            actors.agent_run.send(job_id=f"j{i}", org_id="o", prompt="p")
        for i in range(2):
            actors.crm_sync.send_with_options(
                kwargs={"job_id": f"c{i}", "org_id": "o", "record": {}}, delay=60_000
            )
        broker.channel.basic_publish(
            exchange="", routing_key=dead_letter_queue_name("fast"), body=b"dead"
        )
        expected = {"default": (5, 0, 0), "critical": (0, 2, 0), "fast": (0, 0, 1)}
        wait_until(lambda: read() == expected, timeout=10)
