"""Redis health: a probe per replica, and paced, counted reconnects of the broker.

Two places reconnect to Redis, and both count into
``worker_redis_reconnect_attempts_total``:

- the replica's health probe (``RedisWatch`` with an interval, run by the exposition
  process, one per replica) pings every ``REDIS_HEALTH_INTERVAL_SECONDS`` and sets
  ``worker_redis_connection_status`` to 1 or 0;
- the broker connection of each worker process (``RedisHealth`` middleware): when a
  consumer of the Redis broker loses its connection, mid-job or while fetching, one
  ``RedisWatch`` per process takes over the reconnecting for all its consumer threads.

A reconnect attempt is one ping on a fresh connection after a failure. Attempts back off
from ``first_backoff`` doubling up to ``max_backoff`` (the probe interval), so an outage
costs each process at most one attempt per interval and never a busy loop. Each process
logs once when it loses Redis and once when it has it back, whatever happens in between.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from worker import metrics
from worker.brokers.redis import is_consumer_restart_line
from worker.middleware.base import WorkerMiddleware
from worker.redis_client import probe_client

if TYPE_CHECKING:
    from worker.config import Settings

log = logging.getLogger(__name__)


class RedisWatch:
    """Knows whether Redis answers, and reconnects with capped exponential backoff.

    Parameters:
      ping: one round trip to Redis; raises on failure.
      interval: seconds between pings while connected; None to ping only after a failure
        is reported with ``connection_lost`` (the worker processes' broker connections).
      first_backoff, max_backoff: the first delay before a reconnect attempt, doubled
        after each failed attempt up to ``max_backoff`` (default: ``interval``, or 5 s).
      on_status: called with True/False on each probe result (the exposition process
        sets ``worker_redis_connection_status`` from it).
      name: how the log lines name this connection.
    """

    def __init__(
        self,
        ping: Callable[[], object],
        *,
        interval: float | None,
        first_backoff: float = 0.5,
        max_backoff: float | None = None,
        on_status: Callable[[bool], None] | None = None,
        name: str = "Redis",
    ) -> None:
        self.ping = ping
        self.interval = interval
        self.max_backoff = max_backoff or interval or 5.0
        self.first_backoff = min(first_backoff, self.max_backoff)
        self.on_status = on_status
        self.name = name
        self._connected = threading.Event()
        self._connected.set()  # until a probe or a consumer says otherwise
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._lost_at = time.monotonic()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> RedisWatch:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="redis-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def connection_lost(self, error: BaseException) -> None:
        """A user of the connection failed: reconnect (once, for all who report it)."""
        if self._mark_lost(error):
            self._wake.set()

    def wait_connected(self, timeout: float) -> bool:
        """Whether Redis answers, waiting up to ``timeout`` s for it; returns at once when
        the watch stops (a worker shutting down must not wait out an outage)."""
        deadline = time.monotonic() + timeout
        while not self._connected.is_set() and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._connected.wait(min(remaining, 0.1))
        return self._connected.is_set()

    # --- the loop -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self.interval is not None and self._connected.is_set():
                self._probe()
            if not self._connected.is_set():
                self._reconnect()
            if self._stop.is_set():
                return
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return

    def _probe(self) -> None:
        try:
            self.ping()
        except Exception as error:  # any failure to get an answer is an outage
            self._mark_lost(error)
        else:
            self._status(True)

    def _mark_lost(self, error: BaseException) -> bool:
        """Flip to disconnected; only the caller that flips it logs (once per outage)."""
        with self._lock:
            if not self._connected.is_set():
                return False
            self._connected.clear()
            self._lost_at = time.monotonic()
        self._status(False)
        log.warning(
            "%s unreachable (%s: %s); reconnecting with backoff up to %.3gs",
            self.name,
            type(error).__name__,
            error,
            self.max_backoff,
        )
        return True

    def _reconnect(self) -> None:
        delay, attempts = self.first_backoff, 0
        while not self._stop.wait(delay):
            attempts += 1
            metrics.redis_reconnect_attempts.inc()
            try:
                self.ping()
            except Exception:
                delay = min(delay * 2, self.max_backoff)
                continue
            self._status(True)
            self._connected.set()
            log.info(
                "%s reachable again after %d reconnect attempt(s), %.1fs",
                self.name,
                attempts,
                time.monotonic() - self._lost_at,
            )
            return

    def _status(self, up: bool) -> None:
        if self.on_status is not None:
            self.on_status(up)


class RedisHealth(WorkerMiddleware):
    """Paces and counts the reconnects of this worker process's Redis broker connection.

    The Redis broker's consumers report each lost connection here
    (``after_connection_error``), and each consumer restart waits here
    (``before_consume``) until a ``RedisWatch`` has Redis answering again, at most
    ``max_backoff`` seconds per restart so that a stopping worker is never held up.
    Without it, every consumer thread (two per queue) reconnects on its own every 3 s
    and logs each failure.

    Parameters:
      target: the broker's Redis: the worker's settings (``REDIS_URL`` or the Sentinels'
        master), or the URL of another Redis (``BROKER_URL``).
      max_backoff: the longest pause between reconnect attempts, in seconds (default 5,
        the probe interval ``REDIS_HEALTH_INTERVAL_SECONDS``).
    """

    def __init__(self, *, target: Settings | str, max_backoff: float = 5.0) -> None:
        self.target = target
        self.max_backoff = max_backoff
        self.watch: RedisWatch | None = None
        self._quiet = _QuietDuringOutage(self)

    def after_worker_boot(self, broker, worker) -> None:
        client = probe_client(self.target)
        self.watch = RedisWatch(
            client.ping, interval=None, max_backoff=self.max_backoff, name="Redis (broker)"
        ).start()

    def after_consumer_thread_boot(self, broker, thread) -> None:
        thread.logger.addFilter(self._quiet)

    def before_worker_shutdown(self, broker, worker) -> None:
        if self.watch is not None:
            self.watch.stop()

    def after_connection_error(self, broker, queue_name: str, error: BaseException) -> None:
        if self.watch is not None:
            self.watch.connection_lost(error)

    def before_consume(self, broker, queue_name: str) -> None:
        if self.watch is not None and not self.watch.connected:
            self.watch.wait_connected(self.max_backoff)


class _QuietDuringOutage(logging.Filter):
    """Drops Dramatiq's consumer-restart lines while this process knows that Redis is down
    (and has said so once): they would repeat every few seconds per consumer thread."""

    def __init__(self, health: RedisHealth) -> None:
        super().__init__()
        self.health = health

    def filter(self, record: logging.LogRecord) -> bool:
        watch = self.health.watch
        if watch is None or watch.connected:
            return True
        return not is_consumer_restart_line(record)
