"""Dead letters on Dramatiq's Redis broker: select, list, show, requeue, purge, export, audit.

The one implementation behind ``worker dead-letters`` and the web console.

Where they live: Dramatiq's ``nack`` moves a message's id into the sorted set
``<ns>:<queue>.XQ`` (scored by the time it failed, in ms) and its body into
``<ns>:<queue>.XQ.msgs``, under the id it was stored with in Redis (``redis_message_id``,
one per enqueue), not under its Dramatiq ``message_id``. A queue and its delay queue
share one dead-letter queue. The body is the one last enqueued: why it failed is in the
job log (``<ns>:dead``, ``worker.middleware.job_log``), by ``message_id``.

Every move and delete is one Lua script per message, so a dead letter is never in two
places nor in none, whatever kills the caller; the script also counts it in the hashes
``RedisKeys.dead_letters_counted("requeued" | "purged")`` by queue, which every replica exports.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import redis
from dramatiq.common import q_name

from worker.dead_letter_model import (
    DeadLetter,
    Selection,
    SelectionError,
    decode_body,
    numbers,
    parse_duration,
    redacted_payload,
    rfc3339,
)
from worker.jobs import QUEUES
from worker.redis_keys import DEFAULT_NAMESPACE, RedisKeys

__all__ = [
    "DeadLetter",
    "DeadLetters",
    "Outcome",
    "Pacer",
    "Selection",
    "SelectionError",
    "parse_duration",
    "rfc3339",
]


#: Entries kept in the audit stream (approximately: ``XADD ... MAXLEN ~``).
AUDIT_MAX = 10_000
#: Ids written into one audit entry; the counts are always complete.
AUDIT_IDS_MAX = 100
#: Requeues remembered in a message's ``options["requeued_at"]`` (its count is complete).
REQUEUE_HISTORY_MAX = 20

# ------------------------------------------------------------------------------------------


#: Moves one dead letter to its queue, if it is still there with the body that was read.
#: KEYS: dead-letter set, its bodies, the queue's list, its bodies, the requeued counter.
#: ARGV: redis id, sha1 of the body read, the body to enqueue, the counter's field.
#: Returns 1 moved, 0 gone (someone else moved or purged it), -1 changed since read.
_REQUEUE = """
local body = redis.call('hget', KEYS[2], ARGV[1])
if not body or not redis.call('zscore', KEYS[1], ARGV[1]) then return 0 end
if redis.sha1hex(body) ~= ARGV[2] then return -1 end
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('hset', KEYS[4], ARGV[1], ARGV[3])
redis.call('rpush', KEYS[3], ARGV[1])
redis.call('hincrby', KEYS[5], ARGV[4], 1)
return 1
"""

#: Deletes one dead letter, as ``_REQUEUE`` moves one: KEYS dead-letter set, its bodies,
#: the purged counter; ARGV redis id, sha1 of the body read, the counter's field.
_PURGE = """
local body = redis.call('hget', KEYS[2], ARGV[1])
if not body or not redis.call('zscore', KEYS[1], ARGV[1]) then return 0 end
if redis.sha1hex(body) ~= ARGV[2] then return -1 end
redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
redis.call('hincrby', KEYS[3], ARGV[3], 1)
return 1
"""


def requeued_body(letter: DeadLetter, now: float) -> bytes:
    """The body to enqueue again: same ``message_id`` and arguments, on its own queue, with
    the class's full retry budget (``retries`` 0, no rate-limit deferrals, no eta, no
    old reason) and the requeue recorded (``requeues``, ``requeued_at`` in ms). Its
    ``ready_at`` is now, so its queue wait counts from the requeue, not from the first
    enqueue days ago (``worker.middleware.metrics.runnable_since``)."""
    assert letter.fields is not None
    options = dict(letter.options)
    for stale in ("retries", "rate_limit_deferrals", "eta", "dead_letter_reason"):
        options.pop(stale, None)
    now_ms = int(now * 1000)
    history = numbers(options.get("requeued_at"))[-(REQUEUE_HISTORY_MAX - 1) :]
    requeues = options.get("requeues")
    options.update(
        requeues=(requeues if isinstance(requeues, int) else 0) + 1,
        requeued_at=[*history, now_ms],
        ready_at=now_ms,
        redis_message_id=letter.redis_id,
    )
    fields = {**letter.fields, "queue_name": letter.queue, "options": options}
    return json.dumps(fields, separators=(",", ":")).encode()


@dataclass
class Outcome:
    """What an action did: ``matched`` = ``done`` + ``gone`` + ``failed`` once it ends."""

    action: str
    matched: int = 0
    done: int = 0
    gone: int = 0
    failed: int = 0
    ids: list[str] = field(default_factory=list)
    #: Ids asked for by name that were not dead letters (reported as gone).
    missing: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The summary: an id asked for that was no dead letter counts as matched and gone."""
        return {
            "matched": self.matched + len(self.missing),
            self.action: self.done,
            "already_gone": self.gone + len(self.missing),
            "failed": self.failed,
        }


class Pacer:
    """Token pacing at ``rate`` per second: the n-th call returns no earlier than
    ``n / rate`` seconds after the first. A caller late by a hiccup (a slow round trip,
    a busy CPU) catches up, so the average holds; behind by more than ``max_lag``
    seconds (a long stall), it starts afresh rather than send a burst.
    """

    def __init__(
        self, rate: float, *, max_lag: float = 0.25, clock=time.monotonic, sleep=time.sleep
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.interval = 1.0 / rate
        self.max_lag = max(max_lag, self.interval)
        self.clock, self.sleep = clock, sleep
        self.next_at: float | None = None

    def wait(self) -> None:
        now = self.clock()
        if self.next_at is None or self.next_at < now - self.max_lag:
            self.next_at = now
        if self.next_at > now:
            self.sleep(self.next_at - now)
        self.next_at += self.interval


def operator() -> str:
    """Who acts when no ``--by`` is given: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class DeadLetters:
    """The dead letters of ``queues`` in the Redis of ``client`` under ``namespace``.

    Parameters:
      client: a redis-py client of the broker's Redis.
      namespace: the key namespace (``JOB_QUEUE_NAME``, default ``DEFAULT_NAMESPACE``).
      queues: the queues whose dead letters are read (default: the job classes' queues).
      clock: seconds since the epoch; tests replace it.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        queues: Iterable[str] = QUEUES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.keys = RedisKeys(namespace)
        self.queues = tuple(queues)
        self.clock = clock
        self._requeue = client.register_script(_REQUEUE)
        self._purge = client.register_script(_PURGE)

    # --- reading ---------------------------------------------------------------------

    def _dead_letter_keys(self, queue: str) -> tuple[str, str]:
        return self.keys.dead_letters(queue), self.keys.dead_letter_messages(queue)

    def total(self) -> int:
        """How many dead letters there are, in all queues."""
        with self.client.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.zcard(self.keys.dead_letters(queue))
            return sum(pipe.execute())

    def all(self) -> list[DeadLetter]:
        """Every dead letter, newest first (a few round trips, whatever their number)."""
        with self.client.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.zrange(self.keys.dead_letters(queue), 0, -1, withscores=True)
            members = pipe.execute()
        with self.client.pipeline(transaction=False) as pipe:
            for queue, ids in zip(self.queues, members, strict=True):
                if ids:
                    pipe.hmget(self.keys.dead_letter_messages(queue), [i for i, _ in ids])
            bodies = iter(pipe.execute())
        records = self._records()
        letters = []
        for queue, ids in zip(self.queues, members, strict=True):
            if not ids:
                continue
            for (raw_id, score), body in zip(ids, next(bodies), strict=True):
                if body is not None:  # removed between the two reads
                    letters.append(self._letter(queue, raw_id.decode(), score, body, records))
        letters.sort(key=lambda letter: letter.failed_at, reverse=True)
        return letters

    def select(self, selection: Selection) -> tuple[list[DeadLetter], int]:
        """The dead letters ``selection`` matches, newest first, and how many there are."""
        letters = self.all()
        now = self.clock()
        return [x for x in letters if selection.matches(x, now)], len(letters)

    def get(self, message_id: str) -> DeadLetter | None:
        """The dead letter of ``message_id`` (or of a Redis id), None when there is none."""
        matching, _ = self.select(Selection(ids=(message_id,)))
        return matching[0] if matching else None

    def export(self, letters: Iterable[DeadLetter], *, payload: bool = False) -> Iterator[dict]:
        """One object per dead letter for offline analysis; arguments only with ``payload``,
        secrets redacted."""
        now = self.clock()
        for letter in letters:
            row = {**letter.summary(now), "redis_id": letter.redis_id, "options": letter.options}
            if payload:
                row["payload"] = redacted_payload(letter)
            yield row

    def _records(self) -> dict[str, dict[str, str]]:
        """The job log's latest record of each dead-lettered message id."""
        records: dict[str, dict[str, str]] = {}
        for entry_id, raw in self.client.xrange(self.keys.dead_letter_reasons):
            record = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
            record["logged_at"] = rfc3339(int(entry_id.split(b"-")[0]) / 1000)
            records[record.get("message_id", "")] = record
        return records

    def _letter(self, queue, redis_id, score, body, records) -> DeadLetter:
        fields = decode_body(body)
        message_id = (fields or {}).get("message_id")
        record = records.get(message_id) if isinstance(message_id, str) else None
        record = record or records.get(redis_id)
        options = (fields or {}).get("options")
        options = options if isinstance(options, dict) else {}
        reason = (record or {}).get("reason") or options.get("dead_letter_reason")
        retries = options.get("retries")
        attempts = (retries if isinstance(retries, int) else 0) + 1
        if record and record.get("attempts", "").isdigit():
            attempts = int(record["attempts"])
        return DeadLetter(
            redis_id=redis_id,
            queue=queue,
            failed_at=score / 1000,
            body=body,
            fields=fields,
            reason=str(reason or "unknown: no job-log record of its failure"),
            attempts=attempts,
            record=record,
        )

    # --- acting ----------------------------------------------------------------------

    def requeue(
        self,
        letters: list[DeadLetter],
        *,
        rate: float = 5.0,
        on_each: Callable[[DeadLetter, str], None] | None = None,
        outcome: Outcome | None = None,
    ) -> Outcome:
        """Move each of ``letters`` back to its queue, at most ``rate`` a second, each in
        one atomic step (``_REQUEUE``). ``on_each(letter, result)`` hears of each:
        "requeued", "already gone", or "failed: <why>". ``outcome``, when given, is
        counted into as it goes (an interrupted caller still knows how far it got)."""
        outcome = outcome or Outcome("requeued", matched=len(letters))
        pacer = Pacer(rate)
        for letter in letters:
            if letter.fields is None:
                self._settle(outcome, letter, "failed: the body is not a message", on_each)
                continue
            pacer.wait()
            xq, xq_bodies = self._dead_letter_keys(letter.queue)
            queue = q_name(letter.queue)
            keys = [
                xq,
                xq_bodies,
                self.keys.queue(queue),
                self.keys.messages(queue),
                self.keys.dead_letters_counted("requeued"),
            ]
            body = requeued_body(letter, self.clock())
            args = [letter.redis_id, _sha1(letter.body), body, queue]
            self._settle(outcome, letter, _result(self._requeue(keys=keys, args=args)), on_each)
        return outcome

    def purge(
        self,
        letters: list[DeadLetter],
        *,
        on_each: Callable[[DeadLetter, str], None] | None = None,
        outcome: Outcome | None = None,
    ) -> Outcome:
        """Delete each of ``letters`` for good, each in one atomic step (``_PURGE``)."""
        outcome = outcome or Outcome("purged", matched=len(letters))
        for letter in letters:
            xq, xq_bodies = self._dead_letter_keys(letter.queue)
            keys = [xq, xq_bodies, self.keys.dead_letters_counted("purged")]
            args = [letter.redis_id, _sha1(letter.body), q_name(letter.queue)]
            result = _result(self._purge(keys=keys, args=args), done="purged")
            self._settle(outcome, letter, result, on_each)
        return outcome

    @staticmethod
    def _settle(outcome: Outcome, letter: DeadLetter, result: str, on_each) -> None:
        if result in ("requeued", "purged"):
            outcome.done += 1
            if len(outcome.ids) < AUDIT_IDS_MAX:
                outcome.ids.append(letter.message_id)
        elif result == "already gone":
            outcome.gone += 1
        else:
            outcome.failed += 1
        if on_each is not None:
            on_each(letter, result)

    # --- audit -----------------------------------------------------------------------

    def audit(
        self,
        action: str,
        *,
        by: str | None,
        selection: Selection,
        outcome: Outcome | None = None,
        status: str = "done",
    ) -> str:
        """Append one entry to the audit stream; its id. ``status`` "started" is written
        before anything moves, so an action killed midway still left a trace."""
        entry = {
            "action": action,
            "status": status,
            "by": by or operator(),
            "at": rfc3339(self.clock()),
            "selection": json.dumps(selection.describe(), sort_keys=True),
        }
        if outcome is not None:
            entry["counts"] = json.dumps(outcome.counts())
            entry["ids"] = json.dumps(outcome.ids)
            entry["ids_truncated"] = str(int(outcome.done > len(outcome.ids)))
        entry_id = self.client.xadd(self.keys.audit, entry, maxlen=AUDIT_MAX, approximate=True)
        return entry_id.decode()

    def audit_trail(self, limit: int = 50) -> list[dict[str, str]]:
        """The latest ``limit`` audit entries (0: all), newest first."""
        key = self.keys.audit
        raw = self.client.xrevrange(key, count=limit or None)
        return [
            {"id": i.decode(), **{k.decode(): v.decode("utf-8", "replace") for k, v in f.items()}}
            for i, f in raw
        ]


def _sha1(body: bytes) -> str:
    return hashlib.sha1(body).hexdigest()  # noqa: S324 - a compare-and-swap check, not security


def _result(code: int, *, done: str = "requeued") -> str:
    return {1: done, 0: "already gone"}.get(code, "failed: changed since it was read")
