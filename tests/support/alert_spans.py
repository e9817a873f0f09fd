"""Firing intervals of alert instances in one shape, whether a Prometheus found them live
(its own ``ALERTS`` samples) or the backtest did (``AlertInterval``): per alert instance
(``Key``: the alert's name and whole label set), its intervals clipped to a range."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from stack import prom
from stack.backtest.model import AlertInterval

Key = tuple[str, tuple[tuple[str, str], ...]]
Spans = dict[Key, list[tuple[float, float]]]


def key(labels: Mapping[str, str]) -> Key:
    return labels["alertname"], tuple(sorted(labels.items()))


def live_spans(url: str, start: float, end: float, interval: float) -> Spans:
    """Firing intervals from the ``ALERTS`` samples of the Prometheus at ``url`` (one per
    evaluation, ``interval`` seconds apart): a gap of more than one evaluation ends one."""
    window = f"{end - start + 60:.0f}s"
    spans: Spans = defaultdict(list)
    for item in prom.query(url, f'ALERTS{{alertstate="firing"}}[{window}]', at=end):
        labels = {k: v for k, v in item["metric"].items() if k not in ("__name__", "alertstate")}
        times = [float(t) for t, _ in item["values"]]
        first = last = times[0]
        for t in [*times[1:], None]:
            if t is not None and t - last <= 1.5 * interval:
                last = t
                continue
            spans[key(labels)].append((first, last + interval))
            if t is not None:
                first = last = t
    return clipped(spans, start, end)


def backtest_spans(intervals: Iterable[AlertInterval], start: float, end: float) -> Spans:
    """The backtest's firing intervals; one still firing ends at ``end``."""
    spans: Spans = defaultdict(list)
    for i in intervals:
        resolved = i.resolved_at if i.resolved_at is not None else end
        spans[key(i.labels)].append((i.fired_at, resolved))
    return clipped(spans, start, end)


def clipped(spans: Spans, start: float, end: float) -> Spans:
    """``spans`` within ``[start, end]``, sorted; instances left with none dropped."""
    out: Spans = {}
    for name, found in spans.items():
        kept = [(max(a, start), min(b, end)) for a, b in sorted(found) if b > start and a < end]
        if kept:
            out[name] = kept
    return out
