"""The twin's configs: the committed Prometheus and Alertmanager configs with
docker-compose.yml's addresses swapped for the twin's loopback ones.

Prometheus gets ``prometheus/prometheus.yml`` with its ``dns_sd_configs`` on ``worker``
replaced by ``static_configs`` listing the replicas' ports, and ``alertmanager:9093`` (and
every other compose address) replaced by the twin's; rule files, intervals, relabelling
and everything else are kept. Alertmanager gets ``alertmanager/alertmanager.yml`` with each
receiver's webhook URL file pointing at the twin's alert receiver (``/pager``, ``/chat``).
"""

from __future__ import annotations

import copy
import glob as globbing
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from alerts.detect import group_interval
from alerts.duration import parse_duration

#: docker-compose.yml's service addresses as the committed configs name them.
WORKER_SERVICE = "worker:9191"
PROMETHEUS_SERVICES = ("localhost:9090", "prometheus:9090")
#: The Alertmanager pair, in the order the twin starts them.
ALERTMANAGER_SERVICES = ("alertmanager:9093", "alertmanager-2:9093")
RECEIVER_SERVICE = "alert-receiver:9095"


def _warn(message: str) -> None:
    print(f"localstack: {message}", file=sys.stderr, flush=True)


def twin_prometheus_config(
    config: Mapping[str, Any],
    addresses: Mapping[str, Sequence[str]],
    *,
    config_dir: Path,
    rules_dir: Path | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    scaled_rules_dir: Path | None = None,
    warn: Callable[[str], None] = _warn,
) -> dict[str, Any]:
    """The committed Prometheus config with compose addresses swapped for the twin's.

    ``addresses`` maps a compose ``host:port`` (a static target, or a ``dns_sd_configs``
    name with its port) to the twin's targets. Rule file paths become absolute (taken from
    ``rules_dir`` when given: same file names, e.g. rules rendered with short ``for``).
    With ``evaluation_interval`` and ``scaled_rules_dir``, the rule files are copies
    written there with each group's own interval scaled alike (``rules_at``).
    A target the twin does not run is dropped, with a warning.
    """
    config = copy.deepcopy(dict(config))
    glob = config.setdefault("global", {})
    if scrape_interval:
        glob["scrape_interval"] = scrape_interval
    if evaluation_interval:
        glob["evaluation_interval"] = evaluation_interval
    interval = parse_duration(glob.get("scrape_interval", "1m"))
    # Prometheus refuses a timeout longer than the interval: shorten it with the interval.
    if parse_duration(glob.get("scrape_timeout", "10s")) > interval:
        glob["scrape_timeout"] = glob["scrape_interval"]

    def rule_path(pattern: str) -> str:
        if rules_dir is not None:
            return str(Path(rules_dir).resolve() / Path(pattern).name)
        return str((config_dir / pattern).resolve())

    config["rule_files"] = [rule_path(p) for p in config.get("rule_files") or []]
    if evaluation_interval and scaled_rules_dir is not None:
        files = [Path(f) for p in config["rule_files"] for f in sorted(globbing.glob(p))]
        config["rule_files"] = [
            str(p) for p in rules_at(files, evaluation_interval, scaled_rules_dir)
        ]

    def swap(targets: Sequence[str], where: str) -> list[str]:
        swapped: list[str] = []
        for target in targets:
            if target in addresses:
                swapped.extend(addresses[target])
            else:
                warn(f"{where}: {target} is not part of the local twin; dropped")
        return swapped

    for am in (config.get("alerting") or {}).get("alertmanagers") or []:
        for static in am.get("static_configs") or []:
            static["targets"] = swap(static.get("targets") or [], "alerting")

    for job in config.get("scrape_configs") or []:
        name = job.get("job_name", "?")
        statics = job.pop("static_configs", None) or []
        for static in statics:
            static["targets"] = swap(static.get("targets") or [], f"job {name}")
        for sd in job.pop("dns_sd_configs", None) or []:
            names = [f"{host}:{sd.get('port', 80)}" for host in sd.get("names") or []]
            statics.append({"targets": swap(names, f"job {name} (dns_sd_configs)")})
        statics = [s for s in statics if s["targets"]]
        job["static_configs"] = statics or [{"targets": []}]
        if "scrape_timeout" in job:
            job_interval = parse_duration(job.get("scrape_interval", glob["scrape_interval"]))
            if parse_duration(job["scrape_timeout"]) > job_interval:
                job["scrape_timeout"] = job.get("scrape_interval", glob["scrape_interval"])
    return config


def rules_at(files: Iterable[Path], evaluation_interval: str, out_dir: Path) -> list[Path]:
    """Copies of the rule ``files`` in ``out_dir``, each group with an ``interval`` of its
    own run as often, relative to ``evaluation_interval``, as with the committed 15 s
    (alerts.detect.group_interval): a twin evaluating every second runs the long-window
    SLO records every 10 s, not every 2m30s."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        for group in doc.get("groups") or []:
            if "interval" in group:
                seconds = group_interval(group, parse_duration(evaluation_interval))
                group["interval"] = f"{round(seconds * 1000)}ms"
        written.append(out_dir / Path(path).name)
        written[-1].write_text(yaml.safe_dump(doc, sort_keys=False))
    return written


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return copy.deepcopy(override)


def twin_alertmanager_config(
    config: Mapping[str, Any],
    receiver_url: Callable[[str], str],
    *,
    config_dir: Path,
    secrets_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    warn: Callable[[str], None] = _warn,
) -> dict[str, Any]:
    """The committed Alertmanager config, every receiver delivering to the alert receiver.

    Slack and webhook integrations keep their settings; only where they send changes:
    ``receiver_url(name)`` written to ``secrets_dir/<name>-url``, the file their
    ``*_url_file`` option names. Other integrations (e-mail, PagerDuty...) would reach the
    outside world and are dropped with a warning. ``overrides`` is deep-merged last (e.g.
    ``{"route": {"group_wait": "1s"}}`` for a test).
    """
    config = copy.deepcopy(dict(config))
    config["templates"] = [str((config_dir / t).resolve()) for t in config.get("templates") or []]
    secrets_dir.mkdir(parents=True, exist_ok=True)
    for receiver in config.get("receivers") or []:
        name = receiver["name"]
        url_file = secrets_dir / f"{name}-url"
        url_file.write_text(receiver_url(name))
        for key in [k for k in receiver if k.endswith("_configs")]:
            if key == "slack_configs":
                for slack in receiver[key]:
                    slack.pop("api_url", None)
                    slack["api_url_file"] = str(url_file)
            elif key == "webhook_configs":
                for hook in receiver[key]:
                    hook.pop("url", None)
                    hook["url_file"] = str(url_file)
            else:
                warn(f"receiver {name}: {key} would leave this machine; dropped")
                del receiver[key]
    return deep_merge(config, overrides or {})


def routes(route: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``route`` and every route below it, parents first."""
    yield route
    for child in route.get("routes") or []:
        yield from routes(child)


def with_route_timing(config: Mapping[str, Any], **timing: str) -> dict[str, Any]:
    """``config`` with ``group_wait``, ``group_interval`` and/or ``repeat_interval`` set on
    the root route and on every route below it that sets its own (tests: seconds, not
    minutes), leaving the tree, matchers and receivers as committed."""
    config = copy.deepcopy(dict(config))
    if "route" in config:
        for route in routes(config["route"]):
            for key, value in timing.items():
                if route is config["route"] or key in route:
                    route[key] = value
    return config
