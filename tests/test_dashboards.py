"""The dashboards as code: rendered files up to date, JSON Grafana 10.4/11 imports as is,
every query valid PromQL over the metrics contract, thresholds shared with the alerts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alerts.render import load_config
from alerts.render import rendered as rendered_rules
from dashboards import promql
from dashboards.render import GENERATED_DIR, REPO_DIR, definitions, rendered, stale_files
from stack.servers import require_binary

#: docs/contract.md "Metrics", plus Prometheus' own `up` (a replica's liveness).
CONTRACT = {
    "worker_jobs_total",
    "worker_jobs_completed_total",
    "worker_jobs_failed_total",
    "worker_jobs_processing",
    "worker_job_duration_seconds",
    "worker_redis_connection_status",
    "worker_redis_reconnect_attempts_total",
    "worker_jobs_retried_total",
    "worker_jobs_dead_lettered_total",
    "worker_concurrency",
    "worker_queue_messages",
    "worker_rate_limit_decisions_total",
    "worker_build_info",
    "worker_job_queue_wait_seconds",
    "worker_queue_oldest_message_age_seconds",
    "worker_dead_letters_requeued_total",
    "worker_dead_letters_purged_total",
    "worker_dead_letters_oldest_age_seconds",
}
HISTOGRAM_SERIES = {
    f"{h}_{s}"
    for h in ("worker_job_duration_seconds", "worker_job_queue_wait_seconds")
    for s in ("bucket", "sum", "count")
}
PROMETHEUS_OWN = {"up"}
RECORDS_FILE = REPO_DIR / "prometheus" / "rules" / "worker-records.yml"
ALERTS_FILE = REPO_DIR / "prometheus" / "rules" / "worker-alerts.yml"

#: The config key of each alert's threshold, drawn as the dashed line of its panel.
THRESHOLD_KEYS = {
    "HighJobFailureRate": "threshold",
    "HighJobProcessingTime": "thresholdSeconds",
    "HighJobProcessingQueue": "threshold",
    "HighRedisReconnectAttempts": "threshold",
    "LowWorkerThroughput": "minCompletedPerSecond",
    "HighJobQueueLatency": "thresholdSeconds",
}


def load(uid: str) -> dict:
    return json.loads((GENERATED_DIR / f"{uid}.json").read_text())


def dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(GENERATED_DIR.glob("*.json"))]


def records() -> dict[str, str]:
    """Recording rule name -> expression, from the repository's rendered rules."""
    doc = yaml.safe_load(RECORDS_FILE.read_text())
    return {r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def sources(names: set[str], recs: dict[str, str]) -> set[str]:
    """Names plus, recursively, the metrics the recording rules among them read."""
    out, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        if name in recs:
            todo.extend(promql.metric_names(recs[name]))
    return out


def all_selected(dashboard: dict, instance: str = "127.0.0.1:9191") -> dict[str, str]:
    selection = {} if dashboard["templating"]["list"][1]["includeAll"] else {"instance": [instance]}
    return promql.dashboard_variables(dashboard, selection)


def panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


# --- rendering ---------------------------------------------------------------------------


def test_committed_json_matches_a_fresh_render():
    assert stale_files() == [], "run `make dashboards` and commit dashboards/generated"
    assert sorted(p.name for p in GENERATED_DIR.glob("*.json")) == [
        "worker-overview.json",
        "worker-replica.json",
    ]


def test_rendering_is_deterministic():
    assert rendered() == rendered()


@pytest.mark.parametrize("definition", definitions(), ids=lambda p: p.name)
def test_grafanalib_generate_dashboard_renders_each_definition(definition, tmp_path):
    """grafanalib's own CLI turns each *.dashboard.py into exactly the committed JSON."""
    out = tmp_path / "out.json"
    cli = Path(sys.executable).parent / "generate-dashboard"
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    subprocess.run([str(cli), "-o", str(out), str(definition)], check=True, env=env)
    uid = json.loads(out.read_text())["uid"]
    assert out.read_text() == (GENERATED_DIR / f"{uid}.json").read_text()


# --- what Grafana 10.4 / 11 imports ---------------------------------------------------------


@pytest.mark.parametrize("uid", ["worker-overview", "worker-replica"])
def test_json_has_what_grafana_11_imports_without_migration(uid):
    d = load(uid)
    assert d["schemaVersion"] == 39
    assert d["uid"] == uid and d["id"] is None and d["title"]
    assert d["editable"] is True and "worker" in d["tags"]
    for legacy in ("rows", "hideControls", "sharedCrosshair", "style"):
        assert legacy not in d
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["datasource", "instance", "queue", "job_type"]
    ds = d["templating"]["list"][0]
    assert (ds["type"], ds["query"], ds["current"]["value"]) == (
        "datasource",
        "prometheus",
        "prometheus",
    )
    for var in d["templating"]["list"][1:]:
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert var["query"] == var["definition"]
    other = "worker-replica" if uid == "worker-overview" else "worker-overview"
    assert [link["url"] for link in d["links"]] == [f"/d/{other}/{other}"]
    assert d["links"][0]["includeVars"] and d["links"][0]["keepTime"]


@pytest.mark.parametrize("uid", ["worker-overview", "worker-replica"])
def test_panels_have_ids_units_descriptions_and_a_tidy_grid(uid):
    d = load(uid)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        area = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area
    for p in panels(d):
        assert len(p["description"]) > 60 and "Good" in p["description"], p["title"]
        if p["type"] == "alertlist":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"] and t["refId"]
        if p["type"] in ("timeseries", "stat"):
            assert p["fieldConfig"]["defaults"]["unit"] in {"s", "ops", "percentunit", "short"}
    units = {p["fieldConfig"]["defaults"].get("unit") for p in panels(d) if "fieldConfig" in p}
    assert {"s", "ops", "percentunit"} <= units
    heatmap = next(p for p in d["panels"] if p["type"] == "heatmap")
    assert heatmap["options"]["calculate"] is False and heatmap["options"]["yAxis"]["unit"] == "s"
    assert heatmap["targets"][0]["format"] == "heatmap"


def test_alert_list_shows_the_worker_rules_of_the_provisioned_datasource():
    d = load("worker-overview")
    (alertlist,) = [p for p in d["panels"] if p["type"] == "alertlist"]
    options = alertlist["options"]
    assert options["datasource"] == "Prometheus"
    assert options["alertInstanceLabelFilter"] == 'severity=~"critical|warning"'
    assert options["stateFilter"]["firing"] and options["stateFilter"]["pending"]
    config = load_config()
    for name in config["alerts"]:
        assert f"**{name}**" in alertlist["description"]
        assert any(link["url"].endswith(f"/{name}.md") for link in alertlist["links"])


# --- one source of truth with the alerts ---------------------------------------------------


def test_each_alert_links_to_the_overview_panel_that_shows_its_signal_and_threshold():
    config = load_config()
    overview = load("worker-overview")
    assert overview["uid"] == config["dashboardUid"]
    by_id = {p["id"]: p for p in overview["panels"]}
    recs = records()
    rules = {
        r["alert"]: r for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"] for r in g["rules"]
    }
    every = {**config["alerts"], **config["slo"]["alerts"]}
    # The pipeline's own alerts link the Prometheus or Alertmanager page instead.
    assert set(rules) == set(every) | set(config["pipelineAlerts"])
    for name, alert in every.items():
        panel = by_id[alert["panelId"]]
        url = rules[name]["annotations"]["dashboard_url"]
        assert f"/d/{overview['uid']}/" in url and f"viewPanel={alert['panelId']}&" in url
        assert any(
            link["url"] == f"{config['runbookUrlBase']}/{name}.md" for link in panel["links"]
        )
        panel_metrics = sources(
            set().union(*(promql.metric_names(t["expr"]) for t in panel["targets"])), recs
        )
        alert_metrics = sources(promql.metric_names(rules[name]["expr"]), recs)
        assert panel_metrics & alert_metrics & (CONTRACT | HISTOGRAM_SERIES | PROMETHEUS_OWN), name
        if name in THRESHOLD_KEYS:
            value = alert[THRESHOLD_KEYS[name]]
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert value in [s["value"] for s in steps], name
            assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
            assert f"{value:g}" in rules[name]["expr"], name


def test_changing_a_threshold_in_the_alerts_config_moves_rule_and_panel_together():
    overrides = {
        "alerts": {
            "HighJobFailureRate": {"threshold": 0.25},
            "HighJobProcessingTime": {"thresholdSeconds": 45},
        }
    }
    rules_text = yaml.safe_load(rendered_rules(overrides)["worker-alerts.yml"])
    exprs = {r["alert"]: r["expr"] for g in rules_text["groups"] for r in g["rules"]}
    assert "> 0.25" in exprs["HighJobFailureRate"] and "> 45" in exprs["HighJobProcessingTime"]
    for text in rendered(overrides).values():
        d = json.loads(text)
        by_id = {p["id"]: p for p in d["panels"]}
        assert {"color": "red", "value": 0.25} in by_id[2]["fieldConfig"]["defaults"]["thresholds"][
            "steps"
        ]
        assert {"color": "red", "value": 45} in by_id[4]["fieldConfig"]["defaults"]["thresholds"][
            "steps"
        ]
        assert "under 25%" in by_id[2]["description"]
    # and the committed render still has the defaults
    default = {p["id"]: p for p in load("worker-overview")["panels"]}
    assert {"color": "red", "value": 0.1} in default[2]["fieldConfig"]["defaults"]["thresholds"][
        "steps"
    ]


def test_fleet_queries_read_the_recording_rules_the_alerts_read():
    recs = records()
    overview = load("worker-overview")
    used = set().union(*(promql.metric_names(t.expr) for t in promql.targets(overview)))
    assert set(recs) - used == set(), "every recording rule is on the overview"
    # raw series on the overview only where no recording rule has them
    raw = used - set(recs)
    assert raw <= {
        "up",
        "worker_redis_connection_status",
        "worker_build_info",
        "worker_job_duration_seconds_bucket",  # heatmap: per-interval increase, not 10m rate
        "worker_job_duration_seconds_sum",  # mean duration W of the capacity row
        "worker_job_duration_seconds_count",
        "worker_rate_limit_decisions_total",
        "worker_job_queue_wait_seconds_bucket",  # queue-wait quantiles per queue
        # the dead-letter row: no recording rule has them (max across replicas in the panel)
        "worker_dead_letters_oldest_age_seconds",
        "worker_dead_letters_requeued_total",
        "worker_dead_letters_purged_total",
    }, raw


# --- every query: valid PromQL, contract metrics only ---------------------------------------


def test_every_query_reads_only_contract_metrics_and_repository_recording_rules():
    allowed = CONTRACT | HISTOGRAM_SERIES | PROMETHEUS_OWN | set(records())
    recs = records()
    used: set[str] = set()
    for d in dashboards():
        for t in promql.targets(d):
            names = promql.metric_names(t.expr)
            assert names, t
            assert names <= allowed, f"{t.dashboard} panel {t.panel_id}: {names - allowed}"
            used |= names
    shown = {
        n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        for n in sources(used, recs)
    }
    assert CONTRACT - shown == set(), "every contract metric is on a dashboard"


def test_every_query_parses_with_promtool(tmp_path):
    """Each target, with the variables substituted as Grafana would (All, one value, and
    several values), as a recording rule that promtool checks."""
    rules = []
    for d in dashboards():
        selections = [
            all_selected(d),
            promql.dashboard_variables(
                d,
                {
                    "instance": ["127.0.0.1:9191"],
                    "queue": ["critical", "default"],
                    "job_type": ["agent.run"],
                },
            ),
        ]
        for i, variables in enumerate(selections):
            for t in promql.targets(d):
                name = f"{d['uid'].replace('-', '_')}_{t.panel_id}_{t.ref_id}_{i}"
                rules.append(
                    {
                        "record": f"dashboard_check:{name}",
                        "expr": promql.interpolate(t.expr, variables),
                    }
                )
    assert len(rules) > 60
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_variables_are_substituted_as_grafana_does():
    assert promql.variable_value(["$__all"], multi=True) == ".*"
    assert promql.variable_value(["agent.run"], multi=True) == r"agent\\.run"
    assert (
        promql.variable_value(["agent.run", "crm.sync"], multi=True) == r"(agent\\.run|crm\\.sync)"
    )
    assert promql.variable_value(["127.0.0.1:9191"], multi=False) == "127.0.0.1:9191"
    expr = 'rate(x{job_type=~"$job_type", instance=~"${instance}"}[$__rate_interval])'
    out = promql.interpolate(expr, {"job_type": r"(a\\.b|c)", "instance": ".*"}, rate_interval="2m")
    assert out == r'rate(x{job_type=~"(a\\.b|c)", instance=~".*"}[2m])'
    with pytest.raises(KeyError):
        promql.interpolate('up{a=~"$missing"}', {})


def test_metric_names_lexer():
    expr = (
        "sum by (queue, le) "
        '(rate(worker_job_duration_seconds_bucket{job="worker", le=~"1|{2}"}[5m]))'
        " / on (queue) group_left (x) queue:worker_jobs_completed:rate10m * 86400 > bool 1e-9"
    )
    assert promql.metric_names(expr) == {
        "worker_job_duration_seconds_bucket",
        "queue:worker_jobs_completed:rate10m",
    }


# --- provisioning ------------------------------------------------------------------------------


def test_provisioning_files_are_ready_to_mount():
    base = REPO_DIR / "dashboards" / "provisioning"
    ds = yaml.safe_load((base / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert (source["uid"], source["type"], source["name"]) == (
        "prometheus",
        "prometheus",
        "Prometheus",
    )
    assert source["url"].startswith("http://")
    provider = yaml.safe_load((base / "dashboards" / "worker.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["folder"] == "Worker"
    # Editable in the UI, but never saved over the code: with allowUiUpdates a saved edit
    # would survive restarts in Grafana's database until the file itself changed.
    assert provider["allowUiUpdates"] is False
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
