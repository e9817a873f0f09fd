"""Prometheus without a single point of failure, proven on the local twin.

One twin serves the module: two worker replicas, the Prometheus pair (``prometheus`` and
``prometheus-2``, each with its own ``replica`` external label, both writing to a long-term
store), the gossiping Alertmanager pair and the alert receiver with its dead man's switch;
the committed configs with seconds instead of minutes (tests/support/e2e.py's timings).
The long-term store is a third Prometheus started with --web.enable-remote-write-receiver,
the protocol Mimir and Thanos Receive accept.

Each fault is a worker replica killed: WorkerDown must page exactly once, with both
members up and with one of them killed (kill -9), and the Watchdog must keep reaching the
dead man's switch while one member is down.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from alerts.render import render_rules
from dashboards import promql
from stack import prom
from stack.servers import prometheus_server, running
from stack.twin import LocalStack, deep_merge
from stack.twin_prometheus import MEMBERS
from tests.support.e2e import (
    ALERT_OVERRIDES,
    ALERTMANAGER_TIMING,
    REPLICA_ENV,
    Inbox,
    deadman_repeating,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# Prometheus hands its first targets to the scrapers up to 5 s after it starts: a shorter
# `for` would page "no worker replica found" at each start (as in e2e/test_pipeline.py).
OVERRIDES = deep_merge(ALERT_OVERRIDES, {"alerts": {"WorkerDown": {"for": "8s"}}})
# The Alertmanager pair's timings of e2e/test_pipeline.py: each member flushes every 5 s,
# longer than the second member's 3 s peer wait, so the pair sends each notification once.
GROUP_INTERVAL, PEER_TIMEOUT = 5.0, 3.0
TIMING = {**ALERTMANAGER_TIMING, "group_interval": f"{GROUP_INTERVAL:g}s"}
DEADMAN_TIMEOUT = 12.0  # the receiver's --deadman-timeout: two Watchdog periods and more
SECTION = "Prometheus pair (twin, test config)"
OVERVIEW = (
    Path(__file__).resolve().parent.parent / "dashboards" / "generated" / "worker-overview.json"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The long-term store: a Prometheus that accepts remote writes, scraping nothing."""
    server = prometheus_server(
        tmp_path_factory.mktemp("store"),
        "scrape_configs: []\n",
        None,
        "--web.enable-remote-write-receiver",
    )
    with running(server) as started:
        yield started


@pytest.fixture(scope="module")
def stack(tmp_path_factory, store):
    rules = tmp_path_factory.mktemp("pair-rules")
    render_rules(OVERRIDES, rules)
    stack = LocalStack(
        tmp_path_factory.mktemp("prometheus-pair"),
        prometheuses=2,
        remote_write_url=f"{store.url}/api/v1/write",
        scrape_interval="1s",
        evaluation_interval="1s",
        rules_dir=rules,
        alertmanager_config=deadman_repeating(tmp_path_factory.mktemp("pair-am"), "2s"),
        alertmanager_timing=TIMING,
        alertmanager_args=[f"--cluster.peer-timeout={PEER_TIMEOUT:g}s"],
        prometheus_args=["--rules.alert.resend-delay=1s"],
        replica_env=REPLICA_ENV,
        deadman_timeout=DEADMAN_TIMEOUT,
    )
    try:
        stack.start(timeout=60)
        for member in stack.prometheuses:
            wait_for(
                lambda m=member: len(workers_up(m)) == len(stack.replicas),
                30,
                f"{member.name} scrapes every worker replica",
            )
        yield stack
    finally:
        stack.stop()


def workers_up(member) -> list[dict]:
    return prom.query(member.url, 'up{job="worker"} == 1', timeout=5)


def pipeline(stack) -> dict:
    """The receiver's dead man's switch: is the Watchdog still arriving?"""
    with urllib.request.urlopen(f"{stack.receiver.url}/status", timeout=5) as r:
        return json.load(r)


def page_once(stack, index: int, report, case: str) -> None:
    """Kill worker replica ``index``: WorkerDown pages exactly once, from whichever members
    run; then start the replica again and wait for the resolution."""
    instance = stack.replicas[index].target
    inbox = Inbox(stack)
    killed = time.monotonic()
    stack.kill_replica(index)
    page = inbox.wait("WorkerDown", where=instance, timeout=60)
    to_page = time.monotonic() - killed
    assert page["receiver"] == "pager" and "replica" not in page["labels"], page
    # Two more Watchdogs delivered: the pair has flushed since, so a copy from the other
    # Prometheus or the other Alertmanager would be here by now.
    beats = pipeline(stack)["watchdog_deliveries"]
    wait_for(lambda: pipeline(stack)["watchdog_deliveries"] >= beats + 2, 30, "two Watchdogs")
    pages = inbox.matching("WorkerDown", where=instance)
    report.row(
        SECTION,
        ("case", "notifications per fault", "time to page (kill to receiver)"),
        (case, len(pages), f"{to_page:.1f} s"),
    )
    assert len(pages) == 1, inbox.brief()
    stack.start_replica(index)
    inbox.wait_resolved("WorkerDown")


def test_series_reach_the_long_term_store_with_each_replica_label(stack, store):
    """Both members remote-write every series, each with its own `replica` and the shared
    `cluster`: what Mimir's HA tracker and Thanos' --query.replica-label deduplicate on."""
    wait_for(
        lambda: (
            {
                r["metric"].get("replica")
                for r in prom.query(store.url, 'count by (replica) (up{job="worker"})')
            }
            == set(MEMBERS)
        ),
        60,
        "worker targets' `up` from both members at the store",
    )
    unlabelled = prom.query(store.url, 'count({__name__=~".+", replica=""})')
    assert not unlabelled, unlabelled
    clusters = prom.query(store.url, 'count by (cluster) ({__name__=~".+"})')
    assert [r["metric"] for r in clusters] == [{"cluster": "worker-fleet"}]
    # Each member's own series have no `replica`: rules see one copy, never two.
    for member in stack.prometheuses:
        assert all("replica" not in r["metric"] for r in workers_up(member))


def test_the_replicas_up_panel_counts_each_target_once_on_the_store(stack, store):
    """The overview's "Replicas up" panel, as Grafana would send it, read from the store
    that holds both members' copies: each replica counted once (by instance), not twice."""
    dashboard = json.loads(OVERVIEW.read_text())
    variables = promql.dashboard_variables(dashboard, {})
    exprs = {
        t.legend: promql.interpolate(t.expr, variables)
        for t in promql.targets(dashboard)
        if t.panel_title == "Replicas up"
    }
    assert set(exprs) == {"replicas up", "scrape targets"}, exprs
    replicas = str(len(stack.replicas))
    for legend, expr in exprs.items():
        assert [r["value"][1] for r in prom.query(store.url, expr)] == [replicas], legend


def test_with_both_members_up_a_fault_pages_once(stack, report):
    page_once(stack, 0, report, "both Prometheus up")


def test_with_one_member_killed_a_fault_pages_once_and_the_watchdog_goes_on(stack, report):
    def silences() -> list[dict]:
        return stack.alerts(receiver="deadman", alertname="PipelineSilent", status="firing")

    wait_for(lambda: pipeline(stack)["pipeline"] == "ok", 30, "the Watchdog arriving")
    silent_before = len(silences())
    first = stack.prometheuses[0]
    first.kill()  # SIGKILL
    try:
        status = pipeline(stack)
        wait_for(
            lambda: pipeline(stack)["watchdog_deliveries"] >= status["watchdog_deliveries"] + 2,
            30,
            "Watchdogs from the surviving member",
        )
        page_once(stack, 1, report, "prometheus killed (kill -9)")
        # The switch never went silent while one member was down.
        assert pipeline(stack)["pipeline"] == "ok"
        assert len(silences()) == silent_before, silences()
    finally:
        first.start(30)
