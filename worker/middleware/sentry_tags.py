"""Tags each job attempt's Sentry events with what an operator filters and alerts on."""

from __future__ import annotations

import sentry_sdk
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

#: Sentry truncates longer tag values; cut them ourselves so the cut is predictable.
_TAG_MAX_CHARS = 200


class SentryJobTags(Middleware):
    """Sets ``job_type``, ``queue``, ``attempt``, ``org_id``, ``job_id`` and ``dead_lettered``.

    Sentry's Dramatiq integration opens an isolation scope per message and reports the
    exception of every failed attempt from it; this middleware, placed right after it,
    tags that scope. The organization is a tag, never part of an event's message, so
    events group by error and can still be filtered by organization. ``attempt`` counts
    from 1 like the retry middleware; ``dead_lettered`` is ``yes`` on the attempt after
    which the job was given up (its last, or a permanent error), so an alert rule can
    page on lost jobs only.
    """

    def before_process_message(self, broker, message) -> None:
        scope = sentry_sdk.get_isolation_scope()
        scope.set_tag("job_type", message.actor_name)
        scope.set_tag("queue", q_name(message.queue_name))
        scope.set_tag("attempt", str(message.options.get("retries", 0) + 1))
        for name in ("org_id", "job_id"):
            value = message.kwargs.get(name)
            if value is not None:
                scope.set_tag(name, str(value)[:_TAG_MAX_CHARS])

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        # Runs before Sentry's own hook (after-hooks run in reverse), which captures the event.
        if exception is not None:
            sentry_sdk.get_isolation_scope().set_tag(
                "dead_lettered", "yes" if message.failed else "no"
            )
