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

    Parameters:
      interval: seconds between beats (default 15); keep it below half the broker's
        ``heartbeat_timeout`` (30 s here) so one late beat does not lose the claim.
    """

    def __init__(self, *, interval: float = 15.0) -> None:
        self.interval = interval
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
        while not self._stop.wait(self.interval):
            try:
                self.beat(broker)
            except Exception as exc:  # a Redis outage: the next beat tries again
                log.debug("heartbeat failed: %s", exc)

    @staticmethod
    def beat(broker: RedisBroker) -> None:
        """One heartbeat for this broker, with maintenance of every declared queue."""
        heartbeat(broker)
