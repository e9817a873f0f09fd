"""Workers and the job log as the tests see them: settings without an env file, a real
Dramatiq worker in the test's own process, and what the job log recorded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dramatiq
import redis

from worker.config import Settings
from worker.redis_keys import DEFAULT_NAMESPACE, RedisKeys


def settings_for(redis_url: str, **overrides) -> Settings:
    """Settings as the environment would give them, with ``overrides`` by field name."""
    return Settings(_env_file=None, REDIS_URL=redis_url, **overrides)


@contextlib.contextmanager
def in_process_worker(broker: dramatiq.Broker, threads: int = 4) -> Iterator[dramatiq.Worker]:
    """A real Dramatiq worker in this process, polling every 50 ms for precise timing."""
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=threads)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=10_000)


def completed_ids(client: redis.Redis, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Message ids of every completed job recorded in the job log, duplicates included."""
    return [f[b"message_id"].decode() for _, f in client.xrange(RedisKeys(namespace).completed)]


def dead_letters(client: redis.Redis, namespace: str = DEFAULT_NAMESPACE) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in f.items()}
        for _, f in client.xrange(RedisKeys(namespace).dead_letter_reasons)
    ]
