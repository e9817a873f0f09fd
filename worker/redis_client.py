"""Every Redis client of the worker comes from here: ``REDIS_URL``, or the master that
Redis Sentinel names (``REDIS_SENTINELS`` with ``REDIS_SENTINEL_MASTER``).

A Sentinel client asks the sentinels for the master's address each time it opens a
connection, so once a replica is promoted the next connection goes to it; a connection
still open to a demoted master fails (READONLY, or UNBLOCKED for a blocked command) and
is dropped (redis-py's ``SentinelManagedConnection``). Until the sentinels agree on a new
master, commands fail with ``ConnectionError`` (``MasterNotFoundError`` is one) exactly
as when a single Redis is down, so the same reconnect paths (``RedisHealth``, the
consumers' restarts, the job log's waits) carry the worker across a failover.

Lua scripts are sent by SHA: a promoted replica does not hold the master's script cache,
so every caller loads a script again on NOSCRIPT (dramatiq's and ``register_script``
Script objects do; ``worker.ratelimit`` and ``worker.brokers.redis`` do it by hand).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from worker.config import Settings

#: Options of every long-lived client (the caller's options override them).
DEFAULTS: dict[str, Any] = {
    "health_check_interval": 15,
    "socket_keepalive": True,
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
}


def redis_client(target: Settings | str, **options: Any) -> redis.Redis:
    """A client of the worker's Redis (``target`` the settings: the Sentinel-named
    master, or ``REDIS_URL``), or of the Redis at a URL (``BROKER_URL``'s other Redis)."""
    options = {**DEFAULTS, **options}
    if isinstance(target, str):
        return redis.Redis.from_url(target, **options)
    if not target.redis_sentinels:
        return redis.Redis.from_url(target.redis_url, **options)
    password = target.redis_password
    sentinel_password = target.redis_sentinel_password
    sentinels = Sentinel(
        target.redis_sentinels,
        sentinel_kwargs={
            "socket_connect_timeout": min(options["socket_connect_timeout"] or 5, 5),
            "socket_timeout": min(options["socket_timeout"] or 5, 5),
            "password": sentinel_password.get_secret_value() if sentinel_password else None,
        },
    )
    return sentinels.master_for(
        target.redis_sentinel_master,
        password=password.get_secret_value() if password else None,
        **options,
    )


def probe_client(target: Settings | str, timeout: float = 2.0) -> redis.Redis:
    """A client that tries once per command: each ping is one attempt, never a hidden
    burst of redis-py retries."""
    return redis_client(
        target,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


# --- settings ---------------------------------------------------------------------------------


def parse_sentinels(value: Any) -> tuple[tuple[str, int], ...] | None:
    """``REDIS_SENTINELS``: ``host:port`` pairs, comma-separated (``[v6]:port`` too)."""
    if not isinstance(value, str):
        return value or None
    found = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        host, colon, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port pairs, comma-separated, ports 1 to 65535")
        found.append((host, int(port)))
    return tuple(found) or None


def sentinel_problem(settings: Settings) -> str | None:
    """What is wrong in how the settings name the worker's Redis, as ``VARIABLE: why``."""
    if not settings.redis_sentinels:
        if settings.redis_url is None:
            return "REDIS_URL: required, not set (or REDIS_SENTINELS with REDIS_SENTINEL_MASTER)"
        if settings.redis_sentinel_master is not None:
            return "REDIS_SENTINEL_MASTER: only with REDIS_SENTINELS, which is not set"
        return None
    if settings.redis_url is not None:
        return "REDIS_SENTINELS: not with REDIS_URL; set one or the other"
    if not (settings.redis_sentinel_master or "").strip():
        return "REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS, and not empty"
    return None
