"""Job metrics: attempts started, completed, failed, retried, dead-lettered, in flight, timed."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from worker import metrics
from worker.metrics import UNKNOWN


class JobMetrics(Middleware):
    """Counts every job attempt of this process into the ``worker_jobs*`` metrics.

    - started, processing: in ``before_process_message``, so the place in the middleware
      list matters once: put it after the middleware that may skip a message before it
      runs (``AgeLimit``, the rate limiter's deferral), so a skipped message is not an
      attempt, and before ``TimeLimit``, so a time-limit interrupt cannot land inside
      this middleware's own ``after_*`` hook (Dramatiq calls those in reverse order).
    - completed, failed, duration: in ``after_process_message``, which Dramatiq calls
      for every attempt, also one that raised ``BaseException`` (``SystemExit``, a
      ``TimeLimit`` interrupt).
    - retried, dead-lettered: when the broker settles the message. A failed attempt that
      is acked was re-enqueued by the retry middleware; every nack is a dead letter (the
      retry policy's, an unknown actor's, an expired message's), and so is an undecodable
      message (``after_undecodable_message``, job_type ``unknown``). Settlement comes
      after every ``after_process_message`` hook, so this needs no ordering with the
      retry middleware.

    ``worker_jobs_processing`` is not incremented and decremented blindly: this process's
    attempts in flight are kept by message id, and the gauge is set to their count. A
    hook that runs twice for one attempt, or an ``after_skip_message`` for a message
    whose ``before_process_message`` never reached this middleware, cannot push it away
    from the truth; it returns to exactly 0 when nothing runs.

    Label values are the queue's canonical name (``default``, not ``default.DQ``) and the
    actor name, each only if the broker declares it, else ``unknown``: a message's body
    is outside the worker's control, its labels are not.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: message id -> (labels, start time) of the attempts running in this process.
        self._running: dict[str, tuple[tuple[str, str], float]] = {}
        self._running_per_labels: Counter[tuple[str, str]] = Counter()
        #: message ids whose last attempt raised and that are not settled yet.
        self._raised: Counter[str] = Counter()

    # --- labels -------------------------------------------------------------------------

    @staticmethod
    def labels_of(broker, queue_name: str, actor_name: str | None) -> tuple[str, str]:
        queue = q_name(queue_name)
        if queue not in broker.get_declared_queues():
            queue = UNKNOWN
        job_type = actor_name if actor_name in broker.actors else UNKNOWN
        return queue, job_type

    def after_declare_actor(self, broker, actor) -> None:
        """Export every known series from the start, at 0, so rates and ratios over them
        exist before the first job of a kind (an absent series reads as no data)."""
        labels = (q_name(actor.queue_name), actor.actor_name)
        for metric in (
            metrics.jobs_started,
            metrics.jobs_completed,
            metrics.jobs_failed,
            metrics.jobs_retried,
            metrics.jobs_dead_lettered,
            metrics.job_duration,
            metrics.jobs_processing,
        ):
            metric.labels(*labels)

    # --- one attempt ----------------------------------------------------------------------

    def before_process_message(self, broker, message) -> None:
        labels = self.labels_of(broker, message.queue_name, message.actor_name)
        metrics.jobs_started.labels(*labels).inc()
        with self._lock:
            previous = self._running.get(message.message_id)
            self._running[message.message_id] = (labels, time.perf_counter())
            if previous is None:
                self._running_per_labels[labels] += 1
            self._publish(labels)

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        entry = self._finish(message)
        if entry is None:
            return
        labels, started = entry
        metrics.job_duration.labels(*labels).observe(time.perf_counter() - started)
        if exception is None:
            metrics.jobs_completed.labels(*labels).inc()
        else:
            metrics.jobs_failed.labels(*labels).inc()
            with self._lock:
                self._raised[message.message_id] += 1

    def after_skip_message(self, broker, message) -> None:
        self._finish(message)

    def _finish(self, message) -> tuple[tuple[str, str], float] | None:
        with self._lock:
            entry = self._running.pop(message.message_id, None)
            if entry is not None:
                self._running_per_labels[entry[0]] -= 1
                self._publish(entry[0])
            return entry

    def _publish(self, labels: tuple[str, str]) -> None:
        count = self._running_per_labels[labels]
        if count <= 0:
            self._running_per_labels.pop(labels, None)
        metrics.jobs_processing.labels(*labels).set(max(count, 0))

    # --- settlement -----------------------------------------------------------------------

    def _settled_after_failure(self, message) -> bool:
        with self._lock:
            if self._raised[message.message_id] <= 0:
                self._raised.pop(message.message_id, None)
                return False
            self._raised[message.message_id] -= 1
            if self._raised[message.message_id] <= 0:
                del self._raised[message.message_id]
            return True

    def after_ack(self, broker, message) -> None:
        if self._settled_after_failure(message):
            labels = self.labels_of(broker, message.queue_name, message.actor_name)
            metrics.jobs_retried.labels(*labels).inc()

    def after_nack(self, broker, message) -> None:
        self._settled_after_failure(message)
        labels = self.labels_of(broker, message.queue_name, message.actor_name)
        metrics.jobs_dead_lettered.labels(*labels).inc()

    def after_undecodable_message(self, broker, queue: str, message_id: str, reason: str):
        labels = self.labels_of(broker, queue, None)
        metrics.jobs_dead_lettered.labels(*labels).inc()

    # --- process lifecycle ------------------------------------------------------------

    def after_worker_shutdown(self, broker, worker) -> None:
        """Take this process's live gauges out of the replica's sums as it exits."""
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if path:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), path)
