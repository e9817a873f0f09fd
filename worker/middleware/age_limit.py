"""Dramatiq's ``AgeLimit``, saying why it dead-letters a message."""

from __future__ import annotations

from dramatiq.middleware import AgeLimit, SkipMessage


class AgeLimitWithReason(AgeLimit):
    """Dead-letters, before it runs, a message older than its ``max_age`` (milliseconds,
    from the message's options or its actor's), as Dramatiq's ``AgeLimit`` does, and
    records why: a dead letter always carries its reason (``dead_letter_reason``)."""

    def before_process_message(self, broker, message):
        try:
            super().before_process_message(broker, message)
        except SkipMessage:
            message.options["dead_letter_reason"] = "expired: older than its max_age"
            raise
