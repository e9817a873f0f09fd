"""Jobs caught by a Redis outage are neither lost nor stuck: a real worker, a real
redis-server stopped and started again (append-only file on, so it keeps its data).

Found by the end-to-end chaos run (tests/e2e/test_nothing_lost.py); each case here would
lose or strand jobs without its fix.
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.errors import ConnectionClosed

from stack.poll import wait_until
from tests.support.fleet import completed_ids, in_process_worker, settings_for
from worker.app import setup
from worker.brokers.redis import WorkerRedisBroker, delay_queue_name
from worker.errors import TransientError
from worker.jobs import job
from worker.middleware.heartbeat import BrokerHeartbeat
from worker.middleware.redis_health import RedisWatch, probe_client
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def outage_while(redis_srv, attempts: list, seconds: float = 1.0) -> None:
    """Once the job has stopped Redis, start it again ``seconds`` later (from this thread:
    a server dies with the thread that started it)."""
    wait_until(lambda: attempts and not redis_srv.running, timeout=15)
    time.sleep(seconds)
    redis_srv.start()


def test_delayed_jobs_a_worker_holds_run_after_redis_restarts(redis_srv):
    """The delay queue's consumer keeps fetched delayed messages in memory; Dramatiq drops
    that memory on a connection error while Redis still counts them as claimed by the
    live worker. They must be requeued, not wait for the worker to die."""
    broker = setup(settings_for(redis_srv.url, REDIS_HEALTH_INTERVAL_SECONDS=0.5))
    from worker import actors

    client = redis.Redis.from_url(redis_srv.url)
    held = KEYS.claimed("*", delay_queue_name("fast"))
    with in_process_worker(broker):
        sent = [
            actors.job_status_update.send_with_options(
                kwargs={"job_id": f"j{i}", "org_id": "o", "status": "running"}, delay=3000
            ).message_id
            for i in range(5)
        ]
        wait_until(lambda: sum(client.scard(k) for k in client.keys(held)) == 5, timeout=10)
        redis_srv.stop()
        time.sleep(1)
        redis_srv.start()
        wait_until(lambda: sorted(completed_ids(client)) == sorted(sent), timeout=20)


def test_a_job_failing_while_redis_is_down_is_still_retried(redis_srv):
    broker = setup(settings_for(redis_srv.url, RETRY_TIME_SCALE=0.05))
    attempts: list[float] = []

    @job("test.fails_in_outage", "fast")
    def fails_in_outage(**kwargs):
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            redis_srv.stop()  # the retry has nowhere to go for a second
            raise TransientError("backend answered HTTP 500")

    client = redis.Redis.from_url(redis_srv.url)
    with in_process_worker(broker):
        message = fails_in_outage.send(job_id="j", org_id="o")
        outage_while(redis_srv, attempts)
        wait_until(lambda: completed_ids(client) == [message.message_id], timeout=20)
    assert len(attempts) == 2


def test_a_job_completing_while_redis_is_down_keeps_its_record(redis_srv):
    broker = setup(settings_for(redis_srv.url))
    attempts: list[float] = []

    @job("test.completes_in_outage", "fast")
    def completes_in_outage(**kwargs):
        attempts.append(time.monotonic())
        redis_srv.stop()
        return {"answer": 42}

    client = redis.Redis.from_url(redis_srv.url)
    with in_process_worker(broker):
        message = completes_in_outage.send(job_id="j", org_id="o")
        outage_while(redis_srv, attempts)
        wait_until(lambda: completed_ids(client) == [message.message_id], timeout=20)
        time.sleep(0.5)
    [(_, record)] = client.xrange(KEYS.completed)
    assert record[b"result"] == b'{"answer": 42}'
    assert len(attempts) == 1


def test_a_consumer_that_cannot_requeue_reports_a_lost_connection(redis_srv):
    """Dramatiq's consumer thread survives a ConnectionClosed while closing, not a
    redis-py ConnectionError: the thread would end and its queue go unconsumed."""
    broker = setup(settings_for(redis_srv.url))
    consumer = broker.consume(delay_queue_name("fast"))
    message = Message(
        queue_name=delay_queue_name("fast"),
        actor_name="job.status_update",
        args=(),
        kwargs={},
        options={},
    )
    proxy = MessageProxy(message.copy(options={"redis_message_id": "m-1"}))
    redis_srv.stop()
    with pytest.raises(ConnectionClosed):
        consumer.requeue([proxy])


def test_a_stopping_worker_does_not_wait_out_the_reconnect_backoff(redis_srv):
    """Consumer threads restarting during an outage wait for the reconnect (up to the
    backoff cap, here 30 s); a worker that shuts down stops the watch, and they must be
    released at once, or the shutdown outlasts its grace period and the replica is
    killed."""
    redis_srv.stop()
    watch = RedisWatch(probe_client(redis_srv.url).ping, interval=None, max_backoff=30).start()
    watch.connection_lost(ConnectionError("lost"))
    waited: list[float] = []

    def consumer_restart() -> None:
        started = time.monotonic()
        watch.wait_connected(30)
        waited.append(time.monotonic() - started)

    thread = threading.Thread(target=consumer_restart)
    thread.start()
    time.sleep(0.5)
    watch.stop()
    thread.join(5)
    assert waited and waited[0] < 2, waited


def test_a_failed_heartbeat_is_tried_again_within_a_second_not_an_interval_later(redis_srv):
    """A beat that fails during a short outage would leave the claim a whole lock timeout
    without a beat (two intervals at half the timeout): the next try comes a second later."""
    broker = WorkerRedisBroker(url=redis_srv.url, namespace="hb", middleware=[])
    broker.declare_queue("fast")
    heartbeats = RedisKeys("hb").heartbeats
    beating = BrokerHeartbeat(interval=6)
    redis_srv.stop()
    beating.after_worker_boot(broker, None)
    try:
        time.sleep(6.5)  # the first beat, at 6 s, failed; the next on schedule is at 12 s
        redis_srv.start()
        back = time.monotonic()
        client = redis.Redis.from_url(redis_srv.url)
        wait_until(lambda: client.zscore(heartbeats, broker.broker_id), timeout=5, interval=0.1)
        assert time.monotonic() - back < 3
    finally:
        beating.before_worker_shutdown(broker, None)
        broker.close()


def test_a_fetch_whose_reply_was_lost_is_requeued_when_the_consumer_restarts(redis_srv):
    """Redis ran a fetch and claimed its messages for this broker, and the reply never
    came back (Redis stopped mid-fetch): nothing in the process knows of them, and the
    broker keeps beating. The consumer's restart requeues them; what a worker thread
    holds stays claimed."""
    broker = setup(settings_for(redis_srv.url))
    from worker import actors

    client = redis.Redis.from_url(redis_srv.url)
    for i in range(6):
        actors.crm_sync.send(job_id=f"c{i}", org_id="o", record={})
    running = next(iter(broker.consume("critical", prefetch=1)))  # a thread holds it
    lost = broker.do_fetch("critical", 3)  # the reply that never arrived
    claimed = KEYS.claimed(broker.broker_id, "critical")
    assert client.scard(claimed) == 4
    broker.consume("critical")  # the consumer thread restarts after the lost connection
    held = running.options["redis_message_id"]
    assert {m.decode() for m in client.smembers(claimed)} == {held}
    queued = {m.decode() for m in client.lrange(KEYS.queue("critical"), 0, -1)}
    assert set(lost.ids) <= queued and held not in queued and len(queued) == 5
