"""Alertmanager: the committed config is valid, routes each alert to its receiver (amtool),
and a real Alertmanager delivers, formats and inhibits notifications as configured."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from alerts.render import rendered
from alerts.routes import ALERTMANAGER_CONFIG, amtool_route_test, route_cases
from stack.poll import wait_until
from stack.servers import alertmanager_server, require_binary, running

AM_DIR = ALERTMANAGER_CONFIG.parent
# docs/contract.md, "Alerts": critical alerts page, warnings go to chat.
RECEIVER_OF_SEVERITY = {"critical": "pager", "warning": "chat"}
RUNBOOK = "https://github.com/example/worker-monitoring/blob/main/docs/runbooks"
DASHBOARD = "http://localhost:3000/d/worker-overview/worker-overview"
SECRETS = "/etc/alertmanager/secrets"


def test_amtool_accepts_the_config():
    result = subprocess.run(
        [require_binary("amtool"), "check-config", str(ALERTMANAGER_CONFIG)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 inhibit rules" in result.stdout


@pytest.mark.parametrize(
    "case", route_cases(), ids=lambda c: f"{c['labels']['alertname']}-{c['receiver']}"
)
def test_amtool_routes_alert_to_its_receiver(case):
    result = amtool_route_test(case["labels"], case["receiver"])
    assert result.returncode == 0, f"{case['labels']}: {result.stdout}{result.stderr}"


def test_route_cases_cover_every_alert_with_its_rendered_labels():
    groups = yaml.safe_load(rendered()["worker-alerts.yml"])["groups"]
    alerts = [rule for group in groups for rule in group["rules"]]
    cases = {(c["labels"]["alertname"], c["labels"].get("severity")): c for c in route_cases()}
    receivers = {**RECEIVER_OF_SEVERITY, "none": "deadman"}
    for rule in alerts:
        case = cases[rule["alert"], rule["labels"]["severity"]]
        assert case["labels"]["severity"] == rule["labels"]["severity"], rule["alert"]
        assert case["receiver"] == receivers[rule["labels"]["severity"]], rule["alert"]
    # The dead man's switch hears the Watchdog and nothing else.
    assert [c["labels"]["alertname"] for c in route_cases() if c["receiver"] == "deadman"] == [
        "Watchdog"
    ]


def test_webhook_urls_come_from_files_not_the_config():
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in config["receivers"]:
        for slack in receiver["slack_configs"]:
            assert "api_url" not in slack, receiver["name"]
            assert slack["api_url_file"] == f"{SECRETS}/{receiver['name']}-webhook-url"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(AM_DIR / "secrets" / "pager-webhook-url")],
        cwd=AM_DIR,
    )
    assert ignored.returncode == 0, "alertmanager/secrets/* must be ignored by git"


# --- a real Alertmanager ----------------------------------------------------------------


class WebhookReceiver:
    """A Slack-compatible incoming webhook on loopback that keeps every message it gets."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._changed:
                    receiver.messages.append((self.path, json.loads(body)))
                    receiver._changed.notify_all()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self, path: str) -> list[str]:
        """Title and text of each message posted to `path`."""
        with self._changed:
            return [
                f"{a['title']}\n{a['text']}"
                for p, m in self.messages
                if p == path
                for a in m["attachments"]
            ]

    def wait_for(self, path: str, needle: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [t for t in self.texts(path) if needle in t]
                if found:
                    return found[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {path} message with {needle!r}: {self.messages}")
                self._changed.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, *alerts: dict) -> None:
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(list(alerts)).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def alerts(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            return json.load(response)

    def state(self, **labels: str) -> dict:
        """Status of the one alert whose labels include `labels`."""
        found = [a for a in self.alerts() if labels.items() <= a["labels"].items()]
        assert len(found) == 1, (labels, found)
        return found[0]["status"]


def _short_timers(route: dict) -> None:
    """Seconds instead of minutes, keeping the committed tree, receivers and inhibitions."""
    for key, value in (("group_wait", "1s"), ("group_interval", "1s"), ("repeat_interval", "1h")):
        if key in route:
            route[key] = value
    for child in route.get("routes", []):
        _short_timers(child)


@pytest.fixture
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def alertmanager(tmp_path, webhook):
    """The committed alertmanager.yml with short timers, its URL files pointing at `webhook`.

    The URL files live in tmp_path instead of /etc/alertmanager/secrets, as a deployment
    that keeps them elsewhere would point api_url_file at its own directory.
    """
    conf_dir = tmp_path / "alertmanager"
    shutil.copytree(AM_DIR / "templates", conf_dir / "templates")
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    _short_timers(config["route"])
    secrets = conf_dir / "secrets"
    secrets.mkdir()
    for receiver in config["receivers"]:
        for slack in receiver["slack_configs"]:
            url_file = secrets / Path(slack["api_url_file"]).relative_to(SECRETS)
            url_file.write_text(f"{webhook.url}/{receiver['name']}\n")
            slack["api_url_file"] = str(url_file)
    (conf_dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    server = alertmanager_server(tmp_path / "am", conf_dir / "alertmanager.yml")
    with running(server):
        am = Alertmanager(server.url)
        wait_until(lambda: _ready(server.url), 10, "Alertmanager ready")
        yield am


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def alert(name: str, severity: str, summary: str, value: str, ends_in: float = 300, **labels):
    """An alert as Prometheus posts it, with the annotations our rules give it."""
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {
            "summary": summary,
            "description": f"{summary} (test)",
            "value": value,
            "runbook_url": f"{RUNBOOK}/{name}.md",
            "dashboard_url": f"{DASHBOARD}?viewPanel=1",
        },
        "endsAt": (datetime.now(UTC) + timedelta(seconds=ends_in)).isoformat(),
    }


def redis_disconnected(instance: str, **kw) -> dict:
    return alert(
        "RedisDisconnected",
        "critical",
        f"Worker replica {instance} disconnected from Redis for more than 1m",
        "connection status 0",
        job="worker",
        instance=instance,
        **kw,
    )


def reconnects(instance: str) -> dict:
    return alert(
        "HighRedisReconnectAttempts",
        "warning",
        f"Worker replica {instance} made more than 5 Redis reconnect attempts in 10m",
        "9 reconnect attempts",
        job="worker",
        instance=instance,
    )


def low_throughput(queue: str) -> dict:
    return alert(
        "LowWorkerThroughput",
        "warning",
        f"Queue {queue} completes fewer than 0.5 jobs/s while work is waiting",
        "0.12 jobs/s",
        queue=queue,
    )


def backlog(queue: str) -> dict:
    return alert(
        "HighJobProcessingQueue",
        "warning",
        f"More than 1000 ready messages in queue {queue}",
        "1520 ready",
        queue=queue,
        state="ready",
    )


def worker_down(instance: str) -> dict:
    return alert(
        "WorkerDown",
        "critical",
        f"Worker replica {instance} down for more than 1m",
        "up = 0",
        job="worker",
        instance=instance,
    )


# Long enough for a notification that was not inhibited to go out (group_wait and
# group_interval are 1s in these tests).
QUIET_SECONDS = 3.0


def test_critical_pages_and_warning_chats_with_summary_value_and_links(alertmanager, webhook):
    alertmanager.post(worker_down("10.0.0.2:9191"), backlog("fast"))

    page = webhook.wait_for("/pager", "WorkerDown")
    assert page.startswith("[FIRING:1] WorkerDown (critical)\n")
    assert "*WorkerDown*: Worker replica 10.0.0.2:9191 down for more than 1m" in page
    assert "Value: up = 0" in page
    assert f"Runbook: {RUNBOOK}/WorkerDown.md" in page
    assert f"Dashboard: {DASHBOARD}?viewPanel=1" in page

    chat = webhook.wait_for("/chat", "HighJobProcessingQueue")
    assert chat.startswith("[FIRING:1] HighJobProcessingQueue on queue fast (warning)\n")
    assert "*HighJobProcessingQueue*: More than 1000 ready messages in queue fast" in chat
    assert "Value: 1520 ready" in chat
    assert f"Runbook: {RUNBOOK}/HighJobProcessingQueue.md" in chat
    assert not any("HighJobProcessingQueue" in t for t in webhook.texts("/pager"))
    assert not any("WorkerDown" in t for t in webhook.texts("/chat"))


def test_redis_disconnected_inhibits_reconnect_storm_of_its_replica_and_low_throughput(
    alertmanager, webhook
):
    alertmanager.post(redis_disconnected("w1:9191"))
    webhook.wait_for("/pager", "RedisDisconnected")

    alertmanager.post(reconnects("w1:9191"), reconnects("w2:9191"), low_throughput("default"))
    # w2 is connected: its reconnect storm is news and reaches chat, without w1's.
    chat = webhook.wait_for("/chat", "HighRedisReconnectAttempts")
    assert "w2:9191" in chat and "w1:9191" not in chat
    time.sleep(QUIET_SECONDS)
    texts = webhook.texts("/chat")
    assert not any("w1:9191" in t or "LowWorkerThroughput" in t for t in texts), texts
    for muted in (
        alertmanager.state(alertname="HighRedisReconnectAttempts", instance="w1:9191"),
        alertmanager.state(alertname="LowWorkerThroughput"),
    ):
        assert muted["state"] == "suppressed" and muted["inhibitedBy"], muted
    assert alertmanager.state(instance="w2:9191")["state"] == "active"

    # Redis is back: what it explained is news again.
    alertmanager.post(redis_disconnected("w1:9191", ends_in=-1))
    webhook.wait_for("/chat", "w1:9191")
    webhook.wait_for("/chat", "LowWorkerThroughput")


def test_worker_down_inhibits_low_throughput(alertmanager, webhook):
    alertmanager.post(worker_down("w3:9191"))
    webhook.wait_for("/pager", "WorkerDown")

    alertmanager.post(low_throughput("critical"), reconnects("w3:9191"))
    webhook.wait_for("/chat", "HighRedisReconnectAttempts")  # not explained by WorkerDown
    time.sleep(QUIET_SECONDS)
    assert not any("LowWorkerThroughput" in t for t in webhook.texts("/chat"))
    muted = alertmanager.state(alertname="LowWorkerThroughput")
    assert muted["state"] == "suppressed" and muted["inhibitedBy"], muted


def watchdog() -> dict:
    return alert(
        "Watchdog",
        "none",
        "The alerting pipeline delivers: this alert always fires",
        "always firing",
    )


def replicas_missing() -> dict:
    return alert(
        "WorkerReplicasMissing",
        "warning",
        "Fewer than 2 worker replicas up for more than 5m",
        "1 of 2 up",
        job="worker",
    )


def test_watchdog_reaches_only_the_dead_mans_switch(alertmanager, webhook):
    alertmanager.post(watchdog(), backlog("default"))
    beat = webhook.wait_for("/deadman", "Watchdog")
    assert beat.startswith("[FIRING:1] Watchdog (none)\n")
    webhook.wait_for("/chat", "HighJobProcessingQueue")
    time.sleep(QUIET_SECONDS)
    assert not any("Watchdog" in t for p in ("/pager", "/chat") for t in webhook.texts(p))
    assert all("Watchdog" in t for t in webhook.texts("/deadman"))


def test_worker_down_inhibits_replicas_missing_of_its_job(alertmanager, webhook):
    alertmanager.post(worker_down("w3:9191"))
    webhook.wait_for("/pager", "WorkerDown")
    alertmanager.post(replicas_missing())
    time.sleep(QUIET_SECONDS)
    assert not any("WorkerReplicasMissing" in t for t in webhook.texts("/chat"))
    muted = alertmanager.state(alertname="WorkerReplicasMissing")
    assert muted["state"] == "suppressed" and muted["inhibitedBy"], muted

    # The replica is back but one stays missing (removed from DNS): now it is news.
    alertmanager.post(worker_down("w3:9191") | {"endsAt": datetime.now(UTC).isoformat()})
    webhook.wait_for("/chat", "WorkerReplicasMissing")


def budget_burn(queue: str, severity: str) -> dict:
    pairs = "1h and 5m, or 6h and 30m" if severity == "critical" else "1d and 2h, or 3d and 6h"
    return alert(
        "JobQueueWaitBudgetBurn",
        severity,
        f"Queue-wait error budget of {queue} burning ({pairs})",
        "burn 20x over 1h",
        queue=queue,
    )


def test_a_budget_burn_page_inhibits_the_ticket_of_its_queue_only(alertmanager, webhook):
    alertmanager.post(budget_burn("fast", "critical"))
    webhook.wait_for("/pager", "JobQueueWaitBudgetBurn")
    alertmanager.post(budget_burn("fast", "warning"), budget_burn("default", "warning"))
    # Another queue's ticket is news; the paged queue's is not.
    ticket = webhook.wait_for("/chat", "JobQueueWaitBudgetBurn")
    assert "of default" in ticket and "of fast" not in ticket
    time.sleep(QUIET_SECONDS)
    assert not any("of fast" in t for t in webhook.texts("/chat"))
    muted = alertmanager.state(alertname="JobQueueWaitBudgetBurn", queue="fast", severity="warning")
    assert muted["state"] == "suppressed" and muted["inhibitedBy"], muted
