"""The alerts config as the dashboards read it: the one source of thresholds, windows,
severities, runbook links and the panel id each alert's ``dashboard_url`` opens.

``alerts/config.libsonnet`` is evaluated by ``alerts.render.load_config``, and fleet
queries read the recording rules by the names the alerts mixin gives them
(``alerts.render.record_names``). Change a threshold there and ``make rules dashboards``
moves both the rule and the line.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from alerts.render import load_config, record_names

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
