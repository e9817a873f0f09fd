"""``stack backtest`` through the real command: bad input is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import pytest
import yaml

from alerts.render import ALERTS_FILE, RULES_DIR
from alerts.routes import ALERTMANAGER_CONFIG
from stack.backtest.cli import Variant, parse_time
from stack.backtest.model import BacktestError

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
