"""The panels both worker dashboards show, in their order on the grid."""

from __future__ import annotations

from grafanalib import core as G

from dashboards.grafana import DATASOURCE, DATASOURCE_NAME, AlertList, DurationHeatmap, queries
from dashboards.layout import (
    Layout,
    above,
    base_step,
    below,
    link,
    runbook_link,
    stat,
    timeseries,
)
from dashboards.scope import RATE, Scope

REPLICA_UID = "worker-replica"


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
        link(
            "Replica detail: ${__field.labels.instance}",
            f"/d/{REPLICA_UID}/{REPLICA_UID}?var-instance=${{__field.labels.instance}}"
            "&${datasource:queryparam}&${__url_time_range}",
            new_tab=False,
        )
    ]


def replicas_up(scope: Scope) -> G.TimeSeries:
    a = scope.alerts
    name = "WorkerDown"
    if scope.replica:
        targets = queries((scope.up(), "up"))
    else:
        up = scope.up()  # by instance: one series per target, also from a Prometheus pair
        targets = queries((f"sum({up})", "replicas up"), (f"count({up})", "scrape targets"))
    return alert_timeseries(
        scope,
        name,
        "Replicas up",
        "Prometheus' own `up` for each worker scrape target: 1 when the last scrape "
        "succeeded. Good: `replicas up` equals `scrape targets`, and neither is 0. "
        f"{name} fires ({a.alert(name)['severity']}) after {a.alert(name)['for']} of a target "
        "down or of no target at all. Each target counts once, also on a long-term store "
        "that holds both copies a Prometheus pair writes (`min by (instance)`)."
        + _scope_note(scope),
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
    rows = [
        (scope.attempts(role), legend)
        for role, legend in (
            ("started", "started"),
            ("completed", "completed"),
            ("failed", "failed"),
        )
    ]
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
        "the same arithmetic: `stack capacity --from-prometheus URL`.",
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
