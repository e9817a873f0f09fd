"""The backtest's Alertmanager stage: routing equal to amtool's, the dispatcher's rules
(group_wait, group_interval, repeat_interval, send_resolved, inhibitions), and the one
that matters: the simulation of a scripted timeline against a real gossiping pair."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.routes import ALERTMANAGER_CONFIG, amtool_route_test
from alerts.routing import build_route
from stack.alert_receiver import AlertStore, ReceiverServer
from stack.backtest.alertmanager import prometheus_posts, simulate
from stack.backtest.model import AlertInterval, BacktestError, Notification
from stack.poll import wait_until
from stack.servers import free_port, require_binary, running
from stack.twin_alertmanagers import alertmanager_cluster, wait_settled
from stack.twin_config import twin_alertmanager_config, with_route_timing

COMMITTED = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())


def interval(fired: float, resolved: float | None, **labels: str) -> AlertInterval:
    return AlertInterval(labels=labels, active_at=fired, fired_at=fired, resolved_at=resolved)


def timed(config: dict, wait: str = "1s", every: str = "3s", repeat: str = "11s") -> dict:
    return with_route_timing(config, group_wait=wait, group_interval=every, repeat_interval=repeat)


def fast(intervals: list[AlertInterval], end: float) -> list[Notification]:
    """The committed routes at the live test's timings, Prometheus evaluating every 1 s and
    re-sending after 2 s."""
    return simulate(
        timed(COMMITTED), intervals, start=0, end=end, resend_delay=2, evaluation_interval=1
    )


def summary(notifications: list[Notification], receiver: str | None = None) -> list[tuple]:
    return [
        (
            n.at,
            n.receiver,
            n.status,
            sorted(a["alertname"] + a.get("instance", "") for a in n.alerts),
        )
        for n in notifications
        if receiver in (None, n.receiver)
    ]


# --- routing ----------------------------------------------------------------------------


def test_committed_routes_send_each_severity_to_its_receiver():
    route = build_route(COMMITTED)

    def receivers(**labels: str) -> list[str]:
        return [r.receiver for r in route.match(labels)]

    assert receivers(alertname="Watchdog", severity="none") == ["deadman"]
    assert receivers(alertname="WorkerDown", severity="critical") == ["pager"]
    assert receivers(alertname="HighJobFailureRate", severity="warning") == ["chat"]
    assert receivers(alertname="Other") == ["chat"]
    pager = route.match({"severity": "critical"})[0]
    assert (pager.group_wait, pager.group_interval, pager.repeat_interval) == (15, 60, 3600)
    assert pager.group_by == ("alertname", "queue")  # inherited from the root


#: A tree that uses what the committed one does not: match, match_re, continue, nesting.
BRANCHY = {
    "route": {
        "receiver": "chat",
        "group_by": ["..."],
        "group_wait": "2s",
        "routes": [
            {"receiver": "deadman", "match": {"alertname": "Watchdog"}, "continue": True},
            {
                "receiver": "pager",
                "match_re": {"severity": "crit.*|page"},
                "group_by": ["alertname"],
                "routes": [{"receiver": "chat", "matchers": ['queue=~"default|fast"']}],
            },
            {"receiver": "deadman", "matchers": ['severity!="warning"', 'queue!~"crit.*"']},
        ],
    },
    "receivers": [{"name": n} for n in ("chat", "pager", "deadman")],
}


def _label_sets():
    """Label sets made of the values the configs' matchers name, and others."""
    values = {
        "alertname": ["Watchdog", "WorkerDown", "RedisDisconnected", "LowWorkerThroughput"],
        "severity": ["critical", "warning", "none", "page"],
        "queue": ["default", "fast", "critical"],
    }
    return st.fixed_dictionaries(
        {}, optional={name: st.sampled_from([*found, "other"]) for name, found in values.items()}
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=_label_sets(), branchy=st.booleans())
def test_routing_equals_amtools_answer(labels, branchy, tmp_path_factory):
    require_binary("amtool")
    config_file = ALERTMANAGER_CONFIG
    if branchy:
        config_file = tmp_path_factory.mktemp("routes") / "alertmanager.yml"
        config_file.write_text(yaml.safe_dump(BRANCHY))
    config = BRANCHY if branchy else COMMITTED
    ours = ",".join(r.receiver for r in build_route(config).match(labels))
    result = amtool_route_test(labels, ours, config_file)
    assert result.returncode == 0, f"{labels}: we say {ours}, amtool {result.stdout}"


def test_match_continue_nested_routes_and_group_by_everything():
    route = build_route(BRANCHY)
    labels = {"alertname": "Watchdog", "severity": "critical", "queue": "default", "z": "1"}
    hits = route.match(labels)
    assert [r.receiver for r in hits] == ["deadman", "chat"]
    assert hits[0].group_by is None and hits[0].group_labels(labels) == labels
    assert hits[1].group_by == ("alertname",) and hits[1].group_wait == 2
    assert hits[1].group_labels(labels) == {"alertname": "Watchdog"}
    assert [r.receiver for r in route.match({"severity": "page"})] == ["pager"]
    assert [r.receiver for r in route.match({"severity": "warning"})] == ["chat"]
    assert [r.receiver for r in route.match({})] == ["deadman"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"route": {"receiver": "chat", "mute_time_intervals": ["night"]}}, "mute_time_intervals"),
        ({"route": {"receiver": "chat", "matchers": ['severity=~"("']}}, "matcher"),
        ({"route": {"receiver": "chat", "group_wait": "soon"}}, "group_wait"),
        ({"route": {}}, "no route"),
        ({"route": {"receiver": "nobody"}}, "receiver 'nobody' is not defined"),
    ],
)
def test_a_config_it_cannot_simulate_is_one_clear_error(change, message):
    with pytest.raises(BacktestError, match=message):
        simulate({**COMMITTED, **change}, [], start=0, end=1)


# --- the dispatcher's rules -------------------------------------------------------------

WATCHDOG = {"alertname": "Watchdog", "severity": "none"}
DOWN = {"alertname": "WorkerDown", "severity": "critical", "job": "worker"}


def test_group_wait_collects_alerts_then_group_interval_paces_changes():
    intervals = [
        interval(0, None, instance="a", **DOWN),
        interval(0.5, None, instance="b", **DOWN),
        interval(4.5, None, instance="c", **DOWN),
    ]
    sent = fast(intervals, 20)
    assert summary(sent) == [
        (1, "pager", "firing", ["WorkerDowna", "WorkerDownb"]),
        (7, "pager", "firing", ["WorkerDowna", "WorkerDownb", "WorkerDownc"]),
        (19, "pager", "firing", ["WorkerDowna", "WorkerDownb", "WorkerDownc"]),  # repeat
    ]
    assert sent[0].group_labels == {"alertname": "WorkerDown"}


def test_repeat_needs_more_than_repeat_interval_since_the_last_notification():
    # ticks every 3 s; 1 + 6 = 7 is exactly one repeat later: not yet, as in Alertmanager
    sent = simulate(timed(COMMITTED, repeat="6s"), [interval(0, None, **WATCHDOG)], start=0, end=30)
    assert [n.at for n in sent] == [1, 10, 19, 28]


def test_resolved_alerts_reach_only_receivers_that_send_them_and_a_refire_is_new():
    intervals = [
        interval(0, 5.5, **WATCHDOG),
        interval(0, 5.5, instance="a", **DOWN),
        interval(12.5, None, instance="a", **DOWN),  # after its group was removed
    ]
    assert summary(fast(intervals, 20)) == [
        (1, "deadman", "firing", ["Watchdog"]),
        (1, "pager", "firing", ["WorkerDowna"]),
        (7, "pager", "resolved", ["WorkerDowna"]),
        (13.5, "pager", "firing", ["WorkerDowna"]),
    ]


def test_a_receiver_without_integrations_sends_nothing():
    config = {**COMMITTED, "receivers": [*COMMITTED["receivers"][:2], {"name": "chat"}]}
    intervals = [interval(0, None, alertname="LowWorkerThroughput", severity="warning")]
    assert simulate(timed(COMMITTED), intervals, start=0, end=5)
    assert simulate(timed(config), intervals, start=0, end=5) == []


def test_inhibition_needs_a_firing_source_with_equal_labels():
    redis = {"alertname": "RedisDisconnected", "severity": "critical", "job": "worker"}
    storm = {"alertname": "HighRedisReconnectAttempts", "severity": "warning", "job": "worker"}
    intervals = [
        interval(0, 9.5, instance="a", **redis),
        interval(0, None, instance="a", **storm),
        interval(0, None, instance="b", **storm),
    ]
    sent = fast(intervals, 12)
    chat = summary(sent, "chat")
    # instance b has no source: notified at once; a only once its source resolved
    assert chat == [
        (1, "chat", "firing", ["HighRedisReconnectAttemptsb"]),
        (10, "chat", "firing", ["HighRedisReconnectAttemptsa", "HighRedisReconnectAttemptsb"]),
    ]


def test_a_critical_alert_mutes_its_warning_twin_but_not_itself():
    burn = {"alertname": "JobQueueWaitBudgetBurn", "queue": "default"}
    intervals = [
        interval(0, None, severity="critical", **burn),
        interval(0, None, severity="warning", **burn),
        interval(0, None, severity="warning", alertname="JobQueueWaitBudgetBurn", queue="fast"),
    ]
    sent = simulate(timed(COMMITTED), intervals, start=0, end=2)
    assert {(n.receiver, n.group_labels["queue"]) for n in sent} == {
        ("pager", "default"),
        ("chat", "fast"),
    }


def test_prometheus_resends_firing_and_resolved_alerts_at_the_resend_delay():
    posts = prometheus_posts([interval(0, 200, **DOWN)], end=2000)
    firing = [p.at for p in posts if p.resolved_at is None]
    resolved = [p.at for p in posts if p.resolved_at is not None]
    assert firing == [0, 75, 150]  # the first evaluation more than 1m after the last post
    assert resolved[:3] == [200, 275, 350] and resolved[-1] <= 200 + 900 < resolved[-1] + 75
    assert all(p.ends_at == p.at + 240 for p in posts if p.resolved_at is None)
    refired = prometheus_posts([interval(0, 200, **DOWN), interval(300, None, **DOWN)], end=400)
    assert [p.at for p in refired if p.resolved_at is not None] == [200, 275]


def test_notifications_before_start_are_left_out():
    sent = simulate(timed(COMMITTED), [interval(0, None, **WATCHDOG)], start=5, end=30)
    assert [n.at for n in sent] == [13, 25]


# --- a real Alertmanager pair -------------------------------------------------------------

#: Scaled timings: Prometheus evaluates every second and re-sends after 2 s; Alertmanager
#: waits 1 s, flushes every 3 s and repeats after 11 s (not a multiple of 3: a tick never
#: falls exactly one repeat after the last notification).
EVALUATION, RESEND, GROUP_INTERVAL = 1.0, 2.0, 3.0
#: Event times sit at least 0.5 s from any flush of the groups they change.
TIMELINE = [
    interval(0, None, **WATCHDOG),  # deadman: 1, then repeats at 13, 25, 37
    interval(2, 10, instance="a", **DOWN),  # pager: group flushes at 3, 6, 9, ...
    interval(3.5, 13, instance="b", **DOWN),  # same group: notified with a at 6
    # inhibited by WorkerDown until 13; then notified at 14, repeated at 26
    interval(4, 30.5, alertname="LowWorkerThroughput", severity="warning"),
    # chat: 6, resolved at 18, fires again at 26.5 (its group was removed; live, the old
    # one may still flush it, at 27 to 28.5), resolved again at 32
    interval(5, 16.5, alertname="HighJobProcessingQueue", severity="warning", queue="default"),
    interval(26.5, 32, alertname="HighJobProcessingQueue", severity="warning", queue="default"),
]
#: The timeline's end. The next notification is the Watchdog's at 49: one that arrives up
#: to a group_interval late still counts.
END = 38.0


def _name(labels) -> str:
    return f"{labels['alertname']}/{labels.get('instance', labels.get('queue', '-'))}"


class Recorder:
    """In place of the receiver's dead man's switch: keeps each notification as it
    arrives (every record of one POST, with the time), the Watchdog's included."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, list[dict]]] = []
        self._lock = threading.Lock()

    def heard(self, records: list[dict]) -> list[dict]:
        with self._lock:
            self.posts.append((time.time(), records))
        return records

    def status(self) -> dict:
        return {}


def _post(url: str, alerts: list[dict]) -> None:
    request = urllib.request.Request(
        f"{url}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _play(members, t0: float) -> None:
    """POST the timeline to both members as Prometheus would, at the times it says."""
    posts = prometheus_posts(TIMELINE, end=END, resend_delay=RESEND, evaluation_interval=EVALUATION)
    for at in sorted({p.at for p in posts}):
        time.sleep(max(0.0, t0 + at - time.time()))
        batch = [
            {
                "labels": dict(p.labels),
                "annotations": {"summary": _name(p.labels)},
                "startsAt": _rfc3339(t0 + p.starts_at),
                "endsAt": _rfc3339(t0 + p.ends_at),
            }
            for p in posts
            if p.at == at
        ]
        for member in members:
            _post(member.url, batch)
    time.sleep(max(0.0, t0 + END - time.time()))


def _live(recorder: Recorder, t0: float) -> list[tuple[float, str, str, list[tuple[str, str]]]]:
    """(time, receiver, status, [(alert, status)]) of each notification received by END
    and one group_interval more."""
    found = []
    for at, records in list(recorder.posts):
        if at > t0 + END + GROUP_INTERVAL:
            continue
        title = records[0]["title"]
        status = "resolved" if title.startswith("[RESOLVED") else "firing"
        alerts = [(r["summary"], r["status"]) for r in records]  # in the message's order
        found.append((at - t0, records[0]["receiver"], status, alerts))
    return found


def _status_at(labels, at: float) -> str:
    """An alert's status at ``at`` on the timeline: that of its latest interval by then."""
    runs = [i for i in TIMELINE if dict(i.labels) == dict(labels) and i.fired_at <= at]
    last = max(runs, key=lambda i: i.fired_at)
    return "resolved" if last.resolved_at is not None and last.resolved_at <= at else "firing"


def _expected(sent: list[Notification]) -> list[tuple[float, str, str, list[tuple[str, str]]]]:
    """The simulated notifications in the shape of ``_live``'s."""
    return [
        (n.at, n.receiver, n.status, [(_name(a), _status_at(a, n.at)) for a in n.alerts])
        for n in sent
    ]


@pytest.mark.slow
def test_simulation_matches_a_live_alertmanager_pair(tmp_path: Path, report):
    recorder = Recorder()
    store = AlertStore(tmp_path / "alerts.jsonl")
    receiver = ReceiverServer(("127.0.0.1", free_port()), store, deadman=recorder)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{receiver.server_port}"
    config = timed(
        twin_alertmanager_config(
            COMMITTED,
            lambda name: f"{url}/{name}",
            config_dir=ALERTMANAGER_CONFIG.parent,
            secrets_dir=tmp_path / "secrets",
        )
    )
    am_dir = tmp_path / "am"
    am_dir.mkdir()
    (am_dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    # The second member waits 1 s (not 15 s) for the first's notification log entry.
    members = alertmanager_cluster(am_dir, 2, free_port, ["--cluster.peer-timeout=1s"])
    with contextlib.ExitStack() as stack:
        stack.callback(receiver.server_close)
        stack.callback(receiver.shutdown)
        for member in members:
            stack.enter_context(running(member))
        wait_settled(members)
        t0 = time.time() + 0.5
        _play(members, t0)
        sent = simulate(
            config, TIMELINE, start=0, end=END, resend_delay=RESEND, evaluation_interval=EVALUATION
        )
        expected = _expected(sent)
        wait_until(
            lambda: len(_live(recorder, t0)) >= len(expected),
            GROUP_INTERVAL,
            lambda: f"live {_live(recorder, t0)} simulated {expected}",
        )
        live = _live(recorder, t0)

    def without_time(rows, receiver):
        return [row[1:] for row in rows if row[1] == receiver]

    for name in ("deadman", "pager", "chat"):
        assert without_time(live, name) == without_time(expected, name), (
            f"{name}: live {live}\nsimulated {expected}"
        )
    lags = [
        live_at - at
        for name in ("deadman", "pager", "chat")
        for (live_at, *_), (at, *_) in zip(
            [r for r in live if r[1] == name], [r for r in expected if r[1] == name], strict=True
        )
    ]
    assert all(abs(lag) <= GROUP_INTERVAL for lag in lags), lags
    counts = {n: sum(r[1] == n for r in expected) for n in ("pager", "chat", "deadman")}
    assert counts == {"pager": 4, "chat": 7, "deadman": 4}, counts
    report.value(
        "Backtest: Alertmanager simulated vs a live pair",
        "notifications per receiver (both)",
        counts,
    )
    report.value(
        "Backtest: Alertmanager simulated vs a live pair",
        "largest time difference",
        f"{max(abs(lag) for lag in lags):.2f} s (group_interval {GROUP_INTERVAL:.0f} s)",
    )
