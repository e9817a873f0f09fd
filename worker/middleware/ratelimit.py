"""Defer jobs of an organization that is over its LLM API limits instead of running them.

Applies to actors declared with ``rate_limited=True``; the organization is the message's
``org_id`` keyword argument (a message without one is not limited: there is nothing to
count it against, and the actor's payload validation rejects it). Before the actor runs,
one slot is taken from the shared ``RateLimiter`` (all replicas and processes draw from
the same Redis counters):

- allowed: the job runs.
- throttled: a copy of the message is enqueued with a delay of ``retry_after`` plus a
  random jitter and the original is skipped (``SkipMessage``, acked). The jitter's bound
  starts at ``max_jitter_seconds`` and doubles with each deferral of the same message, up
  to ``max_spread_seconds``: an organization with a growing backlog would otherwise have
  every waiting job ask again each time a slot frees, a herd of refusals that grows with
  the backlog. Its retry count is untouched, so waiting never spends an attempt, and Retries
  never sees it as a failure. Other organizations' jobs run meanwhile: a deferred job
  holds no worker thread.
- Redis cannot decide: the job is neither run unthrottled (that could exceed the
  provider's limits) nor failed; it is deferred by ``unavailable_delay_seconds`` (+ jitter)
  (the limiter counts ``decision="unavailable"``). If the broker cannot take the deferred copy
  either, the worker thread keeps the message, unacked in Redis, and retries the decision
  with capped backoff until Redis answers (the same way Dramatiq retries an ack). If the
  process dies meanwhile, Redis redelivers the unacked message: no job is lost.

This middleware counts nothing itself: the limiter (``worker.ratelimit``) counts each
window's decision in ``worker_rate_limit_decisions_total``. A deferred message carries
``options["rate_limit_deferrals"]`` (how many times it waited). Each deferral is logged
at DEBUG; Dramatiq's own WARNING "Message ... was skipped" for it is dropped: at an
organization's limit it would come hundreds of times a second and bury the warnings
that matter.
"""

from __future__ import annotations

import logging
import random
import time

import dramatiq
import redis
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Middleware, SkipMessage

from worker.backoff import capped_backoff
from worker.brokers.redis import (
    WORKER_THREAD_LOGGER,
    deferred_by,
    mark_deferred,
    skipped_message,
)
from worker.ratelimit import RateLimiter, RateLimiterUnavailable

log = logging.getLogger(__name__)


class _DropDeferralSkips(logging.Filter):
    """Drops Dramatiq's "was skipped" warning for messages this middleware deferred."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not deferred_by(skipped_message(record))


_deferral_skips = _DropDeferralSkips()


class RateLimit(Middleware):
    """Take a rate-limit slot per organization before a ``rate_limited`` actor runs.

    Parameters:
      limiter: the shared ``RateLimiter``.
      max_jitter_seconds: upper bound of the random delay added to ``retry_after`` at a
        job's first deferral, so that deferred jobs of one organization do not all wake at
        the same instant (default 1); it doubles with each further deferral.
      max_spread_seconds: the largest jitter bound, however often a job waited (default 30).
      unavailable_delay_seconds: deferral when Redis cannot decide (default 5).
      max_hold_seconds: cap of the backoff between attempts while neither the limiter nor
        the broker is reachable (default 10).
    """

    def __init__(
        self,
        limiter: RateLimiter,
        *,
        max_jitter_seconds: float = 1.0,
        max_spread_seconds: float = 30.0,
        unavailable_delay_seconds: float = 5.0,
        max_hold_seconds: float = 10.0,
    ) -> None:
        if max_jitter_seconds < 0 or unavailable_delay_seconds <= 0 or max_hold_seconds <= 0:
            raise ValueError("jitter must be >= 0 and delays > 0")
        self.limiter = limiter
        self.max_jitter_seconds = max_jitter_seconds
        self.max_spread_seconds = max(max_spread_seconds, max_jitter_seconds)
        self.unavailable_delay_seconds = unavailable_delay_seconds
        self.max_hold_seconds = max_hold_seconds
        logging.getLogger(WORKER_THREAD_LOGGER).addFilter(_deferral_skips)

    @property
    def actor_options(self) -> set[str]:
        return {"rate_limited"}

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        # Only the actor decides: a sender must not be able to opt a message out.
        if not broker.get_actor(message.actor_name).options.get("rate_limited", False):
            return
        org_id = message.kwargs.get("org_id")
        if org_id is None or org_id == "":
            # Nothing to count it against; the actor's payload validation rejects it.
            log.warning("rate-limited message %s has no org_id", message.message_id)
            return

        for hold in capped_backoff(cap=self.max_hold_seconds):
            try:
                decision = self.limiter.try_acquire(str(org_id))
            except RateLimiterUnavailable as exc:
                log.warning(
                    "rate limiter unavailable (%s); deferring message %s by %.1fs",
                    exc,
                    message.message_id,
                    self.unavailable_delay_seconds,
                )
                wait = self.unavailable_delay_seconds
            else:
                if decision.allowed:
                    return
                wait = decision.retry_after
            try:
                self._defer(broker, message, wait)
            except (redis.RedisError, BrokerConnectionError) as exc:
                log.warning(
                    "cannot defer message %s (%s: %s); holding it %.1fs and asking again",
                    message.message_id,
                    type(exc).__name__,
                    exc,
                    hold,
                )
                time.sleep(hold)
                continue
            mark_deferred(message, wait)
            log.debug("deferred message %s of %s by %.3fs", message.message_id, org_id, wait)
            raise SkipMessage(f"rate limited, deferred by {wait:.3f}s")

    def _defer(self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, wait: float) -> None:
        waited = int(message.options.get("rate_limit_deferrals", 0))
        spread = min(self.max_jitter_seconds * 2**waited, self.max_spread_seconds)
        delay_ms = int((wait + random.uniform(0, spread)) * 1000) + 1
        deferrals = waited + 1
        # Same message id and options (``retries`` included): the job waits, it did not fail.
        broker.enqueue(message.copy(options={"rate_limit_deferrals": deferrals}), delay=delay_ms)
