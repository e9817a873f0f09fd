"""Reject a message whose payload its actor cannot accept, before anything else runs."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import Middleware

from worker.payloads import PayloadLimits, validate


class ValidatePayload(Middleware):
    """Checks each message of an actor declared with ``payload=<model>`` against its model
    and the size limits (``PayloadLimits``) before any other middleware sees it.

    An invalid payload raises ``InvalidPayload`` (a permanent error) from here: the
    attempt fails before the rate limiter, the metrics or the actor see it, and the retry
    middleware dead-letters it at once with the fields at fault (never their values). Put
    it first in the stack (after Sentry's, which reports it): the rate limiter must not
    spend an organization's slot, nor create a Redis key named after a 1 MB ``org_id``,
    for a job that will be rejected.

    Parameters:
      limits: the size limit of every free-form field (default ``PayloadLimits()``).
    """

    def __init__(self, *, limits: PayloadLimits | None = None) -> None:
        self.limits = limits or PayloadLimits()

    @property
    def actor_options(self) -> set[str]:
        return {"payload"}

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        model = broker.get_actor(message.actor_name).options.get("payload")
        if model is not None:
            validate(model, message.kwargs, self.limits, args=message.args)
