"""The rendered dashboards' queries as Grafana runs them: targets, variables, metric names.

Used by the tests (every query parses, reads only contract metrics and recording rules,
returns data from a live Prometheus) and by the preview, so both see exactly what
Grafana would send to Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

#: What Grafana sends for "All" of a variable with allValue ".*" (every variable here).
ALL = ".*"


@dataclass(frozen=True)
class Target:
    dashboard: str  # uid
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    legend: str
    format: str


def targets(dashboard: Mapping) -> Iterator[Target]:
    """Every query target of every panel (rows' nested panels included)."""

    def walk(panels: Sequence[Mapping]) -> Iterator[Mapping]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for t in panel.get("targets", []):
            yield Target(
                dashboard=dashboard["uid"],
                panel_id=panel["id"],
                panel_title=panel["title"],
                panel_type=panel["type"],
                ref_id=t["refId"],
                expr=t["expr"],
                legend=t.get("legendFormat", ""),
                format=t.get("format", "time_series"),
            )


def _regex_escape(value: str) -> str:
    """Grafana's escaping of one value of a multi-value or "All" variable in PromQL: regex
    metacharacters get a backslash, doubled because the value lands in a PromQL string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def variable_value(values: str | Sequence[str], *, multi: bool) -> str:
    """The text Grafana puts in place of ``$var``: for a multi-value or include-All
    variable, escaped values joined as ``(a|b)``; "All" is the variable's allValue."""
    if isinstance(values, str):
        values = [values]
    if list(values) == ["$__all"]:
        return ALL
    if not multi:
        return values[0]
    escaped = [_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(
    expr: str,
    variables: Mapping[str, str],
    *,
    rate_interval: str = "1m",
    interval: str = "15s",
    range_: str = "1h",
) -> str:
    """``expr`` with ``$var``/``${var}`` replaced by ``variables`` (already formatted with
    variable_value) and Grafana's built-in interval variables by the given durations."""
    builtins = {"__rate_interval": rate_interval, "__interval": interval, "__range": range_}
    values = {**builtins, **variables}

    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def dashboard_variables(dashboard: Mapping, selection: Mapping[str, Sequence[str]]) -> dict:
    """``{name: text}`` for every query variable of ``dashboard``: the selected values, or
    "All" where a variable with All is not selected; the datasource variable is skipped."""
    out = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        chosen = selection.get(var["name"])
        if chosen is None:
            if not var.get("includeAll"):
                raise KeyError(f"variable ${var['name']} has no All: select a value")
            chosen = ["$__all"]
        multi = bool(var.get("multi") or var.get("includeAll"))
        out[var["name"]] = variable_value(chosen, multi=multi)
    return out


_KEYWORDS = {
    # aggregation operators, set and arithmetic keywords, modifiers
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric (and recording rule) names an expression selects.

    A light lexer, enough for the dashboards' PromQL: drops strings, label matchers,
    durations and grouping label lists, then keeps identifiers that are not keywords and
    not function calls.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (may hold braces)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names
