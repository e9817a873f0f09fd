"""The values passed between the backtest's stages. Times are Unix seconds (floats)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class BacktestError(Exception):
    """Bad input the user can fix (an unreachable Prometheus, a range with no data, a rule
    that does not parse, an override naming an unknown alert): ``stack backtest`` prints
    its one-line message and exits 2, without a traceback."""


@dataclass(frozen=True)
class AlertInterval:
    """One firing interval of one alert instance, as Prometheus would have sent it.

    ``labels`` are the alert's labels as Alertmanager receives them: ``alertname``, the
    expression's labels and the rule's ``labels`` (external labels dropped by
    ``alert_relabel_configs`` are not in them)."""

    labels: Mapping[str, str]
    #: The evaluation at which the expression first returned this label set (pending).
    active_at: float
    #: The first evaluation in state firing (``active_at`` + ``for``, on the group's grid).
    fired_at: float
    #: The first evaluation at which it no longer fired; None: still firing at the end.
    resolved_at: float | None

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]


@dataclass(frozen=True)
class RuleRun:
    """What the rules did over ``[start, end]``: ``stack.backtest.rules.evaluate``'s result."""

    start: float
    end: float
    #: Every alerting rule's name in the rule files, in file order, each once: the report
    #: lists them all, fired or not.
    alertnames: tuple[str, ...]
    intervals: tuple[AlertInterval, ...]


@dataclass(frozen=True)
class Notification:
    """One notification Alertmanager would have sent to one receiver."""

    at: float
    receiver: str
    #: The labels the route groups by, with their values for this group.
    group_labels: Mapping[str, str]
    #: "firing" when at least one alert in it fires, else "resolved" (Alertmanager's rule).
    status: str
    #: Labels of every alert in the notification, firing and resolved.
    alerts: tuple[Mapping[str, str], ...]

    @property
    def alertnames(self) -> frozenset[str]:
        return frozenset(a["alertname"] for a in self.alerts)
