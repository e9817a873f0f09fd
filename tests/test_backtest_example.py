"""The docs' backtest example scales the rules and the routes by the recording's speed:
every ``for``, window and route timing a recording shortens, nothing else."""

from __future__ import annotations

import yaml

from alerts.duration import parse_duration
from alerts.render import load_config, render_rules
from alerts.routes import ALERTMANAGER_CONFIG
from stack.backtest_example import (
    scaled_alertmanager,
    scaled_duration,
    scaled_overrides,
    write_scaled,
)


def test_a_duration_is_divided_in_whole_milliseconds():
    assert scaled_duration("5m", 60) == "5s"
    assert scaled_duration("1m", 120) == "500ms"
    assert scaled_duration("1h", 3600) == "1s"


def _alerts(directory) -> dict[str, dict]:
    """The alerting rules, by name and position (a record's name carries its window)."""
    rules = {}
    for path in sorted(directory.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rules[f"{rule['alert']}@{len(rules)}"] = rule
    return rules


def test_the_scaled_rules_have_every_for_divided_and_the_same_thresholds(tmp_path):
    plain, scaled = tmp_path / "plain", tmp_path / "scaled"
    render_rules(None, plain)
    render_rules(scaled_overrides(load_config(), 60), scaled)
    before, after = _alerts(plain), _alerts(scaled)
    assert list(before) == list(after)
    fors = [(r.get("for", "0s"), after[k].get("for", "0s")) for k, r in before.items()]
    assert any(parse_duration(a) > 0 for a, _ in fors)
    for a, b in fors:
        assert abs(parse_duration(b) - parse_duration(a) / 60) < 1e-3, (a, b)
    # A rate threshold is a rate: it stays.
    failure = next(k for k in before if k.startswith("HighJobFailureRate@"))
    assert before[failure]["expr"].split(">")[-1] == after[failure]["expr"].split(">")[-1]


def test_the_scaled_routes_have_every_timing_divided(tmp_path):
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    scaled = scaled_alertmanager(yaml.safe_load(ALERTMANAGER_CONFIG.read_text()), 60)

    def timings(route, out):
        out.append({k: route.get(k) for k in ("group_wait", "group_interval", "repeat_interval")})
        for child in route.get("routes") or []:
            timings(child, out)
        return out

    pairs = list(zip(timings(config["route"], []), timings(scaled["route"], []), strict=True))
    assert any(v for a, _ in pairs for v in a.values())
    for a, b in pairs:
        for key, value in a.items():
            if value is None:
                assert b[key] is None
            else:
                assert abs(parse_duration(b[key]) - parse_duration(value) / 60) < 1e-3
    assert scaled["receivers"] == config["receivers"]
    rules, am = write_scaled(tmp_path, 60)
    assert rules.exists() and yaml.safe_load(am.read_text())["route"] == scaled["route"]
