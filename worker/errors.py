"""The error policy: which failures are retried, and which dead-letter at once.

Anything not listed here (a network error, a bug) is retried by its job class's policy.
"""

from __future__ import annotations


class PermanentError(Exception):
    """A failure that can never succeed on retry; the job is dead-lettered with this reason."""


class InvalidPayload(PermanentError):
    """The message's arguments do not match what the actor expects."""


class TransientError(Exception):
    """A failure worth retrying; ``retry_after`` (seconds), when known, is the next delay."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def raise_for_status(service: str, status: int, retry_after: float | None = None) -> None:
    """Map an HTTP status to the error policy: 408, 429 and 5xx retry; other 4xx do not."""
    if status < 400:
        return
    if status in (408, 429) or status >= 500:
        raise TransientError(f"{service} answered HTTP {status}", retry_after=retry_after)
    raise PermanentError(f"{service} answered HTTP {status}")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form); None when absent or a date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
