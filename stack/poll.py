"""The one poll helper: wait for a condition, bounded in time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str | Callable[[], str] | None = None,
    interval: float = 0.05,
    *,
    ignore: tuple[type[BaseException], ...] = (),
):
    """``predicate()``'s first truthy value, asked every ``interval`` seconds.

    After ``timeout`` seconds: AssertionError saying ``what`` (a text, or a function that
    describes the state at that time). Exceptions of the types in ``ignore`` count as "not
    yet" (a server still starting), and the last one is named in the error.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what or "condition"
            error = f" (last: {type(last).__name__}: {last})" if last else ""
            raise AssertionError(f"not within {timeout:g}s: {described}{error}")
        time.sleep(interval)
