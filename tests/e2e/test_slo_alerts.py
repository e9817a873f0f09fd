"""SLO proof on the twin: the queue-wait and success SLOs' burn-rate alerts and the stall
detector fire on their real faults and reach their receivers; the demo load raises none.

One twin for the module (``stack.twin``), its rules rendered with
``SLO_OVERRIDES``: the seven alerts as test_alerts.py runs them, the SLO windows in
seconds (page: 14.4x over 30s and 10s, 6x over 60s and 20s; ticket: 3x over 40s and
10s, 1x over 80s and 20s), every queue-wait threshold 2.5 s, HighJobQueueLatency above 5 s
for 3 s. Each test measures the time from its fault to the notification, beside the
worst case alerts/detect.py computes for a burn-rate alert at the fault's burn rate.
"""

from __future__ import annotations

import time

import pytest

from alerts.render import render_rules, slo_record_names
from stack.loadgen import set_simulation
from tests.support.e2e import (
    NAMESPACE,
    SLO_OVERRIDES,
    Inbox,
    NotifyTime,
    alerting_twin,
    assert_notification,
    computed_times,
    describe_active,
    quiet,
    report_notify_time,
    wait_for,
)
from tests.support.jobs import client, send_jobs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SLO_ALERTS = ("JobQueueWaitBudgetBurn", "JobSuccessBudgetBurn", "HighJobQueueLatency")
DEMO_SECONDS = 40
RECORDS = slo_record_names(SLO_OVERRIDES)
# Every attempt of the stalled backlog waits past the threshold: an error ratio of 1,
# a burn rate of 1 / (1 - 0.99). Every job of agent.run dead-lettered: 1 / (1 - 0.995).
QUEUE_WAIT_BURN, SUCCESS_BURN = 100.0, 200.0


@pytest.fixture(scope="module")
def stack(twin, tmp_path_factory):
    rules = tmp_path_factory.mktemp("slo-rules")
    render_rules(SLO_OVERRIDES, rules)
    stack = alerting_twin(twin, "slo", rules, seed=2)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def measured(report, stack):
    def record(alert: str, fault: str, seconds: float, burn: float | None, note: str = ""):
        computed = computed_times(stack, SLO_OVERRIDES, {"critical": burn} if burn else None)
        report_notify_time(report, NotifyTime(alert, fault, seconds, computed[alert], note))

    return record


@pytest.fixture(autouse=True)
def healthy(stack):
    """Start from a quiet stack; leave the fleet healthy again, whatever the test did."""
    wait_for(lambda: quiet(stack), 120, lambda: f"a quiet stack: {describe_active(stack)}")
    yield
    stack.resume_workers()
    set_simulation(client(stack.redis.url), NAMESPACE, {}, reset=True)
    if not stack.loadgen.running:
        stack.loadgen.start(timeout=0.5)


def value(stack, promql: str) -> float | None:
    found = stack.query(promql)
    return float(found[0]["value"][1]) if found else None


# --- the negative: the demo load -------------------------------------------------------


def test_the_demo_load_meets_both_slos_and_raises_no_slo_alert(stack):
    inbox = Inbox(stack)
    time.sleep(DEMO_SECONDS)
    names = "|".join(SLO_ALERTS)
    # Not even pending over the whole run.
    assert stack.query(f'count_over_time(ALERTS{{alertname=~"{names}"}}[{DEMO_SECONDS}s])') == []
    assert not [r for r in inbox.records() if r["alertname"] in SLO_ALERTS], inbox.brief()
    # ...while the SLIs had data: attempts started on every queue, within 2.5 s, and
    # every job that reached an outcome completed.
    window = f"{DEMO_SECONDS}s"
    started = {
        r["metric"]["queue"]: float(r["value"][1])
        for r in stack.query(
            f"sum by (queue) (increase(worker_job_queue_wait_seconds_count[{window}]))"
        )
    }
    assert set(started) == {"critical", "default", "fast"} and min(started.values()) > 0
    # Over the whole run, fewer than 1 % of the attempts waited more than 2.5 s: the SLO.
    slow = value(
        stack,
        f'1 - sum(increase(worker_job_queue_wait_seconds_bucket{{le="2.5"}}[{window}]))'
        f" / sum(increase(worker_job_queue_wait_seconds_count[{window}]))",
    )
    assert slow is not None and slow < 0.01, slow
    dead = value(stack, f"max({RECORDS['success']['ratio']['80s']})")
    assert dead == 0, dead
    oldest = value(stack, f"max({RECORDS['oldestAge']})")
    assert oldest is not None and oldest < 5, oldest


# --- a stall: HighJobQueueLatency, then the page for the waits --------------------------


def test_stalled_workers_raise_high_job_queue_latency_then_the_queue_wait_page(stack, measured):
    """Workers stop taking jobs while a backlog waits: the oldest message ages past 5 s
    and HighJobQueueLatency reaches the chat. No attempt starts, so the queue-wait SLO
    sees nothing yet; once the workers resume, every attempt of the backlog waited past
    its threshold and JobQueueWaitBudgetBurn pages."""
    stack.loadgen.stop()  # the backlog alone: every attempt in the windows is a late one
    # Stall an idle fleet: an attempt frozen mid-run would last the whole stall and raise
    # HighJobProcessingTime too.
    wait_for(
        lambda: (
            value(stack, 'sum(worker_jobs_processing) + sum(worker_queue_messages{state="ready"})')
            == 0
        ),
        20,
        "the demo load's last jobs done",
    )
    stack.stall_workers()
    inbox = Inbox(stack)
    send_jobs(
        stack.redis.url, stack.namespace, "job_status_update", 8
    )  # under the backlog alerts' 10 and 20
    fault = time.monotonic()
    fired = inbox.wait("HighJobQueueLatency", where="queue fast", timeout=60)
    measured(
        "HighJobQueueLatency",
        "8 jobs, workers stalled",
        time.monotonic() - fault,
        None,
        note="+ 5 s for the oldest message to pass the threshold, + 1 s sampling",
    )
    assert_notification(stack, fired, {"queue": "fast", "severity": "warning"})
    assert "JobQueueWaitBudgetBurn" not in inbox.names()  # nothing started: nothing counted

    stack.resume_workers()
    resumed = time.monotonic()
    page = wait_for(
        lambda: [
            r
            for r in inbox.matching("JobQueueWaitBudgetBurn", where="Queue fast")
            if r["severity"] == "critical"
        ],
        60,
        lambda: f"the queue-wait page for fast; the receiver got {inbox.brief()}",
    )[0]
    measured(
        "JobQueueWaitBudgetBurn",
        "the stalled backlog starts, every attempt late",
        time.monotonic() - resumed,
        QUEUE_WAIT_BURN,
    )
    alert = assert_notification(stack, page, {"queue": "fast", "severity": "critical"})
    assert page["receiver"] == "pager"
    assert "x burn rate" in alert["annotations"]["value"]
    assert "Error budget left over 1h:" in alert["annotations"]["description"]

    inbox.wait_resolved("HighJobQueueLatency", timeout=60)
    inbox.wait_resolved("JobQueueWaitBudgetBurn", timeout=90)
    # The backlog stayed under the queue alerts' thresholds: only the SLO alerts spoke.
    assert inbox.names() <= {"HighJobQueueLatency", "JobQueueWaitBudgetBurn"}, inbox.brief()


# --- failures: the success page ---------------------------------------------------------


def test_jobs_dead_lettered_raise_the_success_page(stack, measured):
    """Every call of agent.run fails: each job uses its 5 attempts and is dead-lettered,
    so queue default's error ratio goes to 1 (burn 200x) while the demo load runs."""
    # The stall of the test before burns the queue-wait budget's longer windows for a
    # while: start once nothing of it is left in Alertmanager, so only this fault counts.
    wait_for(
        lambda: (
            not stack.alertmanager_alerts(alertname="JobQueueWaitBudgetBurn")
            and not stack.alertmanager_alerts(alertname="HighJobQueueLatency")
        ),
        120,
        "the queue-wait alerts of the stall resolved",
    )
    time.sleep(3)  # their resolved notifications delivered (group_interval 1s)
    inbox = Inbox(stack)
    set_simulation(client(stack.redis.url), NAMESPACE, {"failure_ratio": 1.0})
    fault = time.monotonic()
    page = wait_for(
        lambda: [
            r
            for r in inbox.matching("JobSuccessBudgetBurn", where="Queue default")
            if r["severity"] == "critical"
        ],
        60,
        lambda: f"the success page for default; the receiver got {inbox.brief()}",
    )[0]
    measured(
        "JobSuccessBudgetBurn",
        "backend failure ratio 0 -> 1: agent.run dead-lettered",
        time.monotonic() - fault,
        SUCCESS_BURN,
        note="+ about 2 s: 5 attempts and their backoff before a job is dead-lettered",
    )
    alert = assert_notification(stack, page, {"queue": "default", "severity": "critical"})
    assert page["receiver"] == "pager"
    assert "99.5% of jobs complete" in alert["annotations"]["description"]
    # Only the queue whose jobs die: status updates call no backend.
    assert not inbox.matching("JobSuccessBudgetBurn", where="Queue fast")

    set_simulation(client(stack.redis.url), NAMESPACE, {}, reset=True)
    inbox.wait_resolved("JobSuccessBudgetBurn", timeout=90)
    # The attempts fail too: HighJobFailureRate may join; nothing else.
    assert inbox.names() <= {"JobSuccessBudgetBurn", "HighJobFailureRate"}, inbox.brief()
