"""``stack backtest`` through the real command: bad input is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import yaml

from alerts.render import ALERTS_FILE, RULES_DIR
from alerts.routes import ALERTMANAGER_CONFIG
from stack.backtest.cli import Variant, parse_time
from stack.backtest.model import BacktestError
from stack.backtest.report import rfc3339
from stack.prom import backfill_openmetrics
from stack.servers import free_port, prometheus_server, running

NOW = datetime(2026, 11, 8, tzinfo=UTC).timestamp()
#: Where nothing listens: the bad inputs below must be refused before Prometheus is asked.
NOWHERE = "http://127.0.0.1:9"
RANGE = ["--from", "2026-11-01T00:00:00Z", "--to", "2026-11-08T00:00:00Z"]


def backtest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stack", "backtest", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(*args: str) -> str:
    """The one line ``stack backtest`` prints for bad input, having checked it exits 2."""
    done = backtest(*args)
    assert done.returncode == 2, done.stderr
    assert not done.stdout
    assert "Traceback" not in done.stderr
    assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("stack backtest: ")
    return done.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - 7 * 86_400),
        ("1h30m", NOW - 5_400),
        ("2026-11-01T00:00:00Z", NOW - 7 * 86_400),
        ("2026-11-01T01:00:00+01:00", NOW - 7 * 86_400),
        ("2026-11-07T23:59:59.5Z", NOW - 0.5),
    ],
)
def test_times_are_rfc3339_or_a_duration_back_from_now(text, expected):
    assert parse_time(text, now=NOW, option="--from") == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-11-01T00:00:00", "7 days", "-7d", ""])
def test_a_time_that_is_neither_is_refused(text):
    with pytest.raises(BacktestError, match="--from"):
        parse_time(text, now=NOW, option="--from")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "yesterday"], "--from 'yesterday': not an RFC 3339 time"),
        (["--from", "2026-11-01T00:00:00"], "with an offset"),
        (["--from", "7d", "--to", "8d"], "is not before --to"),
        (["--from", RANGE[1], "--to", RANGE[1]], "is not before --to"),
        ([*RANGE, "--fail-on", "pages_per_week>>5"], "--fail-on 'pages_per_week>>5'"),
        ([*RANGE, "--fail-on", "pages>5"], "unknown metric 'pages'"),
        ([*RANGE, "--set", "{not json"], "--set"),
        ([*RANGE, "--set", '{"alerts": {"WorkerDwn": {"for": "5m"}}}'], "unknown alerts: "),
        ([*RANGE, "--compare", "--set", '{"pipelineAlerts": {"Watchdg": {}}}'], "Watchdg"),
        ([*RANGE, "--compare", "--bogus"], "unrecognized arguments: --bogus"),
        ([*RANGE, "--set", "[1]"], "--set [1]: not a JSON object"),
        ([*RANGE, "--config", "/nonexistent/mine.libsonnet"], "not a file"),
        ([*RANGE, "--alertmanager-config", "/nonexistent/am.yml"], "--alertmanager-config"),
        ([*RANGE, "--plot", "/nonexistent/dir/week.png"], "--plot"),
        ([*RANGE, "--plot", "week.svg"], "needs a .png file"),
        (RANGE, "--prometheus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says):
    prometheus = [] if args is RANGE else ["--prometheus", NOWHERE]
    assert says in refused(*prometheus, *args)


def test_an_override_naming_an_unknown_alert_is_named(tmp_path):
    """``alerts.render`` merges an unknown alert silently and renders the rules unchanged:
    a backtest of that "change" would compare the rules with themselves."""
    mine = tmp_path / "mine.libsonnet"
    mine.write_text("{ _config+:: { slo+: { alerts+: { JobQueueWaitBurn: {} } } } }\n")
    line = refused("--prometheus", NOWHERE, *RANGE, "--config", str(mine))
    assert line == "stack backtest: the overrides name unknown alerts: JobQueueWaitBurn\n"


def test_a_config_that_does_not_evaluate_is_one_line(tmp_path):
    mine = tmp_path / "mine.libsonnet"
    mine.write_text("{ _config+:: { alerts+: { WorkerDown+: { 'for': } } } }\n")
    assert "cannot render the rules" in refused(
        "--prometheus", NOWHERE, *RANGE, "--config", str(mine)
    )


def test_an_alertmanager_config_that_does_not_load_is_one_line(tmp_path):
    broken = tmp_path / "alertmanager.yml"
    broken.write_text("route: {receiver: nobody}\nreceivers: [{name: pager}]\n")
    line = refused("--prometheus", NOWHERE, *RANGE, "--alertmanager-config", str(broken))
    assert str(broken) in line


def test_the_pager_is_where_a_critical_alert_goes(tmp_path):
    """Pages are counted at the receiver the Alertmanager config sends critical alerts to."""
    config = ALERTMANAGER_CONFIG.read_text().replace("receiver: pager", "receiver: oncall")
    config = config.replace("- name: pager", "- name: oncall")
    (tmp_path / "alertmanager.yml").write_text(config)
    prepared = Variant((), None, tmp_path / "alertmanager.yml").prepare(tmp_path / "rules")
    assert prepared.pager == "oncall"
    assert prepared.receivers == ["deadman", "oncall", "chat"]
    assert Variant((), None, ALERTMANAGER_CONFIG).prepare(tmp_path / "rules").pager == "pager"


def test_a_variant_is_rendered_with_its_overrides(tmp_path):
    committed = Variant((), None, ALERTMANAGER_CONFIG).prepare(tmp_path / "a").rule_files
    assert committed == sorted(RULES_DIR.glob("*.yml"))
    slower = {"alerts": {"WorkerDown": {"for": "7m"}}}
    variant = Variant((), slower, ALERTMANAGER_CONFIG).prepare(tmp_path / "b").rule_files
    assert [p.name for p in variant] == [p.name for p in committed]
    assert all(p.is_relative_to(tmp_path / "b") for p in variant)
    alerts = yaml.safe_load((tmp_path / "b" / ALERTS_FILE).read_text())
    (down,) = [r for g in alerts["groups"] for r in g["rules"] if r.get("alert") == "WorkerDown"]
    assert down["for"] == "7m"


# --- on a real Prometheus ---------------------------------------------------------------


def test_an_unreachable_prometheus_is_one_line():
    port = free_port()  # nothing listens on it
    line = refused("--prometheus", f"http://127.0.0.1:{port}", *RANGE)
    assert f"127.0.0.1:{port}" in line


def test_a_range_without_data_is_one_line(tmp_path):
    with running(prometheus_server(tmp_path / "empty")) as server:
        line = refused("--prometheus", server.url, "--from", "2h", "--to", "1h")
    assert "no samples" in line


#: The history, on a 15 s grid from 10 minutes before the range to 5 after it: replica a
#: is down from minute 10 to minute 20 of the range; replica b is up throughout.
RANGE_MINUTES = 40
#: The source's rules ran every 15 s, as prometheus/prometheus.yml has it.
SOURCE_CONFIG = "global:\n  evaluation_interval: 15s\nscrape_configs: []\n"
DOWN = (10, 20)


def _history(start: int) -> str:
    lines = ["# TYPE up gauge"]
    for instance in ("a", "b"):
        for t in range(start - 600, start + (RANGE_MINUTES + 5) * 60, 15):
            down = instance == "a" and DOWN[0] * 60 <= t - start < DOWN[1] * 60
            lines.append(f'up{{job="worker",instance="{instance}"}} {0 if down else 1} {t}')
    return "\n".join([*lines, "# EOF"]) + "\n"


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A Prometheus holding ``_history``; yields its URL and the range's start."""
    workdir = tmp_path_factory.mktemp("history")
    start = int(time.time()) // 3600 * 3600 - 3 * 3600  # on the evaluation grid, in the past
    backfill_openmetrics(_history(start), workdir)
    with running(prometheus_server(workdir, SOURCE_CONFIG)) as server:
        yield server.url, start


def _range(start: int) -> list[str]:
    end = start + RANGE_MINUTES * 60
    return ["--from", rfc3339(start), "--to", rfc3339(end)]


def _seconds(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


# End to end (two Prometheus, a backtest of 40 minutes): not the edit loop's.
@pytest.mark.slow
def test_a_replica_down_for_ten_minutes(history, tmp_path):
    """By hand: WorkerDown (for 1m) turns firing at minute 11 and resolves at 20 (one
    evaluation interval, 15 s, of slack on each end); the pager gets the firing
    notification (group_wait 15s) and the resolved one. WorkerReplicasMissing (for 5m)
    fires from minute 15 to 20 but WorkerDown inhibits it (equal job): chat gets nothing.
    Watchdog fires throughout, to deadman only (repeat_interval 1m, group_interval 30s)."""
    url, start = history
    plot = tmp_path / "timeline.png"
    done = backtest("--prometheus", url, *_range(start), "--json", "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    alerts = result["alerts"]
    assert set(alerts) >= {"WorkerDown", "WorkerReplicasMissing", "Watchdog", "RedisDisconnected"}
    down = alerts["WorkerDown"]
    assert down["fired"] == 1 and down["flaps"] == 0
    ((fired, resolved),) = down["intervals"]
    assert _seconds(fired) - start == pytest.approx(11 * 60, abs=15)
    assert _seconds(resolved) - start == pytest.approx(20 * 60, abs=15)
    assert down["firing_seconds"] == pytest.approx(9 * 60, abs=30)
    assert down["first_firing"] == fired
    assert down["notifications"] == {"deadman": 0, "pager": 2, "chat": 0}
    missing = alerts["WorkerReplicasMissing"]
    assert missing["fired"] == 1
    assert sum(missing["notifications"].values()) == 0
    assert alerts["Watchdog"]["fired"] == 1 and alerts["Watchdog"]["intervals"][0][1] is None
    # From the range's start, re-sent at the first 30 s flush more than 1m after the last:
    # every 90 s, at 0, 90, ..., 2340 s of the 2400 s range.
    assert alerts["Watchdog"]["notifications"] == {"deadman": 27, "pager": 0, "chat": 0}
    quiet = set(alerts) - {"WorkerDown", "WorkerReplicasMissing", "Watchdog"}
    assert all(alerts[name]["fired"] == 0 for name in quiet)
    assert result["receivers"]["pager"] == 2 and result["receivers"]["chat"] == 0
    assert result["pages_per_week"] == pytest.approx(7 * 86_400 / (RANGE_MINUTES * 60))
    assert plot.read_bytes().startswith(b"\x89PNG")
    text = backtest("--prometheus", url, *_range(start))
    assert text.returncode == 0, text.stderr
    (row,) = [line for line in text.stdout.splitlines() if line.startswith("WorkerDown ")]
    name, fired_count, _, flaps, first, notifications = row.split()
    assert (fired_count, flaps, first, notifications) == ("1", "0", fired, "pager=2")


# End to end (two Prometheus, a backtest of 40 minutes): not the edit loop's.
@pytest.mark.slow
def test_compare_a_longer_for_and_fail_on_its_chat_messages(history):
    """With WorkerDown's for at 15m, ten minutes down never page; WorkerReplicasMissing is
    then not inhibited: chat gets its firing (group_wait 2m) and resolved notifications."""
    url, start = history
    proposed = '{"alerts": {"WorkerDown": {"for": "15m"}}}'
    args = ["--prometheus", url, *_range(start), "--compare", "--set", proposed]
    done = backtest(*args, "--json", "--fail-on", "notifications_per_week:chat>0")
    assert done.returncode == 1, done.stderr
    difference = json.loads(done.stdout)["difference"]
    assert difference["alerts"]["WorkerDown"]["fired"] == -1
    assert difference["alerts"]["WorkerDown"]["notifications"]["pager"] == -2
    assert difference["alerts"]["WorkerReplicasMissing"]["notifications"]["chat"] == 2
    assert difference["receivers"] == {"deadman": 0, "pager": -2, "chat": 2}
    assert done.stderr == "stack backtest: --fail-on notifications_per_week:chat>0: measured 504\n"


def test_a_rule_that_does_not_parse_is_one_line(history, tmp_path):
    url, start = history
    mine = tmp_path / "mine.libsonnet"
    mine.write_text("{ _config+:: { workerSelector: 'job=\"worker' } }\n")
    line = refused("--prometheus", url, *_range(start), "--config", str(mine))
    assert "parse" in line
