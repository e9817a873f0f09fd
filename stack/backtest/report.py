"""The backtest's report: per alert and receiver, what the rules and Alertmanager did.

``summarize`` turns one run (the rule stage's ``RuleRun`` and the simulated
``Notification``s) into a ``Summary``; ``to_json`` is the ``--json`` contract
(docs/alerts.md, "Backtest"), ``to_text`` the report for a person, ``compare_json`` and
``compare_text`` two summaries side by side, ``plot`` the timeline. Counting rules:

- an alert *fires* once per firing interval of one of its instances (label sets), from
  its ``fired_at`` (pending time does not count) to its ``resolved_at``;
- ``firing_seconds`` sums those intervals, clipped to the range, over all instances;
- a *flap* is an instance firing again within an hour of its own resolution;
- ``notifications`` counts every notification, firing and resolved, that names the alert;
  a *page* is a firing notification to the pager receiver (a resolved one wakes nobody);
- a count *per week* is scaled to 7 days from the range's length.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stack.backtest.model import AlertInterval, Notification, RuleRun

WEEK_SECONDS = 7 * 86_400
#: An instance firing again this soon after it resolved is a flap.
FLAP_SECONDS = 3_600


@dataclass(frozen=True)
class AlertSummary:
    """One alert over the range (see the module docstring for what each count means)."""

    fired: int
    firing_seconds: float
    #: (fired_at, resolved_at or None while still firing at the end), by start.
    intervals: tuple[tuple[float, float | None], ...]
    notifications: Mapping[str, int]
    notifications_per_week: Mapping[str, float]
    pages: int
    flaps: int
    first_firing: float | None


@dataclass(frozen=True)
class Summary:
    start: float
    end: float
    pager: str
    alerts: Mapping[str, AlertSummary]
    receivers: Mapping[str, int]
    pages: int
    #: Every notification, by time: what the plot draws.
    notifications: tuple[Notification, ...] = field(default=(), repr=False)

    def per_week(self, count: float) -> float:
        return count * WEEK_SECONDS / (self.end - self.start)

    @property
    def pages_per_week(self) -> float:
        return self.per_week(self.pages)


def rfc3339(at: float) -> str:
    """Unix seconds as RFC 3339 in UTC, to the second unless it has a fraction."""
    moment = datetime.fromtimestamp(at, UTC)
    spec = "seconds" if moment.microsecond == 0 else "milliseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def _clipped_seconds(interval: AlertInterval, start: float, end: float) -> float:
    until = end if interval.resolved_at is None else min(interval.resolved_at, end)
    return max(0.0, until - max(interval.fired_at, start))


def _flaps(intervals: Iterable[AlertInterval]) -> int:
    by_instance: dict[tuple, list[AlertInterval]] = defaultdict(list)
    for interval in intervals:
        by_instance[tuple(sorted(interval.labels.items()))].append(interval)
    flaps = 0
    for runs in by_instance.values():
        runs.sort(key=lambda i: i.fired_at)
        for before, after in zip(runs, runs[1:], strict=False):
            resolved = before.resolved_at
            flaps += resolved is not None and after.fired_at - resolved <= FLAP_SECONDS
    return flaps


def summarize(
    run: RuleRun,
    notifications: Sequence[Notification],
    *,
    receivers: Sequence[str],
    pager: str = "pager",
) -> Summary:
    """The report's numbers. ``receivers`` are the Alertmanager config's receiver names
    (each reported, 0 included); ``pager`` the one whose firing notifications are pages."""
    if run.end <= run.start:
        raise ValueError(f"the range ends ({run.end}) before it starts ({run.start})")
    receivers = list(dict.fromkeys([*receivers, *(n.receiver for n in notifications)]))
    week = WEEK_SECONDS / (run.end - run.start)
    names = list(dict.fromkeys([*run.alertnames, *(i.alertname for i in run.intervals)]))
    alerts = {}
    for name in names:
        intervals = sorted(
            (i for i in run.intervals if i.alertname == name), key=lambda i: i.fired_at
        )
        sent = [n for n in notifications if name in n.alertnames]
        counts = {r: sum(n.receiver == r for n in sent) for r in receivers}
        alerts[name] = AlertSummary(
            fired=len(intervals),
            firing_seconds=sum(_clipped_seconds(i, run.start, run.end) for i in intervals),
            intervals=tuple((i.fired_at, i.resolved_at) for i in intervals),
            notifications=counts,
            notifications_per_week={r: c * week for r, c in counts.items()},
            pages=sum(n.receiver == pager and n.status == "firing" for n in sent),
            flaps=_flaps(intervals),
            first_firing=intervals[0].fired_at if intervals else None,
        )
    return Summary(
        start=run.start,
        end=run.end,
        pager=pager,
        alerts=alerts,
        receivers={r: sum(n.receiver == r for n in notifications) for r in receivers},
        pages=sum(n.receiver == pager and n.status == "firing" for n in notifications),
        notifications=tuple(sorted(notifications, key=lambda n: n.at)),
    )


def _alert_json(summary: Summary, alert: AlertSummary) -> dict[str, Any]:
    return {
        "fired": alert.fired,
        "firing_seconds": alert.firing_seconds,
        "intervals": [[rfc3339(a), None if b is None else rfc3339(b)] for a, b in alert.intervals],
        "notifications": dict(alert.notifications),
        "notifications_per_week": dict(alert.notifications_per_week),
        "pages_per_week": summary.per_week(alert.pages),
        "flaps": alert.flaps,
        "first_firing": None if alert.first_firing is None else rfc3339(alert.first_firing),
    }


def to_json(summary: Summary) -> dict[str, Any]:
    """The ``--json`` contract (docs/alerts.md, "Backtest")."""
    return {
        "from": rfc3339(summary.start),
        "to": rfc3339(summary.end),
        "pager": summary.pager,
        "alerts": {name: _alert_json(summary, a) for name, a in summary.alerts.items()},
        "receivers": dict(summary.receivers),
        "receivers_per_week": {r: summary.per_week(c) for r, c in summary.receivers.items()},
        "pages_per_week": summary.pages_per_week,
    }


def _difference(before: Any, after: Any) -> Any:
    """``after - before`` for numbers, key by key for mappings (a missing key counts 0)."""
    if isinstance(before, Mapping) or isinstance(after, Mapping):
        before, after = before or {}, after or {}
        keys = dict.fromkeys([*before, *after])
        return {k: _difference(before.get(k, 0), after.get(k, 0)) for k in keys}
    return after - before


#: The per-alert numbers a comparison subtracts.
COMPARED = ("fired", "firing_seconds", "notifications", "pages_per_week", "flaps")


def compare_json(before: Summary, after: Summary) -> dict[str, Any]:
    """Both summaries and ``difference`` (proposed minus today's) per alert and receiver."""
    old, new = to_json(before), to_json(after)
    empty = dict.fromkeys(COMPARED, 0)
    names = dict.fromkeys([*old["alerts"], *new["alerts"]])
    return {
        "before": old,
        "after": new,
        "difference": {
            "alerts": {
                name: {
                    key: _difference(
                        old["alerts"].get(name, empty)[key], new["alerts"].get(name, empty)[key]
                    )
                    for key in COMPARED
                }
                for name in names
            },
            "receivers": _difference(old["receivers"], new["receivers"]),
            "pages_per_week": new["pages_per_week"] - old["pages_per_week"],
        },
    }


def _seconds(value: float) -> str:
    value = round(value)
    hours, rest = divmod(value, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _counts(counts: Mapping[str, float]) -> str:
    return " ".join(f"{r}={c:g}" for r, c in counts.items() if c) or "-"


def to_text(summary: Summary) -> str:
    """The report for a person: one line per alert, fired ones first."""
    days = (summary.end - summary.start) / 86_400
    lines = [
        f"Backtest {rfc3339(summary.start)} .. {rfc3339(summary.end)} ({days:.3g} days)",
        f"{'alert':<46} {'fired':>5} {'firing':>11} {'flaps':>5} {'first firing':<21} "
        "notifications",
    ]
    ordered = sorted(summary.alerts.items(), key=lambda item: (item[1].fired == 0, item[0]))
    for name, alert in ordered:
        first = "-" if alert.first_firing is None else rfc3339(alert.first_firing)
        lines.append(
            f"{name:<46} {alert.fired:>5} {_seconds(alert.firing_seconds):>11} "
            f"{alert.flaps:>5} {first:<21} {_counts(alert.notifications)}"
        )
    lines.append(f"notifications: {_counts(summary.receivers)}")
    per_week = {r: summary.per_week(c) for r, c in summary.receivers.items()}
    lines.append("per week: " + " ".join(f"{r}={c:.1f}" for r, c in per_week.items()))
    lines.append(f"pages per week ({summary.pager}, firing): {summary.pages_per_week:.1f}")
    return "\n".join(lines)


def _nonzero(value: Any) -> bool:
    return any(map(_nonzero, value.values())) if isinstance(value, Mapping) else bool(value)


def _signed(value: float, digits: int = 0) -> str:
    return f"{value:+.{digits}f}" if value else "0"


def compare_text(before: Summary, after: Summary) -> str:
    """Today's and the proposed configuration, per alert (those that changed first): fired,
    firing time, and the notifications per receiver, with the difference."""
    diff = compare_json(before, after)["difference"]
    lines = [
        f"Backtest {rfc3339(after.start)} .. {rfc3339(after.end)}: today's -> proposed",
        f"{'alert':<46} {'fired':>13} {'firing':>25} notifications",
    ]
    names = dict.fromkeys([*before.alerts, *after.alerts])
    changed = {n for n in names if any(_nonzero(diff["alerts"][n][k]) for k in COMPARED)}
    for name in sorted(names, key=lambda n: n not in changed):  # changed first, stable
        old, new = before.alerts.get(name), after.alerts.get(name)
        d = diff["alerts"][name]
        fired = f"{old.fired if old else 0}->{new.fired if new else 0} ({_signed(d['fired'])})"
        seconds = (
            f"{_seconds(old.firing_seconds if old else 0)}->"
            f"{_seconds(new.firing_seconds if new else 0)}"
        )
        changed = {r: c for r, c in d["notifications"].items() if c}
        notes = " ".join(f"{r} {_signed(c)}" for r, c in changed.items()) or "same"
        lines.append(f"{name:<46} {fired:>13} {seconds:>25} {notes}")
    lines.append(
        "notifications: "
        + " ".join(
            f"{r} {before.receivers.get(r, 0)}->{after.receivers.get(r, 0)}"
            for r in dict.fromkeys([*before.receivers, *after.receivers])
        )
    )
    lines.append(
        f"pages per week: {before.pages_per_week:.1f} -> {after.pages_per_week:.1f} "
        f"({_signed(diff['pages_per_week'], 1)})"
    )
    return "\n".join(lines)


def plot(summaries: Mapping[str, Summary], path: Path) -> None:
    """A PNG timeline: one row per alert (its firing intervals) and per receiver (its
    notifications: o firing, x resolved); one colour per summary
    (e.g. ``{"today": ..., "proposed": ...}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(summaries.values()))
    alerts = list(dict.fromkeys(a for s in summaries.values() for a in s.alerts))
    receivers = list(dict.fromkeys(r for s in summaries.values() for r in s.receivers))
    rows = [*alerts, *(f"to {r}" for r in receivers)]
    lanes = len(summaries)
    figure, axes = plt.subplots(figsize=(12, 1.5 + 0.3 * len(rows)))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    unit, seconds = _time_unit(first.end - first.start)
    x = lambda at: (at - first.start) / seconds  # noqa: E731
    for lane, (label, summary) in enumerate(summaries.items()):
        colour = colours[lane % len(colours)]
        offset = (lane + 0.5) / lanes - 0.5
        height = 0.8 / lanes
        for row, name in enumerate(alerts):
            alert = summary.alerts.get(name)
            spans = [
                (x(a), x(summary.end if b is None else b) - x(a))
                for a, b in (alert.intervals if alert else ())
            ]
            axes.broken_barh(
                spans,
                (row + offset - height / 2, height),
                color=colour,
                edgecolor=colour,  # an interval of minutes in a week stays visible
                linewidth=1,
                label=label if row == 0 else None,
            )
        for row, receiver in enumerate(receivers, start=len(alerts)):
            for status, marker in (("firing", "o"), ("resolved", "x")):
                times = [
                    x(n.at)
                    for n in summary.notifications
                    if n.receiver == receiver and n.status == status
                ]
                axes.scatter(times, [row + offset] * len(times), marker=marker, color=colour)
    axes.set_yticks(range(len(rows)), rows)
    axes.invert_yaxis()
    axes.set_xlim(0, x(first.end))
    axes.set_xlabel(f"{unit} from {rfc3339(first.start)}")
    axes.grid(axis="x", alpha=0.3)
    if lanes > 1:
        axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _time_unit(span: float) -> tuple[str, float]:
    """The plot's x unit for a range of ``span`` seconds: at most a few hundred of it."""
    for unit, seconds in (("seconds", 1), ("minutes", 60), ("hours", 3600)):
        if span <= 300 * seconds:
            return unit, seconds
    return "days", 86400
