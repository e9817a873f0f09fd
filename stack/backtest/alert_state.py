"""An alerting rule's state over time, per label set, as Prometheus' rule manager keeps it
(rules/alerting.go): what turns "the expression returned this label set at these
evaluations" into firing intervals and the ALERTS series."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

from stack.backtest.model import AlertInterval

#: An alert expression's results: label set -> the evaluations (ms) that returned it.
Returned = dict[tuple[tuple[str, str], ...], list[int]]


@dataclass(frozen=True)
class Span:
    """One alert instance from its first pending evaluation to its resolution (ms)."""

    labels: dict[str, str]
    active_at: int
    fired_at: int | None  # None: pending, never fired
    resolved_at: int | None  # None: still active at the end

    def interval(self) -> AlertInterval:
        return AlertInterval(
            labels=self.labels,
            active_at=self.active_at / 1000,
            fired_at=self.fired_at / 1000,
            resolved_at=None if self.resolved_at is None else self.resolved_at / 1000,
        )

    def states(self, step_ms: int, end_ms: int) -> Iterator[tuple[str, range]]:
        """The evaluations at which ALERTS has this instance, per ``alertstate``."""
        stop = (self.resolved_at if self.resolved_at is not None else end_ms + 1) - 1
        pending_stop = self.fired_at - 1 if self.fired_at is not None else stop
        yield "pending", range(self.active_at, pending_stop + 1, step_ms)
        if self.fired_at is not None:
            yield "firing", range(self.fired_at, stop + 1, step_ms)


def alert_spans(
    returned: Returned, *, step_ms: int, for_ms: int, keep_firing_ms: int, end_ms: int
) -> list[Span]:
    """The rule manager's state machine per label set (rules/alerting.go): pending at the
    first evaluation that returns it, firing once ``for`` has passed, kept firing until
    ``keep_firing_for`` has passed since the expression stopped returning it, then
    resolved; a pending one that is no longer returned is dropped."""
    step = step_ms
    spans = []
    for key, times in returned.items():
        labels = dict(key)
        present = sorted(set(times))
        returned = set(present)
        active_at = fired_at = absent_since = None
        t = present[0]
        while t <= end_ms:
            if t in returned:
                absent_since = None
                active_at = t if active_at is None else active_at
                if fired_at is None and t - active_at >= for_ms:
                    fired_at = t
            elif fired_at is None:
                spans.append(Span(labels, active_at, None, t))
                active_at = None
            else:
                absent_since = t if absent_since is None else absent_since
                if t - absent_since >= keep_firing_ms:
                    spans.append(Span(labels, active_at, fired_at, t))
                    active_at = fired_at = absent_since = None
            if active_at is None:
                later = bisect.bisect_right(present, t)
                if later == len(present):
                    break
                t = present[later]
            else:
                t += step
        if active_at is not None:
            spans.append(Span(labels, active_at, fired_at, None))
    return spans
