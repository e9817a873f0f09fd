"""The Alertmanager stage of the backtest: the notifications a config would have sent for
the firing intervals the rules produced.

Two halves, each modelled on the real programs:

- ``prometheus_posts``: what Prometheus posts to Alertmanager for each firing interval. An
  alert is posted when it fires and again at the first evaluation more than the resend
  delay (``--rules.alert.resend-delay``, 1m) after the last post, with ``endsAt`` 4 resend
  delays ahead; once resolved it is posted with ``endsAt`` set to the resolution, and
  re-sent the same way for 15 minutes (Prometheus' resolved retention) or until the label
  set is active again.
- ``simulate``: Alertmanager's dispatcher and notification pipeline. Each alert lands on
  its routes; an aggregation group per route and ``group_by`` values flushes
  ``group_wait`` after it was created, then every ``group_interval``. A flush drops
  inhibited alerts, then notifies only when the firing set grew, when alerts resolved and
  the receiver sends resolved (or all resolved), or when ``repeat_interval`` has passed
  since the last notification (Alertmanager's notification log decides; a gossiping pair
  shares it, so each notification is sent once). Resolved alerts leave the group once
  notified, and an empty group is removed.

Known differences, each bounded by one ``group_interval`` in time: the real dispatcher
removes empty groups in a maintenance pass every 30 s (its phase set when Alertmanager
started), so an alert arriving within that time joins the old group and is notified at
its next tick, not ``group_wait`` after it arrived; in a pair, the second member sends
what the first has not yet sent after its peer timeout.

Two can change a count. An alert that resolves before its group_wait is over is notified
nothing in a new group, firing then resolved in a left-over one. And a post arriving at
the very instant of its group's flush is taken into it; in Alertmanager the two race
(whichever comes first by milliseconds: the flush timer started when the group's first
alert arrived, the post leaves Prometheus about as long after its evaluation), so an
alert of an already-notified group that fires exactly ``group_wait`` (plus whole
``group_interval``) after the group's first, on the evaluation grid, may be sent in that
flush or in a notification of its own. Timings that are multiples of the evaluation
interval (30 s and 5 m at 15 s) make such ties possible.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alerts.routing import Route, RoutingError, build_route, inhibit_rules, sends_resolved
from stack.backtest.model import AlertInterval, BacktestError, Notification

#: Prometheus' defaults: ``--rules.alert.resend-delay``, ``evaluation_interval``, and how
#: long a resolved alert is still sent (``resolvedRetention``, fixed in its source).
RESEND_DELAY = 60.0
EVALUATION_INTERVAL = 15.0
RESOLVED_RETENTION = 900.0
#: Times equal within this are equal (a notification log entry is written just after its
#: flush, so "more than repeat_interval ago" is false on the tick exactly that far away).
EPSILON = 1e-6

LabelKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Post:
    """One alert as Prometheus posts it to ``/api/v2/alerts``, at time ``at``."""

    at: float
    labels: Mapping[str, str]
    starts_at: float
    #: The resolution time when resolved; None while firing (``endsAt`` is then
    #: ``at + valid_for``, renewed by the next post).
    resolved_at: float | None
    valid_for: float

    @property
    def ends_at(self) -> float:
        return self.resolved_at if self.resolved_at is not None else self.at + self.valid_for


def prometheus_posts(
    intervals: Sequence[AlertInterval],
    *,
    end: float,
    resend_delay: float = RESEND_DELAY,
    evaluation_interval: float = EVALUATION_INTERVAL,
    resolved_retention: float = RESOLVED_RETENTION,
) -> list[Post]:
    """Every post Prometheus makes for ``intervals`` up to ``end``, in time order."""
    valid_for = 4 * max(resend_delay, evaluation_interval)
    # Re-sent at the first evaluation more than resend_delay after the last post.
    period = (math.floor(resend_delay / evaluation_interval + EPSILON) + 1) * evaluation_interval
    by_labels: dict[LabelKey, list[AlertInterval]] = {}
    for interval in intervals:
        by_labels.setdefault(_key(interval.labels), []).append(interval)
    posts: list[Post] = []
    for runs in by_labels.values():
        runs.sort(key=lambda i: i.active_at)
        for interval, following in itertools.zip_longest(runs, runs[1:]):
            # A resolved alert is dropped when its label set is active (pending) again.
            stop = end if following is None else min(end, following.active_at - EPSILON)
            labels, fired, resolved = interval.labels, interval.fired_at, interval.resolved_at
            firing_until = min(stop + EPSILON, resolved) if resolved is not None else stop + EPSILON
            posts.extend(
                Post(at, labels, fired, None, valid_for)
                for at in _every(fired, period, firing_until - EPSILON)
            )
            if resolved is not None and resolved <= stop:
                last = min(stop, resolved + resolved_retention) + EPSILON
                posts.extend(
                    Post(at, labels, fired, resolved, valid_for)
                    for at in _every(resolved, period, last)
                )
    posts.sort(key=lambda p: p.at)
    return posts


def _every(first: float, period: float, before: float) -> Iterator[float]:
    """``first``, ``first + period``, ... while below ``before``."""
    count = max(0, math.ceil((before - first) / period))
    return (first + k * period for k in range(count))


def _key(labels: Mapping[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


@dataclass
class _Alert:
    labels: Mapping[str, str]
    starts_at: float
    ends_at: float

    def resolved(self, now: float) -> bool:
        return self.ends_at <= now + EPSILON


@dataclass
class _Group:
    route: Route
    labels: dict[str, str]
    alerts: dict[LabelKey, _Alert] = field(default_factory=dict)
    has_flushed: bool = False
    #: Bumped when the next flush is rescheduled: a queued flush of an older one is stale.
    generation: int = -1


@dataclass(frozen=True)
class _LogEntry:
    firing: frozenset[LabelKey]
    resolved: frozenset[LabelKey]
    at: float


class Dispatcher:
    """Alertmanager's dispatcher and pipeline over simulated time; ``run`` it on posts."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        """BacktestError, one line, for a config it cannot read or simulate."""
        try:
            self.route = build_route(config)
            self.inhibit_rules = inhibit_rules(config)
        except RoutingError as exc:
            raise BacktestError(str(exc)) from None
        self.send_resolved = sends_resolved(config)
        self.alerts: dict[LabelKey, _Alert] = {}
        self.groups: dict[tuple[tuple[int, ...], LabelKey], _Group] = {}
        self.log: dict[tuple[tuple[int, ...], LabelKey], _LogEntry] = {}
        self.sent: list[Notification] = []
        self._queue: list[tuple[float, int, int, Any]] = []
        self._order = itertools.count()

    def run(self, posts: Sequence[Post], until: float) -> list[Notification]:
        for post in posts:
            heapq.heappush(self._queue, (post.at, 0, next(self._order), post))
        while self._queue and self._queue[0][0] <= until + EPSILON:
            now, kind, _, item = heapq.heappop(self._queue)
            if kind == 0:
                self._receive(item, now)
            else:
                group_key, generation = item
                group = self.groups.get(group_key)
                if group is not None and group.generation == generation:
                    self._flush(group_key, group, now)
        return self.sent

    def _schedule(self, group_key: Any, group: _Group, at: float) -> None:
        group.generation = next(self._order)  # unique across groups that reuse a key
        heapq.heappush(self._queue, (at, 1, group.generation, (group_key, group.generation)))

    def _receive(self, post: Post, now: float) -> None:
        key = _key(post.labels)
        alert = _Alert(post.labels, post.starts_at, post.ends_at)
        self.alerts[key] = alert
        for route in self.route.match(post.labels):
            labels = route.group_labels(post.labels)
            group_key = (route.key, _key(labels))
            group = self.groups.get(group_key)
            if group is None:
                group = self.groups[group_key] = _Group(route, labels)
                self._schedule(group_key, group, now + route.group_wait)
            group.alerts[key] = alert
            # An alert whose group_wait is over is flushed at once (a late first post).
            if not group.has_flushed and alert.starts_at + route.group_wait < now - EPSILON:
                self._schedule(group_key, group, now)

    def _flush(self, group_key: Any, group: _Group, now: float) -> None:
        route = group.route
        group.has_flushed = True
        self._schedule(group_key, group, now + route.group_interval)
        alerts = dict(group.alerts)
        firing_sources = [a.labels for a in self.alerts.values() if not a.resolved(now)]
        shown = {
            key: alert
            for key, alert in alerts.items()
            if not any(rule.mutes(alert.labels, firing_sources) for rule in self.inhibit_rules)
        }
        if shown:
            self._notify(group_key, group, shown, now)
        for key, alert in alerts.items():
            if alert.resolved(now):
                del group.alerts[key]
        if not group.alerts:
            del self.groups[group_key]

    def _notify(
        self, group_key: Any, group: _Group, alerts: Mapping[LabelKey, _Alert], now: float
    ) -> None:
        receiver = group.route.receiver
        send_resolved = self.send_resolved.get(receiver)
        if send_resolved is None:
            return  # a receiver without integrations: nothing sent, nothing logged
        firing = frozenset(k for k, a in alerts.items() if not a.resolved(now))
        resolved = frozenset(alerts) - firing
        entry = self.log.get(group_key)
        if not _needs_update(entry, firing, resolved, send_resolved, group.route, now):
            return
        self.log[group_key] = _LogEntry(firing, resolved, now)
        sent = [a for k, a in alerts.items() if send_resolved or k in firing]
        if not firing and not send_resolved:
            return  # logged, not sent: resolved alerts only, to a receiver that skips them
        sent.sort(key=lambda a: _SortKey(a.labels))
        self.sent.append(
            Notification(
                at=now,
                receiver=receiver,
                group_labels=dict(group.labels),
                status="firing" if firing else "resolved",
                alerts=tuple(dict(a.labels) for a in sent),
            )
        )


def _needs_update(
    entry: _LogEntry | None,
    firing: frozenset[LabelKey],
    resolved: frozenset[LabelKey],
    send_resolved: bool,
    route: Route,
    now: float,
) -> bool:
    """The notification log's verdict (Alertmanager's DedupStage)."""
    if entry is None:
        return bool(firing)
    if not firing <= entry.firing:
        return True
    if not firing:
        # Everything resolved: sent if the receiver had been told of a firing alert.
        return bool(entry.firing)
    if send_resolved and not resolved <= entry.resolved:
        return True
    return now - entry.at > route.repeat_interval + EPSILON


class _SortKey:
    """Alertmanager's order of alerts in a notification: by ``job``, then ``instance``
    (an alert with the label first), then by the whole label set."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.labels = labels

    def __lt__(self, other: _SortKey) -> bool:
        a, b = self.labels, other.labels
        first = _before(a, b, ("job", "instance"), missing_first=False)
        if first is not None:
            return first
        if len(a) != len(b):
            return len(a) < len(b)
        return bool(_before(a, b, sorted({*a, *b}), missing_first=True))


def _before(
    a: Mapping[str, str], b: Mapping[str, str], names: Sequence[str], *, missing_first: bool
) -> bool | None:
    """Whether ``a`` sorts before ``b`` by the first of ``names`` they differ in (an absent
    label first or last); None when they do not differ in any."""
    for name in names:
        if name in a and name in b:
            if a[name] != b[name]:
                return a[name] < b[name]
        elif name in a or name in b:
            return (name not in a) == missing_first
    return None


def simulate(
    config: Mapping[str, Any],
    intervals: Sequence[AlertInterval],
    *,
    start: float,
    end: float,
    resend_delay: float = RESEND_DELAY,
    evaluation_interval: float = EVALUATION_INTERVAL,
) -> list[Notification]:
    """The notifications ``config`` (a parsed ``alertmanager.yml``) would have sent over
    ``[start, end]`` for the firing ``intervals``, in the order sent. ``resend_delay`` and
    ``evaluation_interval`` are Prometheus' (defaults 1m and 15s). Alerts that fired before
    ``start`` are replayed from when they fired; their notifications before ``start`` are
    left out."""
    posts = prometheus_posts(
        intervals, end=end, resend_delay=resend_delay, evaluation_interval=evaluation_interval
    )
    sent = Dispatcher(config).run(posts, end)
    return [n for n in sent if n.at >= start - EPSILON]
