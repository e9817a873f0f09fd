"""The worker's own middleware hooks, declared once.

Dramatiq's broker emits its signals (``before_process_message``, ``after_nack``...) to
every middleware. The worker's Redis broker (``worker.brokers.redis``) adds three of its
own, which Dramatiq knows nothing of: a middleware that wants them subclasses
``WorkerMiddleware`` and overrides the hook; ``emit`` calls it on those middleware only
(Dramatiq's ``emit_*`` would call every middleware, and log a failure on each that
lacks the hook).
"""

from __future__ import annotations

import logging

import dramatiq

log = logging.getLogger(__name__)


class WorkerMiddleware(dramatiq.Middleware):
    """A Dramatiq middleware that also hears the worker's Redis broker."""

    def before_consume(self, broker: dramatiq.Broker, queue_name: str) -> None:
        """A consumer of ``queue_name`` is about to (re)start fetching; may block a while
        (e.g. until Redis answers again), never indefinitely."""

    def after_connection_error(
        self, broker: dramatiq.Broker, queue_name: str, error: BaseException
    ) -> None:
        """A consumer of ``queue_name`` lost its Redis connection while fetching, acking,
        nacking or requeueing; Dramatiq restarts the consumer or retries after this."""

    def after_undecodable_message(
        self, broker: dramatiq.Broker, queue_name: str, message_id: str, reason: str
    ) -> None:
        """The message ``message_id`` of ``queue_name`` could not be decoded and was
        dead-lettered with ``reason``; it never reached an actor."""


#: The hooks above, by name: what ``emit`` accepts.
HOOKS = frozenset({"before_consume", "after_connection_error", "after_undecodable_message"})


def emit(broker: dramatiq.Broker, hook: str, *args: object) -> None:
    """Call ``hook(broker, *args)`` on every ``WorkerMiddleware`` of ``broker``, in order; a
    middleware that raises is logged and the others still hear it."""
    if hook not in HOOKS:
        raise ValueError(f"{hook!r} is not a worker hook (one of {sorted(HOOKS)})")
    for middleware in broker.middleware:
        if isinstance(middleware, WorkerMiddleware):
            try:
                getattr(middleware, hook)(broker, *args)
            except Exception:
                log.exception("%s of %r failed", hook, middleware)
