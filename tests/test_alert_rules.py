"""Alert and recording rules: rendered files match their jsonnet source, Prometheus' own
tools accept them, every alert's promtool unit tests pass, and those tests catch a rule
whose threshold or `for` is off by one step."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.detect import CRITICAL_BUDGET_SECONDS, markdown_table, time_to_detect
from alerts.render import ALERTS_FILE, RECORDS_FILE, RULES_DIR, load_config, render_rules, rendered
from stack.prom import parse_duration
from stack.servers import require_binary

REPO = RULES_DIR.parent.parent
PROMETHEUS_DIR = REPO / "prometheus"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*_test.yml"))
RUNBOOKS = REPO / "docs" / "runbooks"

# docs/contract.md, "Alerts": severity and `for` of each.
CONTRACT = {
    "WorkerDown": ("critical", "1m"),
    "HighJobFailureRate": ("warning", "5m"),
    "RedisDisconnected": ("critical", "1m"),
    "HighJobProcessingTime": ("warning", "10m"),
    "HighJobProcessingQueue": ("warning", "10m"),
    "HighRedisReconnectAttempts": ("warning", "0m"),
    "LowWorkerThroughput": ("warning", "15m"),
}


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def alert_rules() -> list[dict]:
    return yaml.safe_load(rendered()[ALERTS_FILE])["groups"][0]["rules"]


# --- rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [ALERTS_FILE, RECORDS_FILE])
def test_committed_rule_file_matches_a_fresh_render(name):
    committed = (RULES_DIR / name).read_text()
    assert committed == rendered()[name], f"{name} is stale or hand-edited: run `make rules`"


def test_render_is_deterministic(tmp_path):
    first = [p.read_bytes() for p in render_rules(None, tmp_path / "a")]
    second = [p.read_bytes() for p in render_rules(None, tmp_path / "b")]
    assert first == second


def test_the_seven_alerts_have_designs_severity_and_for():
    rules = alert_rules()
    assert {r["alert"]: (r["labels"]["severity"], r["for"]) for r in rules} == CONTRACT
    for rule in rules:
        assert set(rule["annotations"]) == {
            "summary",
            "description",
            "value",
            "runbook_url",
            "dashboard_url",
        }
        assert "$value" in rule["annotations"]["description"], rule["alert"]


def test_links_point_at_runbook_and_dashboard_panel_of_the_config():
    config = load_config()
    for rule in alert_rules():
        name = rule["alert"]
        ann = rule["annotations"]
        assert ann["runbook_url"] == f"{config['runbookUrlBase']}/{name}.md"
        panel = config["alerts"][name]["panelId"]
        assert ann["dashboard_url"].startswith(
            f"{config['grafanaUrlBase']}/d/{config['dashboardUid']}/"
            f"{config['dashboardSlug']}?viewPanel={panel}"
        )
    panels = [a["panelId"] for a in config["alerts"].values()]
    assert len(set(panels)) == len(panels), "each alert links its own panel"


def test_overrides_render_short_durations_into_a_temp_dir(tmp_path):
    paths = render_rules({"alerts": {"WorkerDown": {"for": "15s"}}}, tmp_path)
    assert sorted(p.name for p in paths) == [ALERTS_FILE, RECORDS_FILE]
    rules = yaml.safe_load((tmp_path / ALERTS_FILE).read_text())["groups"][0]["rules"]
    fors = {r["alert"]: r["for"] for r in rules}
    assert fors["WorkerDown"] == "15s"
    assert fors["RedisDisconnected"] == "1m"  # untouched: the override is a deep merge
    assert (RULES_DIR / ALERTS_FILE).read_text() == rendered()[ALERTS_FILE]


def test_thresholds_reach_promql_exactly():
    text = rendered({"alerts": {"HighJobProcessingQueue": {"threshold": 1234567}}})[ALERTS_FILE]
    assert 'queue_state:worker_queue_messages:max{state="ready"} > 1234567\n' in text
    text = rendered({"alerts": {"HighJobFailureRate": {"threshold": 0.123456789}}})[ALERTS_FILE]
    assert "ratio_rate5m > 0.123456789\n" in text


def test_users_own_file_overrides_config_with_config_plus(tmp_path):
    mine = tmp_path / "mine.libsonnet"
    mine.write_text(
        "{ _config+:: { workerSelector: 'job=\"jobs\"',"
        " alerts+: { HighJobFailureRate+: { threshold: 0.25 } } } }"
    )
    config = load_config(config_files=[mine])
    assert config["alerts"]["HighJobFailureRate"]["threshold"] == 0.25
    assert config["alerts"]["HighJobFailureRate"]["minStartedPerSecond"] == 0.05
    text = rendered(config_files=[mine])
    assert "> 0.25\n" in text[ALERTS_FILE] and 'job="jobs"' in text[RECORDS_FILE]
    assert "More than 25% of" in text[ALERTS_FILE]


# --- Prometheus' own tools -------------------------------------------------------------


def test_promtool_check_rules():
    result = promtool("check", "rules", *(str(RULES_DIR / n) for n in (ALERTS_FILE, RECORDS_FILE)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_check_config():
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_prometheus_scrapes_every_replica_every_15s_and_alerts_alertmanager():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["rules/*.yml"]
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"worker", "prometheus", "alertmanager"}
    # Each replica is its own target: DNS service discovery, not one static name.
    assert jobs["worker"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 9191, "refresh_interval": "15s"}
    ]


@pytest.mark.parametrize("test_file", UNIT_TESTS, ids=lambda p: p.stem)
def test_promtool_unit_tests(test_file):
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_unit_tests_that_expect_it_to_fire_and_not_fire():
    for name in CONTRACT:
        expectations = [
            t
            for f in UNIT_TESTS
            for test in yaml.safe_load(f.read_text())["tests"]
            for t in test.get("alert_rule_test", [])
            if t["alertname"] == name
        ]
        assert any(t["exp_alerts"] for t in expectations), f"{name} never expected to fire"
        assert any(not t["exp_alerts"] for t in expectations), f"{name} never expected silent"
        for t in expectations:
            for exp in t["exp_alerts"]:
                assert exp["exp_annotations"]["runbook_url"].endswith(f"/{name}.md")


# The unit tests must fail when a rule is off by one evaluation or just past a threshold:
# each mutation below is rendered into a temp dir and the alert's own test file must fail.
MUTATIONS = [
    ("WorkerDown", {"for": "45s"}),
    ("WorkerDown", {"for": "75s"}),
    ("HighJobFailureRate", {"for": "285s"}),
    ("HighJobFailureRate", {"for": "315s"}),
    ("HighJobFailureRate", {"threshold": 0.09}),
    ("HighJobFailureRate", {"minStartedPerSecond": 0.03}),
    ("RedisDisconnected", {"for": "45s"}),
    ("RedisDisconnected", {"for": "75s"}),
    ("HighJobProcessingTime", {"for": "585s"}),
    ("HighJobProcessingTime", {"for": "615s"}),
    ("HighJobProcessingTime", {"thresholdSeconds": 28}),
    ("HighJobProcessingQueue", {"for": "585s"}),
    ("HighJobProcessingQueue", {"for": "615s"}),
    ("HighJobProcessingQueue", {"threshold": 999}),
    ("HighRedisReconnectAttempts", {"for": "10s"}),
    ("HighRedisReconnectAttempts", {"threshold": 4}),
    ("LowWorkerThroughput", {"for": "885s"}),
    ("LowWorkerThroughput", {"for": "915s"}),
    ("LowWorkerThroughput", {"minCompletedPerSecond": 0.55}),
    ("LowWorkerThroughput", {"minReadyMessages": 99}),
]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize(
    ("alert", "change"), MUTATIONS, ids=[f"{a}-{next(iter(c.items()))}" for a, c in MUTATIONS]
)
def test_unit_tests_catch_a_rule_off_by_one_step(tmp_path, alert, change):
    render_rules({"alerts": {alert: change}}, tmp_path / "rules")
    test_file = PROMETHEUS_DIR / "tests" / f"{_snake(alert)}_test.yml"
    (tmp_path / "tests").mkdir()
    shutil.copy(test_file, tmp_path / "tests")
    result = promtool("test", "rules", f"tests/{test_file.name}", cwd=tmp_path)
    assert result.returncode != 0, f"{test_file.name} passes with {alert} {change}"
    assert "FAILED" in result.stdout + result.stderr


# --- runbooks and time to detect -------------------------------------------------------

RUNBOOK_SECTIONS = [
    "## What it means",
    "## Likely causes",
    "## First checks",
    "## Mitigation",
    "## Escalation",
]


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_every_alert_has_a_runbook(name):
    text = (RUNBOOKS / f"{name}.md").read_text()
    assert text.startswith(f"# {name}\n")
    positions = [text.find(section) for section in RUNBOOK_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), RUNBOOK_SECTIONS
    first_checks = text.split("## First checks")[1].split("## Mitigation")[0]
    assert len(re.findall(r"^\d+\. ", first_checks, re.M)) >= 3
    assert "```" in first_checks, "first checks give the query or command to run"


def test_critical_alerts_notify_within_three_minutes():
    rows = {d.alert: d for d in time_to_detect()}
    assert set(rows) == set(CONTRACT)
    for d in rows.values():
        assert d.receiver == {"critical": "pager", "warning": "chat"}[d.severity]
        if d.severity == "critical":
            assert d.total <= CRITICAL_BUDGET_SECONDS, (d.alert, d.total)
    # WorkerDown: 15s scrape + 10s timeout + 15s evaluation + 1m + 15s group_wait.
    assert rows["WorkerDown"].total == 115
    assert rows["HighJobFailureRate"].evaluation == 30  # reads a recording rule
    assert parse_duration("1m30s") == 90


def test_alerts_page_shows_the_computed_time_to_detect_table():
    page = (REPO / "docs" / "alerts.md").read_text()
    assert markdown_table() in page, "docs/alerts.md's table is stale: make docs"


def test_time_to_detect_command_prints_the_table_and_refuses_a_bad_duration(capsys):
    from alerts.detect import main

    assert main([]) == 0
    assert capsys.readouterr().out == markdown_table()
    assert main(["--set", '{"alerts": {"WorkerDown": {"for": 15}}}']) == 2
    err = capsys.readouterr().err
    assert err == "alerts.detect: not a Prometheus duration: 15\n"
