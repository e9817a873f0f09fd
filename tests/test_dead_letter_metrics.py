"""The dead letters' counters on a live replica: ``worker dead-letters`` counts its
requeues and purges in Redis (it runs in no replica), and each replica exports those
totals. The contract on the workload's replica is in ``tests/test_exposition.py``."""

from __future__ import annotations

import redis

from stack.fleet import Scrape, scraped
from stack.poll import wait_until
from stack.servers import free_port
from tests.support.fleet import settings_for
from worker.app import setup
from worker.redis_keys import RedisKeys

NAMESPACE = RedisKeys().namespace


def requeued(s: Scrape) -> dict[str, float]:
    return {
        dict(labels)["queue"]: v
        for labels, v in s.series("worker_dead_letters_requeued_total").items()
    }


def test_the_counters_follow_redis_and_start_over_when_it_loses_them(
    redis_url, tmp_path, metrics_env, start_replica
):
    """They grow with Redis' totals, and start over (a counter reset, which rate() reads
    as one) when Redis loses its hash: a flush, an older backup restored."""
    port = free_port()
    replica = start_replica(metrics_env(redis_url, port), tmp_path / "w.log")
    client = redis.Redis.from_url(redis_url)
    key = RedisKeys(NAMESPACE).dead_letters_counted("requeued")
    seen = [requeued(scraped(port))]
    try:
        for change in (
            lambda: client.hincrby(key, "default", 5),
            lambda: client.hincrby(key, "default", 2),
            lambda: client.delete(key),
            lambda: client.hincrby(key, "default", 1),
        ):
            change()
            seen.append(requeued(scraped(port)))
    finally:
        assert replica.stop() == 0
    assert [s["default"] for s in seen] == [0, 5, 7, 0, 1]
    assert all(s["critical"] == s["fast"] == 0 for s in seen)


def test_on_rabbitmq_the_counts_are_read_from_redis_without_the_oldest_age(redis_url):
    """RabbitMQ cannot show its ``.XQ`` queue without taking its messages: no age there;
    the command still counts in Redis, so the counters are read from it."""
    from worker.config import Settings
    from worker.exposition import backlog_for

    settings = Settings(_env_file=None, REDIS_URL=redis_url, BROKER_URL="amqp://127.0.0.1:1")
    _, oldest, read = backlog_for(settings)
    redis.Redis.from_url(redis_url).hincrby(
        RedisKeys(NAMESPACE).dead_letters_counted("purged"), "critical", 4
    )
    assert oldest is None
    assert read() == {"critical": (0, 4, None), "default": (0, 0, None), "fast": (0, 0, None)}


def test_a_counter_hash_of_the_wrong_type_does_not_stop_the_backlog(
    redis_url, tmp_path, metrics_env, start_replica
):
    """The backlog feeds alerts; the dead letters' counts must not take it down with them:
    they keep their last values, the backlog goes on, and the replica says why once."""
    port = free_port()
    replica = start_replica(metrics_env(redis_url, port), tmp_path / "w.log")
    client = redis.Redis.from_url(redis_url)
    try:
        client.hincrby(RedisKeys(NAMESPACE).dead_letters_counted("requeued"), "default", 2)
        assert requeued(scraped(port))["default"] == 2
        client.delete(RedisKeys(NAMESPACE).dead_letters_counted("requeued"))
        client.set(RedisKeys(NAMESPACE).dead_letters_counted("requeued"), "not a hash")
        setup(settings_for(redis_url))
        from worker import actors

        actors.crm_sync.send_with_options(
            kwargs={"job_id": "c", "org_id": "o", "record": {}}, delay=600_000
        )
        delayed = lambda: scraped(port).value(  # noqa: E731
            "worker_queue_messages", queue="critical", state="delayed"
        )
        wait_until(lambda: delayed() == 1, timeout=20)
        assert requeued(scraped(port)) == {"critical": 0, "default": 2, "fast": 0}
    finally:
        assert replica.stop() == 0
    assert replica.output.count("cannot read the dead letters' counts: ResponseError") == 1
