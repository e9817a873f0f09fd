"""Dead letters written straight into Redis, as the worker leaves them, for tests and the
benchmark: thousands in a second instead of thousands of failing jobs.

Each is what Dramatiq's ``nack`` and the job log leave behind: the body in
``<queue>.XQ.msgs`` under its Redis id, the id in ``<queue>.XQ`` scored by its failure time
(ms), and the job log's record (``<ns>:dead``) with its reason and attempts.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis
from dramatiq import Message

from worker.jobs import JOB_CLASSES
from worker.redis_keys import RedisKeys


@dataclass(frozen=True)
class Seed:
    """One dead letter to write; ``age`` in seconds before now."""

    queue: str = "default"
    actor: str = "agent.run"
    org_id: str = "org-1"
    reason: str = "5 of 5 attempts failed, last: TransientError: HTTP 500"
    age: float = 60.0
    attempts: int = 5
    prompt: str = "summarize the thread"


def body_of(seed: Seed, message_id: str, redis_id: str, now: float) -> bytes:
    message = Message(
        queue_name=seed.queue,
        actor_name=seed.actor,
        args=(),
        kwargs={"job_id": f"job-{message_id[:8]}", "org_id": seed.org_id, "prompt": seed.prompt},
        options={"redis_message_id": redis_id, "retries": seed.attempts - 1},
        message_id=message_id,
        message_timestamp=int((now - seed.age - 30) * 1000),
    )
    return message.encode()


def seed_dead_letters(
    client: redis.Redis, namespace: str, seeds: list[Seed], *, now: float | None = None
) -> list[str]:
    """Write ``seeds`` as dead letters; their message ids, in order."""
    now = time.time() if now is None else now
    ids, keys = [], RedisKeys(namespace)
    with client.pipeline(transaction=False) as pipe:
        for seed in seeds:
            message_id, redis_id = str(uuid.uuid4()), str(uuid.uuid4())
            xq, xq_bodies = keys.dead_letters(seed.queue), keys.dead_letter_messages(seed.queue)
            pipe.zadd(xq, {redis_id: int((now - seed.age) * 1000)})
            pipe.hset(xq_bodies, redis_id, body_of(seed, message_id, redis_id, now))
            record = {
                "message_id": message_id,
                "queue": seed.queue,
                "job_type": seed.actor,
                "reason": seed.reason,
                "attempts": str(seed.attempts),
            }
            pipe.xadd(keys.dead_letter_reasons, record)
            ids.append(message_id)
        pipe.execute()
    return ids


def varied_seeds(n: int, *, span: float = 6 * 86_400) -> list[Seed]:
    """``n`` dead letters over the queues, actors, organizations and reasons of a fleet,
    failed over the last ``span`` seconds."""
    actors = {
        "default": ["agent.run"],
        "critical": ["crm.sync", "message.send"],
        "fast": ["job.status_update"],
    }
    reasons = [
        "5 of 5 attempts failed, last: TransientError: HTTP 500",
        "permanent error: HTTP 401 from the LLM API",
        "invalid message: options.retries must be an integer >= 0",
        "expired: older than its max_age",
    ]
    queues = [c.queue for c in JOB_CLASSES.values()]
    seeds = []
    for i in range(n):
        queue = queues[i % len(queues)]
        seeds.append(
            Seed(
                queue=queue,
                actor=actors[queue][i % len(actors[queue])],
                org_id=f"org-{i % 7}",
                reason=reasons[i % len(reasons)],
                age=span * (i + 1) / (n + 1),
            )
        )
    return seeds
