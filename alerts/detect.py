"""Worst-case time from a fault to its notification, computed from the configuration.

    python -m alerts.detect                      # the time-to-detect table of docs/alerts.md
    python -m alerts.detect --set '{"alerts": {"WorkerDown": {"for": "15s"}}}'

For each alert: the scrape that first sees the fault, the part of a range the fault must
fill before the condition holds (``max_over_time(x[5m]) == 0`` only once the whole 5m is
bad), the rule evaluations that turn the sample into a firing alert, the alert's `for`, and
the group_wait of the Alertmanager route it reaches. A burn-rate alert (alerts/slo.libsonnet)
also waits for its windows: at a constant burn rate b from a clean history, a pair (long,
short, factor) with b > factor fires once the long window holds enough of the burn, after
long x factor / b (the short window, shorter, is there by then); the alert fires with its
first pair.

Inputs: the alerts' config (alerts/config.libsonnet), prometheus/prometheus.yml and
alertmanager/alertmanager.yml, so the table in docs/alerts.md cannot drift from them.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from alerts.duration import parse_duration
from alerts.render import REPO_DIR, config_parser, exit_code, load_config, rendered
from alerts.routing import build_route

PROMETHEUS_CONFIG = REPO_DIR / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO_DIR / "alertmanager" / "alertmanager.yml"
WORKER_JOB = "worker"
# Critical alerts must reach the pager within this long of the fault.
CRITICAL_BUDGET_SECONDS = 180
# The multiwindow, multi-burn-rate alerts, and the burn rate their row of the table is
# computed at: a fast burn for the page, a slow one for the ticket.
BURN_RATE_ALERTS = ("JobQueueWaitBudgetBurn", "JobSuccessBudgetBurn")
REFERENCE_BURN_RATES = {"critical": 20.0, "warning": 4.0}


def format_duration(seconds: float) -> str:
    """'1m55s', '18h2m45s', '0s': the units that are not zero."""
    hours, rest = divmod(int(seconds), 3600)
    minutes, rest = divmod(rest, 60)
    text = "".join(f"{n}{u}" for n, u in ((hours, "h"), (minutes, "m"), (rest, "s")) if n)
    return text or "0s"


# Conditions on a gauge over a range: true only once the fault fills the whole range
# (max_over_time(x[w]) == 0, or < 1), or half of it (avg_over_time(up[w]) < 0.5).
_WHOLE_RANGE = re.compile(r"max_over_time\([^\[\]]*\[(\w+)\]\)\s*(?:==\s*0|<\s*1)\b")
_HALF_RANGE = re.compile(r"avg_over_time\([^\[\]]*\[(\w+)\]\)\s*<\s*0\.5\b")


def range_to_fill(expr: str) -> float:
    """Seconds a fault must last within a range before ``expr``'s condition can hold."""
    whole = [parse_duration(m) for m in _WHOLE_RANGE.findall(expr)]
    half = [parse_duration(m) / 2 for m in _HALF_RANGE.findall(expr)]
    return max([0.0, *whole, *half])


@dataclass(frozen=True)
class Detection:
    alert: str
    severity: str
    receiver: str
    scrape: float  # until a scraped sample shows the fault
    evaluation: float  # until a rule evaluation sees that sample (+1 per recording rule hop)
    for_: float
    group_wait: float
    window: float = 0.0  # until the fault fills the range the condition reads
    windows: float = 0.0  # burn-rate alerts: until the windows cross at `burn_rate`
    burn_rate: float | None = None

    @property
    def total(self) -> float:
        return (
            self.scrape + self.window + self.evaluation + self.windows + self.for_ + self.group_wait
        )

    @property
    def name(self) -> str:
        return self.alert if self.burn_rate is None else f"{self.alert} at {self.burn_rate:g}x"


def windows_to_fire(pairs: Sequence[dict], burn_rate: float) -> float:
    """Seconds until the first of the (long, short, factor) pairs fires at a constant
    ``burn_rate`` from a clean history; ValueError when none ever does."""
    times = [
        parse_duration(p["long"]) * p["factor"] / burn_rate
        for p in pairs
        if burn_rate > p["factor"]
    ]
    if not times:
        raise ValueError(f"no window pair fires at a burn rate of {burn_rate:g}")
    return min(times)


def group_interval(group: dict, evaluation_interval: float) -> float:
    """Seconds between evaluations of a rule group under the global ``evaluation_interval``:
    that, or the group's own ``interval`` scaled as the global one is from the committed
    prometheus.yml's (a twin that evaluates every second instead of every 15 s runs the
    long-window SLO records every 10 s, not every 2m30s: stack/twin_config.py)."""
    own = group.get("interval")
    if own is None:
        return evaluation_interval
    return parse_duration(own) * evaluation_interval / _committed_evaluation_interval()


@functools.cache
def _committed_evaluation_interval() -> float:
    """prometheus.yml's global evaluation_interval: read once, not for every rule."""
    glob = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]
    return parse_duration(glob["evaluation_interval"])


def time_to_detect(
    prometheus_config: Path = PROMETHEUS_CONFIG,
    alertmanager_config: Path = ALERTMANAGER_CONFIG,
    overrides: dict | None = None,
    config_files: Sequence[Path | str] = (),
    burn_rates: dict[str, float] | None = None,
) -> list[Detection]:
    """One row per alert and severity; a burn-rate alert's at ``burn_rates[severity]``
    (default ``REFERENCE_BURN_RATES``)."""
    burn_rates = {**REFERENCE_BURN_RATES, **(burn_rates or {})}
    pairs = load_config(overrides, config_files)["slo"]["burnRates"]
    prom = yaml.safe_load(prometheus_config.read_text())
    routes = build_route(yaml.safe_load(alertmanager_config.read_text()))
    glob = prom.get("global", {})
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == WORKER_JOB)
    scrape_interval = parse_duration(job.get("scrape_interval", glob.get("scrape_interval", "1m")))
    scrape_timeout = parse_duration(job.get("scrape_timeout", glob.get("scrape_timeout", "10s")))
    evaluation_interval = parse_duration(glob.get("evaluation_interval", "1m"))

    files = {name: yaml.safe_load(text) for name, text in rendered(overrides, config_files).items()}
    # Each record, with the interval of the group that writes it.
    records = {
        rule["record"]: group_interval(group, evaluation_interval)
        for doc in files.values()
        for group in doc["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    rows: dict[tuple[str, str], Detection] = {}
    for doc in files.values():
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule or (rule["alert"], rule["labels"]["severity"]) in rows:
                    continue
                name, severity = rule["alert"], rule["labels"]["severity"]
                burn = burn_rates[severity] if name in BURN_RATE_ALERTS else None
                mine = [p for p in pairs if p["severity"] == severity]
                route = routes.match({"alertname": name, "severity": severity})[0]
                # A recording rule group runs on its own clock: the alert may read the
                # record one of that group's evaluations late (a long-window SLO record:
                # up to its longer interval).
                late = max(
                    (t for record, t in records.items() if record in rule["expr"]), default=0
                )
                # A hung replica is declared down only when its scrape times out: so for
                # every alert on the worker targets' `up` (WorkerDown, WorkerReplicasMissing).
                reads_up = f'up{{job="{WORKER_JOB}"}}' in rule["expr"]
                scrape = scrape_interval + (scrape_timeout if reads_up else 0)
                rows[name, severity] = Detection(
                    alert=name,
                    severity=severity,
                    receiver=route.receiver,
                    scrape=scrape,
                    evaluation=group_interval(group, evaluation_interval) + late,
                    for_=parse_duration(rule.get("for", "0s")),
                    group_wait=route.group_wait,
                    window=range_to_fill(rule["expr"]),
                    windows=0.0 if burn is None else windows_to_fire(mine, burn),
                    burn_rate=burn,
                )
    return list(rows.values())


def markdown_table(overrides: dict | None = None, config_files: Sequence[Path | str] = ()) -> str:
    lines = [
        "| alert | severity | receiver | scrape | range | evaluation | windows | for "
        "| group_wait "
        "| worst case |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in time_to_detect(overrides=overrides, config_files=config_files):
        cells = [
            d.name,
            d.severity,
            d.receiver,
            format_duration(d.scrape),
            format_duration(d.window),
            format_duration(d.evaluation),
            format_duration(d.windows) if d.burn_rate else "-",
            format_duration(d.for_),
            format_duration(d.group_wait),
            f"**{format_duration(d.total)}**",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = config_parser("Print the worst-case time-to-detect table (markdown).")
    args = parser.parse_args(argv)
    return exit_code(
        "alerts.detect", lambda: print(markdown_table(args.overrides, args.config), end="")
    )


if __name__ == "__main__":
    sys.exit(main())
