"""The alert receiver's dead man's switch: the Watchdog's deliveries keep it quiet; their
absence for the timeout is reported silent (log line, status page, /alerts) until the next
one arrives. Driven by a clock of our own, then through a real receiver process."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from stack.alert_receiver import records_of
from stack.deadman import DeadmanSwitch
from stack.fleet import alert_receiver, python_env
from stack.poll import wait_until
from stack.servers import HttpServer

# The Watchdog as alertmanager/alertmanager.yml's deadman receiver sends it (Slack format,
# alertmanager/templates/worker.tmpl).
WATCHDOG = {
    "username": "alertmanager",
    "attachments": [
        {
            "title": "[FIRING:1] Watchdog (none)",
            "text": "*Watchdog*: The alerting pipeline delivers: this alert always fires\n"
            "Value: always firing",
        }
    ],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def switch():
    kept: list[dict] = []
    clock = Clock()
    yield DeadmanSwitch(timeout=180, record=kept.extend, clock=clock), clock, kept


def test_silent_when_no_watchdog_arrives_for_the_timeout_then_clear_on_the_next(switch, caplog):
    deadman, clock, kept = switch
    assert deadman.status()["pipeline"] == "waiting"
    clock.now += 179
    assert not deadman.check() and deadman.status()["pipeline"] == "waiting"
    clock.now += 1  # never heard since start: silent too
    assert deadman.check() and deadman.status()["pipeline"] == "silent"
    assert not deadman.check()  # declared once
    assert deadman.heard(records_of("deadman", WATCHDOG)) == []  # counted, not kept
    assert deadman.status()["pipeline"] == "ok" and deadman.status()["watchdog_deliveries"] == 1

    clock.now += 90
    deadman.heard(records_of("deadman", WATCHDOG))
    clock.now += 179
    assert not deadman.check() and deadman.status()["pipeline"] == "ok"
    assert deadman.status()["seconds_since_last_watchdog"] == 179
    clock.now += 1
    assert deadman.check()
    status = deadman.status()
    assert status["pipeline"] == "silent" and status["silent_since"]
    deadman.heard(records_of("deadman", WATCHDOG))
    assert deadman.status()["pipeline"] == "ok"

    assert [(r["alertname"], r["status"], r["receiver"]) for r in kept] == [
        ("PipelineSilent", "firing", "deadman"),
        ("PipelineSilent", "resolved", "deadman"),
        ("PipelineSilent", "firing", "deadman"),
        ("PipelineSilent", "resolved", "deadman"),
    ]
    assert kept[2]["summary"].startswith("No Watchdog on /deadman for 180s")
    lines = [r.getMessage() for r in caplog.records]
    assert sum("PIPELINE SILENT" in line for line in lines) == 2
    assert sum("pipeline delivering again" in line for line in lines) == 2


def test_only_a_firing_watchdog_on_the_deadman_receiver_is_a_heartbeat(switch):
    deadman, clock, _ = switch
    resolved = {
        "attachments": [
            {"title": "[RESOLVED] Watchdog (none)", "text": "RESOLVED: *Watchdog*: always"}
        ]
    }
    others = [
        *records_of("deadman", resolved),  # the Watchdog expiring is no heartbeat
        *records_of("chat", WATCHDOG),  # a misrouted Watchdog is not either
        *records_of("deadman", {"text": "*Other*: x"}),
    ]
    assert deadman.heard(others) == others  # kept as ordinary notifications
    clock.now += 180
    assert deadman.check() and deadman.status()["watchdog_deliveries"] == 0


def test_a_timeout_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        DeadmanSwitch(timeout=0)
    result = subprocess.run(
        [sys.executable, "-m", "stack", "alert-receiver", "--deadman-timeout", "0"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=30,
    )
    assert result.returncode == 2 and "--deadman-timeout must be positive" in result.stderr


# --- through a real receiver ----------------------------------------------------------


def get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def post(url: str, body: dict) -> None:
    request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        assert json.load(r) == {"ok": True, "received": 1}


def wait_status(server: HttpServer, state: str, timeout: float = 15.0) -> dict:
    return wait_until(
        lambda: (status := get(f"{server.url}/status"))["pipeline"] == state and status,
        timeout,
        f"the pipeline {state}",
        interval=0.1,
    )


def test_the_receiver_reports_the_pipeline_silent_and_clears(tmp_path):
    server = alert_receiver(tmp_path, "--deadman-timeout", "1.5")
    server.start()
    try:
        post(f"{server.url}/deadman", WATCHDOG)
        assert wait_status(server, "ok")["watchdog_deliveries"] == 1
        assert get(f"{server.url}/alerts") == []  # heartbeats are not stored

        silent = wait_status(server, "silent")
        assert silent["seconds_since_last_watchdog"] >= 1.5
        (record,) = get(f"{server.url}/alerts?receiver=deadman")
        assert (record["alertname"], record["status"]) == ("PipelineSilent", "firing")
        assert "PIPELINE SILENT: no Watchdog on /deadman" in server.log.read_text()

        post(f"{server.url}/deadman", WATCHDOG)
        assert wait_status(server, "ok")["watchdog_deliveries"] == 2
        statuses = [r["status"] for r in get(f"{server.url}/alerts?alertname=PipelineSilent")]
        assert statuses == ["firing", "resolved"]
        assert "pipeline delivering again" in server.log.read_text()
    finally:
        server.stop()
