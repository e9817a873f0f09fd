"""Per-class retries against a real redis-server: attempts, measured delays, dead letters."""

from __future__ import annotations

import random
import threading
import time

import dramatiq
import pytest
import redis

from stack.poll import wait_until
from tests.support.fleet import dead_letters, in_process_worker, settings_for
from worker.app import setup
from worker.errors import PermanentError, TransientError
from worker.jobs import JOB_CLASSES, job
from worker.middleware.retries import ClassRetries
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()

SCALE = 0.05  # 2 s -> 100 ms


def failing_actor(name: str, job_class: str, exception: Exception):
    attempts: list[float] = []
    lock = threading.Lock()

    @job(name, job_class)
    def actor(**kwargs):
        with lock:
            attempts.append(time.monotonic())
        raise exception

    return actor, attempts


@pytest.mark.parametrize(
    ("job_class", "expected_nominal"),
    [
        ("fast", [2, 4]),
        ("standard", [2, 4, 8, 16]),
        # capped at max_delay=20 s for the test: 2, 4, 8, 16, then 20 for each later retry
        ("critical", [2, 4, 8, 16, 20, 20, 20, 20, 20]),
    ],
)
def test_retry_schedule_per_class(redis_url, job_class, expected_nominal):
    settings = settings_for(
        redis_url, RETRY_JITTER=0, RETRY_TIME_SCALE=SCALE, RETRY_MAX_DELAY_SECONDS=20
    )
    broker = setup(settings)
    actor, attempts = failing_actor(f"test.{job_class}", job_class, RuntimeError("boom"))
    client = redis.Redis.from_url(redis_url)
    with in_process_worker(broker):
        actor.send(job_id="j1", org_id="o1")
        wait_until(lambda: dead_letters(client), timeout=30)
        time.sleep(0.3)  # no attempt may follow the dead letter

    assert len(attempts) == JOB_CLASSES[job_class].max_attempts
    delays = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    print(f"\n{job_class}: measured delays {[round(d / SCALE, 2) for d in delays]} (unscaled s)")
    for measured, nominal in zip(delays, expected_nominal, strict=True):
        # the delay never comes early; it may be late by the worker's 50 ms polling
        assert nominal * SCALE <= measured <= nominal * SCALE + 0.15
    [dead] = dead_letters(client)
    assert dead["reason"].startswith(f"{len(attempts)} of {len(attempts)} attempts failed")
    assert dead["job_type"] == f"test.{job_class}"


def test_jitter_stays_within_bounds():
    retries = ClassRetries(max_delay=300, jitter=0.5)
    actor = dramatiq.actor(lambda: None, actor_name="t", broker=dramatiq.get_broker())
    random.seed(7)
    for retry, nominal in [(1, 2), (3, 8), (5, 32), (9, 300)]:
        samples = [retries.delay_for(actor, retry, RuntimeError()) for _ in range(2000)]
        assert nominal * 0.5 <= min(samples) and max(samples) <= nominal * 1.5
        assert max(samples) - min(samples) > nominal * 0.9  # the jitter is really applied


def test_jitter_outside_half_is_refused():
    with pytest.raises(ValueError, match="jitter"):
        ClassRetries(jitter=0.6)


def test_permanent_error_dead_letters_at_once(redis_url):
    broker = setup(settings_for(redis_url, RETRY_TIME_SCALE=SCALE))
    actor, attempts = failing_actor("test.permanent", "critical", PermanentError("HTTP 404"))
    client = redis.Redis.from_url(redis_url)
    with in_process_worker(broker):
        message = actor.send(job_id="j1", org_id="o1")
        wait_until(lambda: dead_letters(client), timeout=10)
        time.sleep(0.3)
    assert len(attempts) == 1
    [dead] = dead_letters(client)
    assert dead == {
        "message_id": message.message_id,
        "queue": "critical",
        "job_type": "test.permanent",
        "reason": "permanent error: HTTP 404",
        "attempts": "1",
    }
    # the dead message itself stays in Dramatiq's dead-letter queue for replay
    assert client.zscore(KEYS.dead_letters("critical"), message.options["redis_message_id"])


def test_invalid_payload_is_not_retried(redis_url):
    broker = setup(settings_for(redis_url, RETRY_TIME_SCALE=SCALE))
    from worker import actors

    client = redis.Redis.from_url(redis_url)
    with in_process_worker(broker):
        actors.job_status_update.send(job_id="j1", org_id="o1", status="exploded")
        wait_until(lambda: dead_letters(client), timeout=10)
    [dead] = dead_letters(client)
    assert dead["reason"] == (
        "permanent error: invalid StatusUpdate payload: status (literal_error)"
    )
    assert dead["attempts"] == "1"


def test_retry_after_sets_the_next_delay(redis_url):
    broker = setup(settings_for(redis_url, RETRY_JITTER=0, RETRY_TIME_SCALE=SCALE))
    actor, attempts = failing_actor("test.429", "fast", TransientError("HTTP 429", retry_after=30))
    client = redis.Redis.from_url(redis_url)
    with in_process_worker(broker):
        actor.send(job_id="j1", org_id="o1")
        wait_until(lambda: dead_letters(client), timeout=15)
    delays = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert len(attempts) == 3
    assert all(30 * SCALE <= d <= 30 * SCALE + 0.15 for d in delays), delays


def test_dead_letter_queue_is_capped_by_count(redis_url):
    settings = settings_for(redis_url, RETRY_TIME_SCALE=SCALE)
    broker = setup(settings)
    job_log = next(m for m in broker.middleware if type(m).__name__ == "JobLog")
    job_log.dead_bounds = (7 * 86400, 5)
    actor, attempts = failing_actor("test.many", "fast", PermanentError("no"))
    client = redis.Redis.from_url(redis_url)
    with in_process_worker(broker):
        for i in range(8):
            actor.send(job_id=f"j{i}", org_id="o1")
        wait_until(lambda: len(attempts) == 8, timeout=10)
        time.sleep(0.5)  # the last nack and trim follow the attempt
    dead, dead_bodies = KEYS.dead_letters("fast"), KEYS.dead_letter_messages("fast")
    assert client.zcard(dead) == 5
    assert client.hlen(dead_bodies) == 5
    assert client.xlen(KEYS.dead_letter_reasons) == 5


def test_retry_survives_a_broker_outage_at_the_moment_it_is_scheduled(redis_srv):
    """The retry cannot be enqueued while Redis is down: it is held, not dropped."""
    broker = setup(settings_for(redis_srv.url, RETRY_JITTER=0, RETRY_TIME_SCALE=SCALE))
    attempts: list[float] = []

    @job("test.outage", "standard")
    def flaky(**kwargs):
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            redis_srv.stop()  # AOF on: the queued message survives the restart
            raise RuntimeError("the LLM call failed just as Redis went away")

    client = redis.Redis.from_url(redis_srv.url)
    with in_process_worker(broker):
        message = flaky.send(job_id="j1", org_id="o1")
        wait_until(lambda: attempts and not redis_srv.running, timeout=10)
        time.sleep(1.5)
        redis_srv.start()  # from this thread: the server lives as long as its starter
        wait_until(lambda: len(attempts) == 2, timeout=30)
        wait_until(
            lambda: (
                message.message_id
                in [f[b"message_id"].decode() for _, f in client.xrange(KEYS.completed)]
            ),
            timeout=15,
        )
    assert attempts[1] - attempts[0] >= 1.5  # it waited for Redis, then retried
    assert dead_letters(client) == []
