"""Alert and recording rules: rendered files match their jsonnet source, Prometheus' own
tools accept them, every alert's promtool unit tests pass, and those tests catch a rule
whose threshold or `for` is off by one step."""

from __future__ import annotations

import pytest
import yaml

from alerts.detect import (
    CRITICAL_BUDGET_SECONDS,
    markdown_table,
    time_to_detect,
    windows_to_fire,
)
from alerts.duration import parse_duration
from alerts.render import (
    ALERTS_FILE,
    RECORDS_FILE,
    RULES_DIR,
    load_config,
    render_rules,
    rendered,
    slo_record_names,
)
from tests.support.rules import (
    PROMETHEUS_DIR,
    REPO,
    assert_runbook,
    assert_unit_tests_catch,
    expectations,
    mutation_ids,
    promtool,
    promtool_groups,
    run_group,
    unit_test_file,
)

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


# docs/contract.md, "SLO alerts": the severities each one fires with.
SLO_ALERTS = {
    "JobQueueWaitBudgetBurn": {"critical", "warning"},
    "JobSuccessBudgetBurn": {"critical", "warning"},
    "HighJobQueueLatency": {"warning"},
}


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
    alerts = sum(len(g["rules"]) for g in yaml.safe_load(rendered()[ALERTS_FILE])["groups"])
    assert f"SUCCESS: {alerts} rules found" in result.stdout


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
    assert targets == ["alertmanager:9093", "alertmanager-2:9093"]  # the gossiping pair
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"worker", "prometheus", "alertmanager"}
    # Each replica is its own target: DNS service discovery, not one static name.
    assert jobs["worker"]["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 9191, "refresh_interval": "15s"}
    ]


@pytest.mark.parametrize(
    ("test_file", "group"),
    [
        # the burn-rate files' days of history cost seconds a group: outside the quick tier
        pytest.param(f, i, id=f"{f.stem}-{i}", marks=[pytest.mark.slow] * ("burn" in f.stem))
        for f, i in promtool_groups()
    ],
)
def test_promtool_unit_tests(tmp_path, test_file, group):
    (tmp_path / "rules").symlink_to(RULES_DIR)
    result = run_group(test_file, group, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_unit_tests_that_expect_it_to_fire_and_not_fire():
    for name in [*CONTRACT, *SLO_ALERTS]:
        cases = expectations(name)
        assert any(t["exp_alerts"] for t in cases), f"{name} never expected to fire"
        assert any(not t["exp_alerts"] for t in cases), f"{name} never expected silent"
        for t in cases:
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
    # Without the echo guards, a Redis outage that paged echoes in the chat once it ends.
    ("HighRedisReconnectAttempts", {"explainedBy": []}),
    ("LowWorkerThroughput", {"explainedBy": []}),
]


@pytest.mark.mutation
@pytest.mark.parametrize(("alert", "change"), MUTATIONS, ids=mutation_ids(MUTATIONS))
def test_unit_tests_catch_a_rule_off_by_one_step(tmp_path, alert, change):
    assert_unit_tests_catch(tmp_path, {"alerts": {alert: change}}, unit_test_file(alert))


# --- runbooks and time to detect -------------------------------------------------------


@pytest.mark.parametrize("name", sorted([*CONTRACT, *SLO_ALERTS]))
def test_every_alert_has_a_runbook(name):
    assert_runbook(name)


def test_critical_alerts_notify_within_three_minutes():
    rows = {d.alert: d for d in time_to_detect() if d.alert in CONTRACT}
    assert set(rows) == set(CONTRACT)
    for d in time_to_detect():
        assert d.receiver == {"critical": "pager", "warning": "chat", "none": "deadman"}[d.severity]
        # A burn-rate page takes as long as its windows need at the burn rate (below); the
        # pipeline's own alerts keep the upstream mixins' longer durations
        # (tests/test_pipeline_alerts.py).
        if d.severity == "critical" and d.alert in CONTRACT:
            assert d.total <= CRITICAL_BUDGET_SECONDS, (d.alert, d.total)
    # WorkerDown: 15s scrape + 10s timeout + 15s evaluation + 1m + 15s group_wait.
    assert rows["WorkerDown"].total == 115
    assert rows["HighJobFailureRate"].evaluation == 30  # reads a recording rule
    assert parse_duration("1m30s") == 90


def test_every_alert_on_the_worker_targets_up_waits_for_the_scrape_timeout():
    """A hung replica is down only once its scrape times out: the worst case of every alert
    that reads the worker targets' `up` includes the timeout, and no other's does."""
    scrape = {d.alert: d.scrape for d in time_to_detect()}
    assert scrape.pop("WorkerDown") == scrape.pop("WorkerReplicasMissing") == 15 + 10
    assert set(scrape.values()) == {15}


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


# --- SLOs (alerts/slo.libsonnet) --------------------------------------------------------


def slo_rules() -> list[dict]:
    groups = yaml.safe_load(rendered()[ALERTS_FILE])["groups"]
    return next(g for g in groups if g["name"] == "worker-slo-alerts")["rules"]


def test_slo_alerts_have_designs_severities_labels_and_annotations():
    rules = slo_rules()
    got: dict[str, set[str]] = {}
    for rule in rules:
        got.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
        assert set(rule["labels"]) == {"severity"}, rule["alert"]  # + queue, from the expr
        assert "by (queue)" not in rule["expr"] and "queue" in rule["annotations"]["summary"]
        assert set(rule["annotations"]) == {
            "summary",
            "description",
            "value",
            "runbook_url",
            "dashboard_url",
        }
        assert "$value" in rule["annotations"]["description"], rule["alert"]
    assert got == SLO_ALERTS


def test_every_queue_wait_threshold_is_a_bucket_edge():
    """The SLI counts attempts within the threshold from the histogram's bucket at that
    edge; a threshold between two edges would read no bucket and yield no ratio."""
    from worker.metrics import QUEUE_WAIT_BUCKETS

    wait = load_config()["slo"]["queueWait"]
    thresholds = [wait["thresholdSeconds"]]
    thresholds += [
        q["thresholdSeconds"] for q in wait["queues"].values() if "thresholdSeconds" in q
    ]
    assert thresholds == [60, 300]
    assert set(thresholds) <= set(QUEUE_WAIT_BUCKETS)


def test_long_window_slo_records_run_in_a_slower_group_of_their_own():
    """The error ratios over a day or more and over the SLO window, and the budget left
    (which reads the latter), in worker-slo-records-long at slo.longWindowInterval; the
    shorter windows at the global 15 s. promtool test rules evaluates every group at the
    test file's evaluation_interval, whatever its own: the promtool tests cannot see the
    slower group's lag, which alerts/detect.py adds to the tickets' time to detect."""
    slo = load_config()["slo"]
    groups = {g["name"]: g for g in yaml.safe_load(rendered()[RECORDS_FILE])["groups"]}
    names = slo_record_names()
    long = groups["worker-slo-records-long"]
    assert long["interval"] == slo["longWindowInterval"] == "2m30s"
    assert {r["record"] for r in long["rules"]} == {
        name
        for sli in ("queueWait", "success")
        for name in [names[sli]["budgetLeft"]]
        + [names[sli]["ratio"][w] for w in ("1d", "3d", slo["window"])]
    }
    assert "interval" not in groups["worker-slo-records"]
    short = {r["record"] for r in groups["worker-slo-records"]["rules"]}
    assert names["success"]["ratio"]["6h"] in short
    # At most half the 5m lookback delta: a longer one is refused when rendering.
    with pytest.raises(RuntimeError, match="longWindowInterval"):
        rendered({"slo": {"longWindowInterval": "3m"}})


def test_slo_is_overridable_per_queue():
    override = {"slo": {"queueWait": {"queues": {"critical": {"objective": 0.999}}}}}
    records = yaml.safe_load(rendered(override)[RECORDS_FILE])["groups"]
    slo = next(g for g in records if g["name"] == "worker-slo-records")["rules"]
    budget = next(r for r in slo if r["record"].endswith("wait_slo_errors:budget_ratio"))
    assert (
        '0.001 * group by (queue) (worker_job_queue_wait_seconds_count{job="worker", '
        'queue="critical"})' in budget["expr"]
    )
    assert 'queue!~"critical|default"' in budget["expr"]  # the rest keep 0.01
    assert "0.01 * group by (queue)" in budget["expr"]


def test_burn_rate_time_to_fire_is_the_long_window_share_of_the_budget():
    """At 20x, the page's 1h pair (14.4x) fires after 1h x 14.4 / 20 = 43m12s, before the
    6h pair (6h x 6 / 20 = 1h48m); at 4x both ticket pairs need 18h."""
    pairs = load_config()["slo"]["burnRates"]
    page = [p for p in pairs if p["severity"] == "critical"]
    assert windows_to_fire(page, 20) == 43 * 60 + 12
    assert windows_to_fire(page, 10) == 6 * 3600 * 6 / 10  # 10 < 14.4: only the 6h pair
    with pytest.raises(ValueError):
        windows_to_fire(page, 5)
    rows = {(d.alert, d.severity): d for d in time_to_detect()}
    assert rows["JobQueueWaitBudgetBurn", "critical"].windows == 43 * 60 + 12
    assert rows["JobSuccessBudgetBurn", "warning"].windows == 18 * 3600


# The burn-rate and latency tests must fail when a window, factor or threshold is off.
SLO_MUTATIONS = [
    # the page's 1h pair at 12x would page at 13x
    (
        "job_queue_wait_budget_burn",
        {
            "burnRates": [
                {"severity": "critical", "long": "1h", "short": "5m", "factor": 12},
                {"severity": "critical", "long": "6h", "short": "30m", "factor": 6},
                {"severity": "warning", "long": "1d", "short": "2h", "factor": 3},
                {"severity": "warning", "long": "3d", "short": "6h", "factor": 1},
            ]
        },
    ),
    # a 15m short window keeps paging 10 minutes after the burn stopped
    (
        "job_queue_wait_budget_burn",
        {
            "burnRates": [
                {"severity": "critical", "long": "1h", "short": "15m", "factor": 14.4},
                {"severity": "critical", "long": "6h", "short": "30m", "factor": 6},
                {"severity": "warning", "long": "1d", "short": "2h", "factor": 3},
                {"severity": "warning", "long": "3d", "short": "6h", "factor": 1},
            ]
        },
    ),
    # the 6h pair over 5h pages sooner than 6h x 6 / 8 = 4h30m
    (
        "job_queue_wait_budget_burn",
        {
            "burnRates": [
                {"severity": "critical", "long": "1h", "short": "5m", "factor": 14.4},
                {"severity": "critical", "long": "5h", "short": "30m", "factor": 6},
                {"severity": "warning", "long": "1d", "short": "2h", "factor": 3},
                {"severity": "warning", "long": "3d", "short": "6h", "factor": 1},
            ]
        },
    ),
    # the ticket's 3d pair at 0.8x would open a ticket at 0.9x
    (
        "job_queue_wait_budget_burn_ticket",
        {
            "burnRates": [
                {"severity": "critical", "long": "1h", "short": "5m", "factor": 14.4},
                {"severity": "critical", "long": "6h", "short": "30m", "factor": 6},
                {"severity": "warning", "long": "1d", "short": "2h", "factor": 3},
                {"severity": "warning", "long": "3d", "short": "6h", "factor": 0.8},
            ]
        },
    ),
    ("job_success_budget_burn", {"success": {"objective": 0.99}}),
    ("slo_records", {"queueWait": {"queues": {"default": {"thresholdSeconds": 60}}}}),
    ("slo_records", {"success": {"objective": 0.999}}),
    ("high_job_queue_latency", {"alerts": {"HighJobQueueLatency": {"thresholdSeconds": 90}}}),
    ("high_job_queue_latency", {"alerts": {"HighJobQueueLatency": {"for": "4m"}}}),
    ("high_job_queue_latency", {"alerts": {"HighJobQueueLatency": {"queues": {"default": None}}}}),
]


@pytest.mark.mutation
@pytest.mark.parametrize(
    ("test_name", "change"),
    SLO_MUTATIONS,
    ids=[f"{t}-{i}" for i, (t, _) in enumerate(SLO_MUTATIONS)],
)
def test_slo_unit_tests_catch_a_rule_off_by_one_step(tmp_path, test_name, change):
    test_file = PROMETHEUS_DIR / "tests" / f"{test_name}_test.yml"
    assert_unit_tests_catch(tmp_path, {"slo": change}, test_file)
