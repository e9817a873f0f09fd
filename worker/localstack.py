"""The stack as local processes: docker-compose.yml's topology where Docker is absent.

    make up-local                       # or: worker up-local, python -m worker.localstack
    python -m worker.localstack --replicas 3 --rate 5 --scrape-interval 5s

starts, on free loopback ports and from the same committed config files as the compose
stack: redis-server (AOF on), N worker replicas (``python -m worker``), prometheus,
prometheus-alertmanager, the alert receiver and the load generator. It prints the URLs,
shows the alerts as they arrive, and Ctrl-C (or SIGTERM) stops everything it started.

The configs are the committed ones with the compose addresses swapped for loopback:
Prometheus gets ``prometheus/prometheus.yml`` with its ``dns_sd_configs`` on ``worker``
replaced by ``static_configs`` listing the replicas' ports, and ``alertmanager:9093`` (and
every other compose address) replaced by the twin's; rule files, intervals, relabelling
and everything else are kept. Alertmanager gets ``alertmanager/alertmanager.yml`` with each
receiver's webhook URL file pointing at the twin's alert receiver (``/pager``, ``/chat``).
Both derived files are written into the run directory, so they can be read.

As a library, ``LocalStack`` is what the end-to-end tests drive::

    with LocalStack(tmp_path, scrape_interval="1s", rules_dir=fast_rules) as stack:
        stack.kill_replica(0)
        ...
        assert any(a["alertname"] == "WorkerDown" for a in stack.alerts(receiver="pager"))

Every process runs in its own process group and dies with the thread that started it, so
an interrupted, crashed or even SIGKILLed owner leaves nothing running.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from worker.procs import (
    HttpServer,
    Process,
    RedisServer,
    alertmanager_server,
    free_port,
    group_pids,
    listening_pids,
    prometheus_server,
    redis_server,
)

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"

#: docker-compose.yml's service addresses as the committed configs name them.
WORKER_SERVICE = "worker:9191"
PROMETHEUS_SERVICES = ("localhost:9090", "prometheus:9090")
ALERTMANAGER_SERVICE = "alertmanager:9093"
RECEIVER_SERVICE = "alert-receiver:9095"

#: Environment a replica must not inherit from whoever starts the twin.
_NOT_INHERITED = ("REDIS", "BROKER", "METRICS", "SENTRY", "PROMETHEUS_MULTIPROC", "JOB_QUEUE")


def _warn(message: str) -> None:
    print(f"localstack: {message}", file=sys.stderr, flush=True)


# --- the derived configs ------------------------------------------------------------------


def _duration_seconds(text: str) -> float:
    """Prometheus durations as the configs use them: 15s, 1m, 500ms, 1h30m."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total, number = 0.0, ""
    i = 0
    while i < len(text):
        if text[i].isdigit() or text[i] == ".":
            number += text[i]
            i += 1
            continue
        unit = "ms" if text.startswith("ms", i) else text[i]
        if unit not in units or not number:
            raise ValueError(f"not a duration: {text!r}")
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    if number:
        raise ValueError(f"not a duration (unit missing): {text!r}")
    return total


def twin_prometheus_config(
    config: Mapping[str, Any],
    addresses: Mapping[str, Sequence[str]],
    *,
    config_dir: Path,
    rules_dir: Path | None = None,
    scrape_interval: str | None = None,
    evaluation_interval: str | None = None,
    warn: Callable[[str], None] = _warn,
) -> dict[str, Any]:
    """The committed Prometheus config with compose addresses swapped for the twin's.

    ``addresses`` maps a compose ``host:port`` (a static target, or a ``dns_sd_configs``
    name with its port) to the twin's targets. Rule file paths become absolute (taken from
    ``rules_dir`` when given: same file names, e.g. rules rendered with short ``for``).
    A target the twin does not run is dropped, with a warning.
    """
    config = copy.deepcopy(dict(config))
    glob = config.setdefault("global", {})
    if scrape_interval:
        glob["scrape_interval"] = scrape_interval
    if evaluation_interval:
        glob["evaluation_interval"] = evaluation_interval
    interval = _duration_seconds(glob.get("scrape_interval", "1m"))
    # Prometheus refuses a timeout longer than the interval: shorten it with the interval.
    if _duration_seconds(glob.get("scrape_timeout", "10s")) > interval:
        glob["scrape_timeout"] = glob["scrape_interval"]

    def rule_path(pattern: str) -> str:
        if rules_dir is not None:
            return str(Path(rules_dir).resolve() / Path(pattern).name)
        return str((config_dir / pattern).resolve())

    config["rule_files"] = [rule_path(p) for p in config.get("rule_files") or []]

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
            job_interval = _duration_seconds(job.get("scrape_interval", glob["scrape_interval"]))
            if _duration_seconds(job["scrape_timeout"]) > job_interval:
                job["scrape_timeout"] = job.get("scrape_interval", glob["scrape_interval"])
    return config


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


def with_route_timing(config: Mapping[str, Any], **timing: str) -> dict[str, Any]:
    """``config`` with ``group_wait``, ``group_interval`` and/or ``repeat_interval`` set on
    the root route and on every route below it that sets its own (tests: seconds, not
    minutes), leaving the tree, matchers and receivers as committed."""
    config = copy.deepcopy(dict(config))

    def visit(route: dict[str, Any], root: bool) -> None:
        for key, value in timing.items():
            if root or key in route:
                route[key] = value
        for child in route.get("routes") or []:
            visit(child, False)

    if "route" in config:
        visit(config["route"], True)
    return config


# --- the processes ------------------------------------------------------------------------


class WorkerReplica(HttpServer):
    """One ``python -m worker`` replica; ready when its metrics endpoint answers.

    SIGTERM goes to the main process only, as ``docker stop`` delivers it: the worker then
    stops its own processes and lets running jobs finish. SIGKILL takes the whole group.
    """

    def send_signal(self, sig: int) -> None:
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
            super().send_signal(sig)
        elif self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The replica's job-processing processes: its group without the main process and
        without the process that serves the metrics endpoint."""
        if not self.running:
            return []
        members = [pid for pid in group_pids(self.proc.pid) if pid != self.proc.pid]
        endpoint = listening_pids(self.port, members)
        if not endpoint:
            raise RuntimeError(f"{self.name}: no process of the replica serves port {self.port}")
        return [pid for pid in members if pid not in endpoint]


def _python_env(**extra: str) -> dict[str, str]:
    """The environment of a Python process of the twin: this package importable, unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    path = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(path)), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class LocalStack:
    """The compose topology as local processes, started and stopped as one.

    Options:
      run_dir              where configs, data and logs go (wiped at start unless keep_data)
      replicas             worker replicas (compose: deploy.replicas, 2)
      replica_env          extra environment for every replica (e.g. SIM_LATENCY_SECONDS)
      namespace            JOB_QUEUE_NAME of the fleet
      rules_dir            rule files to load instead of prometheus/rules (same file names)
      scrape_interval, evaluation_interval   override the committed 15s (e.g. "1s")
      alertmanager_timing  group_wait / group_interval / repeat_interval for every route
                           (e.g. {"group_wait": "1s", "group_interval": "1s"} for a test)
      alertmanager_overrides   deep-merged into the Alertmanager config, after the timing
                           (e.g. {"route": {"group_wait": "8s"}}: the root route and the
                           routes that inherit from it, not those that set their own)
      loadgen_rate         jobs/s of the load generator; None: no load generator
      loadgen_args         more arguments for it (e.g. ["--seed", "1"])
      replica_ready_path   the replica endpoint that says it is up
      redis_password       start Redis with requirepass, and give replicas the password
    """

    def __init__(
        self,
        run_dir: Path | str = REPO / ".run" / "localstack",
        *,
        replicas: int = 2,
        replica_env: Mapping[str, str] | None = None,
        namespace: str = "agent-jobs",
        prometheus_config: Path = PROMETHEUS_CONFIG,
        alertmanager_config: Path = ALERTMANAGER_CONFIG,
        rules_dir: Path | str | None = None,
        scrape_interval: str | None = None,
        evaluation_interval: str | None = None,
        alertmanager_overrides: Mapping[str, Any] | None = None,
        alertmanager_timing: Mapping[str, str] | None = None,
        loadgen_rate: float | None = None,
        loadgen_args: Sequence[str] = (),
        replica_ready_path: str = "/metrics",
        redis_password: str | None = None,
        keep_data: bool = False,
    ) -> None:
        if replicas < 1:
            raise ValueError("at least one replica")
        self.run_dir = Path(run_dir).resolve()
        self.replica_count = replicas
        self.replica_env = {k: str(v) for k, v in (replica_env or {}).items()}
        self.namespace = namespace
        self.prometheus_config = Path(prometheus_config)
        self.alertmanager_config = Path(alertmanager_config)
        self.rules_dir = Path(rules_dir) if rules_dir is not None else None
        self.scrape_interval, self.evaluation_interval = scrape_interval, evaluation_interval
        self.alertmanager_overrides = alertmanager_overrides
        self.alertmanager_timing = dict(alertmanager_timing or {})
        self.loadgen_rate, self.loadgen_args = loadgen_rate, list(loadgen_args)
        self.replica_ready_path = replica_ready_path
        self.redis_password = redis_password
        self.keep_data = keep_data
        self.redis: RedisServer | None = None
        self.receiver: HttpServer | None = None
        self.alertmanager: HttpServer | None = None
        self.prometheus: HttpServer | None = None
        self.replicas: list[WorkerReplica] = []
        self.loadgen: Process | None = None
        #: Replicas stopped on purpose (kill_replica, stop_replica): supervise() leaves them.
        self._stopped_on_purpose: set[int] = set()
        self.restarts: list[int] = []
        self._atexit_registered = False

    # -- life cycle --

    def start(self, timeout: float = 30.0) -> LocalStack:
        """Start every component in dependency order; on any failure stop what started."""
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._prepare_run_dir()
            self._start_all(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.keep_data:
            for child in ("redis", "receiver", "alertmanager", "prometheus", "loadgen"):
                shutil.rmtree(self.run_dir / child, ignore_errors=True)
            for child in self.run_dir.glob("replica-*"):
                shutil.rmtree(child, ignore_errors=True)

    def _start_all(self, timeout: float) -> None:
        ports: set[int] = set()

        def port() -> int:
            while (p := free_port()) in ports:
                pass
            ports.add(p)
            return p

        self.redis = redis_server(self.run_dir / "redis", port(), password=self.redis_password)
        self.redis.start(timeout)

        receiver_port, store = port(), self.run_dir / "receiver" / "alerts.jsonl"
        self.receiver = HttpServer(
            [sys.executable, "-m", "worker.alert_receiver", "--host", "127.0.0.1",
             "--port", str(receiver_port), "--store", str(store)],
            receiver_port, self.run_dir / "receiver", name="alert-receiver",
            env=_python_env(), ready_path="/healthz",
        )  # fmt: skip
        self.receiver.start(timeout)

        am_dir = self.run_dir / "alertmanager"
        am_dir.mkdir(parents=True, exist_ok=True)
        am_config = twin_alertmanager_config(
            yaml.safe_load(self.alertmanager_config.read_text()),
            lambda name: f"{self.receiver.url}/{name}",
            config_dir=self.alertmanager_config.parent,
            secrets_dir=am_dir / "secrets",
        )
        # Overrides last, so that they can set one route apart from the common timing (a
        # test: every route 1s, warnings' root group_wait longer than a critical takes).
        am_config = deep_merge(
            with_route_timing(am_config, **self.alertmanager_timing),
            self.alertmanager_overrides or {},
        )
        (am_dir / "alertmanager.yml").write_text(yaml.safe_dump(am_config, sort_keys=False))
        self.alertmanager = alertmanager_server(am_dir, am_dir / "alertmanager.yml", port())
        self.alertmanager.name = "alertmanager"
        self.alertmanager.log = am_dir / "alertmanager.log"
        self.alertmanager.start(timeout)

        self.replicas = [self._replica(i, port()) for i in range(self.replica_count)]
        for replica in self.replicas:
            replica.start(timeout)

        prometheus_port = port()
        prometheus_url = f"127.0.0.1:{prometheus_port}"
        addresses = {
            WORKER_SERVICE: [r.target for r in self.replicas],
            ALERTMANAGER_SERVICE: [f"127.0.0.1:{self.alertmanager.port}"],
            RECEIVER_SERVICE: [f"127.0.0.1:{self.receiver.port}"],
            **{name: [prometheus_url] for name in PROMETHEUS_SERVICES},
        }
        prom_config = twin_prometheus_config(
            yaml.safe_load(self.prometheus_config.read_text()),
            addresses,
            config_dir=self.prometheus_config.parent,
            rules_dir=self.rules_dir,
            scrape_interval=self.scrape_interval,
            evaluation_interval=self.evaluation_interval,
        )
        self.prometheus = prometheus_server(
            self.run_dir / "prometheus",
            yaml.safe_dump(prom_config, sort_keys=False),
            prometheus_port,
        )
        self.prometheus.name = "prometheus"
        self.prometheus.log = self.prometheus.workdir / "prometheus.log"
        self.prometheus.start(timeout)

        if self.loadgen_rate is not None:
            self.loadgen = Process(
                [sys.executable, "-m", "worker.loadgen", "--rate", str(self.loadgen_rate),
                 *self.loadgen_args],
                None, self.run_dir / "loadgen", name="loadgen",
                env=_python_env(REDIS_URL=self.redis.url, JOB_QUEUE_NAME=self.namespace),
            )  # fmt: skip
            self.loadgen.start(timeout=0.5)

    def _replica(self, index: int, port: int) -> WorkerReplica:
        env = _python_env(
            REDIS_URL=self.redis.url,
            JOB_QUEUE_NAME=self.namespace,
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=str(port),
            # Jobs cut short are redelivered; a twin that stops in seconds is worth more.
            SHUTDOWN_GRACE_SECONDS="5",
        )
        env.update(self.replica_env)
        return WorkerReplica(
            [sys.executable, "-m", "worker", "run"],
            port,
            self.run_dir / f"replica-{index + 1}",
            name="worker",
            env=env,
            ready_path=self.replica_ready_path,
        )

    def stop(self) -> None:
        """Stop everything this stack started, newest first. Safe to call more than once."""
        grace = float(self.replica_env.get("SHUTDOWN_GRACE_SECONDS", 5)) + 10
        for process in (self.loadgen, self.prometheus):
            if process is not None:
                process.stop()
        # All replicas at once, each finishing its running jobs within its grace period.
        for replica in self.replicas:
            replica.send_signal(signal.SIGCONT)  # a paused replica must hear its SIGTERM
            replica.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for replica in self.replicas:
            if replica.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    replica.proc.wait(max(0.0, deadline - time.monotonic()))
        for replica in self.replicas:
            replica.kill()  # only what outlived its grace, and stray children
        for process in (self.alertmanager, self.receiver, self.redis):
            if process is not None:
                process.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def processes(self) -> list[Process]:
        """Every process this stack owns (running or not)."""
        named = [self.redis, self.receiver, self.alertmanager, self.prometheus, self.loadgen]
        return [p for p in (*named, *self.replicas) if p is not None]

    # -- faults --

    def kill_replica(self, index: int) -> None:
        """SIGKILL replica ``index`` and its processes, as an operator's kill or an OOM
        would; its jobs in flight are redelivered once their lock expires."""
        self._stopped_on_purpose.add(index)
        self.replicas[index].kill()

    def stop_replica(self, index: int, timeout: float = 30.0) -> None:
        """Stop replica ``index`` gracefully (SIGTERM), as ``docker compose stop`` would."""
        self._stopped_on_purpose.add(index)
        self.replicas[index].stop(timeout=timeout)

    def start_replica(self, index: int, timeout: float = 30.0) -> None:
        """Start replica ``index`` again, on its port (same Prometheus target)."""
        self._stopped_on_purpose.discard(index)
        self.replicas[index].start(timeout)

    def stop_redis(self) -> None:
        """Stop Redis gracefully: it writes its AOF, so no queued job is lost."""
        self.redis.stop()

    def kill_redis(self) -> None:
        self.redis.kill()

    def start_redis(self, timeout: float = 15.0) -> None:
        self.redis.start(timeout)

    def pause_workers(self, indexes: Sequence[int] | None = None) -> None:
        """Freeze replicas (SIGSTOP to their process groups): a stalled, not a dead, fleet.
        Their scrapes time out, their jobs stop progressing, their locks stop renewing."""
        for i in range(len(self.replicas)) if indexes is None else indexes:
            self.replicas[i].send_signal(signal.SIGSTOP)

    def stall_workers(self, indexes: Sequence[int] | None = None) -> None:
        """Freeze the job-processing processes of replicas (SIGSTOP), not their metrics
        endpoint: workers that take no job, as hung jobs or a deadlock leave them, while the
        replica still answers scrapes, probes Redis and reports the growing backlog.
        ``resume_workers`` ends it."""
        for i in range(len(self.replicas)) if indexes is None else indexes:
            for pid in self.replicas[i].worker_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)

    def resume_workers(self, indexes: Sequence[int] | None = None) -> None:
        """End ``pause_workers`` or ``stall_workers`` (SIGCONT to the whole replica)."""
        for i in range(len(self.replicas)) if indexes is None else indexes:
            self.replicas[i].send_signal(signal.SIGCONT)

    def supervise(self, max_restarts: int = 10) -> list[int]:
        """Restart replicas that exited on their own with an error, at most ``max_restarts``
        times each (compose's restart policy); return the indexes restarted now."""
        if len(self.restarts) < len(self.replicas):
            self.restarts += [0] * (len(self.replicas) - len(self.restarts))
        restarted = []
        for i, replica in enumerate(self.replicas):
            code = replica.proc.poll() if replica.proc else None
            if code in (None, 0) or i in self._stopped_on_purpose:
                continue
            if self.restarts[i] >= max_restarts:
                continue
            self.restarts[i] += 1
            with contextlib.suppress(RuntimeError):
                replica.start()
            restarted.append(i)
        return restarted

    # -- reading the stack --

    @property
    def urls(self) -> dict[str, Any]:
        def url(p: HttpServer | None) -> str | None:
            return p.url if p is not None else None

        return {
            "prometheus": url(self.prometheus),
            "alertmanager": url(self.alertmanager),
            "alert_receiver": url(self.receiver),
            "redis": self.redis.url if self.redis else None,
            "replicas": [f"{r.url}/metrics" for r in self.replicas],
        }

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Alerts the receiver got, oldest first (filters: receiver, alertname, status)."""
        query = urllib.parse.urlencode({k: v for k, v in filters.items() if v})
        with urllib.request.urlopen(f"{self.receiver.url}/alerts?{query}", timeout=5) as r:
            return json.load(r)

    def rule_alerts(self) -> list[dict[str, Any]]:
        """Prometheus' pending and firing alerts: labels, annotations, state, activeAt."""
        with urllib.request.urlopen(f"{self.prometheus.url}/api/v1/alerts", timeout=10) as r:
            return json.load(r)["data"]["alerts"]

    def alertmanager_alerts(self, **labels: str) -> list[dict[str, Any]]:
        """Alertmanager's alerts with these label values (its API v2: labels, annotations,
        ``receivers``, and ``status`` with ``state`` active/suppressed and ``inhibitedBy``)."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
        with urllib.request.urlopen(
            f"{self.alertmanager.url}/api/v2/alerts?{query}", timeout=10
        ) as r:
            return json.load(r)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Result of an instant query against the twin's Prometheus."""
        url = f"{self.prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def describe(self) -> str:
        urls = self.urls
        lines = [
            f"Prometheus     {urls['prometheus']}   (alerts: {urls['prometheus']}/alerts)",
            f"Alertmanager   {urls['alertmanager']}",
            f"Alert receiver {urls['alert_receiver']}/alerts",
            f"Redis          {urls['redis']}",
        ]
        for i, replica in enumerate(self.replicas):
            lines.append(
                f"Worker {i + 1:<7} {replica.url}/metrics   pid {replica.proc.pid}"
                f"   log {replica.log}"
            )
        if self.loadgen is not None:
            lines.append(f"Load generator {self.loadgen_rate:.2f} jobs/s   log {self.loadgen.log}")
        lines.append("Grafana        not in the local twin (docker compose only)")
        lines.append(f"Configs, data and logs: {self.run_dir}")
        return "\n".join(lines)


# --- the command --------------------------------------------------------------------------


class _Tail:
    """New complete lines of a growing file."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


class _Stop(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    from worker.loadgen import DEFAULT_RATE

    parser = argparse.ArgumentParser(
        prog="worker up-local",
        description=__doc__.strip().split("\n\n")[0],
        epilog="Ctrl-C stops everything it started.",
    )
    parser.add_argument("--replicas", type=int, default=2, help="worker replicas (default 2)")
    parser.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="load generator jobs/s (default 1.56)"
    )
    parser.add_argument("--no-loadgen", action="store_true", help="start no load generator")
    parser.add_argument(
        "--run-dir", type=Path, default=REPO / ".run" / "localstack", help="default %(default)s"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep Redis and Prometheus data")
    parser.add_argument("--scrape-interval", help="instead of the committed 15s")
    parser.add_argument("--evaluation-interval", help="instead of the committed 15s")
    parser.add_argument("--rules-dir", type=Path, help="rule files instead of prometheus/rules")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for every replica, e.g. --env SIM_LATENCY_SECONDS=2-4",
    )
    args = parser.parse_args(argv)
    if args.replicas < 1 or args.rate <= 0:
        parser.error("--replicas and --rate must be positive")
    replica_env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
        replica_env[name] = value

    stack = LocalStack(
        args.run_dir,
        replicas=args.replicas,
        replica_env=replica_env,
        rules_dir=args.rules_dir,
        scrape_interval=args.scrape_interval,
        evaluation_interval=args.evaluation_interval,
        loadgen_rate=None if args.no_loadgen else args.rate,
        keep_data=args.keep_data,
    )

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # Ctrl-C must work even when started from a script in the background, which would
    # otherwise have it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print("Starting the local stack...", flush=True)
        stack.start()
        print(stack.describe(), flush=True)
        print(
            "\nProvoke an alert: kill one worker (kill -9 <pid>) for WorkerDown, or make calls"
            f"\nfail: REDIS_URL={stack.redis.url} {sys.executable} -m worker loadgen"
            " --failure-ratio 0.5 --set-only"
            "\nAlerts appear below as the receiver gets them. Ctrl-C stops everything.\n",
            flush=True,
        )
        tails = {"alert": _Tail(stack.receiver.log)}
        if stack.loadgen is not None:
            tails["loadgen"] = _Tail(stack.loadgen.log)
        while True:
            for prefix, tail in tails.items():
                for line in tail.lines():
                    print(f"[{prefix}] {line}", flush=True)
            for i in stack.supervise():
                print(f"[localstack] worker {i + 1} exited with an error: restarted", flush=True)
            for process in (stack.redis, stack.prometheus, stack.alertmanager, stack.receiver):
                if not process.running and process is not stack.redis:
                    raise RuntimeError(f"{process.name} exited: {process.log_tail(500)}")
            time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        print("\nStopping...", flush=True)
    except RuntimeError as exc:
        print(f"localstack: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        left = [p.name for p in stack.processes if p.group_alive]
        print("Stopped." if not left else f"Still running: {', '.join(left)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
