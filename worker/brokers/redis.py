"""Dramatiq's Redis broker as the worker runs it, and every private name of Dramatiq's it uses.

Dramatiq keeps its Redis consumer, its ``dispatch`` Lua script, its key layout and its
log lines to itself; the worker relies on each of them, here and only here:

- ``WorkerRedisBroker`` and its consumer (a subclass of Dramatiq's private
  ``_RedisConsumer``): a message that cannot be decoded is dead-lettered instead of
  stalling its queue; a lost connection is reported to the worker's hooks
  (``worker.middleware.base``); delayed messages a lost connection orphans are requeued;
  writes can ride in an ack's round trip.
- ``dispatch_args`` / ``dispatch``: the ``dispatch`` script's arguments, built as
  Dramatiq's ``do_<command>`` builds them (``broker_id``, ``_should_do_maintenance``,
  ``_max_unpack_size``).
- The key names (``<ns>:<queue>``, ``.msgs``, ``.DQ``, ``.XQ``, ``__acks__``,
  ``__heartbeats__``); everything else reaches them through ``worker.redis_keys.RedisKeys``,
  the one place every Redis key is named.
- Recognizers for Dramatiq's log lines that the worker quiets.

``tests/test_dramatiq_pins.py`` checks each of these against the installed Dramatiq and
names the one that changed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name, q_name, xq_name
from dramatiq.errors import ConnectionClosed, DecodeError

from worker.envelope import InvalidMessage
from worker.middleware.base import emit

log = logging.getLogger(__name__)

# --- Dramatiq's Redis key layout --------------------------------------------------------


def queue_key(namespace: str, queue: str) -> str:
    """The list of message ids ready on ``queue`` (a delay queue's: due or not)."""
    return f"{namespace}:{queue}"


def messages_key(namespace: str, queue: str) -> str:
    """The hash of message bodies of ``queue`` by message id."""
    return f"{namespace}:{queue}.msgs"


def delayed_messages_key(namespace: str, queue: str) -> str:
    """The bodies of ``queue``'s delayed messages, waiting or held by a delay consumer."""
    return messages_key(namespace, delay_queue_name(queue))


def dead_letter_keys(namespace: str, queue: str) -> tuple[str, str]:
    """The dead-letter sorted set of ``queue`` (or of its delay queue) and its bodies."""
    dead = queue_key(namespace, dead_letter_queue_name(queue))
    return dead, messages_key(namespace, dead_letter_queue_name(queue))


def claimed_key(namespace: str, broker_id: str, queue: str) -> str:
    """The set of ``queue``'s message ids that the broker ``broker_id`` has fetched and not
    yet acked (its "acks" set, requeued by maintenance once its heartbeat expires)."""
    return f"{namespace}:__acks__.{broker_id}.{queue}"


def claimed_keys_pattern(namespace: str) -> str:
    """A ``SCAN``/``KEYS`` pattern for every broker's claimed set of every queue."""
    return f"{namespace}:__acks__.*"


def parse_claimed_key(namespace: str, key: str | bytes) -> tuple[str, str]:
    """(broker id, queue) of a claimed set's key (``claimed_key``'s inverse)."""
    key = key.decode() if isinstance(key, bytes) else key
    prefix = claimed_keys_pattern(namespace).removesuffix("*")
    broker_id, queue = key.removeprefix(prefix).split(".", 1)  # broker ids are uuid4s
    return broker_id, queue


def heartbeats_key(namespace: str) -> str:
    """The sorted set of every broker's last heartbeat: broker id -> milliseconds."""
    return f"{namespace}:__heartbeats__"


def delay_queue_name(queue: str) -> str:
    """The name of ``queue``'s delay queue (retries, deferrals and ``eta`` messages)."""
    return dq_name(q_name(queue))


def dead_letter_queue_name(queue: str) -> str:
    """The name of ``queue``'s dead-letter queue (also RabbitMQ's)."""
    return xq_name(q_name(queue))


def is_delay_queue(queue: str) -> bool:
    return queue == delay_queue_name(queue)


#: queue -> (ready, delayed, dead)
Counts = dict[str, tuple[int, int, int]]


def redis_backlog(client, namespace: str, queues: Iterable[str]) -> Callable[[], Counts]:
    """Counts of Dramatiq's Redis broker: ready = ids waiting in the queue's list (not yet
    fetched by a worker); delayed = bodies in ``<queue>.DQ.msgs`` (waiting for their
    time, whether still listed or already held by a worker's delay consumer); dead =
    the dead-letter sorted set ``<queue>.XQ``."""
    queues = tuple(queues)

    def read() -> Counts:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue_key(namespace, queue))
                pipe.hlen(delayed_messages_key(namespace, queue))
                pipe.zcard(dead_letter_keys(namespace, queue)[0])
            values = pipe.execute()
        return {q: tuple(values[3 * i : 3 * i + 3]) for i, q in enumerate(queues)}

    return read


#: Each queue's next ready message, read atomically: the head of its list (Dramatiq pushes
#: to the tail and fetches from the head) and that id's body; KEYS are (list, bodies)
#: pairs, the answer one body or '' per pair.
_HEADS = """
local bodies = {}
for i = 1, #KEYS, 2 do
  local id = redis.call('lindex', KEYS[i], 0)
  bodies[#bodies + 1] = id and redis.call('hget', KEYS[i + 1], id) or ''
end
return bodies
"""


def redis_queue_heads(
    client, namespace: str, queues: Iterable[str]
) -> Callable[[], dict[str, bytes | None]]:
    """The body of each queue's next ready message (None when none waits), one round trip."""
    queues = tuple(queues)
    heads = client.register_script(_HEADS)
    keys = [k for q in queues for k in (queue_key(namespace, q), messages_key(namespace, q))]

    def read() -> dict[str, bytes | None]:
        return {q: body or None for q, body in zip(queues, heads(keys=keys), strict=True)}

    return read


# --- Dramatiq's dispatch script -------------------------------------------------------------


def dispatch_args(
    broker: RedisBroker, command: str, queue: str, *args, maintenance: bool | None = None
) -> list:
    """ARGV of Dramatiq's ``dispatch`` script (KEYS is ``[broker.namespace]``), built as
    ``RedisBroker.do_<command>`` builds it; ``maintenance`` None leaves the broker's random
    choice, True forces the requeue of dead workers' jobs."""
    if maintenance is None:
        maintenance = broker._should_do_maintenance(command)
    return [
        command,
        current_millis(),
        queue,
        broker.broker_id,
        broker.heartbeat_timeout,
        broker.dead_message_ttl,
        int(maintenance),
        broker._max_unpack_size(),
        *args,
    ]


def dispatch(broker: RedisBroker, command: str, queue: str, *args, maintenance=None):
    """Run ``command`` of the dispatch script on the broker's connection (what Dramatiq's
    ``do_<command>`` does, with ``maintenance`` under the caller's control)."""
    return broker.scripts["dispatch"](
        keys=[broker.namespace],
        args=dispatch_args(broker, command, queue, *args, maintenance=maintenance),
    )


def heartbeat(broker: RedisBroker) -> None:
    """Record the broker's heartbeat and run queue maintenance on every declared queue
    (``qsize`` only reads; the script beats, and with maintenance requeues the jobs of
    brokers whose heartbeat expired)."""
    queues = {q for name in broker.get_declared_queues() for q in (name, delay_queue_name(name))}
    for queue in sorted(queues):
        dispatch(broker, "qsize", queue, maintenance=True)


# --- Dramatiq's log lines ---------------------------------------------------------------------

#: The logger of Dramatiq's worker threads (and, with a suffix, of its consumer threads).
WORKER_THREAD_LOGGER = "dramatiq.worker.WorkerThread"

#: Dramatiq's consumer threads log these on every restart after a connection error.
_CONSUMER_RESTART_LINES = (
    "Consumer encountered a connection error",
    "Restarting consumer in",
    "Failed to post_process_message",
)


def is_consumer_restart_line(record: logging.LogRecord) -> bool:
    """Whether ``record`` is one of a consumer thread's lines about a lost connection."""
    return str(record.msg).startswith(_CONSUMER_RESTART_LINES)


def is_results_advice(record: logging.LogRecord) -> bool:
    """Whether ``record`` is Dramatiq's advice to add its Results middleware (logged when
    an actor returns a value and no result backend is configured)."""
    return "Results middleware" in str(record.msg)


def skipped_message(record: logging.LogRecord) -> dramatiq.MessageProxy | None:
    """The message of Dramatiq's "Message ... was skipped." warning, else None."""
    if "was skipped" not in str(record.msg):
        return None
    args = record.args if isinstance(record.args, tuple) else ()
    return args[0] if args else None


# --- the worker's notes on a message in flight -----------------------------------------------
# A MessageProxy carries them for the time of one attempt (Dramatiq's proxy takes any
# attribute); they never reach Redis.


def mark_deferred(message: dramatiq.MessageProxy, seconds: float) -> None:
    """Note that this attempt did not run: ``message`` waits ``seconds`` in a copy."""
    message.worker_deferred = seconds


def deferred_by(message: object) -> float:
    """Seconds ``message`` was deferred by (``mark_deferred``); 0 when it was not."""
    return getattr(message, "worker_deferred", 0)


def _writes_with_ack(message: object) -> list:
    return getattr(message, "worker_writes_with_ack", None) or []


# --- the broker ----------------------------------------------------------------------------


class _Fetched(list):
    """The bodies of one fetch, with the ids they were stored under: ``pop`` remembers the
    id of the body it hands out (``popped``)."""

    def __init__(self, ids: list[str], bodies: list) -> None:
        super().__init__(bodies)
        self.ids = ids
        self.popped: str | None = None

    def pop(self, index=-1):
        self.popped = self.ids.pop(index)
        return super().pop(index)


class _SafeConsumer(_RedisConsumer):
    """A consumer that knows the id each message was stored under, dead-letters what it
    cannot run instead of stalling, and reports a lost connection.

    Dramatiq's consumer takes a message's Redis id from its body
    (``options.redis_message_id``); a producer that omits it, or writes another, leaves
    the message claimed forever after it ran. Here the fetch also returns the ids
    (``WorkerRedisBroker.do_fetch``) and the id the body says is replaced by the one it
    was stored under. A body that cannot be decoded or fails the envelope check
    (``worker.envelope``), one that names another queue, one of an unknown actor, and an
    id stored with no body are dead-lettered at once with their reason, and every
    middleware with an ``after_undecodable_message(broker, queue, message_id, reason)``
    hook hears of those that never became a message (to count and record them; see
    ``worker.middleware.base``).

    A connection lost while fetching, acking, nacking or requeueing (mid-job: the job
    ran, its ack cannot reach Redis) goes to ``after_connection_error`` before Dramatiq
    restarts the consumer or retries the ack (``RedisHealth`` paces and counts the
    reconnects).
    """

    @contextlib.contextmanager
    def _reporting_lost_connection(self):
        try:
            yield
        except ConnectionClosed as exc:
            emit(self.broker, "after_connection_error", self.queue_name, exc)
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
            self._dead_letter_raw(self._fetched().popped, reason)
            message = None
        if message is None:
            return None
        message.options["redis_message_id"] = self._fetched().popped
        self.broker.hold(self.queue_name, message)
        if message.queue_name != self.queue_name:
            # Dramatiq would settle it through the consumer of the queue its body names,
            # which may not exist: it would stay claimed forever.
            return self._reject(message, f"invalid message: names queue {message.queue_name!r}")
        if message.actor_name not in self.broker.actors:
            return self._reject(message, f"unknown actor {message.actor_name!r}")
        return message

    def _fetched(self) -> _Fetched:
        cache = self.message_cache
        return cache if isinstance(cache, _Fetched) else _Fetched([], [])

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
        writes = _writes_with_ack(message)
        with self._reporting_lost_connection():
            if not writes:
                super().ack(message)
                return self.broker.release(self.queue_name, message)
            try:
                self.broker.ack_with(self.queue_name, message, writes)
            except redis.ConnectionError as exc:
                raise ConnectionClosed(exc) from None
            finally:
                self.queued_message_ids.discard(message.message_id)
            self.broker.release(self.queue_name, message)

    def nack(self, message):
        with self._reporting_lost_connection():
            super().nack(message)
            self.broker.release(self.queue_name, message)

    def requeue(self, messages):
        # Dramatiq's consumer thread requeues its delayed messages when it closes after an
        # unexpected error, and survives only a ConnectionClosed from it: a redis-py
        # ConnectionError there ends the thread, and the queue is never consumed again.
        messages = list(messages)
        try:
            super().requeue(messages)
            for message in messages:
                self.broker.release(self.queue_name, message)
        except redis.ConnectionError as exc:
            emit(self.broker, "after_connection_error", self.queue_name, exc)
            raise ConnectionClosed(exc) from None

    def _dead_letter_raw(self, message_id: str | None, reason: str) -> None:
        if message_id is not None:  # None: not from a fetch of ours, nothing to settle
            self.broker.dead_letter_raw(self.queue_name, message_id, reason)


class WorkerRedisBroker(RedisBroker):
    """Dramatiq's Redis broker with a consumer that survives undecodable messages and
    reports lost connections; the worker's ``before_consume`` hook may hold a
    consumer's (re)start back while Redis is known to be down.

    It also gives back the delayed messages a connection error orphans. A delay queue's
    consumer thread keeps the messages it fetched (retries, rate-limit deferrals) in
    memory until they are due; when the connection drops, Dramatiq's thread throws that
    memory away and starts a new consumer, while Redis still counts the messages as
    claimed by this broker. This broker keeps beating, so no other worker ever takes them
    back: they would wait until this process dies. When a delay queue's consumer
    (re)starts, nothing of that queue is in this process's memory, so everything Redis
    lists as claimed by this broker on that queue is requeued first.

    A fetch can be lost so on any queue: Redis claims its messages for this broker and
    the connection drops before the reply arrives. So the broker remembers what its
    consumers handed out and not yet settled (``hold``, ``release``); when a consumer
    (re)starts, what Redis lists as claimed by this broker and no thread holds is requeued.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[str, set[str]] = {}
        self._held_lock = threading.Lock()

    def hold(self, queue_name: str, message) -> None:
        """``message`` was handed to this process's worker threads: it is ours to settle (a
        delay queue's are not remembered: its restart requeues all it claimed)."""
        if is_delay_queue(queue_name):
            return
        with self._held_lock:
            self._held.setdefault(queue_name, set()).add(message.options["redis_message_id"])

    def release(self, queue_name: str, message) -> None:
        """``message`` was acked, nacked or requeued: Redis no longer counts it as ours."""
        with self._held_lock:
            self._held.get(queue_name, set()).discard(message.options.get("redis_message_id"))

    def do_fetch(self, queue_name: str, prefetch: int) -> _Fetched:
        """Dramatiq's fetch, and in the same transaction (one round trip) the ids it pops:
        the first ``prefetch`` of the queue's list, as the script takes them."""
        prefetch = min(int(prefetch), self._max_unpack_size())
        script = self.scripts["dispatch"]
        for attempt in (1, 2):
            # EVALSHA by hand: a registered Script in a pipeline costs a SCRIPT EXISTS
            # round trip on every execute.
            with self.client.pipeline(transaction=True) as pipe:
                pipe.lrange(queue_key(self.namespace, queue_name), 0, prefetch - 1)
                args = dispatch_args(self, "fetch", queue_name, prefetch)
                pipe.evalsha(script.sha, 1, self.namespace, *args)
                ids, bodies = pipe.execute(raise_on_error=False)
            if isinstance(bodies, redis.exceptions.NoScriptError) and attempt == 1:
                # A restarted Redis lost its scripts; nothing was popped: load and fetch.
                self.client.script_load(script.script)
                continue
            if isinstance(bodies, Exception):
                raise bodies
            break
        fetched = _Fetched([], [])
        for message_id, body in zip((i.decode() for i in ids), bodies, strict=True):
            if body is None:  # an id pushed without its body: nothing to run, nothing to keep
                self.dead_letter_raw(queue_name, message_id, "no message body is stored under it")
            else:
                fetched.ids.append(message_id)
                fetched.append(body)
        return fetched

    def dead_letter_raw(self, queue_name: str, message_id: str, reason: str) -> None:
        """Dead-letter what is stored under ``message_id``, a body that never became a
        message (``after_undecodable_message`` hooks count it as ``job_type`` unknown)."""
        self.do_nack(queue_name, message_id)
        log.error("dead-lettered %s on queue %s: %s", message_id, queue_name, reason)
        emit(self, "after_undecodable_message", queue_name, message_id, reason)

    def write_with_ack(self, message, client: redis.Redis, write) -> bool:
        """Have ``write(pipeline)`` sent in the same round trip as ``message``'s ack, just
        before it: what it writes is in Redis by the time the job counts as done, at no
        extra round trip per job. False when ``client`` is not this broker's Redis: the
        caller writes on its own."""
        if client is not self.client:
            return False
        message.worker_writes_with_ack = [*_writes_with_ack(message), write]
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
        emit(self, "before_consume", queue_name)
        self._requeue_claimed(queue_name)
        return _SafeConsumer(self, queue_name, prefetch, timeout)

    def _requeue_claimed(self, queue_name: str) -> None:
        """Requeue what Redis lists as claimed by this broker on ``queue_name`` and no
        thread of this process holds (on a delay queue: everything)."""
        acks = claimed_key(self.namespace, self.broker_id, queue_name)
        try:
            claimed = [m.decode() for m in self.client.smembers(acks)]
            with self._held_lock:
                held = set(self._held.get(queue_name, ()))
            claimed = [m for m in claimed if m not in held]
            if claimed:
                # Atomic per message: only ids still claimed by this broker move back.
                self.do_requeue(queue_name, *claimed)
                log.warning(
                    "requeued %d message(s) of %s left claimed by a lost connection",
                    len(claimed),
                    queue_name,
                )
        except redis.ConnectionError as exc:  # the consumer thread restarts and retries
            emit(self, "after_connection_error", queue_name, exc)
            raise ConnectionClosed(exc) from None
