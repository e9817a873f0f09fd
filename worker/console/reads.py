"""What the console's pages read from Redis besides the dead letters: the queues and what
each replica holds (Dramatiq's keys), the job log, and the rate limiter's windows.

Every read is a few round trips whatever the fleet's size: pipelines, one ``SCAN`` over
the claimed sets and one over the rate limiter's windows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from urllib.parse import unquote

import redis
from dramatiq.common import q_name

from worker.brokers.redis import is_delay_queue, redis_backlog
from worker.dead_letter_model import rfc3339
from worker.exposition import redis_oldest_ages
from worker.jobs import QUEUES
from worker.ratelimit import Limits
from worker.redis_keys import RedisKeys, parse_rate_limit_window, rate_limit_pattern

#: The job log is capped (1,000 completions, 5,000 dead letters by default): one read.
JOB_LOG_READ_MAX = 10_000
#: Keys a ``SCAN`` asks for at a time.
SCAN_COUNT = 1_000


@dataclass
class QueueRow:
    name: str
    ready: int
    delayed: int
    dead: int
    oldest_ready_age: float
    in_flight: int = 0
    completed_last_hour: int = 0
    dead_last_hour: int = 0


@dataclass
class ReplicaRow:
    broker_id: str
    last_heartbeat: str | None
    heartbeat_age: float | None
    #: queue -> messages it holds (fetched, not yet acknowledged)
    in_flight: dict[str, int] = field(default_factory=dict)


@dataclass
class HeldBack:
    org: str
    window: str
    used: int
    limit: int | None
    #: seconds until the window has room (0: it has room now)
    wait: float


@dataclass
class Overview:
    queues: list[QueueRow]
    replicas: list[ReplicaRow]
    held_back: list[HeldBack]
    read_at: str


def overview(
    client: redis.Redis, namespace: str, limits: Limits, overrides: dict[str, Limits]
) -> Overview:
    keys, now = RedisKeys(namespace), time.time()
    counts = redis_backlog(client, namespace, QUEUES)()
    ages = redis_oldest_ages(client, namespace, QUEUES)()
    rows = {
        q: QueueRow(q, int(c[0]), int(c[1]), int(c[2]), round(ages.get(q, 0.0), 1))
        for q, c in counts.items()
    }
    replicas = _replicas(client, keys, now)
    for replica in replicas.values():
        for queue, n in replica.in_flight.items():
            if queue in rows:
                rows[queue].in_flight += n
    since_ms = int((now - 3600) * 1000)
    for stream, attr in (
        (keys.completed, "completed_last_hour"),
        (keys.dead_letter_reasons, "dead_last_hour"),
    ):
        for _, fields in client.xrange(stream, min=since_ms, count=JOB_LOG_READ_MAX):
            queue = q_name(fields.get(b"queue", b"").decode("utf-8", "replace"))
            if queue in rows:
                setattr(rows[queue], attr, getattr(rows[queue], attr) + 1)
    return Overview(
        queues=list(rows.values()),
        replicas=sorted(replicas.values(), key=lambda r: r.broker_id),
        held_back=held_back(client, keys, limits, overrides),
        read_at=rfc3339(now),
    )


def _replicas(client: redis.Redis, keys: RedisKeys, now: float) -> dict[str, ReplicaRow]:
    """Each broker (one per worker process) with its last heartbeat and its claimed sets."""
    replicas = {
        broker.decode(): ReplicaRow(
            broker.decode(), rfc3339(score / 1000), round(max(now - score / 1000, 0.0), 1)
        )
        for broker, score in client.zrange(keys.heartbeats, 0, -1, withscores=True)
    }
    claimed = list(client.scan_iter(match=keys.claimed_pattern, count=SCAN_COUNT))
    with client.pipeline(transaction=False) as pipe:
        for key in claimed:
            pipe.scard(key)
        sizes = pipe.execute()
    for key, size in zip(claimed, sizes, strict=True):
        broker, queue = keys.parse_claimed(key)
        queue = q_name(queue) if is_delay_queue(queue) else queue
        row = replicas.setdefault(broker, ReplicaRow(broker, None, None))
        if size:
            row.in_flight[queue] = row.in_flight.get(queue, 0) + size
    return replicas


def held_back(
    client: redis.Redis,
    keys: RedisKeys,
    limits: Limits,
    overrides: dict[str, Limits],
    top: int = 10,
) -> list[HeldBack]:
    """The organizations the rate limiter holds back now, longest wait first, then the
    fullest windows. It reads what the limiter stores per window (``n`` admissions
    counted, ``free``: when a full window next has room, in the server's microseconds)."""
    prefix = keys.rate_limit_prefix
    found = []
    for key in client.scan_iter(match=rate_limit_pattern(prefix), count=SCAN_COUNT):
        parsed = parse_rate_limit_window(prefix, key)
        if parsed is not None:
            found.append((key, parsed))
    if not found:
        return []
    seconds, micros = client.time()
    now_us = int(seconds) * 1_000_000 + int(micros)
    with client.pipeline(transaction=False) as pipe:
        for key, _ in found:
            pipe.hmget(key, "n", "free")
        states = pipe.execute()
    rows = []
    for (_, (tag, window, _seconds)), (used, free) in zip(found, states, strict=True):
        org = unquote(tag)
        limit = overrides.get(org, limits).get(window, (None, None))[0]
        used_n = int(used or 0)
        wait = max(int(free) - now_us, 0) / 1_000_000 if free else 0.0
        if limit is not None and used_n < limit:
            wait = 0.0  # the cached time is stale once the window has room again
        rows.append(HeldBack(org, window, used_n, limit, round(wait, 1)))
    rows.sort(key=lambda r: (-r.wait, -(r.used / r.limit if r.limit else 0), r.org))
    return rows[:top]


@dataclass
class Completed:
    entry_id: str
    at: str
    message_id: str
    queue: str
    actor: str
    org: str
    result: str


def completed(
    client: redis.Redis, namespace: str, *, text: str = "", actor: str = "", org: str = ""
) -> list[Completed]:
    """The job log's completions, newest first; ``text`` is a message id or job id (or text
    of the result), ``actor`` and ``org`` match exactly (``org`` also quoted in the
    result, for records written before the job log named organizations)."""
    rows = []
    for entry_id, raw in client.xrevrange(RedisKeys(namespace).completed, count=JOB_LOG_READ_MAX):
        f = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        row = Completed(
            entry_id=entry_id.decode(),
            at=rfc3339(int(entry_id.split(b"-")[0]) / 1000),
            message_id=f.get("message_id", ""),
            queue=f.get("queue", ""),
            actor=f.get("job_type", ""),
            org=f.get("org_id", ""),
            result=f.get("result", ""),
        )
        if text and text not in (row.message_id, f.get("job_id", "")) and text not in row.result:
            continue
        if actor and row.actor != actor:
            continue
        if org and row.org != org and f'"{org}"' not in row.result:
            continue
        rows.append(row)
    return rows
