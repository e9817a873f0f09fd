"""The overview's SLO row: each SLI against its objective, the error budget left over the
SLO window, the burn rate over every alert window with the alerts' factors drawn, and
the queue wait and oldest message of each queue.

Objectives, windows, factors and thresholds come from the ``slo`` block of
alerts/config.libsonnet and the record names from alerts/slo.libsonnet, so a panel moves
with the alert it explains. Panel ids 30-32 are the SLO alerts' ``panelId``s.
"""

from __future__ import annotations

from collections.abc import Sequence

from grafanalib import core as G

from alerts.duration import parse_duration
from dashboards.grafana import queries
from dashboards.layout import Layout, above, base_step, below, runbook_link, timeseries
from dashboards.scope import RATE, Scope

ROW_ID = 106
PANEL_IDS = {"budget_left": 33, "queue_wait_burn": 34, "success_burn": 35, "queue_wait": 36}
#: Colors of the burn-rate factors, slowest first (ticket) to fastest (page).
FACTOR_COLORS = ("yellow", "orange", "red", "purple")


class _Slo:
    """What the panels read of one SLO: its records, narrowed to the chosen queues."""

    def __init__(self, scope: Scope, name: str) -> None:
        self.records = scope.alerts.records["slo"][name]
        self.config = scope.alerts.config["slo"]

    def ratio(self, window: str) -> str:
        return f'{self.records["ratio"][window]}{{queue=~"$queue"}}'

    @property
    def budget(self) -> str:
        return f'{self.records["budget"]}{{queue=~"$queue"}}'

    def burn(self, window: str) -> str:
        return f"{self.ratio(window)} / {self.budget}"


def _alert_panel(scope: Scope, name: str, title: str, description: str, targets, unit: str, **kw):
    slo = scope.alerts.config["slo"]["alerts"][name]
    return timeseries(
        int(slo["panelId"]),
        title,
        description,
        targets,
        unit,
        links=[runbook_link(scope.alerts, name)],
        **kw,
    )


def sli_panel(scope: Scope, name: str, alert: str, title: str, what: str) -> G.TimeSeries:
    slo = _Slo(scope, name)
    objective = slo.config[name]["objective"]
    window = slo.config["window"]
    return _alert_panel(
        scope,
        alert,
        title,
        f"{what} over the last hour and over the SLO window ({window}), against the "
        f"queue's objective (dashed: the default, {objective:.1%}). Below the objective "
        f"over {window} the budget is spent. Per-queue objectives: alerts/config.libsonnet. "
        "Good: every line above its objective.",
        queries(
            (f"1 - {slo.ratio('1h')}", "{{queue}} 1h"),
            (f"1 - {slo.ratio(window)}", "{{queue}} " + window),
            (f"1 - {slo.budget}", "{{queue}} objective"),
        ),
        "percentunit",
        thresholds=below(objective),
        max=1,
    )


def budget_left(scope: Scope) -> G.TimeSeries:
    wait, success = _Slo(scope, "queueWait"), _Slo(scope, "success")
    window = wait.config["window"]
    return timeseries(
        PANEL_IDS["budget_left"],
        f"Error budget left ({window})",
        f"Share of each SLO's error budget not yet spent over the last {window}: 1 - error "
        "ratio / (1 - objective). 100 % is untouched; at 0 the objective is missed. Good: "
        "well above 0, falling no faster than the window passes.",
        queries(
            (f'{wait.records["budgetLeft"]}{{queue=~"$queue"}}', "{{queue}} queue wait"),
            (f'{success.records["budgetLeft"]}{{queue=~"$queue"}}', "{{queue}} success"),
        ),
        "percentunit",
        thresholds=below(0),
        max=1,
    )


def burn_panel(scope: Scope, name: str, panel: str, title: str) -> G.TimeSeries:
    """The worst queue's burn rate over each alert window; the alerts' factors dashed."""
    slo = _Slo(scope, name)
    pairs = slo.config["burnRates"]
    windows = sorted({w for p in pairs for w in (p["long"], p["short"])}, key=parse_duration)
    factors = sorted({p["factor"] for p in pairs})
    steps = [base_step()] + [
        {"color": color, "value": factor}
        for color, factor in zip(FACTOR_COLORS[-len(factors) :], factors, strict=True)
    ]
    rules = "; ".join(
        f"{p['severity']} above {p['factor']:g}x over {p['long']} and {p['short']}" for p in pairs
    )
    return timeseries(
        PANEL_IDS[panel],
        title,
        "Burn rate = error ratio / (1 - objective), for the worst of the selected queues: at "
        f"1x the budget lasts exactly {slo.config['window']}. The alert fires while both "
        f"windows of a pair are above its factor ({rules}). Good: under 1x.",
        queries(*[(f"max({slo.burn(w)})", w) for w in windows]),
        "short",
        thresholds=steps,
        min=0,
    )


def queue_wait(scope: Scope) -> G.TimeSeries:
    m = f'{scope.alerts.selector}, queue=~"$queue"'
    buckets = f"sum by (queue, le) (rate(worker_job_queue_wait_seconds_bucket{{{m}}}[{RATE}]))"
    return timeseries(
        PANEL_IDS["queue_wait"],
        "Queue wait p50 / p95 / p99 per queue",
        "How long attempts waited in their queue before they started, from when they became "
        "runnable (a retry's backoff and a rate-limit deferral are not waiting). The "
        "queue-wait SLO counts the attempts under each queue's threshold. Good: p99 well "
        "under the threshold (60 s on critical and fast, 300 s on default by default).",
        queries(
            *[
                (f"histogram_quantile({q:g}, {buckets})", f"{{{{queue}}}} p{q * 100:g}")
                for q in (0.5, 0.95, 0.99)
            ]
        ),
        "s",
        min=0,
    )


def oldest_message(scope: Scope) -> G.TimeSeries:
    alert = scope.alerts.config["slo"]["alerts"]["HighJobQueueLatency"]
    threshold = alert["thresholdSeconds"]
    return _alert_panel(
        scope,
        "HighJobQueueLatency",
        "Oldest ready message age per queue",
        "Age of the next ready message of each queue since it became runnable (max across "
        "replicas). It grows while nothing starts, which the queue-wait SLO cannot see. "
        f"HighJobQueueLatency fires above {threshold:g} s (dashed; other thresholds per "
        f"queue in alerts/config.libsonnet) for {alert['for']}. Good: a few seconds at most.",
        queries((f'{scope.alerts.records["slo"]["oldestAge"]}{{queue=~"$queue"}}', "{{queue}}")),
        "s",
        thresholds=above(threshold),
        min=0,
    )


def slo_panels(scope: Scope, below_panels: Sequence) -> list:
    """The SLO row, placed under ``below_panels`` (the overview's other rows)."""
    grid = Layout()
    grid.y = max(p.gridPos.y + p.gridPos.h for p in below_panels)
    window = scope.alerts.config["slo"]["window"]
    grid.row(ROW_ID, f"Service level objectives ({window})")
    grid.add(
        sli_panel(
            scope,
            "queueWait",
            "JobQueueWaitBudgetBurn",
            "Queue wait SLI vs objective",
            "Share of attempts that started within their queue's threshold",
        ),
        sli_panel(
            scope,
            "success",
            "JobSuccessBudgetBurn",
            "Success SLI vs objective",
            "Share of the jobs reaching a final outcome that completed (not dead-lettered)",
        ),
        budget_left(scope),
    )
    grid.add(
        burn_panel(scope, "queueWait", "queue_wait_burn", "Burn rate per window: queue wait"),
        burn_panel(scope, "success", "success_burn", "Burn rate per window: success"),
    )
    grid.add(queue_wait(scope), oldest_message(scope))
    return grid.panels
