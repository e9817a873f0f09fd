"""Per-class retries with exponential backoff; permanent errors dead-letter at once."""

from __future__ import annotations

import logging
import random
import time

import dramatiq
import redis
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Middleware

from worker.backoff import capped_backoff
from worker.errors import PermanentError, TransientError
from worker.jobs import job_class_of
from worker.logs import brief, cut, escape

log = logging.getLogger(__name__)


class ClassRetries(Middleware):
    """Replaces Dramatiq's ``Retries``: attempts and delays come from the actor's job class.

    The delay before retry *k* is ``2 s * 2**(k-1)``, capped at ``max_delay`` seconds, then
    multiplied by a random factor in ``[1 - jitter, 1 + jitter]`` so that jobs failing
    together do not retry together. ``jitter`` is at most 0.5, which keeps every delay
    within [0.5x, 1.5x] of its nominal value. A ``TransientError`` with ``retry_after``
    (an HTTP ``Retry-After``) sets the next delay instead, still capped at ``max_delay``.

    A job that raises ``PermanentError``, or that has used all its attempts, is failed
    (dead-lettered) with ``message.options["dead_letter_reason"]`` saying why.

    When the broker cannot take the retry (Redis down), the worker thread keeps the
    message, unacked, and tries again with capped backoff until it can: the job is never
    acknowledged without its retry scheduled, and if the process dies meanwhile the
    broker redelivers it.

    Parameters:
      max_delay: the longest delay in seconds (default 300).
      jitter: half-width of the random factor, 0 to 0.5 (default 0.2).
      time_scale: multiplies every delay; tests and benchmarks shrink time with it
        (default 1).
      max_hold_seconds: cap of the backoff between attempts to schedule a retry while the
        broker is unreachable (default 10).
    """

    def __init__(
        self,
        *,
        max_delay: float = 300.0,
        jitter: float = 0.2,
        time_scale: float = 1.0,
        max_hold_seconds: float = 10.0,
    ) -> None:
        if not 0 <= jitter <= 0.5:
            raise ValueError("jitter must be within [0, 0.5]")
        self.max_delay = max_delay
        self.jitter = jitter
        self.time_scale = time_scale
        self.max_hold_seconds = max_hold_seconds

    @property
    def actor_options(self) -> set[str]:
        return {"job_class"}

    def delay_for(self, actor: dramatiq.Actor, retry: int, exception: BaseException) -> float:
        retry_after = getattr(exception, "retry_after", None)
        if isinstance(exception, TransientError) and retry_after is not None:
            return min(self.max_delay, retry_after) * self.time_scale
        nominal = job_class_of(actor).nominal_delay(retry, self.max_delay)
        return nominal * random.uniform(1 - self.jitter, 1 + self.jitter) * self.time_scale

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            return
        actor = broker.get_actor(message.actor_name)
        attempts = message.options.get("retries", 0) + 1
        max_attempts = job_class_of(actor).max_attempts
        if isinstance(exception, PermanentError):
            return self.dead_letter(message, f"permanent error: {cut(escape(str(exception)), 500)}")
        if attempts >= max_attempts:
            return self.dead_letter(
                message, f"{attempts} of {max_attempts} attempts failed, last: {brief(exception)}"
            )
        delay = self.delay_for(actor, attempts, exception)
        message.options["retries"] = attempts
        log.info(
            "job %s (%s) attempt %d of %d failed; retry in %.1fs",
            message.message_id,
            message.actor_name,
            attempts,
            max_attempts,
            delay,
        )
        for hold in capped_backoff(cap=self.max_hold_seconds):
            try:
                broker.enqueue(message, delay=int(delay * 1000))
                return
            except (redis.RedisError, BrokerConnectionError) as exc:
                # Giving up here would let the message be acked with no retry scheduled:
                # the job would be lost. Unacked, it is redelivered if this process dies.
                log.warning(
                    "cannot schedule the retry of job %s (%s); holding it %.1fs",
                    message.message_id,
                    brief(exc),
                    hold,
                )
                time.sleep(hold)

    @staticmethod
    def dead_letter(message, reason: str) -> None:
        message.options["dead_letter_reason"] = reason
        log.warning("job %s (%s) dead-lettered: %s", message.message_id, message.actor_name, reason)
        message.fail()
