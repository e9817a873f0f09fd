"""Draw each generated dashboard from a live Prometheus into a PNG, Grafana's grid kept.

    python -m stack.dashboard_preview                     # `make dashboards-preview`
    python -m stack.dashboard_preview --prometheus http://127.0.0.1:9090 --range 1h

Without ``--prometheus`` it starts a short simulated fleet first (redis-server, two worker
replicas under a mixed load with failures, dead letters and throttling, and a Prometheus
scraping them every second; see stack/fleet.py), so it needs no running stack.
Each panel's queries are sent as Grafana would send them (variables: "All", the first
replica on the replica dashboard) and drawn with matplotlib: time series with the alert
threshold as a dashed line, stats, the duration heatmap, the alert list from the rules'
state. The images go to docs/img/<uid>.png, for docs/dashboards.md and for people
without Grafana. A tool of the stack, not part of the dashboards: it runs a fleet.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from alerts.duration import parse_duration  # noqa: E402
from dashboards import promql  # noqa: E402
from dashboards.render import GENERATED_DIR, REPO_DIR  # noqa: E402
from stack import prom  # noqa: E402

OUT_DIR = REPO_DIR / "docs" / "img"
ROW_UNIT = 0.42  # inches per Grafana grid row (30 px)
WIDTH = 18.0  # inches for Grafana's 24 columns
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = [
    "#73bf69",
    "#f2cc0c",
    "#8ab8ff",
    "#ff780a",
    "#f2495c",
    "#5794f2",
    "#b877d9",
    "#fade2a",
    "#37872d",
    "#c4162a",
    "#1f60c4",
    "#8f3bb8",
]
COLORS = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "blue": "#5794f2"}


def legend(fmt: str, labels: dict) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return text.strip() or ",".join(f"{k}={v}" for k, v in labels.items()) or "value"


def fmt_value(value: float, unit: str, decimals: int | None = None, axis: bool = False) -> str:
    """A value as Grafana shows it in the panel's unit (s, ops, percentunit, short)."""
    if not math.isfinite(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.{(0 if axis else 1) if decimals is None else decimals}f}%"
    suffix = {"s": " s", "ops": "/s"}.get(unit, "")
    if abs(value) >= 10_000:
        return f"{value / 1000:,.0f}k{suffix}"
    if decimals is None:
        decimals = 0 if float(value).is_integer() or abs(value) >= 100 else 2
    return f"{value:,.{decimals}f}{suffix}"


class Canvas:
    """A figure laid out as Grafana lays out the dashboard: 24 columns, rows of 30 px."""

    TITLE_ROWS = 1.2

    def __init__(self, total_rows: int, title: str) -> None:
        self.rows = total_rows + self.TITLE_ROWS
        self.height = self.rows * ROW_UNIT
        self.fig = plt.figure(figsize=(WIDTH, self.height), facecolor=BACKGROUND)
        self.fig.text(0.006, 1 - 0.35 / self.height, title, color=TEXT, fontsize=12, va="top")

    def _rect(self, grid: dict, left=0.0, right=0.0, top=0.0, bottom=0.0) -> list[float]:
        """[x, y, w, h] in figure fractions of a grid cell, shrunk by margins in inches."""
        x = grid["x"] / 24 * WIDTH + left
        w = grid["w"] / 24 * WIDTH - left - right
        y_top = (grid["y"] + self.TITLE_ROWS) * ROW_UNIT + top
        h = grid["h"] * ROW_UNIT - top - bottom
        return [x / WIDTH, 1 - (y_top + h) / self.height, w / WIDTH, h / self.height]

    def row(self, panel: dict) -> None:
        x, y, _, h = self._rect(panel["gridPos"])
        self.fig.text(
            x + 0.003,
            y + h / 2,
            panel["title"],
            color=TEXT,
            fontsize=11,
            weight="bold",
            va="center",
        )

    def panel(self, panel: dict, plot: bool = True):
        """A panel card with its title; returns the axes to draw in."""
        card = self.fig.add_axes(self._rect(panel["gridPos"], 0.04, 0.04, 0.04, 0.04))
        card.set_facecolor(PANEL)
        card.set_xticks([])
        card.set_yticks([])
        for spine in card.spines.values():
            spine.set_color(GRID)
        card.text(
            0.015, 0.97, panel["title"], color=TEXT, fontsize=9, va="top", transform=card.transAxes
        )
        if not plot:
            return card
        ax = self.fig.add_axes(self._rect(panel["gridPos"], 0.75, 0.12, 0.36, 0.32))
        ax.set_facecolor(PANEL)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=TEXT, labelsize=7)
        return ax


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=ax.transAxes)


def _time_axis(ax, start: float, end: float) -> None:
    ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=2, maxticks=4))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))


def draw_timeseries(ax, panel: dict, series: list[tuple[str, list]], start: float, end: float):
    defaults = panel["fieldConfig"]["defaults"]
    unit = defaults["unit"]
    peak = 0.0
    for i, (name, values) in enumerate(series):
        xs = [datetime.fromtimestamp(float(t)) for t, _ in values]
        ys = [float(v) for _, v in values]
        peak = max([peak, *(y for y in ys if math.isfinite(y))])
        ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], linewidth=1.2, label=name)
    _time_axis(ax, start, end)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: fmt_value(v, unit, axis=True)))
    ax.yaxis.set_major_locator(plt.MaxNLocator(5))
    ax.grid(color=GRID, linewidth=0.5)
    if defaults["custom"].get("thresholdsStyle", {}).get("mode") != "off":
        for step in defaults["thresholds"]["steps"][1:]:
            value = step["value"]
            # Grafana does not stretch the axis for a threshold far above the data either.
            if series and value > 3 * max(peak, 1e-9):
                ax.text(
                    0.99,
                    0.97,
                    f"threshold {fmt_value(value, unit)} (above the data)",
                    color=COLORS["red"],
                    fontsize=6.5,
                    ha="right",
                    va="top",
                    transform=ax.transAxes,
                )
            else:
                ax.axhline(value, color=COLORS["red"], linestyle="--", linewidth=1)
    if defaults.get("min") == 0:
        ax.set_ylim(bottom=0)
    if defaults.get("max") is not None:
        ax.set_ylim(top=defaults["max"] * 1.1)
    if not series:
        _no_data(ax)
        return
    ax.legend(
        fontsize=6,
        loc="upper left",
        facecolor=PANEL,
        edgecolor=GRID,
        labelcolor=TEXT,
        ncol=2 if len(series) > 4 else 1,
        framealpha=0.8,
    )


def draw_stat(ax, panel: dict, values: list[tuple[str, float]]) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    steps = defaults["thresholds"]["steps"]
    if not values:
        _no_data(ax)
        return
    shown = values[:4]
    for i, (name, value) in enumerate(shown):
        color = steps[0]["color"]
        for step in steps[1:]:
            if value >= step["value"]:
                color = step["color"]
        y = 0.85 - (i + 0.5) * 0.8 / len(shown)
        text = fmt_value(value, defaults["unit"], defaults.get("decimals"))
        ax.text(
            0.5,
            y + 0.04,
            text,
            color=COLORS.get(color, color),
            fontsize=20 if len(shown) == 1 else 12,
            ha="center",
            va="center",
            transform=ax.transAxes,
            weight="bold",
        )
        ax.text(
            0.5,
            y - 0.12 / len(shown) - 0.03,
            name,
            color=TEXT,
            fontsize=7,
            ha="center",
            va="center",
            transform=ax.transAxes,
        )


def draw_heatmap(ax, result: list[dict], start: float, end: float) -> None:
    if not result:
        _no_data(ax)
        return
    buckets = sorted(result, key=lambda s: float(s["metric"]["le"]))
    times = sorted({float(t) for s in buckets for t, _ in s["values"]})
    cumulative = np.array(
        [
            [dict((float(t), float(v)) for t, v in s["values"]).get(t, 0.0) for t in times]
            for s in buckets
        ]
    )
    # As Grafana's "heatmap" format does: cumulative le buckets into counts per bucket.
    counts = np.diff(np.vstack([np.zeros(len(times)), np.nan_to_num(cumulative)]), axis=0)
    counts[counts < 1e-6] = 0
    used = [i for i in range(len(buckets)) if counts[i].sum() > 0] or [0]
    lo, hi = max(min(used) - 1, 0), min(max(used) + 1, len(buckets) - 1)
    shown = np.ma.masked_equal(counts[lo : hi + 1], 0)
    edges = mdates.date2num([datetime.fromtimestamp(t) for t in times])
    ax.imshow(
        shown,
        aspect="auto",
        origin="lower",
        cmap="Oranges",
        interpolation="nearest",
        extent=(edges[0], edges[-1], -0.5, hi - lo + 0.5),
    )
    labels = [buckets[i]["metric"]["le"] for i in range(lo, hi + 1)]
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels([f"≤ {float(le):g} s" if le != "+Inf" else "+Inf" for le in labels])
    _time_axis(ax, start, end)


def label_filter(text: str) -> list[tuple[str, str, str]]:
    """The alert list's ``alertInstanceLabelFilter`` as (label, operator, value) matchers."""
    return re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', text)


def matches(labels: dict, matchers: list[tuple[str, str, str]]) -> bool:
    for name, op, value in matchers:
        actual = labels.get(name, "")
        ok = re.fullmatch(value, actual) if op in ("=~", "!~") else actual == value
        if bool(ok) != (op in ("=", "=~")):
            return False
    return True


def draw_alertlist(ax, panel: dict, base: str, variables: dict) -> None:
    """Firing and pending alerts of Prometheus' rules, filtered as the panel filters them."""
    rules = prom.api(base, "rules", {"type": "alert"})["groups"]
    wanted = label_filter(
        promql.interpolate(panel["options"]["alertInstanceLabelFilter"], variables)
    )
    lines = []
    for group in rules:
        for rule in group["rules"]:
            for alert in rule.get("alerts", []):
                if not matches(alert["labels"], wanted):
                    continue
                where = " ".join(
                    alert["labels"][k]
                    for k in ("queue", "job_type", "instance")
                    if k in alert["labels"]
                )
                lines.append((alert["state"], rule["name"], where))
    count = sum(len(g["rules"]) for g in rules)
    if not lines:
        ax.text(
            0.5,
            0.5,
            f"No alerts firing or pending\n({count} rules evaluated)",
            color=TEXT,
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        return
    for i, (state, name, where) in enumerate(sorted(lines)[:8]):
        color = COLORS["red"] if state == "firing" else COLORS["orange"]
        y = 0.82 - i * 0.1
        ax.text(0.03, y, f"● {state}", color=color, fontsize=7, transform=ax.transAxes)
        ax.text(0.25, y, f"{name}  {where}", color=TEXT, fontsize=7, transform=ax.transAxes)


def render_dashboard(
    dashboard: dict, base: str, start: float, end: float, selection: dict, out: Path
) -> Path:
    variables = promql.dashboard_variables(dashboard, selection)
    step = max((end - start) / 150, 1.0)
    rate_interval = f"{max(int(4 * step), 60)}s"  # as Grafana: at least 4 scrape intervals
    total_rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    shown_vars = ", ".join(f"{k}={'All' if v == promql.ALL else v}" for k, v in variables.items())
    canvas = Canvas(
        total_rows,
        f"{dashboard['title']}   {datetime.fromtimestamp(start):%H:%M}"
        f"–{datetime.fromtimestamp(end):%H:%M}   {shown_vars}",
    )
    for panel in dashboard["panels"]:
        kind = panel["type"]
        if kind == "row":
            canvas.row(panel)
            continue
        ax = canvas.panel(panel, plot=kind in ("timeseries", "heatmap"))
        if kind == "alertlist":
            draw_alertlist(ax, panel, base, variables)
            continue
        exprs = [
            (promql.interpolate(t["expr"], variables, rate_interval=rate_interval), t)
            for t in panel["targets"]
        ]
        if kind == "timeseries":
            series = [
                (legend(t["legendFormat"], s["metric"]), s["values"])
                for expr, t in exprs
                for s in prom.query_range(base, expr, start, end, step)
            ]
            draw_timeseries(ax, panel, series, start, end)
        elif kind == "stat":
            values = [
                (legend(t["legendFormat"], s["metric"]), float(s["value"][1]))
                for expr, t in exprs
                for s in prom.query(base, expr, end)
            ]
            draw_stat(ax, panel, values)
        elif kind == "heatmap":
            draw_heatmap(ax, prom.query_range(base, exprs[0][0], start, end, step), start, end)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.fig.savefig(out, dpi=72, facecolor=BACKGROUND)
    plt.close(canvas.fig)
    return out


def render_all(base: str, start: float, end: float, instance: str, out_dir: Path) -> list[Path]:
    paths = []
    for path in sorted(GENERATED_DIR.glob("*.json")):
        dashboard = json.loads(path.read_text())
        instance_var = dashboard["templating"]["list"][1]
        selection = {} if instance_var["includeAll"] else {"instance": [instance]}
        out = out_dir / f"{dashboard['uid']}.png"
        paths.append(render_dashboard(dashboard, base, start, end, selection, out))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", help="use this Prometheus instead of a simulated run")
    parser.add_argument("--range", default="15m", help="time range with --prometheus (15m)")
    parser.add_argument("--instance", help="replica for the replica dashboard (default: first)")
    parser.add_argument("--seconds", type=float, default=240, help="simulated run (240 s)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    if args.prometheus:
        base = args.prometheus.rstrip("/")
        end = time.time()
        try:
            start = end - parse_duration(args.range)
        except ValueError:
            parser.error(f"--range: {args.range!r} is not a duration like 15m or 1h")
        instance = (
            args.instance
            or sorted(s["metric"]["instance"] for s in prom.query(base, 'up{job="worker"}', end))[0]
        )
        paths = render_all(base, start, end, instance, args.out_dir)
    else:
        from stack.fleet import simulated_fleet

        with tempfile.TemporaryDirectory(prefix="dashboards-preview-") as tmp:
            with simulated_fleet(Path(tmp), replicas=2) as fleet:
                start = time.time()
                fleet.send_batch(6)
                fleet.start_load(per_second=2)
                print(f"simulated load for {args.seconds:.0f} s ...", flush=True)
                time.sleep(args.seconds)
                instance = args.instance or fleet.instances[0]
                paths = render_all(fleet.prometheus_url, start, time.time(), instance, args.out_dir)
    for path in paths:
        print(f"wrote {path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
