"""The reference tables of docs/, generated from the code instead of kept by hand.

    python -m stack.reference            # rewrite every generated block (make docs)
    python -m stack.reference --check    # exit 1 naming each page whose blocks drifted

A page marks a block with ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``; everything between the two lines is replaced by the
table ``name`` renders from its source:

    config          worker.config.Settings (each field's alias, default, bounds, description)
    metrics         the metric objects of worker.metrics (name, type, labels, help)
    alerts          prometheus/rules/*.yml (severity, for, expression, runbook) and the
                    alert's entry in alerts/config.libsonnet (its defaults)
    time-to-detect  alerts.detect: worst case from a fault to its notification
    capacity        stack.capacity.plan for today's and the planned load

Text outside the markers is never touched, so a page's prose and its tables live together.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

BLOCK = re.compile(
    r"(?P<begin>^<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<end>^<!-- END GENERATED: (?P=name) -->$)",
    re.MULTILINE | re.DOTALL,
)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- configuration ----------------------------------------------------------------------


def _default(field) -> str:
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    if isinstance(value, tuple) and len(value) == 2:  # a range such as SIM_LATENCY_SECONDS
        return f"`{_number(value[0])}-{_number(value[1])}`"
    if isinstance(value, dict):  # rate-limit windows: name -> (count, seconds)
        text = ",".join(f"{name}={count}/{seconds}" for name, (count, seconds) in value.items())
        return f"`{text or '{}'}`"
    return f"`{_number(value)}`"


def _bounds(field) -> str:
    found = {}
    for item in field.metadata:
        for op in ("gt", "ge", "lt", "le"):
            if getattr(item, op, None) is not None:
                found[op] = _number(getattr(item, op))
    if "ge" in found and "le" in found:
        return f"{found['ge']} to {found['le']}"
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return ", ".join(f"{symbols[op]} {value}" for op, value in found.items())


def config_table() -> str:
    from pydantic import AliasChoices

    from worker.config import Settings
    from worker.config_errors import never_echoed

    rows, secret = [], never_echoed(Settings)
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = list(alias.choices) if isinstance(alias, AliasChoices) else [alias]
        variable = " or ".join(f"`{name}`" for name in names)
        if field_name in secret:
            variable += " (secret)"
        rows.append([variable, _default(field), _bounds(field), field.description or ""])
    return _table(["variable", "default", "valid values", "meaning"], rows)


# --- metrics ----------------------------------------------------------------------------


def metrics_table() -> str:
    from prometheus_client.metrics import MetricWrapperBase

    from worker import metrics as module

    rows = []
    for metric in vars(module).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        (family,) = metric.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        meaning = family.documentation
        if family.type == "histogram":
            # prometheus_client keeps a histogram's buckets only in this attribute.
            bounds = [_number(b) for b in metric._upper_bounds if b != float("inf")]
            meaning += f" Buckets (s): {', '.join(bounds)}."
        labels = ", ".join(metric._labelnames)  # no public accessor for a parent's labels
        rows.append([f"`{name}`", family.type, labels, meaning])
    return _table(["metric", "type", "labels", "meaning"], rows)


# --- alerts -----------------------------------------------------------------------------

RULES_DIR = REPO / "prometheus" / "rules"
_NOT_DEFAULTS = {"severity", "for", "panelId"}


def alerts_table(overrides: Mapping | None = None, rules_dir: Path = RULES_DIR) -> str:
    """One row per alerting rule of the rendered files; the defaults column is the rule's
    entry in config.libsonnet (with `overrides` deep-merged, as `alerts.render --set`)."""
    from alerts.render import load_config

    loaded = load_config(overrides)
    # The SLO alerts and the alerting pipeline's own alerts have their blocks.
    config = {
        **loaded.get("alerts", {}),
        **loaded.get("slo", {}).get("alerts", {}),
        **loaded.get("pipelineAlerts", {}),
    }
    rows = []
    for path in sorted(rules_dir.glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                name = rule["alert"]
                defaults = ", ".join(
                    f"{key}: {' or '.join(value) if isinstance(value, list) else _number(value)}"
                    for key, value in config.get(name, {}).items()
                    if key not in _NOT_DEFAULTS and not isinstance(value, dict)
                )
                runbook = rule.get("annotations", {}).get("runbook_url", "")
                page = runbook.rsplit("/", 1)[-1]
                rows.append(
                    [
                        name,
                        rule.get("labels", {}).get("severity", ""),
                        rule.get("for", "0s"),
                        "`" + " ".join(rule["expr"].split()) + "`",
                        defaults,
                        f"[{page.removesuffix('.md')}](runbooks/{page})" if page else "",
                    ]
                )
    return _table(
        ["alert", "severity", "for", "fires when", "defaults in `config.libsonnet`", "runbook"],
        rows,
    )


def time_to_detect_table() -> str:
    from alerts.detect import markdown_table

    return markdown_table()


# --- capacity ---------------------------------------------------------------------------

#: Today's and the planned load, each at the shortest, typical and longest LLM call.
CAPACITY_LOADS = [(jobs, seconds) for jobs in (135_000, 450_000) for seconds in (15, 17.5, 20)]
#: The queue-wait SLO of `critical` and `fast`, as `--wait-slo 0.99:60`.
CAPACITY_WAIT_SLO = (0.99, 60.0)


def capacity_table() -> str:
    from stack.capacity import plan

    rows = []
    for jobs, seconds in CAPACITY_LOADS:
        p = plan(jobs_per_day=jobs, job_seconds=seconds, wait_slo=CAPACITY_WAIT_SLO)
        rows.append(
            [
                f"{jobs:,}",
                _number(seconds),
                f"{p.arrival_rate_per_s:.2f}",
                f"{p.required_concurrency:.1f}",
                str(p.recommended_concurrency),
                str(p.replicas),
                str(p.slots_for_wait_slo),
                str(p.min_organizations),
            ]
        )
    header = [
        "jobs/day",
        "job seconds",
        "arrival rate (jobs/s)",
        "required concurrency (L)",
        "recommended slots",
        "replicas",
        "slots for 99 % within 60 s",
        "organizations at full quota",
    ]
    table = _table(header, rows)
    # Numbers read better right-aligned.
    return table.replace("|" + "---|" * len(header), "|" + "---:|" * len(header), 1)


GENERATORS: dict[str, Callable[[], str]] = {
    "config": config_table,
    "metrics": metrics_table,
    "alerts": alerts_table,
    "time-to-detect": time_to_detect_table,
    "capacity": capacity_table,
}


# --- pages ------------------------------------------------------------------------------


def pages(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


class UnknownBlock(ValueError):
    """A page names a block no generator makes (a typo, or a generator removed)."""


def render(text: str, tables: Mapping[str, str]) -> str:
    """`text` with every generated block replaced by its table."""

    def block(match: re.Match) -> str:
        name = match["name"]
        if name not in tables:
            raise UnknownBlock(f"unknown generated block {name!r} (known: {', '.join(tables)})")
        return f"{match['begin']}{tables[name]}{match['end']}"

    return BLOCK.sub(block, text)


def problems(root: Path = REPO, tables: Mapping[str, str] | None = None) -> list[str]:
    """One line per page whose blocks differ from their sources, and per table no page shows."""
    tables = tables if tables is not None else {name: gen() for name, gen in GENERATORS.items()}
    found, seen = [], set()
    for path in pages(root):
        text = path.read_text()
        seen.update(match["name"] for match in BLOCK.finditer(text))
        try:
            if render(text, tables) != text:
                found.append(f"{path.relative_to(root)}: generated blocks are stale")
        except UnknownBlock as exc:
            found.append(f"{path.relative_to(root)}: {exc}")
    found += [f"no page has a generated block {name!r}" for name in tables if name not in seen]
    return found


def write(root: Path = REPO) -> list[Path]:
    tables = {name: gen() for name, gen in GENERATORS.items()}
    changed = []
    for path in pages(root):
        text = path.read_text()
        new = render(text, tables)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.reference", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on drift")
    parser.add_argument(
        "--root", type=Path, default=REPO, help="repository root (README.md, docs/)"
    )
    args = parser.parse_args(argv)
    if args.check:
        found = problems(args.root)
        for line in found:
            print(f"{line}: run `python -m stack.reference` (make docs)", file=sys.stderr)
        return 1 if found else 0
    try:
        changed = write(args.root)
    except UnknownBlock as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in changed:
        print(f"rewrote {path.relative_to(args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
