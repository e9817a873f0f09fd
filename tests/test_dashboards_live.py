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
import time

import pytest
import redis
import yaml

from dashboards import promql
from dashboards.dead_letters import PANEL_IDS as DEAD_LETTER_PANEL_IDS
from dashboards.render import GENERATED_DIR
from stack.fleet import RULES_DIR, simulated_fleet
from stack.prom import query
from worker.redis_keys import RedisKeys

pytestmark = pytest.mark.slow  # replicas and servers per test: outside the quick tier

RATE_LIMITER_PANEL = 13
RATE_LIMITER_EVENT = 'sum(rate(worker_rate_limit_decisions_total{decision="throttled"}[1m])) > 0'
DEAD_LETTER_PANELS = set(DEAD_LETTER_PANEL_IDS.values())
#: What `worker dead-letters requeue` and `purge` count in Redis during the load (the test
#: of the dead-letter row writes it: a rate over 1m must see it).
REPLAYS = {("requeued", "default"): 30, ("purged", "fast"): 12}

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
#: The records of groups with an interval of their own (the long-window SLO records: every
#: 10 s at the fleet's 1 s, so their first evaluation may come 10 s after the others').
SLOW_RECORDS = [
    rule["record"]
    for path in sorted(RULES_DIR.glob("*.yml"))
    for group in yaml.safe_load(path.read_text())["groups"]
    if "interval" in group
    for rule in group["rules"]
]


def load(uid: str) -> dict:
    return json.loads((GENERATED_DIR / f"{uid}.json").read_text())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with simulated_fleet(tmp_path_factory.mktemp("fleet")) as fleet:
        fleet.send_batch(6)
        fleet.start_load(per_second=2)
        assert SLOW_RECORDS
        for expr in EVENTS + SLOW_RECORDS:
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


def test_dead_letter_row_shows_the_depth_its_oldest_age_and_the_replays_per_queue(fleet):
    """The overview's dead-letter row against the simulation's dead letters and the
    requeues and purges counted in Redis: per queue, the depth and the age of the oldest
    (younger than the fleet), and each replay on its own queue only."""
    # Counted once the replica exports the series: one born at its total has no rate.
    fleet.wait_for('worker_dead_letters_purged_total{queue="fast"}', timeout=60)
    client = redis.Redis.from_url(fleet.redis.url)
    for (action, queue), n in REPLAYS.items():
        client.hincrby(RedisKeys(RedisKeys().namespace).dead_letters_counted(action), queue, n)
    for action, queue in REPLAYS:
        fleet.wait_for(f'rate(worker_dead_letters_{action}_total{{queue="{queue}"}}[1m]) > 0')
    d = load("worker-overview")
    assert empty_targets(fleet, d, {}, DEAD_LETTER_PANELS) == []
    variables = promql.dashboard_variables(d, {})
    shown = {}
    for t in promql.targets(d):
        if t.panel_id in DEAD_LETTER_PANELS:
            result = query(fleet.prometheus_url, promql.interpolate(t.expr, variables))
            shown[t.panel_id, t.legend] = {
                s["metric"]["queue"]: float(s["value"][1]) for s in result
            }
    ids = DEAD_LETTER_PANEL_IDS
    depth, ages = shown[ids["depth"], "{{queue}}"], shown[ids["oldest"], "{{queue}}"]
    assert set(ages) == set(depth) == {"critical", "default", "fast"}
    for queue in ("default", "fast"):  # the simulation's invalid payloads
        ((_, score),) = client.zrange(RedisKeys().dead_letters(queue), 0, 0, withscores=True)
        # scraped every second, sampled at each scrape
        assert depth[queue] > 0 and abs(ages[queue] - (time.time() - score / 1000)) < 5, ages
    for action in ("requeued", "purged"):
        rates = shown[ids["replays"], f"{action} {{{{queue}}}}"]
        assert set(rates) == {"critical", "default", "fast"}, (action, rates)
        assert {q for q, r in rates.items() if r > 0} == {q for a, q in REPLAYS if a == action}


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
