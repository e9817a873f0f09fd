"""Job metrics: attempts started, completed, failed, retried, dead-lettered, in flight, timed,
and how long each waited in its queue."""

from __future__ import annotations

import math
import os
import threading
import time

from dramatiq.common import q_name

from worker import metrics
from worker.metrics import UNKNOWN
from worker.middleware.base import WorkerMiddleware

#: Option a delayed message carries once its eta is known (milliseconds since the epoch):
#: Dramatiq deletes ``eta`` when it moves the message to its queue, and keeps
#: ``message_timestamp`` (the first enqueue) through every retry and deferral.
READY_AT = "ready_at"


def runnable_since(options: dict, message_timestamp: object) -> float | None:
    """When a message became runnable, in seconds since the epoch: the eta of its last
    delay (a retry's backoff, a rate-limit deferral, a ``delay=`` of its sender), else the
    time it was enqueued; None when the body says neither as a number (a body is outside
    the worker's control: a bad one must not fail the job)."""
    for millis in (options.get(READY_AT), message_timestamp):
        if isinstance(millis, int | float) and not isinstance(millis, bool):
            if math.isfinite(millis):
                return millis / 1000
    return None


class JobMetrics(WorkerMiddleware):
    """Counts every job attempt of this process into the ``worker_jobs*`` metrics.

    - started, processing: in ``before_process_message``, so the place in the middleware
      list matters once: put it after the middleware that may skip a message before it
      runs (``AgeLimit``, the rate limiter's deferral), so a skipped message is not an
      attempt, and before ``TimeLimit``, so a time-limit interrupt cannot land inside
      this middleware's own ``after_*`` hook (Dramatiq calls those in reverse order).
    - completed, failed, duration: in ``after_process_message``, which Dramatiq calls
      for every attempt, also one that raised ``BaseException`` (``SystemExit``, a
      ``TimeLimit`` interrupt).
    - retried, dead-lettered: when the broker settles the message, which the worker
      thread does right after the attempt, once every ``after_process_message`` hook has
      run (so no ordering with the retry middleware is needed). A failed attempt that is
      acked was re-enqueued by the retry middleware; every nack is a dead letter (the
      retry policy's, an unknown actor's, an expired message's), and so is an
      undecodable message (``after_undecodable_message``, job_type ``unknown``).

    - queue wait, in ``before_process_message``: from ``runnable_since`` to now. A
      delayed message gets its eta stamped as ``options["ready_at"]`` when a worker's
      delay consumer receives it (``before_delay_message``, whoever sent it), so the
      copy Dramatiq enqueues once the eta passes still knows when it became runnable.

    An attempt runs start to end in one worker thread, so its state is thread-local:
    no lock on the hot path, and the processing gauge is decremented only for an attempt
    this middleware saw start, once. A hook that runs twice, or an ``after_skip_message``
    for a message whose ``before_process_message`` never reached this middleware, cannot
    push it away from the truth; it returns to exactly 0 when nothing runs.

    Label values are the queue's canonical name (``default``, not ``default.DQ``) and the
    actor name, each only if the broker declares it, else ``unknown``: a message's body
    is outside the worker's control, its labels are not.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        #: (queue name, actor name) of declared actors -> their metric children.
        self._children: dict[tuple[str, str], _Children] = {}

    # --- labels -------------------------------------------------------------------------

    @staticmethod
    def labels_of(broker, queue_name: str, actor_name: str | None) -> tuple[str, str]:
        queue = q_name(queue_name)
        if queue not in broker.get_declared_queues():
            queue = UNKNOWN
        job_type = actor_name if actor_name in broker.actors else UNKNOWN
        return queue, job_type

    def children(self, broker, queue_name: str, actor_name: str | None) -> _Children:
        found = self._children.get((queue_name, actor_name))
        if found is None:
            labels = self.labels_of(broker, queue_name, actor_name)
            found = _Children(labels)
            if UNKNOWN not in labels:  # only declared names are kept: a bounded set
                self._children[(queue_name, actor_name)] = found
        return found

    def after_declare_actor(self, broker, actor) -> None:
        """Export every known series from the start, at 0, so rates and ratios over them
        exist before the first job of a kind (an absent series reads as no data)."""
        self.children(broker, actor.queue_name, actor.actor_name)

    # --- one attempt ----------------------------------------------------------------------

    def before_process_message(self, broker, message) -> None:
        local = self._local
        stale = getattr(local, "attempt", None)
        if stale is not None:  # an attempt of this thread whose end never reached us
            stale[0].processing.dec()
        local.raised = None
        metric = self.children(broker, message.queue_name, message.actor_name)
        metric.started.inc()
        metric.processing.inc()
        self.observe_wait(metric, message)
        local.attempt = (metric, time.perf_counter(), message.message_id)

    @staticmethod
    def observe_wait(metric: _Children, message) -> None:
        since = runnable_since(message.options, message.message_timestamp)
        if since is not None:  # another host's clock may run ahead: at least 0
            metric.queue_wait.observe(max(time.time() - since, 0.0))

    def before_delay_message(self, broker, message) -> None:
        message.options[READY_AT] = message.options["eta"]

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        attempt = self._end_attempt(message)
        if attempt is None:
            return
        metric, started, _ = attempt
        metric.duration.observe(time.perf_counter() - started)
        if exception is None:
            metric.completed.inc()
        else:
            metric.failed.inc()
            self._local.raised = message.message_id

    def after_skip_message(self, broker, message) -> None:
        self._end_attempt(message)

    def _end_attempt(self, message):
        local = self._local
        attempt = getattr(local, "attempt", None)
        if attempt is None or attempt[2] != message.message_id:
            return None
        local.attempt = None
        attempt[0].processing.dec()
        return attempt

    # --- settlement -----------------------------------------------------------------------

    def after_ack(self, broker, message) -> None:
        if getattr(self._local, "raised", None) == message.message_id:
            self._local.raised = None
            self.children(broker, message.queue_name, message.actor_name).retried.inc()

    def after_nack(self, broker, message) -> None:
        self._local.raised = None
        self.children(broker, message.queue_name, message.actor_name).dead_lettered.inc()

    def after_undecodable_message(self, broker, queue: str, message_id: str, reason: str):
        self.children(broker, queue, None).dead_lettered.inc()

    # --- process lifecycle ------------------------------------------------------------

    def after_worker_shutdown(self, broker, worker) -> None:
        """Take this process's live gauges out of the replica's sums as it exits."""
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if path:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), path)


class _Children:
    """The metric children of one (queue, job_type): looked up once, not per job."""

    __slots__ = (
        "started",
        "completed",
        "failed",
        "retried",
        "dead_lettered",
        "processing",
        "duration",
        "queue_wait",
    )

    def __init__(self, labels: tuple[str, str]) -> None:
        self.started = metrics.jobs_started.labels(*labels)
        self.completed = metrics.jobs_completed.labels(*labels)
        self.failed = metrics.jobs_failed.labels(*labels)
        self.retried = metrics.jobs_retried.labels(*labels)
        self.dead_lettered = metrics.jobs_dead_lettered.labels(*labels)
        self.processing = metrics.jobs_processing.labels(*labels)
        self.duration = metrics.job_duration.labels(*labels)
        self.queue_wait = metrics.job_queue_wait.labels(*labels)
