"""Keeps a Redis broker's claim on the jobs it runs, however long they take."""

from __future__ import annotations

import logging
import threading

from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

from worker.brokers.redis import heartbeat

log = logging.getLogger(__name__)


class BrokerHeartbeat(Middleware):
    """Beats every ``interval`` seconds so a live worker's jobs are never redelivered.

    Dramatiq's Redis broker records a heartbeat only when it fetches, and a busy worker
    stops fetching; after ``heartbeat_timeout`` another worker would hand its running jobs
    to someone else. This beats on a timer instead, and on each beat runs the broker's
    queue maintenance, which hands the jobs of workers that really stopped beating back to
    their queues: a job whose worker died is redelivered between ``heartbeat_timeout`` and
    ``heartbeat_timeout + interval`` later, instead of whenever the broker's random
    maintenance happens to run.

    Dramatiq takes a broker for dead once its last beat is ``heartbeat_timeout`` old. The
    worker beats at half of it (15 s of 30 s, ``worker.app``): a beat may come up to half
    the timeout late and the claim holds. A beat that fails (Redis unreachable) is tried
    again every ``retry`` seconds rather than an interval later, so that a short outage
    at the time of one beat does not leave the claim a whole timeout without a beat.

    Parameters:
      interval: seconds between beats (default 15); at most half the broker's
        ``heartbeat_timeout``.
      retry: seconds between tries after a failed beat (default 1).
    """

    def __init__(self, *, interval: float = 15.0, retry: float = 1.0) -> None:
        self.interval, self.retry = interval, min(retry, interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker) -> None:
        if not isinstance(broker, RedisBroker):
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(broker,), name="broker-heartbeat", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker, worker) -> None:
        self._stop.set()

    def _run(self, broker: RedisBroker) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                self.beat(broker)
                wait = self.interval
            except Exception as exc:  # a Redis outage: try again soon, the claim is at stake
                log.debug("heartbeat failed: %s", exc)
                wait = self.retry

    @staticmethod
    def beat(broker: RedisBroker) -> None:
        """One heartbeat for this broker, with maintenance of every declared queue."""
        heartbeat(broker)
