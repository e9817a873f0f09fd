"""The rules over history: every recording and alerting rule evaluated as Prometheus would.

How (``evaluate``):

- A rule that reads only raw series (scraped metrics) is evaluated against the user's
  Prometheus itself, with range queries at its group's interval. That is exactly what the
  rule manager computed live: the same samples, the same staleness markers (the HTTP API
  cannot export them, so any copy of the raw samples would let a stopped series linger for
  the lookback delta), and no copy of the bulk of the data, which is raw samples.
- A rule that reads a recorded series or ``ALERTS`` cannot be: the user's Prometheus holds
  the live rules' outputs under those names, not the backtest's. Those rules are evaluated
  against a scratch Prometheus (``stack.servers.prometheus_server``) that holds only the
  backtest's own outputs, written by promtool's backfill (``stack.prom.backfill_openmetrics``)
  before the rules that read them run. Its ``--query.lookback-delta`` is just under the
  evaluation interval, so an output that stopped is gone at the next evaluation, as the
  live rule manager's staleness markers make it.
- Rules run in stages: a rule's stage is one more than the latest stage of the rules whose
  output it reads (a rule reading ``ALERTS`` reads every alerting rule evaluated before it).
  The scratch Prometheus is restarted with the new blocks between stages.
- ``for`` and ``keep_firing_for`` are kept per label set in Python, over the results of the
  alert's expression at each evaluation, with the rule manager's state machine. The
  evaluation starts a warm-up before ``start`` (the longest ``for`` plus
  ``keep_firing_for`` plus the longest range a guard reads), so an alert already firing
  at ``start`` is found firing there.

Differences from the live rule manager, each within one evaluation interval: every group
is evaluated on the grid of multiples of its interval (Prometheus offsets each group by a
hash of its name); a rule reading ``ALERTS`` of an alert evaluated after it sees it at the
same evaluation, where Prometheus would see the previous one; label templates in a rule's
``labels`` are not expanded.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import re
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alerts.duration import parse_duration
from stack import prom
from stack.backtest.model import AlertInterval, BacktestError, RuleRun
from stack.servers import PrometheusServer, prometheus_server, require_binary
from worker.redact import strip_userinfo

#: query_range answers at most 11,000 points per series; a chunk stays below that.
MAX_STEPS = 10_000
#: Prometheus' default evaluation_interval, when the source's config does not say.
DEFAULT_INTERVAL = 60.0
#: Seconds a range query may take (Prometheus' own default query timeout is 2 minutes).
QUERY_TIMEOUT = 180.0
#: Names the rule manager writes; never read from the source.
ALERTS = "ALERTS"
_RULE_OUTPUTS = {ALERTS, "ALERTS_FOR_STATE"}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d|w|y)(?:\d+(?:ms|s|m|h|d|w|y))*)(?::[^\]]*)?\]")


@dataclass
class _Rule:
    """One rule of a group, with what the staging needs to know about it."""

    order: int
    group: str
    expr: str
    interval_ms: int
    #: Evaluations happen at times ≡ offset_ms modulo interval_ms (the live group's phase).
    offset_ms: int = 0
    record: str | None = None
    alert: str | None = None
    for_ms: int = 0
    keep_firing_ms: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    reads_records: set[str] = field(default_factory=set)
    reads_alerts: bool = False
    stage: int = 0

    @property
    def on_scratch(self) -> bool:
        return bool(self.reads_records) or self.reads_alerts

    def names(self) -> set[str]:
        return set(_NAME.findall(_STRING.sub("", self.expr)))

    def longest_range_ms(self) -> int:
        return max((_ms(parse_duration(d)) for d in _RANGE.findall(self.expr)), default=0)


def evaluate(
    prometheus_url: str,
    rule_files: Sequence[Path],
    *,
    start: float,
    end: float,
    evaluation_interval: float | None = None,
    workdir: Path | None = None,
) -> RuleRun:
    """Every rule of ``rule_files`` over ``[start, end]`` against the Prometheus at
    ``prometheus_url`` (read-only), as its rule manager would have evaluated them.

    ``evaluation_interval``: for groups without an ``interval`` (None: the source's own
    global ``evaluation_interval``, else Prometheus' default 1m). ``workdir``: where the
    scratch Prometheus keeps its data (None: a temporary directory, removed after).
    BacktestError, with one line, for an unreachable Prometheus, a range with no data or
    a rule file that does not parse."""
    if not end > start:
        raise BacktestError(f"the range ends ({end}) before it starts ({start})")
    check_rule_files(rule_files)
    try:
        interval = evaluation_interval or _source_interval(prometheus_url)
        rules = _load(rule_files, _ms(interval))
        _stage(rules)
        _align(prometheus_url, rules)
        start_ms, end_ms = _ms(start), _ms(end)
        raw = _raw_names(prometheus_url, rules, start, end)
        with contextlib.ExitStack() as cleanup:
            if workdir is None:
                workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bt-")))
            intervals = _Evaluation(prometheus_url, rules, raw, workdir, cleanup).run(
                start_ms - _warmup_ms(rules), end_ms
            )
    except prom.PrometheusError as exc:
        raise BacktestError(str(exc)) from None
    alertnames = tuple(dict.fromkeys(r.alert for r in rules if r.alert))
    kept = [i for i in intervals if i.resolved_at is None or i.resolved_at > start]
    kept.sort(key=lambda i: (i.fired_at, i.alertname, sorted(i.labels.items())))
    return RuleRun(start=start, end=end, alertnames=alertnames, intervals=tuple(kept))


def check_rule_files(rule_files: Sequence[Path]) -> None:
    """BacktestError naming the file, group and rule promtool cannot parse."""
    missing = [str(p) for p in rule_files if not Path(p).is_file()]
    if missing:
        raise BacktestError(f"no such rule file: {', '.join(missing)}")
    if not rule_files:
        raise BacktestError("no rule file to backtest")
    checked = subprocess.run(
        [require_binary("promtool"), "check", "rules", *map(str, rule_files)],
        capture_output=True,
        text=True,
    )
    if checked.returncode != 0:
        lines = [line.strip() for line in (checked.stdout + checked.stderr).splitlines()]
        found = [line for line in lines if line and not line.startswith(("Checking", "FAILED"))]
        raise BacktestError(f"a rule does not parse: {found[0] if found else 'promtool failed'}")


# --- the rules and their stages ----------------------------------------------------------


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _source_interval(url: str) -> float:
    """The source Prometheus' global evaluation_interval (its rules ran at it)."""
    config = yaml.safe_load(prom.api(url, "status/config")["yaml"]) or {}
    text = (config.get("global") or {}).get("evaluation_interval")
    return parse_duration(text) if text else DEFAULT_INTERVAL


def _load(rule_files: Sequence[Path], default_interval_ms: int) -> list[_Rule]:
    rules: list[_Rule] = []
    for path in rule_files:
        for group in (yaml.safe_load(Path(path).read_text()) or {}).get("groups") or []:
            interval = group.get("interval")
            interval_ms = _ms(parse_duration(interval)) if interval else default_interval_ms
            for spec in group.get("rules") or []:
                rules.append(
                    _Rule(
                        order=len(rules),
                        group=group["name"],
                        expr=spec["expr"],
                        interval_ms=interval_ms,
                        record=spec.get("record"),
                        alert=spec.get("alert"),
                        for_ms=_ms(parse_duration(spec.get("for") or "0s")),
                        keep_firing_ms=_ms(parse_duration(spec.get("keep_firing_for") or "0s")),
                        labels={k: str(v) for k, v in (spec.get("labels") or {}).items()},
                    )
                )
    return rules


def _stage(rules: list[_Rule]) -> None:
    """Set each rule's stage: after the stages of every rule whose output it reads (the
    records it names, and for a reader of ``ALERTS`` every alerting rule before it)."""
    records = {r.record for r in rules if r.record}
    for rule in rules:
        names = rule.names()
        rule.reads_records = names & records
        rule.reads_alerts = ALERTS in names
    feeding = {
        rule.order: [
            r
            for r in rules
            if r is not rule
            and (r.record in rule.reads_records or (rule.reads_alerts and r.alert))
            and (r.record or r.order < rule.order)
        ]
        for rule in rules
    }
    for _ in rules:  # a fixed point: stages only grow, and a chain is at most this long
        changed = False
        for rule in rules:
            stage = 1 + max((r.stage for r in feeding[rule.order]), default=-1)
            if stage > rule.stage:
                rule.stage, changed = stage, True
        if not changed:
            return
    raise BacktestError("the rules read each other's output in a cycle")


def _align(url: str, rules: Sequence[_Rule]) -> None:
    """Evaluate each group at the instants the source's live group of that name runs at
    (Prometheus offsets every group by a hash of its name and file): exactly, from the
    timestamp of a sample it wrote (a record, or ALERTS of one of its alerts), else from
    its last evaluation's start as /api/v1/rules reports it. Other groups: offset 0."""
    live = {
        g["name"]: g
        for g in (prom.api(url, "rules") or {}).get("groups") or []
        if g.get("lastEvaluation", "").startswith(tuple("123456789"))
    }
    for name in dict.fromkeys(r.group for r in rules):
        if name not in live:
            continue
        members = [r for r in rules if r.group == name]
        step = members[0].interval_ms
        if _ms(float(live[name].get("interval") or 0)) != step:
            continue  # the live group runs at another interval: no phase to follow
        records = [r.record for r in members if r.record]
        alerts = "|".join(re.escape(r.alert) for r in members if r.alert)
        probes = [f"timestamp({records[0]})"] if records else []
        probes += [f'timestamp(ALERTS{{alertname=~"{alerts}"}})'] if alerts else []
        stamps = [float(item["value"][1]) for p in probes[:2] for item in prom.query(url, p)[:1]]
        at = _ms(stamps[0]) if stamps else _parse_time_ms(live[name]["lastEvaluation"])
        for rule in members:
            rule.offset_ms = at % step


def _parse_time_ms(text: str) -> int:
    """RFC 3339 with up to nanoseconds (Go's time format) as Unix milliseconds."""
    trimmed = re.sub(r"(\.\d{1,6})\d*", r"\1", text).replace("Z", "+00:00")
    return _ms(dt.datetime.fromisoformat(trimmed).timestamp())


def _warmup_ms(rules: Sequence[_Rule]) -> int:
    """How long before ``start`` evaluation begins, so state at ``start`` is as it was."""
    hold = max((r.for_ms + r.keep_firing_ms for r in rules if r.alert), default=0)
    guard = max((r.longest_range_ms() for r in rules if r.on_scratch), default=0)
    return hold + guard + max(r.interval_ms for r in rules)


def _raw_names(url: str, rules: Sequence[_Rule], start: float, end: float) -> set[str]:
    """The source's metric names with samples in the range that the rules read (never the
    names the rules write); BacktestError when the rules read none of them."""
    outputs = {r.record for r in rules if r.record} | _RULE_OUTPUTS
    wanted = set().union(*(r.names() for r in rules)) - outputs
    present = set(prom.api(url, "label/__name__/values", {"start": start, "end": end}) or [])
    found = wanted & present
    if not found:
        shown = strip_userinfo(url)
        raise BacktestError(
            f"Prometheus at {shown} has no samples of the metrics the rules read between "
            f"{_rfc3339(start)} and {_rfc3339(end)}"
        )
    return found


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


# --- the evaluation ----------------------------------------------------------------------


Series = dict[tuple[tuple[str, str], ...], list[tuple[int, str]]]


class _Evaluation:
    """Runs the stages in order; owns the scratch Prometheus and what was written to it."""

    def __init__(self, source, rules, raw, workdir: Path, cleanup: contextlib.ExitStack):
        self.source, self.rules, self.raw = source, rules, raw
        self.workdir = workdir / "scratch"
        self.cleanup = cleanup
        self.scratch: PrometheusServer | None = None
        self.pending: dict[str, Series] = defaultdict(dict)
        self.alerts_read = any(r.reads_alerts for r in rules)

    def run(self, start_ms: int, end_ms: int) -> list[AlertInterval]:
        intervals: list[AlertInterval] = []
        if any(r.on_scratch and (r.names() & self.raw) for r in self.rules):
            self._export_raw(start_ms, end_ms)
        for stage in sorted({r.stage for r in self.rules}):
            for rule in [r for r in self.rules if r.stage == stage]:
                url = self._scratch_url() if rule.on_scratch else self.source
                result = _query_grid(url, rule, start_ms, end_ms)
                if rule.record:
                    self._write(rule.record, _relabel(result, rule.labels))
                else:
                    labels = {**rule.labels, "alertname": rule.alert}
                    spans = _alert_spans(_relabel(result, labels), rule, end_ms)
                    intervals += [s.interval() for s in spans if s.fired_at is not None]
                    if self.alerts_read:
                        self._write_alerts(spans, rule.interval_ms, end_ms)
            self._flush()
        return intervals

    def _scratch_url(self) -> str:
        if self.scratch is None or not self.scratch.running:
            self._start_scratch()
        return self.scratch.url

    def _start_scratch(self) -> None:
        # Just under the longest interval: a rule sees the latest output of a group
        # evaluated at that interval, and no output older than one evaluation.
        lookback = max(r.interval_ms for r in self.rules)
        server = prometheus_server(
            self.workdir,
            "scrape_configs: []\n",
            None,
            f"--query.lookback-delta={max(lookback - 1, 1)}ms",
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=200000000",
            f"--query.timeout={int(QUERY_TIMEOUT)}s",
        )
        server.start(timeout=60)
        self.cleanup.callback(server.stop)
        self.scratch = server

    def _write(self, name: str, series: Series) -> None:
        target = self.pending[name]
        for key, samples in series.items():
            target.setdefault(key, []).extend(samples)

    def _write_alerts(self, spans: Iterable[_Span], interval_ms: int, end_ms: int) -> None:
        """ALERTS as the rule manager writes it: 1 per evaluation, per state."""
        for span in spans:
            for state, times in span.states(interval_ms, end_ms):
                key = tuple(sorted({**span.labels, "alertstate": state}.items()))
                self.pending[ALERTS].setdefault(key, []).extend((t, "1") for t in times)

    def _flush(self) -> None:
        """Backfill what this stage wrote, and restart the scratch Prometheus on it."""
        if not any(self.pending.values()):
            return
        if self.scratch is not None:
            self.scratch.stop()
        prom.backfill_openmetrics(_openmetrics(self.pending), self.workdir)
        self.pending.clear()

    def _export_raw(self, start_ms: int, end_ms: int) -> None:
        """Copy the raw series that scratch rules read (as samples, without staleness)."""
        names = set().union(*(r.names() & self.raw for r in self.rules if r.on_scratch))
        longest = max(r.longest_range_ms() for r in self.rules) + 5 * 60_000
        chunk = 3_600_000
        for name in sorted(names):
            for to in range(start_ms - longest + chunk, end_ms + chunk, chunk):
                window = f"{{__name__={_quote(name)}}}[{chunk}ms]"
                for item in prom.query(self.source, window, to / 1000, QUERY_TIMEOUT):
                    points = [(_ms(float(t)), v) for t, v in item["values"]]
                    self.pending[name].setdefault(_key(item), []).extend(points)
        self._flush()


def _key(item: Mapping) -> tuple[tuple[str, str], ...]:
    """A result's label set without ``__name__``, sorted: the series' identity here."""
    return tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__"))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _query_grid(url: str, rule: _Rule, start_ms: int, end_ms: int) -> Series:
    """The rule's expression at each of its evaluations in the range: label set (without
    ``__name__``) -> [(time ms, value text)], chunked below query_range's limit."""
    step_ms, expr = rule.interval_ms, rule.expr
    first = start_ms + (rule.offset_ms - start_ms) % step_ms
    out: Series = {}
    for chunk_start in range(first, end_ms + 1, step_ms * MAX_STEPS):
        chunk_end = min(chunk_start + step_ms * (MAX_STEPS - 1), end_ms)
        found = prom.query_range(
            url, expr, chunk_start / 1000, chunk_end / 1000, step_ms / 1000, QUERY_TIMEOUT
        )
        for item in found:
            out.setdefault(_key(item), []).extend((_ms(float(t)), v) for t, v in item["values"])
    return out


def _relabel(series: Series, labels: Mapping[str, str]) -> Series:
    """The rule's ``labels`` over the expression's (as the rule manager sets them)."""
    if not labels:
        return series
    out: Series = {}
    for key, samples in series.items():
        merged = tuple(sorted({**dict(key), **labels}.items()))
        out.setdefault(merged, []).extend(samples)
    return out


@dataclass(frozen=True)
class _Span:
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


def _alert_spans(series: Series, rule: _Rule, end_ms: int) -> list[_Span]:
    """The rule manager's state machine per label set (rules/alerting.go): pending at the
    first evaluation that returns it, firing once ``for`` has passed, kept firing until
    ``keep_firing_for`` has passed since the expression stopped returning it, then
    resolved; a pending one that is no longer returned is dropped."""
    step = rule.interval_ms
    spans = []
    for key, samples in series.items():
        labels = dict(key)
        present = sorted({t for t, _ in samples})
        returned = set(present)
        active_at = fired_at = absent_since = None
        t = present[0]
        while t <= end_ms:
            if t in returned:
                absent_since = None
                active_at = t if active_at is None else active_at
                if fired_at is None and t - active_at >= rule.for_ms:
                    fired_at = t
            elif fired_at is None:
                spans.append(_Span(labels, active_at, None, t))
                active_at = None
            else:
                absent_since = t if absent_since is None else absent_since
                if t - absent_since >= rule.keep_firing_ms:
                    spans.append(_Span(labels, active_at, fired_at, t))
                    active_at = fired_at = absent_since = None
            if active_at is None:
                later = bisect.bisect_right(present, t)
                if later == len(present):
                    break
                t = present[later]
            else:
                t += step
        if active_at is not None:
            spans.append(_Span(labels, active_at, fired_at, None))
    return spans


def _openmetrics(outputs: Mapping[str, Series]) -> str:
    """Samples as OpenMetrics text with timestamps, each family together, for promtool."""
    lines = []
    for name, series in outputs.items():
        for key, samples in series.items():
            labels = ",".join(f"{k}={_quote(v)}" for k, v in key)
            head = f"{name}{{{labels}}}" if labels else name
            lines.extend(f"{head} {v} {t / 1000:.3f}" for t, v in sorted(dict(samples).items()))
    lines.append("# EOF\n")
    return "\n".join(lines)
