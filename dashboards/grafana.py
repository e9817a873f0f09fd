"""grafanalib building blocks that emit the JSON Grafana 10.4/11 itself saves.

The JSON targets Grafana 10.4 and 11 (``schemaVersion`` 39): datasource references are
``{type, uid}`` objects, the heatmap and alert list use the React panels' options, and the
keys grafanalib writes for Grafana < 5 are left out, so Grafana runs no dashboard or panel
migration on import.
"""

from __future__ import annotations

import attr
from grafanalib import core as G

#: Grafana 10.4 and 11.0 write this schema version; 11.x imports it without a migration
#: that changes anything these dashboards use.
SCHEMA_VERSION = 39

#: The provisioned Prometheus datasource (provisioning/datasources/prometheus.yml).
DATASOURCE_UID = "prometheus"
DATASOURCE_NAME = "Prometheus"
#: Every query goes through the $datasource variable, so another Prometheus can be picked.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@attr.s
class PromQuery(G.Target):
    """A Prometheus query through $datasource (Grafana 10+ target format)."""

    def to_json_data(self) -> dict:
        return {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": self.expr,
            "format": self.format,
            "instant": self.instant,
            "legendFormat": self.legendFormat,
            "range": not self.instant,
            "refId": self.refId,
        }


def queries(*pairs: tuple[str, str], format: str = "time_series") -> list[PromQuery]:
    """(expr, legend) pairs as targets A, B, C..."""
    return [
        PromQuery(expr=expr, legendFormat=legend, refId=chr(ord("A") + i), format=format)
        for i, (expr, legend) in enumerate(pairs)
    ]


@attr.s
class Variable(G.Template):
    """A template variable as Grafana 10+ saves it (definition, description), valid against
    Grafana's dashboard schema (dashboards/schema/)."""

    description = attr.ib(default="")

    def to_json_data(self) -> dict:
        data = super().to_json_data()
        for legacy in ("auto", "auto_min", "auto_count", "useTags", "tagsQuery", "tagValuesQuery"):
            data.pop(legacy)
        data["description"] = self.description
        data["regex"] = self.regex or ""
        if self.type == "datasource":
            data["current"] = {"selected": True, "text": DATASOURCE_NAME, "value": DATASOURCE_UID}
        if self.type == "query":
            # A string: Grafana's schema has no room for the query editor's object (Grafana
            # reads the string and builds the object itself).
            data["definition"] = data["query"] = self.query
        if self.type == "query" and not self.includeAll and self.default is None:
            del data["current"]  # Grafana selects the first value the query returns
        for unset in ("datasource", "allValue"):  # null where the schema wants an object/text
            if data[unset] is None:
                del data[unset]
        if self.includeAll:
            data["current"] = (
                {"selected": True, "text": ["All"], "value": ["$__all"]}
                if self.multi
                else {"selected": True, "text": "All", "value": "$__all"}
            )
        return data


def datasource_variable() -> Variable:
    return Variable(
        name="datasource",
        label="Data source",
        type="datasource",
        query="prometheus",
        default=DATASOURCE_UID,
        description="The Prometheus that scrapes the worker replicas.",
    )


def label_variable(
    name: str, label: str, query: str, description: str, *, multi: bool = True
) -> Variable:
    """A variable over a label's values; with ``multi`` also "All" (regex ``.*``)."""
    return Variable(
        name=name,
        label=label,
        type="query",
        dataSource=DATASOURCE,
        query=query,
        multi=multi,
        includeAll=multi,
        allValue=".*" if multi else None,
        refresh=G.REFRESH_ON_TIME_RANGE_CHANGE,
        sort=G.SORT_ALPHA_ASC,
        description=description,
    )


#: Keys grafanalib writes for Grafana < 5 (rows, spans, angular panels): Grafana 10+ never
#: reads them, and leaving them out keeps the JSON what Grafana itself would save.
_LEGACY_DASHBOARD_KEYS = ("rows", "hideControls", "sharedCrosshair", "style", "gnetId", "__inputs")
_LEGACY_PANEL_KEYS = ("error", "span", "minSpan", "height", "editable", "cacheTimeout")


def _without_nulls(mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if v is not None}


def _modern_panel(panel: dict) -> dict:
    if panel["type"] == "row":
        return {k: panel[k] for k in ("collapsed", "gridPos", "id", "panels", "title", "type")}
    panel = _without_nulls({k: v for k, v in panel.items() if k not in _LEGACY_PANEL_KEYS})
    if panel["type"] == "alertlist":  # no query, no fields
        for key in ("fieldConfig", "maxDataPoints", "targets", "transformations"):
            panel.pop(key, None)
        return panel
    defaults = _without_nulls(panel["fieldConfig"]["defaults"])
    if "custom" in defaults:
        defaults["custom"] = _without_nulls(defaults["custom"])
    if not defaults.get("thresholds", {}).get("steps", True):
        del defaults["thresholds"]
    panel["fieldConfig"] = {**panel["fieldConfig"], "defaults": defaults}
    return panel


@attr.s
class WorkerDashboard(G.Dashboard):
    """A dashboard as Grafana 10.4/11 saves it, without the legacy keys grafanalib writes."""

    def to_json_data(self) -> dict:
        data = super().to_json_data()
        for legacy in _LEGACY_DASHBOARD_KEYS:
            data.pop(legacy)
        data["panels"] = [_modern_panel(p.to_json_data()) for p in self.panels]
        data["timepicker"] = {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m", "1h"]}
        return data


BUILTIN_ANNOTATIONS = G.Annotations(
    list=[
        {
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }
    ]
)


def dashboard_link(title: str, uid: str, tooltip: str) -> G.DashboardLink:
    """A link in the dashboard's header that keeps the time range and the variables."""
    return G.DashboardLink(
        title=title,
        type="link",
        uri=f"/d/{uid}/{uid}",
        icon="dashboard",
        includeVars=True,
        keepTime=True,
        tooltip=tooltip,
    )


@attr.s
class DurationHeatmap(G.Panel):
    """Grafana's React heatmap over pre-bucketed Prometheus histogram data."""

    unit = attr.ib(default="s")

    def to_json_data(self) -> dict:
        return self.panel_json(
            {
                "type": "heatmap",
                "fieldConfig": {
                    "defaults": {
                        "custom": {
                            "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                            "scaleDistribution": {"type": "linear"},
                        }
                    },
                    "overrides": [],
                },
                "options": {
                    "calculate": False,
                    "cellGap": 1,
                    "color": {
                        "exponent": 0.5,
                        "fill": "dark-orange",
                        "mode": "scheme",
                        "reverse": False,
                        "scale": "exponential",
                        "scheme": "Oranges",
                        "steps": 64,
                    },
                    "exemplars": {"color": "rgba(255,0,255,0.7)"},
                    "filterValues": {"le": 1e-9},
                    "legend": {"show": True},
                    "rowsFrame": {"layout": "auto"},
                    "showValue": "never",
                    "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": True},
                    "yAxis": {"axisPlacement": "left", "reverse": False, "unit": self.unit},
                },
            }
        )


@attr.s
class AlertList(G.Panel):
    """Grafana's (unified alerting) alert list: the rules Prometheus evaluates, filtered."""

    instance_filter = attr.ib(default="")
    rules_source = attr.ib(default=DATASOURCE_NAME)

    def to_json_data(self) -> dict:
        return self.panel_json(
            {
                "type": "alertlist",
                "options": {
                    "alertInstanceLabelFilter": self.instance_filter,
                    "alertName": "",
                    "dashboardAlerts": False,
                    "datasource": self.rules_source,
                    "groupBy": [],
                    "groupMode": "default",
                    "maxItems": 20,
                    "showInstances": True,
                    "sortOrder": 3,  # importance: firing first
                    "stateFilter": {
                        "error": True,
                        "firing": True,
                        "noData": False,
                        "normal": False,
                        "pending": True,
                        "recovering": True,
                    },
                    "viewMode": "list",
                },
            }
        )
