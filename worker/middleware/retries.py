"""Per-class retries with exponential backoff; permanent errors dead-letter at once."""

from __future__ import annotations

import logging
import random
import time

import dramatiq
import redis
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Middleware

from worker.errors import PermanentError, TransientError
from worker.jobs import job_class_of

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

    Parameters:
      max_delay: the longest delay in seconds (default 300).
      jitter: half-width of the random factor, 0 to 0.5 (default 0.2).
      time_scale: multiplies every delay; tests and benchmarks shrink time with it
        (default 1).
    """

    def __init__(
        self, *, max_delay: float = 300.0, jitter: float = 0.2, time_scale: float = 1.0
    ) -> None:
        if not 0 <= jitter <= 0.5:
            raise ValueError("jitter must be within [0, 0.5]")
        self.max_delay = max_delay
        self.jitter = jitter
        self.time_scale = time_scale

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
            return self.dead_letter(message, f"permanent error: {exception}")
        if attempts >= max_attempts:
            return self.dead_letter(
                message,
                f"{attempts} of {max_attempts} attempts failed, last: "
                f"{type(exception).__name__}: {exception}",
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
        self.enqueue_until_accepted(broker, message, int(delay * 1000))

    @staticmethod
    def enqueue_until_accepted(broker, message, delay_ms: int) -> None:
        """Schedule the retry, waiting out a broker outage.

        Dramatiq swallows an exception raised here and then acks the message, which would
        lose the job; holding the worker thread until the broker is back keeps it, like
        Dramatiq's own ack does. If the worker is killed meanwhile, the unacked message is
        redelivered after the lock timeout.
        """
        backoff = 0.5
        while True:
            try:
                broker.enqueue(message, delay=delay_ms)
                return
            except (redis.ConnectionError, redis.TimeoutError, BrokerConnectionError) as exc:
                log.warning(
                    "cannot schedule retry of job %s (%s); trying again in %.1fs",
                    message.message_id,
                    type(exc).__name__,
                    backoff,
                )
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    @staticmethod
    def dead_letter(message, reason: str) -> None:
        message.options["dead_letter_reason"] = reason
        log.warning("job %s (%s) dead-lettered: %s", message.message_id, message.actor_name, reason)
        message.fail()
