"""Builds the broker and its middleware stack from the settings."""

from __future__ import annotations

import contextlib
import logging

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed, DecodeError
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from worker.config import Settings
from worker.envelope import CheckedJSONEncoder, InvalidMessage
from worker.middleware.heartbeat import BrokerHeartbeat
from worker.middleware.job_log import JobLog
from worker.middleware.metrics import JobMetrics
from worker.middleware.payload import ValidatePayload
from worker.middleware.ratelimit import RateLimit
from worker.middleware.redis_health import RedisHealth
from worker.middleware.retries import ClassRetries
from worker.payloads import PayloadLimits
from worker.ratelimit import RateLimiter
from worker.redis_dispatch import dispatch_args

log = logging.getLogger(__name__)


def notify(broker: dramatiq.Broker, hook: str, *args) -> None:
    """Call ``hook(broker, *args)`` on every middleware that has it: the worker's own
    signals, which Dramatiq's ``emit_*`` would report as a failure on the others."""
    for middleware in broker.middleware:
        method = getattr(middleware, hook, None)
        if method is not None:
            try:
                method(broker, *args)
            except Exception:
                log.exception("%s of %r failed", hook, middleware)


class _SafeConsumer(_RedisConsumer):
    """A consumer that dead-letters a message it cannot decode instead of stalling, and
    reports a lost connection.

    Dramatiq's consumer raises on undecodable data, drops the rest of its prefetched
    batch and restarts, leaving the bad message claimed forever. Here the bad message is
    found among this consumer's claimed ids and moved to the dead-letter queue, and every
    middleware with an ``after_undecodable_message(broker, queue, message_id, reason)``
    hook hears of it (to count and record it).

    A connection lost while fetching, acking, nacking or requeueing (mid-job: the job
    ran, its ack cannot reach Redis) goes to ``after_connection_error(broker, queue,
    error)`` hooks before Dramatiq restarts the consumer or retries the ack
    (``RedisHealth`` paces and counts the reconnects).
    """

    @contextlib.contextmanager
    def _reporting_lost_connection(self):
        try:
            yield
        except ConnectionClosed as exc:
            notify(self.broker, "after_connection_error", self.queue_name, exc)
            raise

    def __next__(self):
        try:
            with self._reporting_lost_connection():
                message = super().__next__()
        except DecodeError as exc:
            if isinstance(exc.error, InvalidMessage):
                reason = f"invalid message: {exc.error}"
            else:
                reason = f"undecodable message: {type(exc.error).__name__}"
            self._dead_letter_raw(exc.data, reason)
            return None
        if message is None:
            return None
        if message.queue_name != self.queue_name:
            # Dramatiq would settle it through the consumer of the queue its body names,
            # which may not exist: it would stay claimed forever.
            return self._reject(message, f"invalid message: names queue {message.queue_name!r}")
        if message.actor_name not in self.broker.actors:
            return self._reject(message, f"unknown actor {message.actor_name!r}")
        return message

    def _reject(self, message, reason: str) -> None:
        """Dead-letter a decoded message no actor of this worker can run, with ``reason``."""
        message.options["dead_letter_reason"] = reason
        message.fail()
        log.error("dead-lettered %s on queue %s: %s", message.message_id, self.queue_name, reason)
        self.broker.emit_before("nack", message)
        self.nack(message)
        self.broker.emit_after("nack", message)
        return None

    def ack(self, message):
        writes = getattr(message, "writes_with_ack", None)
        with self._reporting_lost_connection():
            if not writes:
                return super().ack(message)
            try:
                self.broker.ack_with(self.queue_name, message, writes)
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None
            finally:
                self.queued_message_ids.discard(message.message_id)

    def nack(self, message):
        with self._reporting_lost_connection():
            return super().nack(message)

    def requeue(self, messages):
        # Dramatiq's consumer thread requeues its delayed messages when it closes after an
        # unexpected error, and survives only a ConnectionClosed from it: a redis-py
        # ConnectionError there ends the thread, and the queue is never consumed again.
        try:
            return super().requeue(messages)
        except redis.ConnectionError as exc:
            notify(self.broker, "after_connection_error", self.queue_name, exc)
            raise ConnectionClosed(exc) from None

    def _dead_letter_raw(self, data: bytes, reason: str) -> None:
        broker = self.broker
        acks = f"{broker.namespace}:__acks__.{broker.broker_id}.{self.queue_name}"
        claimed = list(broker.client.smembers(acks))
        bodies = broker.client.hmget(f"{broker.namespace}:{self.queue_name}.msgs", claimed)
        for message_id, body in zip(claimed, bodies, strict=True):
            if body == data:
                broker.do_nack(self.queue_name, message_id.decode())
                log.error(
                    "dead-lettered %s on queue %s: %s", message_id.decode(), self.queue_name, reason
                )
                notify(
                    broker,
                    "after_undecodable_message",
                    self.queue_name,
                    message_id.decode(),
                    reason,
                )


class WorkerRedisBroker(RedisBroker):
    """Dramatiq's Redis broker with a consumer that survives undecodable messages and
    reports lost connections; ``before_consume(broker, queue)`` hooks may hold a
    consumer's (re)start back while Redis is known to be down.

    It also gives back the delayed messages a connection error orphans. A delay queue's
    consumer thread keeps the messages it fetched (retries, rate-limit deferrals) in
    memory until they are due; when the connection drops, Dramatiq's thread throws that
    memory away and starts a new consumer, while Redis still counts the messages as
    claimed by this broker. This broker keeps beating, so no other worker ever takes them
    back: they would wait until this process dies. When a delay queue's consumer
    (re)starts, nothing of that queue is in this process's memory, so everything Redis
    lists as claimed by this broker on that queue is requeued first.
    """

    def write_with_ack(self, message, client: redis.Redis, write) -> bool:
        """Have ``write(pipeline)`` sent in the same round trip as ``message``'s ack, just
        before it: what it writes is in Redis by the time the job counts as done, at no
        extra round trip per job. False when ``client`` is not this broker's Redis: the
        caller writes on its own."""
        if client is not self.client:
            return False
        message.writes_with_ack = [*getattr(message, "writes_with_ack", ()), write]
        return True

    def ack_with(self, queue_name: str, message, writes) -> None:
        """Ack ``message`` on ``queue_name`` after the commands ``writes`` add, one pipeline.

        A failed write is logged and the ack still happens (the job is done either way).
        After a Redis restart the dispatch script may be gone from the server: the writes
        went through, and the ack is sent again through Dramatiq, which loads the script.
        """
        message_id = message.options["redis_message_id"]
        with self.client.pipeline(transaction=False) as pipe:
            for write in writes:
                write(pipe)
            pipe.evalsha(
                self.scripts["dispatch"].sha,
                1,
                self.namespace,
                *dispatch_args(self, "ack", queue_name, message_id),
            )
            *written, acked = pipe.execute(raise_on_error=False)
        for result in written:
            if isinstance(result, Exception):
                log.warning("could not write with the ack of %s: %s", message.message_id, result)
        if isinstance(acked, redis.exceptions.NoScriptError):
            self.do_ack(queue_name, message_id)
        elif isinstance(acked, Exception):
            raise acked

    def consume(self, queue_name, prefetch=1, timeout=5000):
        notify(self, "before_consume", queue_name)
        if queue_name.endswith(".DQ"):
            self._requeue_claimed(queue_name)
        return _SafeConsumer(self, queue_name, prefetch, timeout)

    def _requeue_claimed(self, queue_name: str) -> None:
        acks = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
        try:
            claimed = [m.decode() for m in self.client.smembers(acks)]
            if claimed:
                # Atomic per message: only ids still claimed by this broker move back.
                self.do_requeue(queue_name, *claimed)
                log.warning(
                    "requeued %d delayed message(s) of %s left claimed by a lost connection",
                    len(claimed),
                    queue_name,
                )
        except redis.ConnectionError as exc:  # the consumer thread restarts and retries
            notify(self, "after_connection_error", queue_name, exc)
            raise ConnectionClosed(exc) from None


def redis_client(url: str) -> redis.Redis:
    """A client for ``redis://`` or ``rediss://`` (TLS, e.g. Upstash) URLs."""
    return redis.Redis.from_url(
        url,
        health_check_interval=15,
        socket_keepalive=True,
        socket_connect_timeout=5,
        socket_timeout=30,
    )


def middleware_stack(settings: Settings, client: redis.Redis) -> list:
    """Dramatiq's useful defaults, minus its ``Retries`` (20 retries, 15 s minimum).

    ``ValidatePayload`` comes first: nothing else may touch a message its actor rejects.

    ``JobMetrics`` comes after what skips a message before it runs (``AgeLimit``,
    ``RateLimit``: a deferred job is not an attempt) and before ``TimeLimit``.
    ``JobLog`` and ``ClassRetries`` come before ``JobMetrics``: Dramatiq runs the
    ``after_*`` hooks in reverse order, and while Redis is unreachable these two may hold the
    worker thread until the record is written or the retry scheduled; by then the
    attempt is already counted, timed and out of ``worker_jobs_processing``, and
    ``TimeLimit`` has disarmed, so it cannot interrupt the wait.
    """
    return [
        ValidatePayload(limits=PayloadLimits.from_settings(settings)),
        AgeLimit(),
        RateLimit(RateLimiter.from_settings(client, settings)),
        JobLog(
            client,
            namespace=settings.job_queue_name,
            completed_ttl=settings.completed_jobs_ttl_seconds,
            completed_max=settings.completed_jobs_max,
            dead_ttl=settings.dead_letters_ttl_seconds,
            dead_max=settings.dead_letters_max,
        ),
        ClassRetries(
            max_delay=settings.retry_max_delay_seconds,
            jitter=settings.retry_jitter,
            time_scale=settings.retry_time_scale,
        ),
        JobMetrics(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        BrokerHeartbeat(interval=settings.job_lock_timeout_seconds / 2),
        RedisHealth(
            url=broker_redis_url(settings) or settings.redis_url,
            max_backoff=settings.redis_health_interval_seconds,
        ),
    ]


def broker_redis_url(settings: Settings) -> str | None:
    """The broker's Redis URL, or None when the broker is RabbitMQ."""
    url = settings.broker_url or settings.redis_url
    return None if url.startswith("amqp") else url


def build_broker(settings: Settings) -> dramatiq.Broker:
    """The Redis broker from ``REDIS_URL``, or RabbitMQ when ``BROKER_URL`` is amqp://."""
    client = redis_client(settings.redis_url)
    middleware = middleware_stack(settings, client)
    url = settings.broker_url or settings.redis_url
    # Every body is checked as it is decoded (worker.envelope); the Redis broker cannot
    # ack a message without the id it was stored under.
    dramatiq.set_encoder(
        CheckedJSONEncoder(
            max_bytes=settings.message_max_bytes,
            required_options=() if url.startswith("amqp") else ("redis_message_id",),
        )
    )
    if url.startswith("amqp"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, middleware=middleware, confirm_delivery=True)
    broker_client = client if url == settings.redis_url else redis_client(url)
    return WorkerRedisBroker(
        client=broker_client,
        namespace=settings.job_queue_name,
        middleware=middleware,
        heartbeat_timeout=int(settings.job_lock_timeout_seconds * 1000),
        dead_message_ttl=int(settings.dead_letters_ttl_seconds * 1000),
    )
