"""Dead letters on Dramatiq's RabbitMQ broker: what ``worker.dead_letters`` does on Redis,
within what a queue allows.

Dramatiq's ``<queue>.XQ`` is a RabbitMQ queue: its messages cannot be read without taking
them. So ``list``, ``show`` and ``export`` read the job log (``<ns>:dead`` in Redis), which
names every dead-lettered job with its queue, actor, reason and attempts (not its
organization, nor its arguments); the depth of each ``.XQ`` is its passive-declare count.
A job the log names may have been requeued or purged since, or dropped by the queue's
7-day TTL.

``requeue`` consumes ``.XQ`` with manual acks. A message asked for is published again to
its queue with publisher confirms, and only once RabbitMQ has confirmed it is the dead
copy acked; every other message is held unacked and put back (``basic_nack`` with
requeue) at the end. A ``kill -9`` anywhere returns every unacked message to ``.XQ``
(RabbitMQ does it when the connection drops): nothing is lost, but a message published
and not yet acked is then in both places, so delivery is at least once. ``purge`` acks
the messages asked for without publishing them. The Redis counters are added to after
each move (a different server: not in one step with it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

import pika
import redis
from dramatiq.common import xq_name

from worker.dead_letter_model import DeadLetter, decode_body
from worker.dead_letters import (
    DeadLetters,
    Outcome,
    Pacer,
    requeued_body,
)
from worker.jobs import QUEUES
from worker.redis_keys import DEFAULT_NAMESPACE


class RabbitmqDeadLetters(DeadLetters):
    """Dead letters of ``queues`` on the RabbitMQ at ``url``, described by the job log in
    the Redis of ``client`` under ``namespace``; the audit trail stays in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        queues: Iterable[str] = QUEUES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client, namespace=namespace, queues=queues, clock=clock)
        self.url = url

    def _channel(self):
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        return connection, connection.channel()

    def total(self) -> int:
        """Messages in the dead-letter queues (the job log may name more: requeued,
        purged or expired since)."""
        connection, _ = self._channel()
        try:
            return sum(self._declared(connection, xq_name(q)) or 0 for q in self.queues)
        finally:
            connection.close()

    @staticmethod
    def _declared(connection, queue: str) -> int | None:
        """How many messages ``queue`` holds, None when it was never declared (a worker
        declares it on its first message)."""
        channel = connection.channel()
        try:
            return channel.queue_declare(queue, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return None
        finally:
            if channel.is_open:
                channel.close()

    def all(self) -> list[DeadLetter]:
        """The job log's dead letters, newest first (one per message id)."""
        letters: dict[str, DeadLetter] = {}
        for entry_id, raw in self.client.xrange(self._log_key()):
            record = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
            if record.get("queue") not in self.queues:
                continue
            failed_at = int(entry_id.split(b"-")[0]) / 1000
            fields = {"message_id": record.get("message_id"), "actor_name": record.get("job_type")}
            attempts = record.get("attempts", "1")
            letters[record.get("message_id", "")] = DeadLetter(
                redis_id="",
                queue=record["queue"],
                failed_at=failed_at,
                body=b"",
                fields=fields,
                reason=record.get("reason", ""),
                attempts=int(attempts) if attempts.isdigit() else 1,
                record=record,
            )
        return sorted(letters.values(), key=lambda x: x.failed_at, reverse=True)

    def _log_key(self) -> str:
        return self.keys.dead_letter_reasons

    def requeue(self, letters, *, rate: float = 5.0, on_each=None, outcome=None) -> Outcome:
        outcome = outcome or Outcome("requeued", matched=len(letters))
        return self._drain(letters, publish=True, rate=rate, on_each=on_each, outcome=outcome)

    def purge(self, letters, *, on_each=None, outcome=None) -> Outcome:
        outcome = outcome or Outcome("purged", matched=len(letters))
        return self._drain(letters, publish=False, rate=None, on_each=on_each, outcome=outcome)

    def _drain(self, letters, *, publish: bool, rate: float | None, on_each, outcome) -> Outcome:
        """Take every message of the dead-letter queues of ``letters``; move (or delete)
        those whose message id is asked for, put the others back."""
        wanted = {x.message_id: x for x in letters}
        pacer = Pacer(rate) if rate else None
        connection, channel = self._channel()
        try:
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=0)
            for queue in sorted({x.queue for x in letters}):
                if self._declared(connection, xq_name(queue)):
                    self._drain_queue(channel, queue, wanted, publish, pacer, outcome, on_each)
        finally:
            if connection.is_open:
                connection.close()
        for letter in wanted.values():  # asked for, not in the queue (any more)
            self._settle(outcome, letter, "already gone", on_each)
        return outcome

    def _drain_queue(self, channel, queue, wanted, publish, pacer, outcome, on_each) -> None:
        held: list[int] = []
        try:
            while True:
                method, properties, body = channel.basic_get(xq_name(queue), auto_ack=False)
                if method is None:  # every message is taken or held
                    break
                fields = decode_body(body)
                message_id = (fields or {}).get("message_id")
                letter = wanted.pop(message_id, None) if isinstance(message_id, str) else None
                if letter is None:
                    held.append(method.delivery_tag)
                    continue
                if publish and fields is None:
                    held.append(method.delivery_tag)
                    self._settle(outcome, letter, "failed: the body is not a message", on_each)
                    continue
                if publish:
                    pacer.wait()
                    letter = DeadLetter(
                        redis_id="",
                        queue=queue,
                        failed_at=letter.failed_at,
                        body=body,
                        fields=fields,
                        reason=letter.reason,
                        attempts=letter.attempts,
                    )
                    new = json.loads(requeued_body(letter, self.clock()))
                    new["options"].pop("redis_message_id", None)
                    channel.basic_publish(
                        exchange="",
                        routing_key=queue,
                        body=json.dumps(new, separators=(",", ":")).encode(),
                        properties=pika.BasicProperties(
                            delivery_mode=2, priority=new["options"].get("broker_priority")
                        ),
                        mandatory=True,
                    )  # returns once confirmed; raises if RabbitMQ refuses it
                channel.basic_ack(method.delivery_tag)
                action = "requeued" if publish else "purged"
                self.client.hincrby(self.keys.dead_letters_counted(action), queue, 1)
                self._settle(outcome, letter, action, on_each)
        finally:
            if held and channel.is_open:
                for tag in held:
                    channel.basic_nack(tag, requeue=True)
