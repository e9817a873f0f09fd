"""Alertmanager's routing tree and inhibit rules, read from a parsed ``alertmanager.yml``:
the one reading of them, for the time to detect (``alerts.detect``: the receiver and
group_wait of each alert) and the backtest (``stack.backtest.alertmanager``: the route of
every alert it replays, tens of thousands of times over a week of history, so the tree
is evaluated here rather than by one ``amtool`` process per label set).
``tests/test_backtest_alertmanager.py`` proves it equal to ``amtool config routes test``
on label sets drawn from the config's own matchers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from alerts.duration import parse_duration

#: Alertmanager's defaults for a root route that does not set them.
DEFAULT_TIMING = {"group_wait": 30.0, "group_interval": 300.0, "repeat_interval": 14400.0}
#: ``send_resolved`` of each integration when its config does not say (Alertmanager 0.25).
SEND_RESOLVED_DEFAULT = {
    "slack_configs": False,
    "email_configs": False,
    "pushover_configs": True,
    "webhook_configs": True,
    "pagerduty_configs": True,
    "opsgenie_configs": True,
    "victorops_configs": True,
    "wechat_configs": False,
    "sns_configs": True,
    "telegram_configs": True,
    "discord_configs": True,
    "webex_configs": True,
}


class RoutingError(ValueError):
    """A config this module cannot read (or the backtest cannot simulate): one line."""


_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Matcher:
    """One label matcher, as Alertmanager reads ``name="value"`` (``=``, ``!=``, ``=~``,
    ``!~``); a missing label matches as the empty string, a regex as a whole."""

    name: str
    op: str
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False)

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.name, "")
        if self.op == "=":
            return got == self.value
        if self.op == "!=":
            return got != self.value
        hit = self.regex is not None and self.regex.fullmatch(got) is not None
        return hit if self.op == "=~" else not hit


def matcher(name: str, op: str, value: str) -> Matcher:
    if op in ("=~", "!~"):
        try:
            return Matcher(name, op, value, re.compile(value))
        except re.error as exc:
            raise RoutingError(f"alertmanager: matcher {name}{op}{value!r}: {exc}") from None
    return Matcher(name, op, value)


def parse_matchers(texts: Sequence[str]) -> tuple[Matcher, ...]:
    """``matchers:`` strings (``alertname="Watchdog"``, ``{a="1", b=~"x|y"}``)."""
    parsed = []
    for text in texts:
        body = str(text).strip()
        if body.startswith("{") and body.endswith("}"):
            body = body[1:-1]
        for part in _split_commas(body):
            found = _MATCHER.match(part)
            if found is None:
                raise RoutingError(f"alertmanager: not a matcher: {text!r}")
            name, op, value = found.groups()
            if value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise RoutingError(f"alertmanager: bad quoting in matcher {text!r}") from None
            parsed.append(matcher(name, op, value))
    return tuple(parsed)


def _split_commas(body: str) -> list[str]:
    parts, current, quoted, escaped = [], [], False, False
    for char in body:
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _legacy_matchers(route: Mapping[str, Any]) -> tuple[Matcher, ...]:
    """The deprecated ``match`` (equality) and ``match_re`` (regex) maps."""
    eq = [matcher(k, "=", str(v)) for k, v in (route.get("match") or {}).items()]
    rx = [matcher(k, "=~", str(v)) for k, v in (route.get("match_re") or {}).items()]
    return (*eq, *rx)


def matches_all(matchers: Sequence[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


@dataclass(frozen=True)
class Route:
    """One node of the tree with its options resolved (inherited from its parent)."""

    #: Position in the tree, (0,) the root: part of the group key, as in Alertmanager.
    key: tuple[int, ...]
    receiver: str
    matchers: tuple[Matcher, ...]
    #: None: ``group_by: ['...']``, every label.
    group_by: tuple[str, ...] | None
    group_wait: float
    group_interval: float
    repeat_interval: float
    continue_: bool
    routes: tuple[Route, ...]

    def match(self, labels: Mapping[str, str]) -> list[Route]:
        """The routes an alert lands on: the deepest matching children, the first one
        only unless it says ``continue``; this node itself when no child matches."""
        if not matches_all(self.matchers, labels):
            return []
        found: list[Route] = []
        for child in self.routes:
            hits = child.match(labels)
            found.extend(hits)
            if hits and not child.continue_:
                break
        return found or [self]

    def group_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        if self.group_by is None:
            return dict(labels)
        return {name: labels[name] for name in self.group_by if name in labels}


_UNSUPPORTED = ("mute_time_intervals", "active_time_intervals")


def build_route(config: Mapping[str, Any]) -> Route:
    """The config's routing tree; RoutingError for what it cannot read."""
    root = config.get("route")
    if not isinstance(root, Mapping) or not root.get("receiver"):
        raise RoutingError("alertmanager: the config has no route with a receiver")
    defaults = {"receiver": root["receiver"], "group_by": (), **DEFAULT_TIMING}
    route = _route(root, (0,), defaults)
    known = {receiver.get("name") for receiver in config.get("receivers") or ()}
    for node in _walk(route):
        if node.receiver not in known:
            raise RoutingError(f"alertmanager: receiver {node.receiver!r} is not defined")
    return route


def _walk(route: Route) -> list[Route]:
    return [route, *(node for child in route.routes for node in _walk(child))]


def _route(node: Mapping[str, Any], key: tuple[int, ...], parent: Mapping[str, Any]) -> Route:
    where = "route" + "".join(f".routes[{i}]" for i in key[1:])
    for option in _UNSUPPORTED:
        if node.get(option):
            raise RoutingError(f"alertmanager: {where}: {option} is not simulated")
    options = dict(parent)
    if "receiver" in node:
        options["receiver"] = node["receiver"]
    if "group_by" in node:
        names = tuple(str(n) for n in node["group_by"] or ())
        options["group_by"] = None if "..." in names else names
    for name in DEFAULT_TIMING:
        if name in node:
            try:
                options[name] = parse_duration(str(node[name]))
            except ValueError:
                raise RoutingError(f"alertmanager: {where}.{name}: {node[name]!r}") from None
    children = tuple(
        _route(child, (*key, i), options) for i, child in enumerate(node.get("routes") or ())
    )
    return Route(
        key=key,
        receiver=options["receiver"],
        matchers=(*parse_matchers(node.get("matchers") or ()), *_legacy_matchers(node)),
        group_by=options["group_by"],
        group_wait=options["group_wait"],
        group_interval=options["group_interval"],
        repeat_interval=options["repeat_interval"],
        continue_=bool(node.get("continue", False)),
        routes=children,
    )


@dataclass(frozen=True)
class InhibitRule:
    source: tuple[Matcher, ...]
    target: tuple[Matcher, ...]
    equal: tuple[str, ...]

    def mutes(self, labels: Mapping[str, str], firing: Sequence[Mapping[str, str]]) -> bool:
        """Whether ``labels`` is muted by one of the ``firing`` alerts. An alert matching
        both sides is muted only by a source that does not match the target side itself."""
        if not matches_all(self.target, labels):
            return False
        two_sided = matches_all(self.source, labels)
        for source in firing:
            if not matches_all(self.source, source):
                continue
            if any(source.get(n, "") != labels.get(n, "") for n in self.equal):
                continue
            if two_sided and matches_all(self.target, source):
                continue
            return True
        return False


def inhibit_rules(config: Mapping[str, Any]) -> tuple[InhibitRule, ...]:
    rules = []
    for rule in config.get("inhibit_rules") or ():
        source = (*parse_matchers(rule.get("source_matchers") or ()), *_side(rule, "source"))
        target = (*parse_matchers(rule.get("target_matchers") or ()), *_side(rule, "target"))
        rules.append(InhibitRule(source, target, tuple(rule.get("equal") or ())))
    return tuple(rules)


def _side(rule: Mapping[str, Any], side: str) -> tuple[Matcher, ...]:
    legacy = {"match": rule.get(f"{side}_match"), "match_re": rule.get(f"{side}_match_re")}
    return _legacy_matchers(legacy)


def sends_resolved(config: Mapping[str, Any]) -> dict[str, bool]:
    """Per receiver that has an integration: whether it is told about resolved alerts (any
    of its integrations is). A receiver without one (a "null" receiver) sends nothing."""
    found = {}
    for receiver in config.get("receivers") or ():
        flags = [
            bool(integration.get("send_resolved", SEND_RESOLVED_DEFAULT.get(key, True)))
            for key, integrations in receiver.items()
            if key.endswith("_configs")
            for integration in integrations or ()
        ]
        if flags:
            found[receiver["name"]] = any(flags)
    return found
