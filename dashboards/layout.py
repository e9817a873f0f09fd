"""The dashboards' frame and panel shapes: the dashboard itself, its variables, time
series and stat panels with the alerts' thresholds, and their place on Grafana's grid."""

from __future__ import annotations

from collections.abc import Sequence

import attr
from grafanalib import core as G

from dashboards.alerting import Alerting
from dashboards.grafana import (
    BUILTIN_ANNOTATIONS,
    DATASOURCE,
    SCHEMA_VERSION,
    PromQuery,
    WorkerDashboard,
    datasource_variable,
    label_variable,
)

TAGS = ["worker", "dramatiq"]


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


def link(title: str, url: str, *, new_tab: bool) -> dict:
    """A panel or data link with every field Grafana's schema requires of one (grafanalib's
    DataLink writes only title, url and targetBlank)."""
    return {
        "title": title,
        "type": "link",
        "icon": "external link",
        "tooltip": "",
        "url": url,
        "tags": [],
        "asDropdown": False,
        "targetBlank": new_tab,
        "includeVars": False,
        "keepTime": False,
    }


def runbook_link(alerts: Alerting, name: str) -> dict:
    return link(f"Runbook: {name}", alerts.runbook_url(name), new_tab=True)


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
    links: Sequence[dict] = (),
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
    links: Sequence[dict] = (),
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
