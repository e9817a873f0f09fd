"""The alerting pipeline's own alerts (alerts/pipeline.libsonnet): the contract's names and
severities, a runbook each, promtool tests that expect each to fire and to stay silent and
that fail when a rule is one evaluation or one step off, and the config reaching PromQL."""

from __future__ import annotations

import pytest
import yaml

from alerts.detect import time_to_detect
from alerts.render import ALERTS_FILE, load_config, rendered
from tests.support.rules import (
    UNIT_TESTS,
    assert_runbook,
    assert_unit_tests_catch,
    expectations,
    mutation_ids,
    unit_test_file,
)

# docs/contract.md and docs/alerts.md, "The alerting pipeline's own alerts": severities.
PIPELINE = {
    "Watchdog": "none",
    "WorkerReplicasMissing": "warning",
    "PrometheusRuleFailures": "critical",
    "PrometheusErrorSendingAlertsToAnyAlertmanager": "critical",
    "PrometheusNotConnectedToAlertmanagers": "warning",
    "PrometheusBadConfig": "critical",
    "AlertmanagerFailedToSendAlerts": "warning",
    "AlertmanagerFailedReload": "critical",
    "AlertmanagerClusterDown": "critical",
}


def pipeline_rules(overrides: dict | None = None) -> list[dict]:
    groups = yaml.safe_load(rendered(overrides)[ALERTS_FILE])["groups"]
    (group,) = [g for g in groups if g["name"] == "alerting-pipeline"]
    return group["rules"]


def test_the_pipeline_alerts_have_designs_names_and_severities():
    rules = pipeline_rules()
    assert {r["alert"]: r["labels"]["severity"] for r in rules} == PIPELINE
    config = load_config()["pipelineAlerts"]
    for rule in rules:
        name = rule["alert"]
        assert set(rule["annotations"]) == {
            "summary",
            "description",
            "value",
            "runbook_url",
            "dashboard_url",
        }
        assert rule["annotations"]["runbook_url"].endswith(f"/docs/runbooks/{name}.md")
        assert rule.get("for", "0s") == config[name].get("for", "0s")
        if name != "Watchdog":
            assert "$value" in rule["annotations"]["description"], name


def test_watchdog_always_fires_and_nothing_else_does_at_once():
    rules = {r["alert"]: r for r in pipeline_rules()}
    assert rules["Watchdog"]["expr"] == "vector(1)" and "for" not in rules["Watchdog"]
    assert all("for" in rule for name, rule in rules.items() if name != "Watchdog")


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_every_pipeline_alert_has_a_runbook(name):
    assert_runbook(name)


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_every_pipeline_alert_has_unit_tests_that_expect_it_to_fire_and_not_fire(name):
    test_file = unit_test_file(name)
    assert test_file in UNIT_TESTS
    cases = expectations(name, [test_file])
    assert any(t["exp_alerts"] for t in cases), f"{name} never expected to fire"
    if name != "Watchdog":
        assert any(not t["exp_alerts"] for t in cases), f"{name} never expected silent"


# Each must make the alert's own promtool test fail: one evaluation early or late, or one
# step past a threshold.
MUTATIONS = [
    ("WorkerReplicasMissing", {"for": "285s"}),
    ("WorkerReplicasMissing", {"for": "315s"}),
    ("WorkerReplicasMissing", {"minReplicas": 1}),
    ("WorkerReplicasMissing", {"minReplicas": 3}),
    ("PrometheusRuleFailures", {"for": "285s"}),
    ("PrometheusRuleFailures", {"for": "315s"}),
    ("PrometheusRuleFailures", {"window": "6m"}),
    ("PrometheusErrorSendingAlertsToAnyAlertmanager", {"for": "285s"}),
    ("PrometheusErrorSendingAlertsToAnyAlertmanager", {"for": "315s"}),
    ("PrometheusNotConnectedToAlertmanagers", {"for": "585s"}),
    ("PrometheusNotConnectedToAlertmanagers", {"for": "615s"}),
    ("PrometheusNotConnectedToAlertmanagers", {"window": "3m"}),
    ("PrometheusBadConfig", {"for": "585s"}),
    ("PrometheusBadConfig", {"for": "615s"}),
    ("PrometheusBadConfig", {"window": "3m"}),
    ("AlertmanagerFailedToSendAlerts", {"for": "285s"}),
    ("AlertmanagerFailedToSendAlerts", {"for": "315s"}),
    ("AlertmanagerFailedToSendAlerts", {"threshold": 0.002}),
    ("AlertmanagerFailedReload", {"for": "585s"}),
    ("AlertmanagerFailedReload", {"for": "615s"}),
    ("AlertmanagerFailedReload", {"window": "3m"}),
    ("AlertmanagerClusterDown", {"for": "285s"}),
    ("AlertmanagerClusterDown", {"for": "315s"}),
    ("AlertmanagerClusterDown", {"threshold": 0.3}),
]


@pytest.mark.mutation
@pytest.mark.parametrize(("alert", "change"), MUTATIONS, ids=mutation_ids(MUTATIONS))
def test_unit_tests_catch_a_pipeline_rule_off_by_one_step(tmp_path, alert, change):
    assert_unit_tests_catch(tmp_path, {"pipelineAlerts": {alert: change}}, unit_test_file(alert))


def test_config_reaches_promql_and_selectors():
    rules = {
        r["alert"]: r
        for r in pipeline_rules(
            {
                "pipelineAlerts": {"WorkerReplicasMissing": {"minReplicas": 4}},
                "prometheusSelector": 'job="prom"',
                "alertmanagerSelector": 'job="am"',
            }
        )
    }
    assert rules["WorkerReplicasMissing"]["expr"] == (
        'count by (job) (max without (replica) (up{job="worker"} == 1)) < 4'
    )
    assert (
        "Fewer than 4 worker replicas" in rules["WorkerReplicasMissing"]["annotations"]["summary"]
    )
    assert '{job="prom"}' in rules["PrometheusBadConfig"]["expr"]
    assert 'up{job="am"}' in rules["AlertmanagerClusterDown"]["expr"]


def test_time_to_detect_covers_the_pipeline_alerts_and_the_watchdog_goes_to_deadman():
    rows = {d.alert: d for d in time_to_detect()}
    assert set(PIPELINE) <= set(rows)
    assert rows["Watchdog"].receiver == "deadman" and rows["Watchdog"].for_ == 0
    assert rows["AlertmanagerClusterDown"].receiver == "pager"
    assert rows["WorkerReplicasMissing"].receiver == "chat"
