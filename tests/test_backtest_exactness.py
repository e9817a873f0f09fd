"""Backtest exactness: ``stack.backtest.rules.evaluate`` finds the firing intervals the live
rule manager found, on the same history.

One twin of the stack (e2e-scaled rules, evaluated and scraped every second) runs three
faults: a killed replica (WorkerDown), a failing backend (HighJobFailureRate, fed by
recording rules), and Redis stopped (RedisDisconnected, while the reconnect storm it
causes is held back by HighRedisReconnectAttempts' ALERTS guard). A second Prometheus
scrapes the same targets with one threshold changed. The ground truth is each
Prometheus' own ALERTS series; the backtest reads only the twin's Prometheus.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from alerts.duration import parse_duration
from alerts.render import load_config, record_names, render_rules
from stack import prom
from stack.backtest.alertmanager import simulate
from stack.backtest.rules import evaluate
from stack.loadgen import set_simulation
from stack.servers import prometheus_server
from stack.twin import LocalStack
from tests.support.alert_spans import Spans, backtest_spans, live_spans
from tests.support.e2e import (
    ALERT_OVERRIDES,
    ALERTMANAGER_OVERRIDES,
    ALERTMANAGER_TIMING,
    NAMESPACE,
    WATCHDOG,
    alerting_twin,
    wait_for,
)
from tests.support.jobs import client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

#: The twin's evaluation interval: the tolerance of every comparison.
INTERVAL = 1.0
#: The twin's scrape interval.
SCRAPE = 1.0
#: The changed threshold: above the backend's 50 % failures, so the variant stays silent.
VARIANT = {"alerts": {"HighJobFailureRate": {"threshold": 0.8}}}
#: The e2e timings, but RedisDisconnected fires before the reconnect storm it causes
#: crosses its threshold (3 s let a storm fire first, by a second that depends on when
#: each Prometheus scraped: then only the ALERTS guard holds the storm back).
OVERRIDES = {
    **ALERT_OVERRIDES,
    "alerts": {**ALERT_OVERRIDES["alerts"], "RedisDisconnected": {"for": "1s"}},
}
#: Alertmanager's timings, half a second off the 1 s evaluation grid: a group flushes
#: between two evaluations, never at the instant the posts of one arrive. There the real
#: Alertmanager takes whichever comes first by milliseconds, a race no simulation can
#: call: with the e2e timings (1 s and 8 s), two RedisDisconnected firing a second apart
#: were notified in one flush in most runs and in two in another.
TIMING = {**ALERTMANAGER_TIMING, "group_wait": "1500ms"}
ROUTE_OVERRIDES = {"route": {**ALERTMANAGER_OVERRIDES["route"], "group_wait": "8500ms"}}
#: How long a fault that resolves fast is kept once its alert fires: the pager's group_wait
#: and one group_interval.
HOLD = parse_duration(TIMING["group_wait"]) + parse_duration(TIMING["group_interval"])
RECORDS = record_names(OVERRIDES)
RECONNECTS = load_config(OVERRIDES)["alerts"]["HighRedisReconnectAttempts"]["threshold"]

#: Notifications this close to the range's ends may fall on either side of it (the
#: Watchdog's): both sides leave them out.
EDGE = 3.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The recorded run: the twin (kept until the module ends, its Prometheus is the
    backtest's source), the variant's Prometheus, and the range of the faults."""
    base, variant = tmp_path_factory.mktemp("rules"), tmp_path_factory.mktemp("variant")
    render_rules(OVERRIDES, base)
    render_rules(_merged(OVERRIDES, VARIANT), variant)
    stacks = []

    def twin(name, **options):
        stack = LocalStack(tmp_path_factory.mktemp(name), **options)
        stacks.append(stack)
        return stack.start(timeout=60)

    try:
        stack = alerting_twin(
            twin, "backtest", base, seed=3, timing=TIMING, overrides=ROUTE_OVERRIDES
        )
        shadow = _variant_prometheus(stack, variant, tmp_path_factory.mktemp("shadow"))
        try:
            start, end, storm = _faults(stack, shadow.url)
            # What the backtest reads is recorded: the load can stop (the CPU is shared).
            stack.loadgen.stop()
            yield {
                "source": stack.prometheus.url,
                "alertmanager_config": yaml.safe_load(
                    (Path(stack.run_dir) / "alertmanager" / "alertmanager.yml").read_text()
                ),
                "received": stack.alerts(),
                "shadow": shadow.url,
                "base": sorted(base.glob("*.yml")),
                "variant": sorted(variant.glob("*.yml")),
                "start": start,
                "end": end,
                "storm": storm,
            }
        finally:
            shadow.stop()
    finally:
        for stack in stacks:
            stack.stop()


def _merged(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for section, alerts in extra.items():
        for name, fields in alerts.items():
            out[section][name] = {**out[section].get(name, {}), **fields}
    return out


def _variant_prometheus(stack: LocalStack, rules: Path, workdir: Path):
    """The twin's Prometheus config with the variant's rules and no Alertmanager."""
    config = yaml.safe_load((Path(stack.run_dir) / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(p) for p in sorted(rules.glob("*.yml"))]
    config.pop("alerting", None)
    shadow = prometheus_server(workdir, yaml.safe_dump(config, sort_keys=False))
    shadow.start(timeout=60)
    try:
        wait_for(
            lambda: len(prom.query(shadow.url, 'up{job="worker"} == 1')) == len(stack.replicas),
            30,
            "the variant's Prometheus scrapes every replica",
        )
    except BaseException:
        shadow.stop()
        raise
    return shadow


def _firing(url: str, alertname: str) -> list[dict]:
    return prom.query(url, f'ALERTS{{alertname="{alertname}", alertstate="firing"}}')


def _quiet(url: str) -> bool:
    return not prom.query(url, f'ALERTS{{alertname!="{WATCHDOG}"}}')


def _faults(stack: LocalStack, shadow: str) -> tuple[float, float, float]:
    """Inject the three faults one after the other, each until the live rules fired and
    resolved; return the range and the highest reconnect count the storm reached."""
    source = stack.prometheus.url
    redis = client(stack.redis.url)
    wait_for(lambda: _quiet(source) and _quiet(shadow), 60, "both Prometheus quiet")
    start = _now() + 1  # after the check: no alert of either is still firing then
    # The first fault no nearer the range's start than the edge it ignores (ends' EDGE).
    wait_for(lambda: _now() >= start + 2 * EDGE, 2 * EDGE + 5, "the range's quiet lead-in")

    # 1. A killed replica: WorkerDown.
    stack.kill_replica(0)
    wait_for(lambda: _firing(source, "WorkerDown"), 30, "WorkerDown firing")
    # Held past the pager's group_wait: an alert resolved sooner is sent (firing, then
    # resolved) only if it joined a group an earlier WorkerDown left (Alertmanager removes
    # empty groups every 30 s, a state no backtest can know), and nothing otherwise.
    time.sleep(HOLD)
    stack.start_replica(0)
    wait_for(lambda: not _firing(source, "WorkerDown"), 30, "WorkerDown resolved")

    # 2. A failing backend: HighJobFailureRate, read from recorded failure ratios.
    set_simulation(redis, NAMESPACE, {"failure_ratio": 0.5})
    wait_for(lambda: _firing(source, "HighJobFailureRate"), 60, "HighJobFailureRate firing")
    set_simulation(redis, NAMESPACE, {}, reset=True)
    wait_for(lambda: _quiet(source), 60, "HighJobFailureRate resolved")

    # 3. Redis stopped: RedisDisconnected; the reconnect storm it causes stays explained.
    stack.loadgen.stop()
    stack.stop_redis()
    storm = f"max({RECORDS['reconnects']})"

    def stormed() -> bool:
        found = prom.query(source, storm)
        return bool(found) and float(found[0]["value"][1]) > RECONNECTS

    wait_for(lambda: len(_firing(source, "RedisDisconnected")) == 2, 30, "RedisDisconnected")
    wait_for(stormed, 30, f"more than {RECONNECTS} reconnect attempts in the window")
    stack.start_redis()
    stack.loadgen.start(timeout=0.5)
    wait_for(lambda: not _firing(source, "RedisDisconnected"), 30, "RedisDisconnected resolved")
    wait_for(lambda: not stormed() and _quiet(source) and _quiet(shadow), 90, "quiet again")
    # Every notification of the last fault in, and the range's end clear of it.
    settled = time.time()
    wait_for(
        lambda: time.time() - max(_received_times(stack), default=settled) >= 2 * EDGE,
        60,
        "the receiver quiet for twice the edge",
    )
    end = _now()
    highest = prom.query(source, f"max(max_over_time({RECORDS['reconnects']}[{end - start:.0f}s]))")
    return start, end, float(highest[0]["value"][1])


def _received_times(stack: LocalStack) -> list[float]:
    """When the receiver got each notification but the Watchdog's (Unix seconds)."""
    return [
        dt.datetime.fromisoformat(r["received_at"]).timestamp()
        for r in stack.alerts()
        if r["alertname"] != WATCHDOG
    ]


def _now() -> float:
    """On a whole second (Prometheus runs on this machine's clock)."""
    return float(int(time.time()))


def _mismatches(live: Spans, backtest: Spans, tolerance: float = INTERVAL) -> list[str]:
    """Every alert instance whose intervals differ by more than ``tolerance`` (one
    evaluation interval)."""
    problems = []
    for key in sorted(set(live) | set(backtest)):
        a, b = live.get(key, []), backtest.get(key, [])
        close = len(a) == len(b) and all(
            abs(x0 - y0) <= tolerance + 1e-3 and abs(x1 - y1) <= tolerance + 1e-3
            for (x0, x1), (y0, y1) in zip(a, b, strict=True)
        )
        if not close:
            problems.append(f"{dict(key[1])}: live {a}, backtest {b}")
    return problems


def _names(spans: Spans) -> set[str]:
    return {name for name, _ in spans}


@pytest.fixture(scope="module")
def backtest(run):
    """The committed rules (as the twin ran them) backtested over the run."""
    return evaluate(run["source"], run["base"], start=run["start"], end=run["end"])


def test_the_backtest_finds_every_firing_interval_the_live_rules_found(run, backtest, report):
    start, end = run["start"], run["end"]
    live = live_spans(run["source"], start, end, INTERVAL)
    result = backtest
    backtest = backtest_spans(result.intervals, start, end)

    report.line(
        "Backtest exactness (twin, 1 s evaluations)",
        "; ".join(f"{k[0]}: live {live.get(k)} backtest {backtest.get(k)}" for k in sorted(live)),
    )
    assert {"WorkerDown", "HighJobFailureRate", "RedisDisconnected"} <= _names(live), live
    assert _mismatches(live, backtest) == []
    assert "HighRedisReconnectAttempts" in result.alertnames
    assert len(result.alertnames) == len(set(result.alertnames))


def test_the_alerts_guard_reads_the_backtests_own_alerts(run, backtest):
    """While (and a guard window after) the backtest's own RedisDisconnected fires for a
    replica, its reconnect storm is over HighRedisReconnectAttempts' threshold, yet that
    alert does not fire there: the guard read the backtest's ALERTS."""
    guard = parse_duration(OVERRIDES["alerts"]["HighRedisReconnectAttempts"]["window"])
    pages = [i for i in backtest.intervals if i.alertname == "RedisDisconnected"]
    assert pages
    for page in pages:
        instance = page.labels["instance"]
        until = min((page.resolved_at or run["end"]) + guard, run["end"])
        held = prom.query(
            run["source"],
            f'max_over_time({RECORDS["reconnects"]}{{instance="{instance}"}}'
            f"[{until - page.fired_at:.0f}s])",
            at=until,
        )
        assert float(held[0]["value"][1]) > RECONNECTS, (instance, held)
        overlapping = [
            i
            for i in backtest.intervals
            if i.alertname == "HighRedisReconnectAttempts"
            and i.labels["instance"] == instance
            and (i.resolved_at or run["end"]) > page.fired_at + INTERVAL + 1e-3
            and i.fired_at < until
        ]
        assert overlapping == [], (page, overlapping)


def test_a_changed_threshold_differs_as_a_live_run_with_it_did(run, backtest, tmp_path):
    """The variant backtested on the twin's history matches the variant's own Prometheus,
    which ran beside it: the difference is what the threshold really changed."""
    start, end = run["start"], run["end"]
    live_base = live_spans(run["source"], start, end, INTERVAL)
    live_variant = live_spans(run["shadow"], start, end, INTERVAL)
    base = backtest_spans(backtest.intervals, start, end)
    result = evaluate(run["source"], run["variant"], start=start, end=end, workdir=tmp_path)
    variant = backtest_spans(result.intervals, start, end)
    # The variant's Prometheus scraped at its own instants, up to one scrape interval
    # (1 s) apart from the history the backtest reads: a fault can reach it a scrape later.
    assert _mismatches(live_variant, variant, tolerance=INTERVAL + SCRAPE) == []
    # The failure rate of 50 % crossed 10 %, not 80 %: only HighJobFailureRate goes.
    assert _names(live_base) - _names(live_variant) == {"HighJobFailureRate"}
    assert _names(base) - _names(variant) == {"HighJobFailureRate"}
    assert _names(variant) - _names(base) == set()


def _received(
    records: list[dict], start: float, end: float, before: set[str]
) -> dict[str, list[tuple]]:
    """The receiver's notifications per receiver, in order: (time, status, alert names)."""
    by_id: dict[str, list[dict]] = {}
    for record in records:
        if record["alertname"] in before:
            continue
        by_id.setdefault(record["notification"], []).append(record)
    out: dict[str, list[tuple]] = defaultdict(list)
    for alerts in by_id.values():
        at = dt.datetime.fromisoformat(alerts[0]["received_at"]).timestamp()
        if start + EDGE <= at <= end - EDGE:
            status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
            names = tuple(sorted({a["alertname"] for a in alerts}))
            out[alerts[0]["receiver"]].append((at, status, names))
    return out


def _simulated(notifications, start: float, end: float, before: set[str]) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = defaultdict(list)
    for n in notifications:
        if n.alertnames <= before:
            continue
        # The receiver stamps whole seconds: compare on the same clock.
        at = float(int(n.at))
        if start + EDGE <= at <= end - EDGE:
            out[n.receiver].append((at, n.status, tuple(sorted(n.alertnames))))
    return out


def test_the_notifications_match_what_the_receiver_got(run, backtest, report):
    """The backtest's firing intervals, through the twin's own Alertmanager config,
    give the notifications the receiver got: per receiver the same count, in the same
    order, each with the same status and alerts, at the same time within a second of
    evaluation and a second of the receiver's clock."""
    start, end = run["start"], run["end"]
    sent = simulate(
        run["alertmanager_config"],
        backtest.intervals,
        start=start,
        end=end,
        evaluation_interval=INTERVAL,
    )
    # An alert firing since before the range (the Watchdog) was first notified then: its
    # repeats keep a phase the range cannot show, so its notifications are not compared.
    before = {i.alertname for i in backtest.intervals if i.fired_at < start}
    assert before == {WATCHDOG}, before
    live = _received(run["received"], start, end, before)
    simulated = _simulated(sent, start, end, before)
    for receiver in sorted(set(live) | set(simulated)):
        report.row(
            "Backtest exactness (twin, 1 s evaluations)",
            ["receiver", "notifications received", "notifications simulated"],
            [receiver, len(live.get(receiver, [])), len(simulated.get(receiver, []))],
        )
    assert {"pager", "chat"} <= set(live), live
    for receiver in sorted(set(live) | set(simulated)):
        got, want = live.get(receiver, []), simulated.get(receiver, [])
        assert [n[1:] for n in got] == [n[1:] for n in want], (receiver, got, want)
        late = [(a[0], b[0]) for a, b in zip(got, want, strict=True) if abs(a[0] - b[0]) > 2]
        assert late == [], (receiver, late)
