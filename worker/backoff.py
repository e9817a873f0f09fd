"""Capped exponential backoff, for waiting out a Redis or broker outage."""

from __future__ import annotations

from collections.abc import Iterator


def capped_backoff(first: float = 0.5, cap: float = 10.0) -> Iterator[float]:
    """Delays ``first``, twice that, four times that, ..., never above ``cap`` seconds."""
    delay = min(first, cap)
    while True:
        yield delay
        delay = min(delay * 2, cap)
