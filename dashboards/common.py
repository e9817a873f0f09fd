"""Shared panels and helpers of the worker dashboards (grafanalib).

One source of truth: every threshold line, alert window, severity, runbook link and the
panel id an alert's ``dashboard_url`` opens come from ``alerts/config.libsonnet``
(evaluated by ``alerts.render.load_config``), and fleet queries read the recording rules
by the names the alerts mixin gives them (``alerts.render.record_names``). Change a
threshold there and ``make rules dashboards`` moves both the rule and the line.

Two scopes share every panel definition:

- the fleet (``Scope(replica=False)``): recording rules, i.e. the very series the alerts
  evaluate; ``$instance`` narrows only the per-replica panels (up, Redis);
- one replica (``Scope(replica=True)``): the raw series of ``instance=~"$instance"``,
  since the recording rules aggregate the instance label away.

The JSON targets Grafana 10.4 and 11 (``schemaVersion`` 39): datasource references are
``{type, uid}`` objects, the heatmap and alert list use the React panels' options, so
Grafana runs no dashboard or panel migration on import.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import attr
from grafanalib import core as G

from alerts.render import load_config, record_names

#: Grafana 10.4 and 11.0 write this schema version; 11.x imports it without a migration
#: that changes anything these dashboards use.
SCHEMA_VERSION = 39

#: The provisioned Prometheus datasource (provisioning/datasources/prometheus.yml).
DATASOURCE_UID = "prometheus"
DATASOURCE_NAME = "Prometheus"
#: Every query goes through the $datasource variable, so another Prometheus can be picked.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

REPLICA_UID = "worker-replica"
TAGS = ["worker", "dramatiq"]
RATE = "$__rate_interval"
SECONDS_PER_DAY = 86_400

# ---------------------------------------------------------------------------------------
# The alerts config: the one source of thresholds, windows, severities and links.

_alerts_sources: tuple[str, tuple[str, ...]] = ("{}", ())


@contextlib.contextmanager
def alerts_config(
    overrides: Mapping | None = None, config_files: Sequence[str] = ()
) -> Iterator[None]:
    """Build dashboards against alerts/config.libsonnet plus these overrides (as
    ``python -m alerts.render --set/--config`` renders the rules)."""
    global _alerts_sources
    previous = _alerts_sources
    _alerts_sources = (json.dumps(dict(overrides or {}), sort_keys=True), tuple(config_files))
    try:
        yield
    finally:
        _alerts_sources = previous


@dataclass(frozen=True)
class Alerting:
    """The alerts mixin's config and recording-rule names, as the dashboards read them."""

    config: Mapping
    records: Mapping[str, str]

    def alert(self, name: str) -> Mapping:
        return self.config["alerts"][name]

    def panel_id(self, name: str) -> int:
        return int(self.alert(name)["panelId"])

    def runbook_url(self, name: str) -> str:
        return f"{self.config['runbookUrlBase']}/{name}.md"

    @property
    def selector(self) -> str:
        return self.config["workerSelector"]

    @property
    def overview_uid(self) -> str:
        return self.config["dashboardUid"]

    @property
    def severities(self) -> list[str]:
        return sorted({a["severity"] for a in self.config["alerts"].values()})


@functools.lru_cache(maxsize=8)
def _load(overrides_json: str, config_files: tuple[str, ...]) -> Alerting:
    overrides = json.loads(overrides_json)
    return Alerting(load_config(overrides, config_files), record_names(overrides, config_files))


def alerting() -> Alerting:
    return _load(*_alerts_sources)


# ---------------------------------------------------------------------------------------
# grafanalib building blocks, emitting the JSON Grafana 10.4/11 itself saves.


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
    """A template variable as Grafana 10+ saves it (query object, definition, description)."""

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
            data["definition"] = self.query
            data["query"] = {
                "query": self.query,
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
            }
        if self.type == "query" and not self.includeAll and self.default is None:
            data["current"] = {}  # Grafana selects the first value the query returns
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


def variables(alerts: Alerting, *, replica: bool) -> G.Templating:
    """datasource, instance (the replica), queue and job_type, chained in that order."""
    sel = alerts.selector
    instance_help = (
        "The replica shown: its Prometheus instance label (host:port of its metrics)."
        if replica
        else "Narrows the per-replica panels (up, Redis); fleet panels sum all replicas."
    )
    return G.Templating(
        list=[
            datasource_variable(),
            label_variable(
                "instance",
                "Replica",
                f"label_values(up{{{sel}}}, instance)",
                instance_help,
                multi=not replica,
            ),
            label_variable(
                "queue",
                "Queue",
                f"label_values(worker_queue_messages{{{sel}}}, queue)",
                "Dramatiq queues: critical, default (standard class), fast.",
            ),
            label_variable(
                "job_type",
                "Job type",
                f'label_values(worker_jobs_total{{{sel}, queue=~"$queue"}}, job_type)',
                "Actor names (agent.run, crm.sync, message.send, job.status_update).",
            ),
        ]
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


def dashboard(
    *, title: str, uid: str, description: str, panels: list, links: list, templating
) -> WorkerDashboard:
    return WorkerDashboard(
        title=title,
        uid=uid,
        description=description,
        tags=TAGS,
        panels=panels,
        links=links,
        templating=templating,
        annotations=BUILTIN_ANNOTATIONS,
        editable=True,
        graphTooltip=G.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        refresh="30s",
        time=G.Time("now-1h", "now"),
        timezone="browser",
        schemaVersion=SCHEMA_VERSION,
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


def runbook_link(alerts: Alerting, name: str) -> G.DataLink:
    return G.DataLink(title=f"Runbook: {name}", linkUrl=alerts.runbook_url(name), isNewTab=True)


def base_step(color: str = "green") -> dict:
    return {"color": color, "value": None}


def above(threshold: float) -> list[dict]:
    """Threshold steps: green, red from ``threshold`` up (the alert fires above)."""
    return [base_step(), {"color": "red", "value": threshold}]


def below(threshold: float) -> list[dict]:
    """Threshold steps: red under ``threshold`` (the alert fires below), green from it up."""
    return [base_step("red"), {"color": "green", "value": threshold}]


def timeseries(
    id: int,
    title: str,
    description: str,
    targets: list[PromQuery],
    unit: str,
    *,
    thresholds: list[dict] | None = None,
    links: Sequence[G.DataLink] = (),
    field_links: Sequence[dict] = (),
    min: int | None = None,
    max: int | None = None,
    step: bool = False,
    stacked: bool = False,
    mappings: list | None = None,
    fill: int = 10,
) -> G.TimeSeries:
    """A time series; with ``thresholds`` the alert's threshold is drawn as a dashed line."""
    return G.TimeSeries(
        id=id,
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        thresholds=thresholds or [base_step()],
        thresholdsStyleMode="dashed" if thresholds else "off",
        links=list(links),
        valueMin=min,
        valueMax=max,
        lineInterpolation="stepAfter" if step else "smooth",
        stacking={"mode": "normal", "group": "A"} if stacked else {"mode": "none", "group": "A"},
        fillOpacity=fill,
        legendDisplayMode="list",
        tooltipMode="multi",
        tooltipSort="desc",
        mappings=mappings or [],
        maxDataPoints=None,
        extraJson={"fieldConfig": {"defaults": {"links": list(field_links)}}},
    )


def stat(
    id: int,
    title: str,
    description: str,
    targets: list[PromQuery],
    unit: str,
    *,
    thresholds: list[dict] | None = None,
    decimals: int | None = None,
    links: Sequence[G.DataLink] = (),
) -> G.Stat:
    return G.Stat(
        id=id,
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        format=unit,
        decimals=decimals,
        thresholds=thresholds or [base_step("blue")],
        color={"mode": "thresholds"},
        reduceCalc="lastNotNull",
        graphMode="area",
        textMode="value_and_name",
        noValue=None,
        links=list(links),
        maxDataPoints=None,
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


class Layout:
    """Places panels on Grafana's 24-column grid, top to bottom, rows of equal widths."""

    def __init__(self) -> None:
        self.y = 0
        self.panels: list = []

    def row(self, id: int, title: str) -> None:
        self.panels.append(
            G.RowPanel(id=id, title=title, gridPos=G.GridPos(h=1, w=24, x=0, y=self.y))
        )
        self.y += 1

    def add(self, *panels, height: int = 8, widths: Sequence[int] | None = None) -> None:
        widths = widths or [24 // len(panels)] * len(panels)
        x = 0
        for panel, width in zip(panels, widths, strict=True):
            self.panels.append(
                attr.evolve(panel, gridPos=G.GridPos(h=height, w=width, x=x, y=self.y))
            )
            x += width
        self.y += height


# ---------------------------------------------------------------------------------------
# The signals, as queries of a scope.

COUNTERS = {
    "started": "worker_jobs_total",
    "completed": "worker_jobs_completed_total",
    "failed": "worker_jobs_failed_total",
    "retried": "worker_jobs_retried_total",
    "deadLettered": "worker_jobs_dead_lettered_total",
}


def _sum(by: str, expr: str) -> str:
    return f"sum by ({by}) ({expr})" if by else f"sum({expr})"


@dataclass(frozen=True)
class Scope:
    """Whose series the queries read: the fleet, or the replica chosen by $instance."""

    alerts: Alerting
    replica: bool

    def _matchers(
        self,
        *,
        queue: bool = True,
        job_type: bool = True,
        instance: bool | None = None,
        extra: str = "",
    ) -> str:
        """The worker selector plus the dashboard's variables; ``instance`` defaults to
        the scope (a replica's queries always narrow to $instance)."""
        parts = [self.alerts.selector]
        if self.replica if instance is None else instance:
            parts.append('instance=~"$instance"')
        if queue:
            parts.append('queue=~"$queue"')
        if job_type:
            parts.append('job_type=~"$job_type"')
        if extra:
            parts.append(extra)
        return "{" + ", ".join(parts) + "}"

    def _record(self, role: str, *, queue: bool = True, job_type: bool = True) -> str:
        parts = (['queue=~"$queue"'] if queue else []) + (
            ['job_type=~"$job_type"'] if job_type else []
        )
        return self.alerts.records[role] + ("{" + ", ".join(parts) + "}" if parts else "")

    def window(self, alert: str) -> str:
        return self.alerts.alert(alert)["window"]

    def attempts(self, role: str, by: str = "") -> str:
        """Attempts per second: started, completed, failed, retried or deadLettered."""
        if self.replica:
            return _sum(by, f"rate({COUNTERS[role]}{self._matchers()}[{RATE}])")
        return _sum(by, self._record(role))

    def failure_ratio(self) -> str:
        """Failed / started attempts per (queue, job_type) over HighJobFailureRate's window."""
        if self.replica:
            w, m = self.window("HighJobFailureRate"), self._matchers()
            failed, started = COUNTERS["failed"], COUNTERS["started"]
            return (
                f"sum by (queue, job_type) (rate({failed}{m}[{w}]))"
                f" / sum by (queue, job_type) (rate({started}{m}[{w}]))"
            )
        return self._record("failureRatio")

    def _buckets(self, by: str) -> str:
        if self.replica:
            w = self.window("HighJobProcessingTime")
            return _sum(by, f"rate(worker_job_duration_seconds_bucket{self._matchers()}[{w}])")
        return _sum(by, self._record("durationBuckets"))

    def duration_quantile(self, q: float) -> str:
        """The q-quantile of attempt duration over every selected (queue, job_type)."""
        return f"histogram_quantile({q:g}, {self._buckets('le')})"

    def worst_duration_quantile(self, q: float) -> str:
        """The highest q-quantile of one (queue, job_type): what HighJobProcessingTime sees
        (for the fleet, the very recording rule it reads)."""
        if self.replica:
            return f"max(histogram_quantile({q:g}, {self._buckets('queue, job_type, le')}))"
        record = self._record("durationQuantile")
        return f'max({record[:-1]}, quantile="{q:g}"}})'

    def duration_heatmap(self) -> str:
        bucket = f"worker_job_duration_seconds_bucket{self._matchers()}"
        return f"sum by (le) (increase({bucket}[{RATE}]))"

    def in_flight(self) -> str:
        if self.replica:
            return f"sum(worker_jobs_processing{self._matchers()})"
        return _sum("", self._record("processing"))

    def slots(self) -> str:
        if self.replica:
            return f"sum(worker_concurrency{self._matchers(queue=False, job_type=False)})"
        return f"sum({self.alerts.records['concurrency']})"

    def backlog(self) -> str:
        """Broker messages per (queue, state); every replica samples the same broker: max."""
        if self.replica:
            m = self._matchers(job_type=False)
            return f"max by (queue, state) (worker_queue_messages{m})"
        return self._record("queueMessages", job_type=False)

    def ready_backlog(self) -> str:
        if self.replica:
            m = self._matchers(queue=False, job_type=False, extra='state="ready"')
            return f"max by (queue) (worker_queue_messages{m})"
        return self.alerts.records["queueMessages"] + '{state="ready"}'

    def queue_completions(self) -> str:
        """Completions per queue over LowWorkerThroughput's window."""
        if self.replica:
            w = self.window("LowWorkerThroughput")
            m = self._matchers(job_type=False)
            return f"sum by (queue) (rate({COUNTERS['completed']}{m}[{w}]))"
        return self._record("queueCompleted", job_type=False)

    def per_replica(self, metric: str, agg: str = "min") -> str:
        """One series per replica; $instance narrows them on both dashboards."""
        m = self._matchers(queue=False, job_type=False, instance=True)
        return f"{agg} by (instance) ({metric}{m})"

    def up(self) -> str:
        return self.per_replica("up")

    def redis_status(self) -> str:
        return self.per_replica("worker_redis_connection_status")

    def reconnects(self) -> str:
        return f'max by (instance) ({self.alerts.records["reconnects"]}{{instance=~"$instance"}})'

    def rate_limit_decisions(self) -> str:
        m = self._matchers(queue=False, job_type=False)
        return f"sum by (window, decision) (rate(worker_rate_limit_decisions_total{m}[{RATE}]))"

    def versions(self) -> str:
        m = self._matchers(queue=False, job_type=False, instance=True)
        return f"count by (version) (worker_build_info{m})"

    # Little's law: slots busy L = arrival rate lambda x mean attempt duration W.

    def capacity_window(self) -> str:
        return self.window("HighJobFailureRate")

    def arrival_rate(self) -> str:
        """Attempts arriving per second. For the fleet: attempts started plus the growth of
        the ready backlog, so a saturated fleet still shows the demand, not its ceiling."""
        w = self.capacity_window()
        if self.replica:
            m = self._matchers(queue=False, job_type=False)
            return f"sum(rate({COUNTERS['started']}{m}[{w}]))"
        started = f"sum({self.alerts.records['started']})"
        return f"({started} + sum(deriv({self.ready_backlog()}[{w}])))"

    def mean_duration(self) -> str:
        w = self.capacity_window()
        m = self._matchers(queue=False, job_type=False)
        return (
            f"(sum(rate(worker_job_duration_seconds_sum{m}[{w}]))"
            f" / sum(rate(worker_job_duration_seconds_count{m}[{w}])))"
        )

    def required_concurrency(self) -> str:
        return f"{self.arrival_rate()} * {self.mean_duration()}"

    def daily_volume(self) -> str:
        return f"{self.arrival_rate()} * {SECONDS_PER_DAY}"

    def daily_capacity(self) -> str:
        return f"{self.slots()} / {self.mean_duration()} * {SECONDS_PER_DAY}"


# ---------------------------------------------------------------------------------------
# The panels both dashboards show. Ids of the alerts' panels come from the alerts config;
# the others are fixed here, so links to a panel (viewPanel=<id>) survive every render.

PANEL_IDS = {
    "throughput": 8,
    "retries": 9,
    "heatmap": 10,
    "in_flight": 11,
    "saturation": 12,
    "rate_limiter": 13,
    "required_concurrency": 15,
    "arrival_rate": 16,
    "mean_duration": 17,
    "daily_volume": 18,
    "daily_capacity": 19,
    "alert_list": 20,
    "versions": 21,
}


def _scope_note(scope: Scope) -> str:
    return (
        " For the replica selected above (raw series; the recording rules drop the instance)."
        if scope.replica
        else ""
    )


def alert_timeseries(
    scope: Scope, name: str, title: str, description: str, targets, unit: str, **options
) -> G.TimeSeries:
    """The panel an alert's ``dashboard_url`` points to: the alert's panel id, its runbook
    link, and 0 as the floor of the axis."""
    a = scope.alerts
    return timeseries(
        a.panel_id(name),
        title,
        description,
        targets,
        unit,
        links=[runbook_link(a, name)],
        min=0,
        **options,
    )


def replica_drilldown(scope: Scope) -> list[dict]:
    """On the fleet dashboard, a click on a replica's line opens its replica dashboard."""
    if scope.replica:
        return []
    return [
        {
            "title": "Replica detail: ${__field.labels.instance}",
            "url": f"/d/{REPLICA_UID}/{REPLICA_UID}?var-instance=${{__field.labels.instance}}"
            "&${datasource:queryparam}&${__url_time_range}",
        }
    ]


def replicas_up(scope: Scope) -> G.TimeSeries:
    a = scope.alerts
    name = "WorkerDown"
    if scope.replica:
        targets = queries((scope.up(), "up"))
    else:
        up = scope.up()
        targets = queries((f"sum({up})", "replicas up"), (f"count({up})", "scrape targets"))
    return alert_timeseries(
        scope,
        name,
        "Replicas up",
        "Prometheus' own `up` for each worker scrape target: 1 when the last scrape "
        "succeeded. Good: `replicas up` equals `scrape targets`, and neither is 0. "
        f"{name} fires ({a.alert(name)['severity']}) after {a.alert(name)['for']} of a target "
        "down or of no target at all." + _scope_note(scope),
        targets,
        "short",
        thresholds=below(1),
        step=True,
    )


def redis_status(scope: Scope) -> G.TimeSeries:
    a = scope.alerts
    name = "RedisDisconnected"
    return alert_timeseries(
        scope,
        name,
        "Redis connection per replica",
        "worker_redis_connection_status of each replica: 1 when its last Redis health "
        "probe succeeded, 0 when it failed. Good: every line at 1 (connected). "
        f"{name} fires ({a.alert(name)['severity']}) when a replica stays at 0 for "
        f"{a.alert(name)['for']}.",
        queries((scope.redis_status(), "{{instance}}")),
        "short",
        thresholds=below(1),
        field_links=replica_drilldown(scope),
        max=1,
        step=True,
        mappings=[
            {
                "type": "value",
                "options": {
                    "0": {"color": "red", "index": 0, "text": "disconnected"},
                    "1": {"color": "green", "index": 1, "text": "connected"},
                },
            }
        ],
    )


def redis_reconnects(scope: Scope) -> G.TimeSeries:
    a = scope.alerts
    name = "HighRedisReconnectAttempts"
    rule = a.alert(name)
    return alert_timeseries(
        scope,
        name,
        f"Redis reconnect attempts per replica ({rule['window']})",
        f"Attempts each replica made to reconnect to Redis over the last {rule['window']} "
        f"(recording rule {a.records['reconnects']}). Good: 0. {name} fires above "
        f"{rule['threshold']:g} (dashed line): the connection keeps dropping.",
        queries((scope.reconnects(), "{{instance}}")),
        "short",
        thresholds=above(rule["threshold"]),
        field_links=replica_drilldown(scope),
    )


def alert_list(scope: Scope) -> AlertList:
    a = scope.alerts
    lines = []
    for name, rule in sorted(a.config["alerts"].items(), key=lambda kv: kv[1]["panelId"]):
        settings = ", ".join(
            f"{k} {v:g}"
            if isinstance(v, float | int)
            else f"{k} {' or '.join(v)}"
            if isinstance(v, list)
            else f"{k} {v}"
            for k, v in sorted(rule.items())
            if k not in {"panelId", "severity"}
        )
        lines.append(f"- **{name}** ({rule['severity']}; {settings}): panel {rule['panelId']}")
    severities = "|".join(a.severities)
    instance_filter = f'severity=~"{severities}"'
    if scope.replica:
        instance_filter += ', instance=~"$instance"'
    return AlertList(
        id=PANEL_IDS["alert_list"],
        title="Worker alerts firing or pending",
        description=(
            "The worker alert rules Prometheus evaluates (rules source "
            f"{DATASOURCE_NAME}), firing or pending"
            + (" for this replica" if scope.replica else "")
            + ". Good: empty. The rules, as configured in alerts/config.libsonnet:\n"
            + "\n".join(lines)
        ),
        instance_filter=instance_filter,
        links=[runbook_link(a, name) for name in sorted(a.config["alerts"])],
    )


def versions(scope: Scope) -> G.Stat:
    return stat(
        PANEL_IDS["versions"],
        "Replicas per version",
        "worker_build_info: how many replicas run each version. Good: one version, except "
        "during a rollout.",
        queries((scope.versions(), "{{version}}")),
        "short",
    )


def throughput(scope: Scope) -> G.TimeSeries:
    rows = [(scope.attempts(role), legend) for role, legend in
            (("started", "started"), ("completed", "completed"), ("failed", "failed"))]  # fmt: skip
    window = scope.window("HighJobFailureRate")
    return timeseries(
        PANEL_IDS["throughput"],
        "Attempts per second: started, completed, failed",
        "Job attempts started, completed and failed per second "
        + (f"(rate over {RATE})" if scope.replica else f"(recording rules, rate over {window})")
        + ". Good: completed follows started, failed stays near 0; a gap between started "
        "and completed + failed is attempts still running." + _scope_note(scope),
        queries(*rows),
        "ops",
        min=0,
    )


def failure_ratio(scope: Scope) -> G.TimeSeries:
    a = scope.alerts
    name = "HighJobFailureRate"
    rule = a.alert(name)
    return alert_timeseries(
        scope,
        name,
        f"Failure ratio per job type ({rule['window']})",
        f"Failed / started attempts of each (queue, job type) over {rule['window']}. "
        f"Good: under {rule['threshold']:.0%} (dashed line); {name} fires above it for "
        f"{rule['for']} while at least {rule['minStartedPerSecond']:g} attempts/s are started. "
        "Retried failures count: a job that succeeds on its 3rd attempt adds 2 failures."
        + _scope_note(scope),
        queries((scope.failure_ratio(), "{{queue}} {{job_type}}")),
        "percentunit",
        thresholds=above(rule["threshold"]),
    )


def retries(scope: Scope) -> G.TimeSeries:
    return timeseries(
        PANEL_IDS["retries"],
        "Retries and dead letters per second",
        "Failed attempts scheduled for a retry, and jobs dead-lettered (all attempts used, "
        "or a permanent error), per queue and second. Good: retries low and brief, dead "
        "letters 0; every dead letter is a job that will not happen without an operator."
        + _scope_note(scope),
        queries(
            (scope.attempts("retried", "queue"), "retried {{queue}}"),
            (scope.attempts("deadLettered", "queue"), "dead-lettered {{queue}}"),
        ),
        "ops",
        min=0,
    )


def durations(scope: Scope) -> G.TimeSeries:
    a = scope.alerts
    name = "HighJobProcessingTime"
    rule = a.alert(name)
    q = rule["quantile"]
    targets = [
        (scope.duration_quantile(quantile), f"p{quantile * 100:g}")
        for quantile in a.config["durationQuantiles"]
    ]
    targets.append(
        (scope.worst_duration_quantile(q), f"worst p{q * 100:g} of one job type (alerted)")
    )
    return alert_timeseries(
        scope,
        name,
        "Attempt duration p50 / p95 / p99 (" + rule["window"] + ")",
        "Quantiles of attempt wall time over the selected queues and job types, from the "
        f"duration histogram over {rule['window']}. Good: p{q * 100:g} well under "
        f"{rule['thresholdSeconds']:g} s (dashed line); {name} fires when the p{q * 100:g} "
        f"of one (queue, job type), the `worst` line, stays above it for {rule['for']}. "
        "LLM calls take 15-20 s: a jump means a slow provider or retried timeouts."
        + _scope_note(scope),
        queries(*targets),
        "s",
        thresholds=above(rule["thresholdSeconds"]),
    )


def duration_heatmap(scope: Scope) -> DurationHeatmap:
    return DurationHeatmap(
        id=PANEL_IDS["heatmap"],
        title="Attempt duration distribution",
        description="Attempts finished per duration bucket (worker_job_duration_seconds) in "
        f"each {RATE}: where the mass of attempts lies, and how wide the tail is. Good: one "
        "tight band (15-20 s for LLM calls, under a second for status updates); a second "
        "band higher up is timeouts or retries." + _scope_note(scope),
        dataSource=DATASOURCE,
        targets=queries((scope.duration_heatmap(), "{{le}}"), format="heatmap"),
        maxDataPoints=None,
        interval="",
    )


def in_flight(scope: Scope) -> G.TimeSeries:
    return timeseries(
        PANEL_IDS["in_flight"],
        "In-flight attempts vs. job slots",
        "Attempts running now (worker_jobs_processing) against the job slots deployed "
        "(worker_concurrency: processes x threads). Good: in-flight below the slots; "
        "in-flight pinned at the slots while the ready backlog grows means the fleet is "
        "saturated: add replicas (see the capacity row)." + _scope_note(scope),
        queries((scope.in_flight(), "in flight"), (scope.slots(), "job slots")),
        "short",
        min=0,
    )


def saturation(scope: Scope) -> G.Stat:
    return stat(
        PANEL_IDS["saturation"],
        "Slot saturation",
        "Share of job slots busy now: in-flight attempts / job slots. Good: below ~80 %; "
        "at 100 % new jobs wait in the queue.",
        queries((f"{scope.in_flight()} / {scope.slots()}", "busy")),
        "percentunit",
        thresholds=[base_step(), {"color": "orange", "value": 0.8}, {"color": "red", "value": 1}],
    )


def backlog(scope: Scope) -> G.TimeSeries:
    a = scope.alerts
    name = "HighJobProcessingQueue"
    rule = a.alert(name)
    return alert_timeseries(
        scope,
        name,
        "Backlog per queue and state",
        "Messages the broker holds per queue: ready (waiting for a slot), delayed (retries "
        "and rate-limit deferrals waiting for their time) and dead (dead letters, kept 7 "
        "days). Sampled by every replica; max across replicas, never sum. Good: ready near "
        f"0; {name} fires when ready stays above {rule['threshold']:g} (dashed line) for "
        f"{rule['for']}.",
        queries((scope.backlog(), "{{queue}} {{state}}")),
        "short",
        thresholds=above(rule["threshold"]),
    )


def queue_completions(scope: Scope) -> G.TimeSeries:
    a = scope.alerts
    name = "LowWorkerThroughput"
    rule = a.alert(name)
    return alert_timeseries(
        scope,
        name,
        f"Completions per queue ({rule['window']}) vs. the throughput floor",
        f"Jobs completed per second and queue over {rule['window']}. {name} fires when a "
        f"queue completes under {rule['minCompletedPerSecond']:g}/s (dashed line) while it "
        f"holds at least {rule['minReadyMessages']:g} ready messages, for {rule['for']}. "
        "Good: above the line whenever the queue has work; an idle queue may sit at 0."
        + _scope_note(scope),
        queries((scope.queue_completions(), "{{queue}}")),
        "ops",
        thresholds=below(rule["minCompletedPerSecond"]),
    )


def rate_limiter(scope: Scope) -> G.TimeSeries:
    return timeseries(
        PANEL_IDS["rate_limiter"],
        "Rate-limiter decisions per window",
        "Per-organization LLM rate-limiter outcomes per second, by window (minute, hour, "
        "day) and decision: allowed, throttled (the job is deferred until its window frees, "
        "without spending an attempt), unavailable (Redis could not decide). Good: mostly "
        "allowed; sustained throttling means an organization is over its limits, not that "
        "the workers are slow." + _scope_note(scope),
        queries((scope.rate_limit_decisions(), "{{window}} {{decision}}")),
        "ops",
        min=0,
    )


def capacity_panels(scope: Scope) -> list:
    w = scope.capacity_window()
    who = "this replica" if scope.replica else "the fleet"
    required = timeseries(
        PANEL_IDS["required_concurrency"],
        "Concurrency required by Little's law vs. deployed",
        f"Job slots {who} needs now by Little's law, L = λ × W: attempts arriving per "
        f"second (λ) times their mean duration in seconds (W), both over {w}, against the "
        "slots deployed. Good: deployed well above required (keep ~20 % headroom and room "
        "for peaks); required at or above deployed means jobs queue up. The planner does "
        "the same arithmetic: `worker capacity --from-prometheus URL`.",
        queries(
            (scope.required_concurrency(), "required now (λ × W)"),
            (scope.slots(), "deployed slots"),
        ),
        "short",
        min=0,
    )
    arrival = stat(
        PANEL_IDS["arrival_rate"],
        "Arrival rate λ",
        f"Attempts arriving per second over {w}"
        + (
            ": attempts started by this replica."
            if scope.replica
            else ": attempts started plus the growth of the ready backlog, so a saturated "
            "fleet still shows the demand rather than its own ceiling."
        )
        + " Good: below slots / W, the rate the deployed slots can serve.",
        queries((scope.arrival_rate(), "λ")),
        "ops",
        decimals=2,
    )
    duration = stat(
        PANEL_IDS["mean_duration"],
        "Mean attempt duration W",
        f"Mean wall time of an attempt over {w} (duration sum / count). Good: stable; the "
        "LLM-bound agent runs dominate it.",
        queries((scope.mean_duration(), "W")),
        "s",
        decimals=1,
    )
    volume = stat(
        PANEL_IDS["daily_volume"],
        "Implied daily volume",
        f"λ × 86,400: the attempts per day {who} receives at the current rate, retries "
        "included. Compare with the 135,000 jobs/day of today and the 450,000 planned. "
        "Good: below the daily capacity deployed (next panel).",
        queries((scope.daily_volume(), "attempts/day")),
        "short",
        decimals=0,
    )
    ceiling = stat(
        PANEL_IDS["daily_capacity"],
        "Daily capacity deployed",
        f"Slots / W × 86,400: the attempts per day {who} can finish at 100 % busy slots "
        "with the current mean duration. Good: well above the implied daily volume.",
        queries((scope.daily_capacity(), "attempts/day")),
        "short",
        decimals=0,
    )
    return [required, arrival, duration, volume, ceiling]


def worker_panels(scope: Scope) -> list:
    """The panel grid both dashboards share: the fleet's, or one replica's."""
    grid = Layout()
    grid.row(100, "Replica health and alerts" if scope.replica else "Fleet health and alerts")
    grid.add(
        replicas_up(scope),
        redis_status(scope),
        redis_reconnects(scope),
        versions(scope),
        alert_list(scope),
        widths=[5, 5, 5, 3, 6],
    )
    grid.row(101, "Throughput and errors")
    grid.add(throughput(scope), failure_ratio(scope), retries(scope))
    grid.row(102, "Latency")
    grid.add(durations(scope), duration_heatmap(scope))
    grid.row(103, "Saturation and backlog")
    grid.add(
        in_flight(scope),
        saturation(scope),
        backlog(scope),
        queue_completions(scope),
        widths=[7, 3, 7, 7],
    )
    grid.row(104, "Rate limiter")
    grid.add(rate_limiter(scope), height=7)
    grid.row(105, "Capacity (Little's law)")
    grid.add(*capacity_panels(scope), widths=[12, 3, 3, 3, 3])
    ids = [p.id for p in grid.panels]
    if twice := sorted({i for i in ids if ids.count(i) > 1}):
        raise ValueError(
            f"panel ids {twice} are used twice: an alert's panelId in alerts/config.libsonnet "
            f"must not reuse the other panels' ids {sorted(PANEL_IDS.values())} or the rows' "
            "(100-105)"
        )
    return grid.panels
