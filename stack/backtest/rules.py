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
  grid step, the greatest common divisor of the groups' intervals (the interval itself
  when they share one), so an output that stopped is gone at the next evaluation, as the
  live rule manager's staleness markers make it. The outputs of a slower group (the
  long-window SLO records, every 2m30s beside 15 s) are written forward-filled on that
  grid: at each step the value of the group's latest evaluation, while the series was
  present at it. A reader then sees at any instant what it would live (the latest
  evaluation's value, gone at the evaluation that no longer returns it), whatever the
  readers' own intervals and phases.
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
``labels`` are not expanded. Not within an interval: a range selector over a slower
group's output (``max_over_time(slow_record[1h])``) reads its forward-filled copies, not
only its evaluations (an instant selector, as every committed rule reads a record, is
exact).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from alerts.duration import parse_duration
from stack import prom
from stack.backtest.alert_state import Returned, Span, alert_spans
from stack.backtest.model import AlertInterval, BacktestError, RuleRun
from stack.servers import PrometheusServer, prometheus_server, require_binary
from worker.redact import strip_userinfo

#: query_range answers at most 11,000 points per series; a chunk stays below that.
MAX_STEPS = 10_000
#: Prometheus' default evaluation_interval, when the source's config does not say.
DEFAULT_INTERVAL = 60.0
#: Seconds a range query may take (Prometheus' own default query timeout is 2 minutes).
QUERY_TIMEOUT = 180.0
#: Range queries run at once (Prometheus runs them in parallel; this machine has 2 cores).
QUERY_WORKERS = max(2, os.cpu_count() or 2)
#: promtool reads its input once per block: blocks of up to 20 days make that one pass.
BLOCK_DURATION = "486h"
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


def _needed(rules: Sequence[_Rule]) -> list[_Rule]:
    """The alerting rules and the records they read, directly or through other records:
    a record nothing reads (a dashboard's, an annotation's) cannot change an alert."""
    wanted = set().union(*(r.reads_records for r in rules if r.alert))
    while True:
        more = set().union(*(r.reads_records for r in rules if r.record in wanted)) - wanted
        if not more:
            return [r for r in rules if r.alert or r.record in wanted]
        wanted |= more


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


class _Evaluation:
    """Runs the stages in order; owns the scratch Prometheus and what is written to it.

    Outputs go to OpenMetrics files as the range queries answer (a week of a histogram's
    records does not fit in memory as Python objects), backfilled at the end of a stage."""

    def __init__(self, source, rules, raw, workdir: Path, cleanup: contextlib.ExitStack):
        self.source, self.rules, self.raw = source, rules, raw
        self.workdir = workdir / "scratch"
        self.outputs = workdir / "outputs"
        self.outputs.mkdir(parents=True, exist_ok=True)
        self.cleanup = cleanup
        self.scratch: PrometheusServer | None = None
        self.alerts_read = any(r.reads_alerts for r in rules)
        #: Every output is written at least this often (forward-filled), and the scratch
        #: Prometheus' lookback delta is just under it (module docstring).
        self.grid_ms = math.gcd(*{r.interval_ms for r in rules})

    def run(self, start_ms: int, end_ms: int) -> list[AlertInterval]:
        intervals: list[AlertInterval] = []
        needed = _needed(self.rules)
        if any(r.on_scratch and (r.names() & self.raw) for r in needed):
            self._export_raw(needed, start_ms, end_ms)
        for stage in sorted({r.stage for r in needed}):
            rules = [r for r in needed if r.stage == stage]
            if any(r.on_scratch for r in rules):
                self._scratch_url()
            with ThreadPoolExecutor(max_workers=QUERY_WORKERS) as pool:
                results = list(pool.map(lambda r: self._evaluate(r, start_ms, end_ms), rules))
            with self._output("ALERTS") as out:
                for rule, returned in zip(rules, results, strict=True):
                    if rule.alert:
                        spans = alert_spans(
                            returned,
                            step_ms=rule.interval_ms,
                            for_ms=rule.for_ms,
                            keep_firing_ms=rule.keep_firing_ms,
                            end_ms=end_ms,
                        )
                        intervals += [s.interval() for s in spans if s.fired_at is not None]
                        if self.alerts_read:
                            _write_alerts(out, spans, self.grid_ms, end_ms)
            self._flush()
        return intervals

    def _evaluate(self, rule: _Rule, start_ms: int, end_ms: int) -> Returned:
        """Run one rule over the range: a record's samples to its output file, an alert's
        label sets (with the rule's labels) returned."""
        url = self.scratch.url if rule.on_scratch else self.source
        returned: Returned = {}
        labels = rule.labels if rule.record else {**rule.labels, "alertname": rule.alert}
        with self._output(f"rule-{rule.order}") as out:
            for item in _query_grid(url, rule, start_ms, end_ms):
                key = tuple(sorted({**dict(_key(item)), **labels}.items()))
                if rule.record:
                    copies = rule.interval_ms // self.grid_ms
                    _write_samples(out, rule.record, key, item["values"], self.grid_ms, copies)
                else:
                    returned.setdefault(key, []).extend(_ms(float(t)) for t, _ in item["values"])
        return returned

    @contextlib.contextmanager
    def _output(self, name: str) -> Iterator[TextIO]:
        with open(self.outputs / f"{name}.om", "w") as out:
            yield out
            out.write("# EOF\n")

    def _scratch_url(self) -> str:
        if self.scratch is None:
            self._start_scratch()
        elif not self.scratch.running:
            self.scratch.start(timeout=60)
        return self.scratch.url

    def _start_scratch(self) -> None:
        # Just under the grid step: an output is written at every step while it exists,
        # and the lookback [t - step + 1 ms, t] holds exactly one step, so no output
        # outlives the evaluation that stopped it.
        server = prometheus_server(
            self.workdir,
            "scrape_configs: []\n",
            None,
            f"--query.lookback-delta={max(self.grid_ms - 1, 1)}ms",
            "--storage.tsdb.retention.time=100y",
            "--query.max-samples=200000000",
            f"--query.timeout={int(QUERY_TIMEOUT)}s",
        )
        server.start(timeout=60)
        self.cleanup.callback(server.stop)
        self.scratch = server

    def _flush(self) -> None:
        """Backfill what this stage wrote (the scratch Prometheus restarts on it when a
        later stage reads it)."""
        files = [f for f in self.outputs.glob("*.om") if f.stat().st_size > len("# EOF\n")]
        if files and self.scratch is not None:
            self.scratch.stop()

        def backfill(path: Path) -> None:
            prom.backfill_openmetrics_file(path, self.workdir, max_block_duration=BLOCK_DURATION)

        with ThreadPoolExecutor(max_workers=QUERY_WORKERS) as pool:
            list(pool.map(backfill, files))
        for path in self.outputs.glob("*.om"):
            path.unlink()

    def _export_raw(self, rules: Sequence[_Rule], start_ms: int, end_ms: int) -> None:
        """Copy the raw series that scratch rules read (as samples, without staleness)."""
        names = set().union(*(r.names() & self.raw for r in rules if r.on_scratch))
        longest = max(r.longest_range_ms() for r in rules) + 5 * 60_000
        chunk = 3_600_000
        for name in sorted(names):
            with self._output(f"raw-{name}") as out:
                for to in range(start_ms - longest + chunk, end_ms + chunk, chunk):
                    window = f"{{__name__={_quote(name)}}}[{chunk - 1}ms]"
                    for item in prom.query(self.source, window, to / 1000, QUERY_TIMEOUT):
                        _write_samples(out, name, _key(item), item["values"])
        self._flush()


def _write_samples(
    out: TextIO, name: str, key, values: Iterable, step_ms: int = 0, copies: int = 1
) -> None:
    """One series' samples as OpenMetrics lines (values as Prometheus wrote them), each
    repeated ``copies`` times ``step_ms`` apart: forward-filled until the next evaluation."""
    labels = ",".join(f"{k}={_quote(v)}" for k, v in key)
    head = f"{name}{{{labels}}}" if labels else name
    out.writelines(
        f"{head} {v} {(_ms(float(t)) + k * step_ms) / 1000:.3f}\n"
        for t, v in values
        for k in range(copies)
    )


def _write_alerts(out: TextIO, spans: Iterable[Span], step_ms: int, end_ms: int) -> None:
    """ALERTS as the rule manager writes it, per state: 1 at every step of the grid from
    the evaluation that set the state to the one that changed it."""
    for span in spans:
        for state, times in span.states(step_ms, end_ms):
            key = tuple(sorted({**span.labels, "alertstate": state}.items()))
            _write_samples(out, ALERTS, key, [(t / 1000, "1") for t in times])


def _key(item: Mapping) -> tuple[tuple[str, str], ...]:
    """A result's label set without ``__name__``, sorted: the series' identity here."""
    return tuple(sorted((k, v) for k, v in item["metric"].items() if k != "__name__"))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _query_grid(url: str, rule: _Rule, start_ms: int, end_ms: int) -> Iterator[dict]:
    """The rule's expression at each of its evaluations in the range, a result series
    (``metric``, ``values``) at a time, chunked below query_range's limit."""
    step_ms, expr = rule.interval_ms, rule.expr
    first = start_ms + (rule.offset_ms - start_ms) % step_ms
    for chunk_start in range(first, end_ms + 1, step_ms * MAX_STEPS):
        chunk_end = min(chunk_start + step_ms * (MAX_STEPS - 1), end_ms)
        yield from prom.query_range(
            url, expr, chunk_start / 1000, chunk_end / 1000, step_ms / 1000, QUERY_TIMEOUT
        )
