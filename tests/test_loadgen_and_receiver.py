"""The load generator against a real Redis, the alert receiver as a real HTTP server."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
import redis

from stack.fleet import alert_receiver
from stack.loadgen import DEFAULT_MIX, main, parse_mix, payload, run
from stack.servers import HttpServer
from tests.support.fleet import settings_for
from worker.app import setup
from worker.backends import Simulation, SimulationKnobs
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()


def queued(client: redis.Redis) -> Counter:
    """Messages per actor waiting in the broker's three queues."""
    kinds: Counter = Counter()
    for queue in ("critical", "default", "fast"):
        for message_id in client.lrange(KEYS.queue(queue), 0, -1):
            body = json.loads(client.hget(KEYS.messages(queue), message_id))
            assert body["queue_name"] == queue and body["args"] == []
            kinds[body["actor_name"]] += 1
    return kinds


def test_enqueues_the_mix_at_the_rate_for_the_duration(redis_url, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["--rate", "40", "--duration", "1.5", "--seed", "3", "--orgs", "5"]) == 0
    kinds = queued(redis.Redis.from_url(redis_url))
    # Job i is due at i / rate: 0 .. 59 within 1.5 s at 40/s.
    assert sum(kinds.values()) == 60
    assert set(kinds) == set(DEFAULT_MIX), kinds
    assert kinds["agent.run"] > kinds["crm.sync"]
    err = capsys.readouterr().err
    assert "40.00 jobs/s" in err and "sent 60" in err


def test_every_payload_is_valid_for_its_actor():
    import random

    setup(settings_for("redis://127.0.0.1:1/0"))  # actors need a broker; none is contacted
    from worker import actors

    MODELS = {
        "agent.run": actors.AgentRun,
        "crm.sync": actors.CrmSync,
        "message.send": actors.MessageSend,
        "job.status_update": actors.StatusUpdate,
    }
    rng = random.Random(1)
    for job_type, model in MODELS.items():
        for _ in range(20):
            kwargs = payload(job_type, "job-1", "org-0001", rng)
            model(**kwargs)  # raises on an invalid payload
            assert {"job_id", "org_id"} <= set(kwargs)


def test_schedule_keeps_the_rate_and_spreads_organizations():
    sent: list[tuple[str, dict]] = []
    totals = run(
        lambda t, kw: sent.append((t, kw)),
        rate=200,
        duration=1.0,
        mix=parse_mix("agent.run=1,job.status_update=1"),
        orgs=10,
        seed=5,
    )
    assert totals.count == len(sent) == 200
    assert {t for t, _ in sent} == {"agent.run", "job.status_update"}
    orgs = Counter(kw["org_id"] for _, kw in sent)
    assert len(orgs) >= 8 and orgs.most_common(1)[0][0] == "org-0001"


def test_knobs_change_the_running_fleets_simulation(redis_url, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", redis_url)
    client = redis.Redis.from_url(redis_url)
    knobs = SimulationKnobs(Simulation((15.0, 20.0)), client, refresh=0)
    args = ["--failure-ratio", "0.4", "--ratio-429", "0.1", "--latency", "1-2", "--set-only"]
    assert main(args) == 0
    assert knobs.current() == Simulation((1.0, 2.0), failure_ratio=0.4, ratio_429=0.1)
    assert "failure_ratio=0.4" in capsys.readouterr().out
    assert client.llen(KEYS.queue("default")) == 0  # --set-only enqueues nothing
    assert main(["--reset-simulation", "--set-only"]) == 0
    assert knobs.current() == Simulation((15.0, 20.0))


@pytest.mark.parametrize(
    "args", [["--rate", "0"], ["--mix", "nope=1"], ["--failure-ratio", "2"], ["--latency", "5-1"]]
)
def test_bad_arguments_exit_2(args, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


def test_counts_what_it_cannot_send_while_redis_is_down(redis_srv, monkeypatch, capsys):
    monkeypatch.setenv("REDIS_URL", redis_srv.url)
    redis_srv.stop()
    started = time.monotonic()
    assert main(["--rate", "20", "--duration", "2", "--quiet"]) == 0
    assert time.monotonic() - started < 6  # the duration holds, whatever fails
    err = capsys.readouterr().err
    assert "sent 0 " in err and "failed 40 (broker unreachable)" in err


# --- the alert receiver -----------------------------------------------------------------

WEBHOOK = {
    "version": "4",
    "receiver": "pager",
    "status": "firing",
    "groupKey": '{}:{alertname="WorkerDown"}',
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "WorkerDown", "severity": "critical", "instance": "w1:9191"},
            "annotations": {"summary": "Worker replica w1:9191 down for more than 1m"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "abc",
        }
    ],
}
# As alertmanager/templates/worker.tmpl renders a group of two alerts for slack_configs.
SLACK = {
    "username": "alertmanager",
    "attachments": [
        {
            "title": "[FIRING:2] HighJobFailureRate on queue default (warning)",
            "color": "warning",
            "text": "*HighJobFailureRate*: More than 10% of agent.run attempts fail\nValue: 40%\n\n"
            "RESOLVED: *HighJobFailureRate*: More than 10% of crm.sync attempts fail\nValue: 5%",
        }
    ],
}


@pytest.fixture
def receiver(tmp_path):
    server = alert_receiver(tmp_path)
    server.start()
    yield server
    server.stop()


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def get_alerts(server: HttpServer, query: str = "") -> list[dict]:
    with urllib.request.urlopen(f"{server.url}/alerts{query}", timeout=5) as r:
        return json.load(r)


def test_receiver_logs_and_keeps_each_alert_of_both_formats(receiver):
    assert post(f"{receiver.url}/pager", json.dumps(WEBHOOK).encode()) == (
        200,
        {"ok": True, "received": 1},
    )
    assert post(f"{receiver.url}/chat", json.dumps(SLACK).encode())[1]["received"] == 2
    alerts = get_alerts(receiver)
    assert [(a["receiver"], a["alertname"], a["status"]) for a in alerts] == [
        ("pager", "WorkerDown", "firing"),
        ("chat", "HighJobFailureRate", "firing"),
        ("chat", "HighJobFailureRate", "resolved"),
    ]
    assert alerts[0]["labels"]["instance"] == "w1:9191"
    assert alerts[1]["severity"] == "warning" and alerts[1]["labels"]["queue"] == "default"
    assert alerts[2]["text"].startswith("RESOLVED: *HighJobFailureRate*: More than 10% of crm")
    assert [a["alertname"] for a in get_alerts(receiver, "?receiver=pager")] == ["WorkerDown"]
    assert len(get_alerts(receiver, "?status=resolved")) == 1
    log = receiver.log.read_text()
    assert "pager: FIRING WorkerDown severity=critical instance=w1:9191 - Worker replica" in log
    assert log.count("chat: ") == 2


def test_receiver_keeps_alerts_across_a_restart_and_rejects_garbage(receiver):
    post(f"{receiver.url}/pager", json.dumps(WEBHOOK).encode())
    assert post(f"{receiver.url}/pager", b"not json")[0] == 400
    assert post(f"{receiver.url}/pager", b'{"neither": 1}')[0] == 400
    assert post(f"{receiver.url}/a/b", b"{}")[0] == 404
    # A body over 1 MiB is refused on its Content-Length, before it is read.
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    connection.putrequest("POST", "/pager")
    connection.putheader("Content-Length", str((1 << 20) + 1))
    connection.endheaders()
    assert connection.getresponse().status == 413
    connection.close()
    receiver.stop()
    receiver.start()
    assert [a["alertname"] for a in get_alerts(receiver)] == ["WorkerDown"]


def test_receiver_keeps_a_slack_attachment_with_a_title_and_no_alert_text(receiver):
    title_only = {"attachments": [{"title": "[FIRING:1] Watchdog (none)", "color": "good"}]}
    status, body = post(f"{receiver.url}/chat", json.dumps(title_only).encode())
    assert (status, body["received"]) == (200, 1)
    [alert] = get_alerts(receiver)
    assert (alert["alertname"], alert["status"], alert["summary"]) == (
        "Watchdog",
        "firing",
        "[FIRING:1] Watchdog (none)",
    )
