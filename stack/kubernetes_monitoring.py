"""The worker's identity in the Kubernetes package, and the objects that monitor it: the
PodMonitor that scrapes its pods, the PrometheusRule of prometheus/rules/, the dashboards
as ConfigMaps for Grafana's sidecar, and the Alertmanager routing in a Secret
(rendered by stack/kubernetes.py; docs/kubernetes.md)."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
NAME = "worker"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "worker-monitoring"}
SELECTOR = {"app.kubernetes.io/name": NAME}


def meta(name: str, **extra) -> dict:
    return {"name": name, "labels": {**LABELS, **extra.pop("labels", {})}, **extra}


def pod_monitor() -> dict:
    # job="worker", as every rule selects: the job label is the pod's app.kubernetes.io/name.
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta(NAME),
        "spec": {
            "jobLabel": "app.kubernetes.io/name",
            "selector": {"matchLabels": SELECTOR},
            "podMetricsEndpoints": [
                {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
            ],
        },
    }


def rule_groups() -> list[dict]:
    groups = []
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def prometheus_rule() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": meta("worker-rules"),
        "spec": {"groups": rule_groups()},
    }


def dashboard_config_maps() -> dict[str, dict]:
    maps = {}
    for path in sorted((REPO / "dashboards" / "generated").glob("*.json")):
        name = f"grafana-dashboard-{path.stem}"
        maps[name] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(name, labels={"grafana_dashboard": "1"}),
            "data": {path.name: path.read_text()},
        }
    return maps


#: Where prometheus-operator mounts an Alertmanager's ``configSecret`` (its other keys, the
#: templates, beside it) and each Secret of its ``spec.secrets``.
AM_CONFIG_DIR = "/etc/alertmanager/config"
AM_WEBHOOKS_SECRET = "alertmanager-webhooks"


def alertmanager_secret() -> dict:
    """The plain alertmanager.yml the route tests check, in a Secret for an Alertmanager's
    ``spec.configSecret``; only its mount paths change. The webhook URLs stay in files, from
    the Secret ``alertmanager-webhooks`` the operator creates (docs/kubernetes.md)."""
    config = (REPO / "alertmanager" / "alertmanager.yml").read_text()
    config = config.replace("- templates/*.tmpl", f"- {AM_CONFIG_DIR}/*.tmpl").replace(
        "/etc/alertmanager/secrets/", f"/etc/alertmanager/secrets/{AM_WEBHOOKS_SECRET}/"
    )
    data = {"alertmanager.yaml": config}
    for path in sorted((REPO / "alertmanager" / "templates").glob("*.tmpl")):
        data[path.name] = path.read_text()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta("alertmanager-worker"),
        "type": "Opaque",
        "stringData": data,
    }
