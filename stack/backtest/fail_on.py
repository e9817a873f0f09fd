"""``--fail-on``: conditions on a backtest's summary that make ``stack backtest`` exit 1.

Grammar (docs/alerts.md, "Backtest"), conditions separated by commas or given as several
``--fail-on`` options; the command fails when any one holds::

    condition := metric [ "[" ALERT "]" ] op NUMBER
    metric    := pages_per_week | notifications_per_week:RECEIVER
               | fired | firing_seconds | flaps
    op        := > | >= | < | <= | == | !=

Without ``[ALERT]`` a metric is the total over every alert (``pages_per_week`` and
``notifications_per_week:RECEIVER`` count each notification once, even when it names
several alerts); with it, that alert's own number.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stack.backtest.model import BacktestError
from stack.backtest.report import Summary

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
METRICS = ("pages_per_week", "notifications_per_week:RECEIVER", "fired", "firing_seconds", "flaps")

_CONDITION = re.compile(
    r"\s*(?P<metric>[a-z_]+)(?::(?P<receiver>[\w.-]+))?"
    r"(?:\[(?P<alert>\w+)\])?"
    r"\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
)


@dataclass(frozen=True)
class Condition:
    text: str
    metric: str
    receiver: str | None
    alert: str | None
    op: str
    value: float

    def measure(self, summary: Summary) -> float:
        """This condition's metric in ``summary``; BacktestError for an alert or a receiver
        the backtest does not know."""
        if self.alert is not None and self.alert not in summary.alerts:
            raise BacktestError(f"--fail-on {self.text!r}: no alert {self.alert} in the rules")
        if self.receiver is not None and self.receiver not in summary.receivers:
            known = ", ".join(summary.receivers)
            raise BacktestError(
                f"--fail-on {self.text!r}: no receiver {self.receiver} (known: {known})"
            )
        alerts = [summary.alerts[self.alert]] if self.alert else list(summary.alerts.values())
        if self.metric == "pages_per_week":
            pages = alerts[0].pages if self.alert else summary.pages
            return summary.per_week(pages)
        if self.metric == "notifications_per_week":
            sent = alerts[0].notifications if self.alert else summary.receivers
            return summary.per_week(sent.get(self.receiver, 0))
        return sum(getattr(alert, self.metric) for alert in alerts)

    def holds(self, summary: Summary) -> tuple[bool, float]:
        measured = self.measure(summary)
        return OPERATORS[self.op](measured, self.value), measured


def parse_condition(text: str) -> Condition:
    """One condition; BacktestError naming what is wrong with it."""
    match = _CONDITION.fullmatch(text)
    if not match:
        raise BacktestError(
            f"--fail-on {text.strip()!r}: not a condition like 'pages_per_week>5' "
            "(metric[ALERT] op number)"
        )
    metric, receiver = match["metric"], match["receiver"]
    known = metric in METRICS or (metric == "notifications_per_week" and receiver)
    if not known or (receiver and metric != "notifications_per_week"):
        raise BacktestError(
            f"--fail-on {text.strip()!r}: unknown metric "
            f"{metric + (':' + receiver if receiver else '')!r} (one of {', '.join(METRICS)})"
        )
    return Condition(
        text=text.strip(),
        metric=metric,
        receiver=receiver,
        alert=match["alert"],
        op=match["op"],
        value=float(match["value"]),
    )


def parse_conditions(texts: Iterable[str]) -> list[Condition]:
    """Every condition of every ``--fail-on`` (each may hold several, comma-separated)."""
    return [parse_condition(part) for text in texts for part in text.split(",")]


def violations(conditions: Iterable[Condition], summary: Summary) -> list[str]:
    """One line per condition that holds, with the measured value."""
    lines = []
    for condition in conditions:
        held, measured = condition.holds(summary)
        if held:
            lines.append(f"--fail-on {condition.text}: measured {measured:g}")
    return lines
