"""What the end-to-end tests share: the test configuration of the alerts and the twin, and
how a test reads what an operator would see (the receiver, Alertmanager, Prometheus)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alerts.detect import Detection, time_to_detect
from stack.fleet import ROOT
from stack.poll import wait_until
from stack.twin import ALERTMANAGER_CONFIG, LocalStack
from worker.redis_keys import DEFAULT_NAMESPACE

NAMESPACE = DEFAULT_NAMESPACE

# The committed alerts with short durations and windows, and thresholds a small simulated
# load crosses. Everything else (expressions, labels, annotations, routing) is as shipped.
ALERT_OVERRIDES: dict[str, Any] = {
    "alerts": {
        "WorkerDown": {"for": "2s"},
        "RedisDisconnected": {"for": "3s"},
        "HighJobFailureRate": {"for": "3s", "window": "20s"},
        "HighJobProcessingTime": {"for": "3s", "window": "20s", "thresholdSeconds": 1},
        "HighJobProcessingQueue": {"for": "3s", "threshold": 20},
        "HighRedisReconnectAttempts": {"window": "20s"},
        "LowWorkerThroughput": {
            "for": "5s",
            "window": "20s",
            "minCompletedPerSecond": 1,
            "minReadyMessages": 10,
        },
    },
    # The SLO alerts answer to most faults of test_alerts.py (a killed or stalled worker
    # makes jobs wait, failures dead-letter jobs) and, with their production windows
    # (hours), would outlast each test there. test_slo_alerts.py proves them on a twin of
    # their own with SLO_OVERRIDES; here objectives no fault can miss keep them silent
    # (a budget of 100 % never burns faster than 1x; no message waits a day).
    "slo": {
        "queueWait": {"objective": 0},
        "success": {"objective": 0},
        "alerts": {
            "HighJobQueueLatency": {
                "thresholdSeconds": 86400,
                "queues": {"default": {"thresholdSeconds": 86400}},
            }
        },
    },
}

# The SLOs with seconds instead of hours, for test_slo_alerts.py: every queue-wait
# threshold 2.5 s (a bucket edge), the four window pairs scaled down (factors as
# shipped), HighJobQueueLatency above 5 s for 3 s.
SLO_OVERRIDES: dict[str, Any] = {
    "alerts": ALERT_OVERRIDES["alerts"],
    "slo": {
        "window": "1h",
        "queueWait": {"thresholdSeconds": 2.5, "queues": {"default": {"thresholdSeconds": 2.5}}},
        "burnRates": [
            {"severity": "critical", "long": "30s", "short": "10s", "factor": 14.4},
            {"severity": "critical", "long": "60s", "short": "20s", "factor": 6},
            {"severity": "warning", "long": "40s", "short": "10s", "factor": 3},
            {"severity": "warning", "long": "80s", "short": "20s", "factor": 1},
        ],
        "alerts": {
            "HighJobQueueLatency": {
                "for": "3s",
                "thresholdSeconds": 5,
                "queues": {"default": {"thresholdSeconds": 5}},
            }
        },
    },
}

# Every route groups and repeats within a second, but warnings keep what production relies
# on: their group_wait (2m there) outlasts the time a critical alert takes to fire (scrape +
# evaluation + `for`: 1m30s there, 5s here), so that an inhibiting RedisDisconnected or
# WorkerDown is active before a warning it explains would be sent.
ALERTMANAGER_TIMING = {"group_wait": "1s", "group_interval": "1s"}
ALERTMANAGER_OVERRIDES = {"route": {"group_wait": "8s"}}

RECEIVER_OF_SEVERITY = {"critical": "pager", "warning": "chat"}
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_URL_BASE = "https://github.com/example/worker-monitoring/blob/main/docs/runbooks"


#: The end-to-end tests poll HTTP APIs: every 0.2 s is often enough.
wait_for = functools.partial(wait_until, interval=0.2)

#: The demo mix of the load generator, at about twice the demo rate (1.56 jobs/s).
LOAD_RATE = 3.0
#: Quick jobs, Redis health and the backlog sampled at least every second, retry backoff
#: and the shutdown grace scaled down with the alert timings.
REPLICA_ENV = {
    "SIM_LATENCY_SECONDS": "0.05-0.2",
    "REDIS_HEALTH_INTERVAL_SECONDS": "0.5",
    "METRICS_QUEUE_SAMPLE_SECONDS": "1",
    "RETRY_TIME_SCALE": "0.05",
    "SHUTDOWN_GRACE_SECONDS": "3",
}


def deadman_repeating(directory: Path, repeat_interval: str) -> Path:
    """The committed alertmanager.yml, written into ``directory``, with the Watchdog's
    route repeating every ``repeat_interval`` (every other route as committed): a test's
    dead man's switch hears a heartbeat every few seconds."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["templates"] = [str(ALERTMANAGER_CONFIG.parent / t) for t in config["templates"]]
    (deadman,) = [r for r in config["route"]["routes"] if r["receiver"] == "deadman"]
    deadman["repeat_interval"] = repeat_interval
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def alerting_twin(
    twin,
    name: str,
    rules: Path,
    seed: int,
    *,
    timing: dict[str, str] = ALERTMANAGER_TIMING,
    overrides: dict = ALERTMANAGER_OVERRIDES,
) -> LocalStack:
    """A twin for a module that counts notifications: the rules in ``rules`` (rendered at
    scaled timings), scraped and evaluated every second, the demo load with ``seed``;
    returned once Prometheus scrapes every replica. ``timing`` and ``overrides``: the
    Alertmanager's, as ``LocalStack`` takes them.

    One Alertmanager: with these scaled timings a pair's group interval is shorter than
    its peer wait, so the pair may send a group twice (its clustering promises at least
    once). The pair is proven on its own in test_pipeline.py."""
    stack = twin(
        name,
        alertmanagers=1,
        scrape_interval="1s",
        evaluation_interval="1s",
        rules_dir=rules,
        alertmanager_timing=timing,
        alertmanager_overrides=overrides,
        replica_env=REPLICA_ENV,
        loadgen_rate=LOAD_RATE,
        loadgen_args=["--seed", str(seed), "--quiet"],
    )
    try:
        wait_for(
            lambda: len(stack.query('up{job="worker"} == 1')) == len(stack.replicas),
            30,
            "Prometheus scrapes every replica",
        )
    except BaseException:
        stack.stop()
        raise
    return stack


# --- what the operator sees -------------------------------------------------------------


class Inbox:
    """The alert receiver's notifications, from a mark on: what a test's fault caused."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.start = len(stack.alerts())

    def records(self) -> list[dict[str, Any]]:
        """Notifications to people (pager, chat): not the dead man's switch's records."""
        return [r for r in self.stack.alerts()[self.start :] if r["receiver"] != "deadman"]

    def matching(self, alertname: str, status: str = "firing", where: str = "") -> list[dict]:
        return [
            r
            for r in self.records()
            if r["alertname"] == alertname and r["status"] == status and where in r["summary"]
        ]

    def wait(
        self, alertname: str, status: str = "firing", where: str = "", timeout: float = 60
    ) -> dict[str, Any]:
        """The first notification of ``alertname`` in ``status`` (whose summary names
        ``where``), as soon as the receiver has it."""
        found = wait_for(
            lambda: self.matching(alertname, status, where),
            timeout,
            lambda: f"{status} {alertname} {where} at the receiver; it got {self.brief()}",
        )
        return found[0]

    def wait_resolved(self, alertname: str, timeout: float = 60) -> None:
        """Until every alert of ``alertname`` notified firing has been notified resolved."""

        def unresolved() -> set[str]:
            records = [r for r in self.records() if r["alertname"] == alertname]
            fired = {r["summary"] for r in records if r["status"] == "firing"}
            return fired - {r["summary"] for r in records if r["status"] == "resolved"}

        wait_for(
            lambda: not unresolved(),
            timeout,
            lambda: f"resolved notifications of {sorted(unresolved())}; got {self.brief()}",
        )

    def brief(self) -> list[tuple[str, str, str, str]]:
        return [(r["receiver"], r["status"], r["alertname"], r["summary"]) for r in self.records()]

    def names(self) -> set[str]:
        return {r["alertname"] for r in self.records()}


def assert_notification(
    stack: LocalStack, record: dict[str, Any], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """The receiver got the alert through the committed routing, with its labels and its
    annotations as the rule renders them. Returns the alert as Alertmanager holds it."""
    name = record["alertname"]
    held = [
        a
        for a in stack.alertmanager_alerts(alertname=name)
        if a["annotations"]["summary"] == record["summary"]
    ]
    assert len(held) == 1, f"{name}: {record['summary']!r} not (once) in Alertmanager: {held}"
    alert = held[0]
    severity = alert["labels"]["severity"]
    # Routed by severity to its receiver, and delivered there.
    assert [r["name"] for r in alert["receivers"]] == [RECEIVER_OF_SEVERITY[severity]]
    assert record["receiver"] == RECEIVER_OF_SEVERITY[severity], record
    assert record["severity"] == severity
    assert {**alert["labels"], **(labels or {})} == alert["labels"], alert["labels"]
    if "queue" in alert["labels"]:
        assert record["labels"]["queue"] == alert["labels"]["queue"]
    # The message carries every annotation, as alertmanager/templates/worker.tmpl lays out.
    notes = alert["annotations"]
    expected = "\n".join(
        [
            f"*{name}*: {notes['summary']}",
            f"Value: {notes['value']}",
            notes["description"],
            f"Runbook: {notes['runbook_url']}",
            f"Dashboard: {notes['dashboard_url']}",
        ]
    )
    # Alertmanager holds the annotations of the latest evaluation; the notification was
    # rendered from an earlier one, and a value measured over a window (a failure ratio)
    # moves in between. The layout and every word must match; the numbers may have moved.
    assert _numbers_masked(record["text"]) == _numbers_masked(expected), (record, expected)
    assert notes["runbook_url"] == f"{RUNBOOK_URL_BASE}/{name}.md"
    assert (RUNBOOKS / f"{name}.md").is_file()
    return alert


def _numbers_masked(text: str) -> str:
    return re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", text)


#: Fires always, by design (the dead man's switch's heartbeat): never part of a fault.
WATCHDOG = "Watchdog"


def rule_alerts(stack: LocalStack) -> list[dict[str, Any]]:
    """Prometheus' pending and firing alerts but the Watchdog."""
    return [a for a in stack.rule_alerts() if a["labels"]["alertname"] != WATCHDOG]


def active_alerts(stack: LocalStack) -> list[dict[str, Any]]:
    """Alertmanager's alerts but the Watchdog."""
    return [a for a in stack.alertmanager_alerts() if a["labels"]["alertname"] != WATCHDOG]


def quiet(stack: LocalStack) -> bool:
    """No alert but the Watchdog pending or firing in Prometheus or active in Alertmanager."""
    return not rule_alerts(stack) and not active_alerts(stack)


def describe_active(stack: LocalStack) -> str:
    rules = [(a["labels"]["alertname"], a["state"]) for a in rule_alerts(stack)]
    am = [(a["labels"]["alertname"], a["status"]["state"]) for a in active_alerts(stack)]
    return f"Prometheus {rules}, Alertmanager {am}"


# --- time to notify ---------------------------------------------------------------------


#: Report sections of the end-to-end tests (tests/support/report.py).
NOTIFY = "Time to notify (twin, test config)"
SILENCE = "Dead man's switch: pipeline reported silent (twin, test config)"
CHAOS = "Nothing lost (chaos run)"
NOTES = "Notes of the end-to-end tests"


@dataclass
class NotifyTime:
    alert: str
    fault: str
    measured: float
    computed: Detection
    note: str = ""

    HEADER = (
        "alert",
        "fault injected",
        "receiver",
        "computed worst case (scrape + range + evaluation [+ windows at a burn rate] + for "
        "+ group_wait)",
        "measured fault to notification",
    )

    def cells(self) -> tuple[str, ...]:
        d = self.computed
        windows = f" + {d.windows:.1f} (windows at {d.burn_rate:g}x)" if d.burn_rate else ""
        parts = (
            f"{d.scrape:g} + {d.window:g} + {d.evaluation:g}{windows} + {d.for_:g} "
            f"+ {d.group_wait:g}"
        )
        note = f" ({self.note})" if self.note else ""
        measured = f"{self.measured:.1f} s{note}"
        return self.alert, self.fault, d.receiver, f"{d.total:.1f} s = {parts}", measured


def report_notify_time(report, row: NotifyTime) -> None:
    report.row(NOTIFY, NotifyTime.HEADER, row.cells())


@dataclass
class SilenceTime:
    """How long the dead man's switch took to report a stopped pipeline, and to clear."""

    fault: str
    measured: float
    bound: float
    parts: str  # how the bound is made, for the table
    cleared: float | None = None

    HEADER = (
        "fault injected",
        "computed bound",
        "measured fault to `silent`",
        "cleared after restart in",
    )

    def cells(self) -> tuple[str, ...]:
        cleared = f"{self.cleared:.1f} s" if self.cleared is not None else "-"
        bound = f"{self.bound:g} s = {self.parts}"
        return self.fault, bound, f"{self.measured:.1f} s", cleared


def computed_times(
    stack: LocalStack,
    overrides: dict[str, Any] = ALERT_OVERRIDES,
    burn_rates: dict[str, float] | None = None,
) -> dict[str, Detection]:
    """alerts/detect.py's worst case for the configs the twin really runs: its derived
    prometheus.yml and alertmanager.yml, and the rules rendered with ``overrides``;
    a burn-rate alert's page (its critical row) at ``burn_rates``."""
    rows = time_to_detect(
        Path(stack.run_dir) / "prometheus" / "prometheus.yml",
        Path(stack.run_dir) / "alertmanager" / "alertmanager.yml",
        overrides=overrides,
        burn_rates=burn_rates,
    )
    pages = {row.alert: row for row in rows if row.severity == "critical"}
    return {row.alert: pages.get(row.alert, row) for row in rows}
