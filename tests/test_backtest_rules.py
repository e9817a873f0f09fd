"""The backtest's rule evaluation on a small known history: ``for``, ``keep_firing_for``,
a record feeding an alert, an ALERTS guard, and the bad input that gets one line.

The history is one gauge backfilled into a real Prometheus with promtool, so the firing
intervals can be worked out by hand from the rule manager's rules. Groups of mixed
intervals are compared with a live Prometheus running the same rules."""

from __future__ import annotations

import time

import pytest
import yaml

from stack.backtest.model import BacktestError
from stack.backtest.rules import evaluate
from stack.prom import backfill_openmetrics
from stack.servers import free_port, prometheus_server, running
from tests.support.alert_spans import Spans, backtest_spans, live_spans

STEP = 10
#: A whole hour well in the past (the samples are history, not the head).
T0 = 1_790_000_000 - 1_790_000_000 % 3600
#: Where the gauge is 1 (seconds after T0); 0 elsewhere, every STEP from 0 to 600.
ONES = [(100, 200), (300, 320), (400, 500)]

RULES = f"""
groups:
- name: example
  interval: {STEP}s
  rules:
  - record: job:g:max
    expr: max by (job) (g)
  - alert: Long
    expr: job:g:max > 0
    for: 30s
    labels: {{severity: warning}}
  - alert: Kept
    expr: job:g:max > 0
    keep_firing_for: 40s
  - alert: Guarded
    expr: g > 0 unless on () ALERTS{{alertname="Long", alertstate="firing"}}
"""

#: Worked out from the rule manager's state machine, relative to T0 (fired, resolved).
EXPECTED = {
    # pending at 100 and 300; fires once 30 s have passed; 300-320 is too short.
    "Long": [(130, 200), (430, 500)],
    # fires at once; kept firing while less than 40 s have passed since it stopped.
    "Kept": [(100, 240), (300, 360), (400, 540)],
    # g > 0, but not once Long fires (its own ALERTS, not any live Prometheus').
    "Guarded": [(100, 130), (300, 320), (400, 430)],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("source")
    lines = ["# TYPE g gauge"]
    for t in range(0, 601, STEP):
        value = int(any(a <= t < b for a, b in ONES))
        lines.append(f'g{{job="example",instance="a"}} {value} {T0 + t}')
    backfill_openmetrics("\n".join([*lines, "# EOF", ""]), workdir)
    with running(prometheus_server(workdir)) as server:
        yield server.url


@pytest.fixture(scope="module")
def rule_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "example.yml"
    path.write_text(RULES)
    return path


def test_for_keep_firing_for_records_and_the_alerts_guard(source, rule_file, tmp_path):
    run = evaluate(
        source,
        [rule_file],
        start=T0 + 50,
        end=T0 + 590,
        evaluation_interval=STEP,
        workdir=tmp_path,
    )
    assert run.alertnames == ("Long", "Kept", "Guarded")
    found = {
        name: [(i.fired_at - T0, i.resolved_at - T0) for i in run.intervals if i.alertname == name]
        for name in run.alertnames
    }
    assert found == EXPECTED
    long = [i for i in run.intervals if i.alertname == "Long"]
    assert [i.active_at - T0 for i in long] == [100, 400]
    assert dict(long[0].labels) == {"alertname": "Long", "job": "example", "severity": "warning"}


def test_an_alert_still_firing_at_the_end_has_no_resolution(source, rule_file):
    run = evaluate(source, [rule_file], start=T0 + 50, end=T0 + 450, evaluation_interval=STEP)
    last = {i.alertname: i for i in run.intervals}
    assert last["Long"].fired_at == T0 + 430 and last["Long"].resolved_at is None
    assert last["Guarded"].resolved_at == T0 + 430


def test_an_unreachable_prometheus(rule_file):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BacktestError, match=f"cannot reach Prometheus at {url}"):
        evaluate(url, [rule_file], start=T0, end=T0 + 600)


def test_a_range_with_no_data(source, rule_file):
    with pytest.raises(BacktestError, match="no samples of the metrics the rules read between"):
        evaluate(source, [rule_file], start=T0 - 86400, end=T0 - 80000)


def test_a_rule_that_does_not_parse_is_named(source, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(RULES.replace("max by (job) (g)", "max by (job) (g"))
    with pytest.raises(BacktestError, match=r'a rule does not parse: .*"job:g:max"') as error:
        evaluate(source, [bad], start=T0, end=T0 + 600)
    assert "\n" not in str(error.value)


# --- groups of mixed intervals, against a live Prometheus ---------------------------------

#: A fast group reads a slow group's records (one whose value moves, one that stops) and
#: its own record that stops, as the tickets read the long-window SLO records beside
#: 15 s ones. The clock is the expressions' (time()), the raw series Prometheus' own.
MIXED = """
groups:
- name: slow
  interval: 5s
  rules:
  - record: slow:phase
    expr: group(prometheus_build_info) * 0 + time() % 20
  - record: slow:on
    expr: group(prometheus_build_info) and on () (vector(time() % 20) < 8)
- name: fast
  interval: 1s
  rules:
  - record: fast:phase
    expr: group(prometheus_build_info) * 0 + time() % 20
  - record: fast:on
    expr: group(prometheus_build_info) and on () (vector(time() % 20) >= 12)
  - alert: SlowPhaseHigh
    expr: slow:phase >= 10
  - alert: SlowOn
    expr: slow:on
  - alert: FastOn
    expr: fast:on
"""
#: Seconds recorded live: three cycles of the 20 s clock.
LIVE_SECONDS = 62


def _to_the_hundredth(spans: Spans) -> Spans:
    return {k: [(round(a, 2), round(b, 2)) for a, b in found] for k, found in spans.items()}


@pytest.mark.slow  # a minute of live evaluation
def test_mixed_intervals_match_a_live_prometheus_running_the_same_rules(tmp_path):
    """A fast alert reading a slow group's record sees its latest evaluation (its value,
    and nothing once an evaluation no longer returns it), and a fast record that stops is
    gone at the next fast evaluation, not a slow interval later: the intervals the live
    rule manager found, to the millisecond."""
    rules = tmp_path / "mixed.yml"
    rules.write_text(MIXED)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        ],
    }
    with running(prometheus_server(tmp_path / "live", yaml.safe_dump(config), port)) as live:
        began = time.time()
        time.sleep(LIVE_SECONDS)
        # After the warm-up the backtest needs (the slow interval), before the last
        # evaluations settle.
        start, end = began + 8, time.time() - 2
        found = _to_the_hundredth(live_spans(live.url, start, end, interval=1.0))
        run = evaluate(live.url, [rules], start=start, end=end, workdir=tmp_path / "bt")
    assert {name for name, _ in found} == {"SlowPhaseHigh", "SlowOn", "FastOn"}, found
    assert _to_the_hundredth(backtest_spans(run.intervals, start, end)) == found
