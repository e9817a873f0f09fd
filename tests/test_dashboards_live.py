"""Every panel of every dashboard shows data from a real worker scraped by a real Prometheus.

One worker replica (2 processes) runs a short simulated load with failures, retries,
dead letters and rate-limit throttling; Prometheus scrapes it every second and evaluates
the repository's rules every second. Each target of each panel is then sent to
Prometheus with the dashboard variables substituted as Grafana would, and must return at
least one finite sample: no panel says "No data".
"""

from __future__ import annotations

import json
import math

import pytest

from dashboards import promql
from dashboards.render import GENERATED_DIR
from stack.fleet import simulated_fleet
from stack.prom import query

RATE_LIMITER_PANEL = 13
RATE_LIMITER_EVENT = 'sum(rate(worker_rate_limit_decisions_total{decision="throttled"}[1m])) > 0'

#: Series that exist only after specific events; the load waits for each before checking.
EVENTS = [
    'queue_job_type:worker_jobs_failed_per_started:ratio_rate5m{job_type="agent.run"} >= 0',
    "sum(queue_job_type:worker_jobs_retried:rate5m) > 0",
    "sum(queue_job_type:worker_jobs_dead_lettered:rate5m) > 0",
    'worker_queue_messages{state="dead"} > 0',
    "queue_job_type:worker_job_duration_seconds:quantile_rate10m",
    'deriv(queue_state:worker_queue_messages:max{state="ready"}[5m])',
    "instance:worker_redis_reconnect_attempts:increase10m",
    RATE_LIMITER_EVENT,
]


def load(uid: str) -> dict:
    return json.loads((GENERATED_DIR / f"{uid}.json").read_text())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with simulated_fleet(tmp_path_factory.mktemp("fleet")) as fleet:
        fleet.send_batch(6)
        fleet.start_load(per_second=2)
        for expr in EVENTS:
            fleet.wait_for(expr, timeout=60)
        yield fleet


def empty_targets(fleet, dashboard: dict, selection: dict, panels=None) -> list[str]:
    """Targets of ``dashboard`` that return no finite sample, with what was sent; all
    panels but the rate limiter's (tested on its own below), or only ``panels``."""
    variables = promql.dashboard_variables(dashboard, selection)
    missing = []
    for t in promql.targets(dashboard):
        if t.panel_id not in (panels or {t.panel_id} - {RATE_LIMITER_PANEL}):
            continue
        expr = promql.interpolate(t.expr, variables, rate_interval="1m", interval="15s")
        result = query(fleet.prometheus_url, expr)
        if not any(math.isfinite(float(s["value"][1])) for s in result):
            missing.append(f"panel {t.panel_id} {t.panel_title!r} {t.ref_id}: {expr} -> {result}")
    return missing


def test_every_overview_panel_shows_data_with_all_selected(fleet):
    assert empty_targets(fleet, load("worker-overview"), {}) == []


def test_every_replica_panel_shows_data_for_the_selected_replica(fleet):
    (instance,) = fleet.instances
    assert empty_targets(fleet, load("worker-replica"), {"instance": [instance]}) == []


@pytest.mark.parametrize("uid", ["worker-overview", "worker-replica"])
def test_every_panel_shows_data_for_one_queue_and_job_type(fleet, uid):
    """Values picked in the dropdowns, escaped as Grafana escapes them (agent\\\\.run)."""
    (instance,) = fleet.instances
    selection = {"instance": [instance], "queue": ["default"], "job_type": ["agent.run"]}
    assert empty_targets(fleet, load(uid), selection) == []


@pytest.mark.parametrize("uid", ["worker-overview", "worker-replica"])
def test_rate_limiter_panel_shows_allowed_and_throttled_decisions(fleet, uid):
    (instance,) = fleet.instances
    d = load(uid)
    assert empty_targets(fleet, d, {"instance": [instance]}, {RATE_LIMITER_PANEL}) == []
    (target,) = [t for t in promql.targets(d) if t.panel_id == RATE_LIMITER_PANEL]
    variables = promql.dashboard_variables(d, {"instance": [instance]})
    result = query(fleet.prometheus_url, promql.interpolate(target.expr, variables))
    assert {s["metric"]["decision"] for s in result} >= {"allowed", "throttled"}


def test_variable_queries_list_the_replica_queues_and_job_types(fleet):
    """The dropdowns' label_values() queries, answered by the same Prometheus."""
    overview = load("worker-overview")
    values = {}
    for var in overview["templating"]["list"][1:]:
        q = var["definition"]
        metric, label = q.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        metric = promql.interpolate(metric, {"queue": promql.ALL})
        values[var["name"]] = {s["metric"][label] for s in query(fleet.prometheus_url, metric)}
    assert values["instance"] == set(fleet.instances)
    assert values["queue"] == {"critical", "default", "fast"}
    assert values["job_type"] == {"agent.run", "crm.sync", "message.send", "job.status_update"}


def test_fleet_and_replica_dashboards_agree_for_a_one_replica_fleet(fleet):
    """The overview's recording-rule panels and the replica's raw panels measure the same
    thing: with one replica, the job slots and the backlog are equal."""
    (instance,) = fleet.instances
    by_panel = {}
    for uid, selection in (("worker-overview", {}), ("worker-replica", {"instance": [instance]})):
        d = load(uid)
        variables = promql.dashboard_variables(d, selection)
        for t in promql.targets(d):
            if (t.panel_id, t.ref_id) in {(11, "B"), (5, "A")}:
                expr = promql.interpolate(t.expr, variables)
                result = query(fleet.prometheus_url, expr)
                by_panel[uid, t.panel_id] = sorted(
                    (tuple(sorted(s["metric"].items())), float(s["value"][1])) for s in result
                )
    assert by_panel["worker-overview", 11] == by_panel["worker-replica", 11] != []
    assert len(by_panel["worker-overview", 5]) == len(by_panel["worker-replica", 5]) == 9
