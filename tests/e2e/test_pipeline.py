"""Who watches the watchmen: the alerting pipeline's own faults, proven on the local twin.

One twin serves the module: two worker replicas, Prometheus, the gossiping Alertmanager
pair and the alert receiver (also the demo's dead man's switch), from the committed
configs with seconds instead of minutes (rules: ``PIPELINE_OVERRIDES``; Prometheus resends
firing alerts every second; the Watchdog's route repeats every 2s; the receiver reports
the pipeline silent after 8s without a Watchdog). Each test injects a real fault: stop
Prometheus, stop every Alertmanager, load a rule that fails, make a receiver answer 500,
kill a member of the pair. A fixture undoes it and waits for a quiet, delivering pipeline.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alerts.render import render_rules
from stack.twin import deep_merge
from tests.support.e2e import (
    ALERT_OVERRIDES,
    ALERTMANAGER_OVERRIDES,
    ALERTMANAGER_TIMING,
    NOTES,
    SILENCE,
    Inbox,
    NotifyTime,
    SilenceTime,
    assert_notification,
    computed_times,
    deadman_repeating,
    describe_active,
    quiet,
    report_notify_time,
    rule_alerts,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PIPELINE_OVERRIDES = deep_merge(
    ALERT_OVERRIDES,
    {
        # Prometheus hands its first targets to the scrapers up to 5s after it starts (and
        # restarts, here): a shorter `for` pages "no worker replica found" at each start.
        "alerts": {"WorkerDown": {"for": "8s"}},
        "pipelineAlerts": {
            **{
                name: {"for": "3s", "window": "10s"}
                for name in (
                    "PrometheusRuleFailures",
                    "PrometheusErrorSendingAlertsToAnyAlertmanager",
                    "AlertmanagerClusterDown",
                )
            },
            # A member counts a notification failed when its flush gives up, at the flush's
            # timeout: at least 10 s, plus 3 s of peer wait on the second member. Failures
            # come that far apart, so a 10 s window fell empty between two of them and the
            # alert resolved while the fault went on (a run saw it notified, then gone from
            # Alertmanager). 30 s holds two failures of either member, as 5m does in
            # production.
            "AlertmanagerFailedToSendAlerts": {"for": "3s", "window": "30s"},
        },
    },
)
EVALUATION = 1.0  # scrape and evaluation interval
RESEND_DELAY = 1.0  # Prometheus --rules.alert.resend-delay
PEER_TIMEOUT = 3.0  # Alertmanager --cluster.peer-timeout: the second member's wait
DEADMAN_TIMEOUT = 12.0  # the receiver's --deadman-timeout: twice the Watchdog's period
# Every route flushes every 5s, longer than the second member's wait, as in production (1m
# or 5m against 15s): a member whose flush outlasts group_interval flushes off the other's
# rhythm, decides from an older view of the group, and sends what the first already did.
GROUP_INTERVAL = 5.0
TIMING = {**ALERTMANAGER_TIMING, "group_interval": f"{GROUP_INTERVAL:g}s"}
DEADMAN_ROUTE = {"repeat_interval": "2s"}  # so: a Watchdog every group_interval
CHECK_STEP = min(1.0, DEADMAN_TIMEOUT / 10)  # how often the receiver looks (stack.deadman)
# Room for a loaded machine (2 cores, shared) in the measured bounds.
SLACK = 5.0

# A recording rule that fails at every evaluation, injected as a user would add rules:
# through an override file mixed into the mixin. Its labels make every `up` series collide.
FAILING_RULE = """{
  prometheusRules+:: { groups+: [ { name: 'injected-fault', rules: [
    { record: 'injected:up:one_instance', expr: 'up', labels: { instance: 'one' } },
  ] } ] },
}
"""


def alertmanager_config(directory: Path) -> Path:
    """The committed alertmanager.yml with the Watchdog's route in seconds."""
    return deadman_repeating(directory, DEADMAN_ROUTE["repeat_interval"])


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory) -> Path:
    rules = tmp_path_factory.mktemp("pipeline-rules")
    render_rules(PIPELINE_OVERRIDES, rules)
    return rules


@pytest.fixture(scope="module")
def stack(twin, tmp_path_factory, rules_dir):
    stack = twin(
        "pipeline",
        scrape_interval="1s",
        evaluation_interval="1s",
        rules_dir=rules_dir,
        alertmanager_config=alertmanager_config(tmp_path_factory.mktemp("pipeline-am")),
        alertmanager_timing=TIMING,
        alertmanager_overrides=ALERTMANAGER_OVERRIDES,
        replica_env={"SIM_LATENCY_SECONDS": "0.05-0.2", "SHUTDOWN_GRACE_SECONDS": "3"},
        # The lifecycle API: the failing rule is loaded by a reload, as an operator would.
        prometheus_args=[f"--rules.alert.resend-delay={RESEND_DELAY:g}s", "--web.enable-lifecycle"],
        alertmanager_args=[f"--cluster.peer-timeout={PEER_TIMEOUT:g}s"],
        deadman_timeout=DEADMAN_TIMEOUT,
    )
    try:
        up = 'up{job=~"worker|prometheus|alertmanager"}'
        wait_for(
            lambda: [r["value"][1] for r in stack.query(up)] == ["1"] * 5,
            30,
            "Prometheus scrapes both replicas, itself and both Alertmanagers",
        )
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def computed(stack):
    return computed_times(stack, PIPELINE_OVERRIDES)


@pytest.fixture
def measured(report, computed):
    def record(alert: str, fault: str, seconds: float, note: str = "") -> None:
        report_notify_time(report, NotifyTime(alert, fault, seconds, computed[alert], note))

    return record


def pipeline(stack) -> dict:
    """The receiver's status page: is the Watchdog still arriving?"""
    with urllib.request.urlopen(f"{stack.receiver.url}/status", timeout=5) as r:
        return json.load(r)


def assert_silent_after_the_timeout(status: dict) -> None:
    """The receiver said "silent" once the timeout had passed since the last Watchdog it
    got, not before (the last one may have come up to a group interval before the fault),
    and within a check step of it."""
    last = datetime.fromisoformat(status["last_watchdog_at"])
    quiet = (datetime.fromisoformat(status["silent_since"]) - last).total_seconds()
    assert DEADMAN_TIMEOUT <= quiet <= DEADMAN_TIMEOUT + CHECK_STEP + SLACK, status


def url_file(stack, receiver: str) -> Path:
    return Path(stack.run_dir) / "alertmanager" / "secrets" / f"{receiver}-url"


@pytest.fixture(autouse=True)
def healthy(stack, rules_dir):
    """Start from a quiet, delivering pipeline; undo whatever fault the test left."""
    wait_for(lambda: quiet(stack), 90, lambda: f"a quiet stack: {describe_active(stack)}")
    wait_for(lambda: pipeline(stack)["pipeline"] == "ok", 30, "the Watchdog arriving")
    # Alertmanager may still send what the last fault left (a resolution, or the second
    # member's late copy): start once the receiver has heard nothing for a full flush.
    heard = [len(stack.alerts()), time.monotonic()]

    def settled() -> bool:
        count = len(stack.alerts())
        if count != heard[0]:
            heard[:] = [count, time.monotonic()]
        return time.monotonic() - heard[1] > GROUP_INTERVAL + PEER_TIMEOUT + 2

    wait_for(settled, 90, "the receiver quiet for a flush", interval=0.5)
    yield
    if not stack.prometheus.running:
        stack.prometheus.start(30)
    for i, member in enumerate(stack.alertmanagers):
        if not member.running:
            stack.start_alertmanager(i)
    for i, replica in enumerate(stack.replicas):
        if not replica.running:
            stack.start_replica(i)
    url_file(stack, "deadman").write_text(f"{stack.receiver.url}/deadman")
    render_rules(PIPELINE_OVERRIDES, rules_dir)
    stack.reload_rules()


def firing_in_prometheus(stack, alertname: str) -> list[dict]:
    return [
        a
        for a in rule_alerts(stack)
        if a["labels"]["alertname"] == alertname and a["state"] == "firing"
    ]


def deliveries(inbox: Inbox, alertname: str, status: str, where: str) -> int:
    return len(inbox.matching(alertname, status, where))


# --- the dead man's switch ---------------------------------------------------------------


def test_the_watchdog_reaches_only_the_deadman_and_stopping_prometheus_is_reported(stack, report):
    inbox = Inbox(stack)
    before = pipeline(stack)["watchdog_deliveries"]
    wait_for(
        lambda: pipeline(stack)["watchdog_deliveries"] >= before + 2, 15, "Watchdog heartbeats"
    )
    stack.prometheus.stop()
    fault = time.monotonic()
    # Alertmanager keeps the Watchdog until it expires (Prometheus sets its end 4 resend
    # delays ahead), notifies it at most a group_interval later, then the receiver waits
    # its timeout and looks every CHECK_STEP.
    expiry = 4 * max(EVALUATION, RESEND_DELAY)
    bound = expiry + GROUP_INTERVAL + DEADMAN_TIMEOUT + CHECK_STEP
    parts = (
        f"{expiry:g} (alert expiry) + {GROUP_INTERVAL:g} (group_interval) + "
        f"{DEADMAN_TIMEOUT:g} (timeout) + {CHECK_STEP:g} (check)"
    )
    wait_for(lambda: pipeline(stack)["pipeline"] == "silent", bound + 30, "the pipeline silent")
    silent = time.monotonic() - fault
    assert silent <= bound + SLACK, (silent, bound)
    assert_silent_after_the_timeout(pipeline(stack))
    records = stack.alerts(receiver="deadman", alertname="PipelineSilent", status="firing")
    assert records and "the alerting pipeline is silent" in records[-1]["summary"]
    assert "PIPELINE SILENT" in stack.receiver.log.read_text()

    stack.prometheus.start(30)
    restart = time.monotonic()
    wait_for(lambda: pipeline(stack)["pipeline"] == "ok", 30, "the Watchdog again")
    silence = SilenceTime("stop Prometheus", silent, bound, parts, time.monotonic() - restart)
    report.row(SILENCE, SilenceTime.HEADER, silence.cells())
    assert stack.alerts(receiver="deadman", alertname="PipelineSilent", status="resolved")
    # The heartbeat never bothered a person.
    assert "Watchdog" not in inbox.names() and "PipelineSilent" not in inbox.names()


def test_every_alertmanager_stopped_fires_error_sending_and_the_deadman_reports_it(
    stack, report, measured
):
    inbox = Inbox(stack)
    for i in range(len(stack.alertmanagers)):
        stack.alertmanagers[i].stop()
    fault = time.monotonic()
    # The alert cannot be delivered (no Alertmanager): it fires in Prometheus.
    name = "PrometheusErrorSendingAlertsToAnyAlertmanager"
    fired = wait_for(lambda: firing_in_prometheus(stack, name), 60, f"{name} firing")
    measured(
        name,
        "stop both Alertmanagers",
        time.monotonic() - fault,
        note="to firing in Prometheus' /api/v1/alerts: with no Alertmanager it cannot be "
        "delivered; + up to 1 resend delay until the first failed send",
    )
    assert fired[0]["labels"]["severity"] == "critical"
    assert float(fired[0]["value"]) > 0.03  # the share of sends that failed, over 10s
    # The last Watchdog went out before the stop: silent after the timeout.
    bound = DEADMAN_TIMEOUT + CHECK_STEP
    wait_for(lambda: pipeline(stack)["pipeline"] == "silent", bound + 30, "the pipeline silent")
    silent = time.monotonic() - fault
    assert silent <= bound + SLACK, (silent, bound)
    assert_silent_after_the_timeout(pipeline(stack))

    restart = time.monotonic()
    for i in range(len(stack.alertmanagers)):
        stack.start_alertmanager(i)
    wait_for(lambda: pipeline(stack)["pipeline"] == "ok", 30, "the Watchdog again")
    silence = SilenceTime(
        "stop both Alertmanagers",
        silent,
        bound,
        f"{DEADMAN_TIMEOUT:g} (timeout) + {CHECK_STEP:g} (check)",
        time.monotonic() - restart,
    )
    report.row(SILENCE, SilenceTime.HEADER, silence.cells())
    # Back, the pair gets what Prometheus still fires and pages it late, then resolved:
    # the outage, told once delivery is possible again. Let that finish here.
    wait_for(lambda: quiet(stack), 60, lambda: f"a quiet stack: {describe_active(stack)}")
    time.sleep(8 + PEER_TIMEOUT + 2)  # the warnings' group_wait, the second member's turn
    for late in inbox.names():
        inbox.wait_resolved(late, timeout=30)
    assert inbox.names() <= {name, "AlertmanagerClusterDown"}, inbox.brief()
    report.line(
        NOTES,
        "Both Alertmanagers stopped: once they were back, the pager got "
        + (", ".join(sorted(inbox.names())) or "nothing")
        + " (firing, then resolved): the outage reported once delivery was possible again.",
    )


# --- faults of the pipeline, delivered ---------------------------------------------------


def test_a_rule_that_fails_pages_prometheus_rule_failures(stack, rules_dir, tmp_path, measured):
    inbox = Inbox(stack)
    override = tmp_path / "failing-rule.libsonnet"
    override.write_text(FAILING_RULE)
    render_rules(PIPELINE_OVERRIDES, rules_dir, config_files=[override])
    stack.reload_rules()
    fault = time.monotonic()
    fired = inbox.wait("PrometheusRuleFailures", timeout=60)
    measured(
        "PrometheusRuleFailures",
        "load a rule that fails at each evaluation",
        time.monotonic() - fault,
    )
    alert = assert_notification(stack, fired, {"job": "prometheus"})
    assert alert["labels"]["rule_group"].endswith(";injected-fault"), alert["labels"]

    render_rules(PIPELINE_OVERRIDES, rules_dir)
    stack.reload_rules()
    inbox.wait_resolved("PrometheusRuleFailures", timeout=60)
    assert inbox.names() == {"PrometheusRuleFailures"}, inbox.brief()


class Failing(ThreadingHTTPServer):
    """A webhook that answers 500 to everything, counting the attempts."""

    daemon_threads = True

    def __init__(self) -> None:
        self.posts = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.posts += 1
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def failing() -> Iterator[Failing]:
    server = Failing()
    yield server
    server.shutdown()
    server.server_close()


def test_a_receiver_answering_500_raises_alertmanager_failed_to_send_alerts(
    stack, failing, measured
):
    inbox = Inbox(stack)
    # The dead man's switch's URL (Alertmanager reads it at each notification) now leads
    # to a server that answers 500: the Watchdog's notifications fail.
    url_file(stack, "deadman").write_text(f"{failing.url}/deadman")
    fault = time.monotonic()
    fired = inbox.wait("AlertmanagerFailedToSendAlerts", timeout=60)
    measured(
        "AlertmanagerFailedToSendAlerts",
        "the deadman webhook answers 500",
        time.monotonic() - fault,
        note="+ up to 1 Watchdog repeat (2 s), + at least 10 s: Alertmanager counts a "
        "notification failed once its retries give up, at its timeout (10 s at least)",
    )
    alert = assert_notification(stack, fired, {"job": "alertmanager", "integration": "slack"})
    members = {f"127.0.0.1:{m.port}" for m in stack.alertmanagers}
    assert alert["labels"]["instance"] in members
    for member in members:  # both fail on the same Watchdog: wait for both, then repair
        inbox.wait("AlertmanagerFailedToSendAlerts", where=member, timeout=60)
    assert failing.posts > 0

    url_file(stack, "deadman").write_text(f"{stack.receiver.url}/deadman")
    inbox.wait_resolved("AlertmanagerFailedToSendAlerts", timeout=60)
    assert inbox.names() == {"AlertmanagerFailedToSendAlerts"}, inbox.brief()


# --- the Alertmanager pair ---------------------------------------------------------------


def test_the_pair_notifies_once_and_keeps_notifying_when_a_member_dies(stack, report, measured):
    first, second = (r.target for r in stack.replicas)
    inbox = Inbox(stack)
    # Both members up: both hold the alert (Prometheus sends to both); one notification.
    stack.kill_replica(0)
    inbox.wait("WorkerDown", where=first, timeout=45)
    for member in stack.alertmanagers:
        with urllib.request.urlopen(
            f"{member.url}/api/v2/alerts?filter=alertname%3D%22WorkerDown%22", timeout=5
        ) as r:
            assert [a["labels"]["instance"] for a in json.load(r)] == [first], member.name
    time.sleep(2 * PEER_TIMEOUT + 2)  # the second member's turn has passed
    assert deliveries(inbox, "WorkerDown", "firing", first) == 1, listing(inbox)
    stack.start_replica(0)
    inbox.wait("WorkerDown", "resolved", where=first, timeout=30)
    time.sleep(2 * PEER_TIMEOUT + 2)
    resolved_first = deliveries(inbox, "WorkerDown", "resolved", first)

    # One member killed: the next alert is still delivered, once; the cluster is down.
    stack.alertmanagers[0].kill()
    member_lost = time.monotonic()
    stack.kill_replica(1)
    fault = time.monotonic()
    inbox.wait("WorkerDown", where=second, timeout=45)
    measured(
        "WorkerDown",
        "kill -9 one replica, one Alertmanager of two killed",
        time.monotonic() - fault,
        note=f"+ up to {PEER_TIMEOUT:g} s: the surviving member may wait its turn",
    )
    down = inbox.wait("AlertmanagerClusterDown", timeout=60)
    measured(
        "AlertmanagerClusterDown", "kill -9 one Alertmanager of two", time.monotonic() - member_lost
    )
    assert down["receiver"] == "pager" and down["severity"] == "critical"
    lost = f"127.0.0.1:{stack.alertmanagers[0].port}"
    missing = stack.query('up{job="alertmanager"} == 0')
    assert [r["metric"]["instance"] for r in missing] == [lost]
    time.sleep(2 * PEER_TIMEOUT + 2)
    assert deliveries(inbox, "WorkerDown", "firing", second) == 1, listing(inbox)
    assert deliveries(inbox, "AlertmanagerClusterDown", "firing", "") == 1, listing(inbox)

    # The survivor alone also delivers the resolution. (Resolved before the member
    # returns: a restarted member knows no alert until Prometheus sends it again, and a
    # notification it sends meanwhile can make the survivor skip a resolution; see
    # docs/running.md, "The Alertmanager pair".)
    stack.start_replica(1)
    inbox.wait("WorkerDown", "resolved", where=second, timeout=30)
    stack.start_alertmanager(0)
    inbox.wait_resolved("AlertmanagerClusterDown", timeout=60)
    assert inbox.names() == {"WorkerDown", "AlertmanagerClusterDown"}, listing(inbox)
    report.line(
        NOTES,
        "Alertmanager pair: a new alert group was notified once with both members up and "
        "once with one killed; its resolution reached the receiver "
        f"{resolved_first} time(s) with both up (each member decides from its own last "
        "flush, so a change that lands between the two flushes can be sent twice: "
        "Alertmanager's clustering promises at least once, not exactly once).",
    )


def listing(inbox: Inbox) -> str:
    return "\n".join(map(str, inbox.brief()))
