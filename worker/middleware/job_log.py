"""Keeps a bounded record of finished jobs in Redis: completions and dead letters."""

from __future__ import annotations

import json
import logging
import time

import redis
from dramatiq.brokers.redis import RedisBroker

from worker.backoff import capped_backoff
from worker.brokers.redis import WorkerRedisBroker
from worker.middleware.base import WorkerMiddleware
from worker.redis_keys import RedisKeys

log = logging.getLogger(__name__)


class JobLog(WorkerMiddleware):
    """Appends each completed and each dead-lettered job to a capped Redis stream.

    ``<namespace>:completed`` keeps the results of completed jobs for ``completed_ttl``
    seconds, at most ``completed_max`` entries (default 24 h, 1,000); ``<namespace>:dead``
    keeps why each dead-lettered job failed for ``dead_ttl`` seconds, at most ``dead_max``
    (default 7 days, 5,000), beside the dead message itself, which the broker keeps in its
    dead-letter queue for replay. Trimming happens on every append (``XADD ... MINID``
    with the age bound, then ``XTRIM MAXLEN`` with the count), so neither record grows
    without bound.

    A completion is recorded before its message is acknowledged, so a process that dies
    in between has its job redelivered rather than its result lost. On the broker's own
    Redis the record is sent in the ack's round trip (``WorkerRedisBroker.write_with_ack``:
    a synchronous write of its own cost a third of the throughput of short jobs), and
    an outage holds both until Redis is back, as Dramatiq holds any ack. Elsewhere
    (RabbitMQ, or a broker on another Redis) it is written here, holding the worker thread
    through an outage (capped backoff up to ``max_hold_seconds``). A dead-letter record
    that cannot be written is logged and dropped (the dead message itself stays in the
    broker's dead-letter queue).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        completed_ttl: float = 86_400,
        completed_max: int = 1_000,
        dead_ttl: float = 7 * 86_400,
        dead_max: int = 5_000,
        result_max_chars: int = 2_000,
        max_hold_seconds: float = 10.0,
    ) -> None:
        self.client = client
        keys = RedisKeys(namespace)
        self.completed_key = keys.completed
        self.dead_key = keys.dead_letter_reasons
        self.completed_bounds = (completed_ttl, completed_max)
        self.dead_bounds = (dead_ttl, dead_max)
        self.result_max_chars = result_max_chars
        self.max_hold_seconds = max_hold_seconds

    def after_process_message(self, broker, message, *, result=None, exception=None):
        # Written before the ack, so a job acked as done is always in the record (a crash
        # in between records it twice, never zero times): in the ack's own round trip when
        # the broker can (``WorkerRedisBroker.write_with_ack``), else here, holding the
        # thread through an outage. COMPLETED_JOBS_MAX=0 turns the record off.
        if exception is None and self.completed_bounds[1] > 0:
            text = json.dumps(result, default=str)[: self.result_max_chars]
            fields = self._fields(message, result=text)

            def write(pipe) -> None:
                self._add(pipe, self.completed_key, self.completed_bounds, fields)

            if isinstance(broker, WorkerRedisBroker) and broker.write_with_ack(
                message, self.client, write
            ):
                return
            for hold in capped_backoff(cap=self.max_hold_seconds):
                if self._append(self.completed_key, self.completed_bounds, fields):
                    break
                time.sleep(hold)

    def after_nack(self, broker, message) -> None:
        reason = message.options.get("dead_letter_reason") or "rejected by the broker"
        self.record_dead(
            message.message_id,
            message.queue_name,
            message.actor_name,
            reason,
            attempts=message.options.get("retries", 0) + 1,
        )
        if isinstance(broker, RedisBroker):
            self.trim_dead_letter_queue(broker, message.queue_name)

    def after_undecodable_message(self, broker, queue: str, message_id: str, reason: str):
        self.record_dead(message_id, queue, "unknown", reason)
        self.trim_dead_letter_queue(broker, queue)

    def trim_dead_letter_queue(self, broker: RedisBroker, queue: str) -> None:
        """Dramatiq bounds its dead-letter queue by age only; bound it by count as well."""
        keys = RedisKeys(broker.namespace)
        xq, xq_messages = keys.dead_letters(queue), keys.dead_letter_messages(queue)
        try:
            oldest = self.client.zrange(xq, 0, -(self.dead_bounds[1] + 1))
            if oldest:
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.zrem(xq, *oldest)
                    pipe.hdel(xq_messages, *oldest)
                    pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not trim %s: %s", xq, exc)

    def record_dead(
        self, message_id: str, queue: str, actor: str, reason: str, attempts: int = 1
    ) -> None:
        self._append(
            self.dead_key,
            self.dead_bounds,
            {
                "message_id": message_id,
                "queue": queue,
                "job_type": actor,
                "reason": reason,
                "attempts": str(attempts),
            },
        )

    @staticmethod
    def _fields(message, **fields: str) -> dict[str, str]:
        # The job and organization ids too, when the job has them: the console searches by them.
        kwargs = message.kwargs if isinstance(message.kwargs, dict) else {}
        ids = {k: kwargs[k] for k in ("job_id", "org_id") if isinstance(kwargs.get(k), str)}
        return {
            "message_id": message.message_id,
            "queue": message.queue_name,
            "job_type": message.actor_name,
            **ids,
            **fields,
        }

    @staticmethod
    def _add(pipe, key: str, bounds: tuple[float, int], fields: dict[str, str]) -> None:
        """Queue on ``pipe`` the append of one record and the trim to ``bounds``."""
        ttl, max_len = bounds
        oldest_ms = int((time.time() - ttl) * 1000)
        pipe.xadd(key, fields, minid=oldest_ms, approximate=False)
        pipe.xtrim(key, maxlen=max_len, approximate=False)

    def _append(self, key: str, bounds: tuple[float, int], fields: dict[str, str]) -> bool:
        """Append one record; False (logged) when Redis cannot take it."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                self._add(pipe, key, bounds, fields)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not record job %s in %s: %s", fields["message_id"], key, exc)
            return False
        return True
