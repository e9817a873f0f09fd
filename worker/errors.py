"""The error policy: which failures are retried, and which dead-letter at once.

Anything not listed here (a network error, a bug) is retried by its job class's policy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from dramatiq.middleware import MiddlewareError


class PermanentError(Exception):
    """A failure that can never succeed on retry; the job is dead-lettered with this reason."""


class InvalidPayload(PermanentError, MiddlewareError):
    """The message's arguments do not match what the actor expects.

    Also a Dramatiq ``MiddlewareError``: Dramatiq lets only those out of a
    ``before_process_message`` hook, so ``ValidatePayload`` can fail the attempt with it
    before the actor, or any later middleware, runs."""


class TransientError(Exception):
    """A failure worth retrying; ``retry_after`` (seconds), when known, is the next delay."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def raise_for_status(
    service: str, status: int, retry_after: float | None = None, reason: str | None = None
) -> None:
    """Map an HTTP status to the error policy: 408, 429 and 5xx retry; other 4xx do not.

    ``reason`` (the service's own explanation, already free of secrets) ends the message.
    """
    if status < 400:
        return
    message = f"{service} answered HTTP {status}" + (f": {reason}" if reason else "")
    if status in (408, 429) or status >= 500:
        raise TransientError(message, retry_after=retry_after)
    raise PermanentError(message)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header, either form (delta-seconds or an HTTP date);
    None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
