"""Alert proof: each alert fires on its real fault, reaches its receiver through
Alertmanager with its labels and annotations, and resolves once the fault is removed; a
healthy fleet raises none, and an alert explained by another one is not delivered.

One twin of the stack serves the whole module (``stack.twin``): a real
redis-server, two worker replicas, Prometheus and Alertmanager from the committed configs,
the alert receiver standing in for the pager and the chat, and the load generator
sending the demo mix. The rules are rendered from ``alerts/config.libsonnet`` with
``ALERT_OVERRIDES`` (seconds instead of minutes). Each test injects one fault, watches
what an operator would see, removes the fault and waits for the resolution. A fixture
puts the fleet back in health after every test, whatever happened, and the next test
starts only once no alert is pending or active anywhere.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest

from alerts.duration import parse_duration
from alerts.render import load_config, record_names, render_rules
from stack.loadgen import set_simulation
from tests.support.e2e import (
    ALERT_OVERRIDES,
    NAMESPACE,
    NOTES,
    WATCHDOG,
    Inbox,
    NotifyTime,
    active_alerts,
    alerting_twin,
    assert_notification,
    computed_times,
    describe_active,
    quiet,
    report_notify_time,
    wait_for,
)
from tests.support.jobs import client, send_jobs
from worker.jobs import QUEUES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

HEALTHY_SECONDS = 30
RECORDS = record_names(ALERT_OVERRIDES)
RECONNECT_THRESHOLD = load_config(ALERT_OVERRIDES)["alerts"]["HighRedisReconnectAttempts"][
    "threshold"
]


@pytest.fixture(scope="module")
def stack(twin, tmp_path_factory):
    rules = tmp_path_factory.mktemp("rules")
    render_rules(ALERT_OVERRIDES, rules)
    stack = alerting_twin(twin, "alerts", rules, seed=1)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def computed(stack):
    return computed_times(stack)


@pytest.fixture
def measured(report, computed):
    def record(alert: str, fault: str, seconds: float, note: str = "") -> None:
        report_notify_time(report, NotifyTime(alert, fault, seconds, computed[alert], note))

    return record


@pytest.fixture(autouse=True)
def healthy(stack):
    """Start from a quiet stack; leave the fleet healthy again, whatever the test did."""
    wait_for(lambda: quiet(stack), 90, lambda: f"a quiet stack: {describe_active(stack)}")
    yield
    if not stack.redis.running:
        stack.start_redis()
    stack.resume_workers()
    for i, replica in enumerate(stack.replicas):
        if not replica.running:
            stack.start_replica(i)
    set_simulation(client(stack.redis.url), NAMESPACE, {}, reset=True)
    if not stack.loadgen.running:
        stack.loadgen.start(timeout=0.5)


def targets(stack) -> list[str]:
    return [r.target for r in stack.replicas]


def ready(stack, queue: str) -> float:
    found = stack.query(f'{RECORDS["queueMessages"]}{{queue="{queue}",state="ready"}}')
    return float(found[0]["value"][1]) if found else 0.0


def firing_in_prometheus(stack, alertname: str) -> list[dict]:
    return [
        a
        for a in stack.rule_alerts()
        if a["labels"]["alertname"] == alertname and a["state"] == "firing"
    ]


# --- the negative: a healthy fleet -----------------------------------------------------


def test_a_healthy_fleet_under_the_demo_load_raises_no_alert(stack):
    inbox = Inbox(stack)
    time.sleep(HEALTHY_SECONDS)
    # Not even pending: Prometheus' ALERTS series has no sample over the whole run but the
    # Watchdog's, which always fires by design (it is the dead man's switch's heartbeat).
    assert (
        stack.query(f'count_over_time(ALERTS{{alertname!="{WATCHDOG}"}}[{HEALTHY_SECONDS}s])') == []
    )
    assert active_alerts(stack) == []
    assert inbox.records() == []
    # ...while the load really ran: both replicas completed jobs, every queue moved.
    completed = f"increase(worker_jobs_completed_total[{HEALTHY_SECONDS}s])"
    by_instance = {
        r["metric"]["instance"]: float(r["value"][1])
        for r in stack.query(f"sum by (instance) ({completed})")
    }
    by_queue = {
        r["metric"]["queue"]: float(r["value"][1])
        for r in stack.query(f"sum by (queue) ({completed})")
    }
    assert set(by_instance) == set(targets(stack)) and min(by_instance.values()) > 0, by_instance
    assert set(by_queue) == set(QUEUES) and min(by_queue.values()) > 0, by_queue


# --- WorkerDown ----------------------------------------------------------------------------


def test_worker_down_pages_when_a_replica_is_killed(stack, measured):
    killed, alive = targets(stack)
    inbox = Inbox(stack)
    stack.kill_replica(0)
    fault = time.monotonic()
    fired = inbox.wait("WorkerDown", where=killed, timeout=30)
    measured("WorkerDown", "kill -9 one replica", time.monotonic() - fault)
    assert_notification(stack, fired, {"instance": killed, "job": "worker"})

    stack.start_replica(0)
    inbox.wait("WorkerDown", "resolved", where=killed, timeout=30)
    assert inbox.names() == {"WorkerDown"}
    assert not [r for r in inbox.records() if alive in r["summary"]]


def test_worker_down_pages_once_for_every_replica_when_all_are_stopped(stack, measured):
    inbox = Inbox(stack)
    fault = time.monotonic()
    for replica in stack.replicas:  # both at once, as `docker compose stop worker` does
        replica.send_signal(signal.SIGTERM)
    stack.stop_replica(0)
    stack.stop_replica(1)
    for target in targets(stack):
        fired = inbox.wait("WorkerDown", where=target, timeout=30)
        assert_notification(stack, fired, {"instance": target, "job": "worker"})
    measured("WorkerDown", "stop every replica", time.monotonic() - fault)
    # One incident, one group: the page lists both replicas together.
    both = inbox.wait("WorkerDown", where="", timeout=10)
    wait_for(
        lambda: (
            {
                target
                for r in inbox.matching("WorkerDown")
                if r["title"] == "[FIRING:2] WorkerDown (critical)"
                for target in targets(stack)
                if target in r["summary"]
            }
            == set(targets(stack))
        ),
        10,
        lambda: f"one notification naming both replicas: {inbox.brief()}",
    )
    assert both["receiver"] == "pager"

    stack.start_replica(0)
    stack.start_replica(1)
    for target in targets(stack):
        inbox.wait("WorkerDown", "resolved", where=target, timeout=30)
    assert inbox.names() == {"WorkerDown"}


# --- job alerts ------------------------------------------------------------------------


def test_high_job_failure_rate_when_the_backend_fails(stack, measured):
    inbox = Inbox(stack)
    set_simulation(client(stack.redis.url), NAMESPACE, {"failure_ratio": 0.5})
    fault = time.monotonic()
    fired = inbox.wait("HighJobFailureRate", timeout=60)
    measured(
        "HighJobFailureRate",
        "backend failure ratio 0 -> 0.5",
        time.monotonic() - fault,
        note="+ the failed attempts to count: the ratio over 20s must pass 10 %",
    )
    alert = assert_notification(stack, fired)
    assert alert["labels"]["job_type"] in ("agent.run", "crm.sync", "message.send")

    set_simulation(client(stack.redis.url), NAMESPACE, {}, reset=True)
    inbox.wait_resolved("HighJobFailureRate", timeout=60)
    assert inbox.names() == {"HighJobFailureRate"}
    # Status updates call no backend: they never fail, and never alert.
    assert not [r for r in inbox.records() if "job.status_update" in r["summary"]]


def test_high_job_processing_time_when_the_backend_slows_down(stack, measured):
    inbox = Inbox(stack)
    set_simulation(client(stack.redis.url), NAMESPACE, {"latency_min": 2.0, "latency_max": 3.0})
    fault = time.monotonic()
    fired = inbox.wait("HighJobProcessingTime", timeout=60)
    measured(
        "HighJobProcessingTime",
        "backend latency 0.05-0.2 s -> 2-3 s",
        time.monotonic() - fault,
        note="+ 2-3 s: an attempt's duration is observed when it ends",
    )
    alert = assert_notification(stack, fired, {"quantile": "0.95"})
    assert alert["labels"]["job_type"] in ("agent.run", "crm.sync", "message.send")

    set_simulation(client(stack.redis.url), NAMESPACE, {}, reset=True)
    inbox.wait_resolved("HighJobProcessingTime", timeout=60)
    assert inbox.names() == {"HighJobProcessingTime"}


def test_high_job_processing_queue_on_a_burst_while_workers_are_stalled(stack, measured):
    stack.loadgen.stop()  # the burst alone: an exact backlog
    stack.stall_workers()
    inbox = Inbox(stack)
    send_jobs(stack.redis.url, stack.namespace, "job_status_update", 40)
    fault = time.monotonic()
    fired = inbox.wait("HighJobProcessingQueue", where="in queue fast", timeout=60)
    measured("HighJobProcessingQueue", "40 jobs, workers stalled", time.monotonic() - fault)
    assert_notification(stack, fired, {"queue": "fast", "state": "ready"})

    stack.resume_workers()
    inbox.wait_resolved("HighJobProcessingQueue", timeout=30)
    # Stalled workers complete nothing: the same backlog may also lower the throughput.
    assert inbox.names() <= {"HighJobProcessingQueue", "LowWorkerThroughput"}


def test_low_worker_throughput_on_a_backlog_with_stalled_workers(stack, measured):
    stack.loadgen.stop()
    stack.stall_workers()
    inbox = Inbox(stack)
    send_jobs(
        stack.redis.url, stack.namespace, "crm_sync", 15
    )  # at least 10 ready, below the queue alert's 20
    fault = time.monotonic()
    fired = inbox.wait("LowWorkerThroughput", where="Queue critical", timeout=60)
    measured("LowWorkerThroughput", "15 jobs, workers stalled", time.monotonic() - fault)
    assert_notification(stack, fired, {"queue": "critical"})

    stack.resume_workers()
    inbox.wait_resolved("LowWorkerThroughput", timeout=30)
    assert inbox.names() == {"LowWorkerThroughput"}


# --- Redis -----------------------------------------------------------------------------


def test_redis_down_pages_and_nothing_it_explains_reaches_the_chat_during_or_after(
    stack, report, measured
):
    """Redis stops while a backlog waits: RedisDisconnected pages for each replica. The
    reconnect storm and the stalled queue it causes are real (their conditions hold), but
    they are the same incident: nothing reaches the chat while the page fires, nor after it
    resolves, when the windows of HighRedisReconnectAttempts and LowWorkerThroughput still
    hold the outage (the rules leave out a window in which RedisDisconnected fired)."""
    stack.loadgen.stop()
    stack.stall_workers()
    send_jobs(stack.redis.url, stack.namespace, "crm_sync", 15)
    wait_for(lambda: ready(stack, "critical") >= 10, 20, "the backlog reported")
    inbox = Inbox(stack)
    stack.stop_redis()
    fault = time.monotonic()
    stack.resume_workers()  # free to work, but without their broker

    pages = {}
    for target in targets(stack):
        fired = inbox.wait("RedisDisconnected", where=target, timeout=30)
        if not pages:
            measured("RedisDisconnected", "stop Redis", time.monotonic() - fault)
        pages[target] = assert_notification(stack, fired, {"instance": target, "job": "worker"})

    # The symptoms are there: a reconnect storm on each replica, a stalled backlog...
    storm = f"{RECORDS['reconnects']} > {RECONNECT_THRESHOLD:g}"
    wait_for(lambda: stack.query(storm), 30, "more reconnect attempts than the threshold")
    assert ready(stack, "critical") >= 10
    # ...but explained by the page: neither alert fires, and the chat hears nothing, well
    # past the warnings' group_wait.
    time.sleep(8 + 3)
    for name in ("HighRedisReconnectAttempts", "LowWorkerThroughput"):
        assert not firing_in_prometheus(stack, name), describe_active(stack)
        assert all(
            a["status"]["state"] == "suppressed" for a in stack.alertmanager_alerts(alertname=name)
        ), describe_active(stack)
    assert inbox.names() == {"RedisDisconnected"}, inbox.brief()

    stack.start_redis()
    for target in targets(stack):
        inbox.wait("RedisDisconnected", "resolved", where=target, timeout=30)
    stack.loadgen.start(timeout=0.5)
    # The echoes came in this span on main (HighRedisReconnectAttempts 3 times firing and
    # twice resolved, LowWorkerThroughput once): the longest window, then `for`, then the
    # warnings' group_wait, with a margin.
    alerts = ALERT_OVERRIDES["alerts"]
    span = max(parse_duration(alerts[n]["window"]) for n in alerts if "window" in alerts[n])
    time.sleep(span + parse_duration(alerts["LowWorkerThroughput"]["for"]) + 8 + 5)
    wait_for(lambda: quiet(stack), 60, lambda: f"a quiet stack: {describe_active(stack)}")
    after = Counter(
        f"{r['alertname']} {r['status']}"
        for r in inbox.records()
        if r["alertname"] != "RedisDisconnected"
    )
    report.line(
        NOTES,
        "Redis down: the chat got nothing while RedisDisconnected was firing, and nothing "
        "after it resolved: "
        + (", ".join(f"{n} x{c}" for n, c in sorted(after.items())) or "none"),
    )
    assert not after, inbox.brief()


def test_high_redis_reconnect_attempts_when_redis_flaps(stack, measured):
    """Short outages, each too short for RedisDisconnected: nothing inhibits the reconnect
    alert, which reaches the chat; the page never fires."""
    stack.loadgen.stop()  # Redis alone: no job fails on the outages
    reconnects = f"{RECORDS['reconnects']} > 5"
    inbox = Inbox(stack)
    fault = time.monotonic()
    flaps = 0
    while not stack.query(reconnects) and flaps < 10:
        stack.stop_redis()
        time.sleep(1)
        stack.start_redis()
        flaps += 1
        time.sleep(2)
    assert stack.query(reconnects), f"more than 5 reconnect attempts after {flaps} flaps"
    fired = inbox.wait("HighRedisReconnectAttempts", timeout=40)
    measured(
        "HighRedisReconnectAttempts",
        "Redis flaps (1 s down, 2 s up)",
        time.monotonic() - fault,
        note=f"{flaps} flaps",
    )
    assert_notification(stack, fired, {"job": "worker"})
    assert not firing_in_prometheus(stack, "RedisDisconnected")

    inbox.wait_resolved("HighRedisReconnectAttempts", timeout=60)
    assert inbox.names() == {"HighRedisReconnectAttempts"}
