"""Run worker replicas: as ``python -m worker`` processes, or as a small fleet scraped by a
real Prometheus. The one way the local twin, the tests, the benchmarks and
``make dashboards-preview`` run replicas (tests that want a worker in their own process
use ``tests.support.fleet``).

``simulated_fleet`` starts a private redis-server, replicas with the simulated LLM/HTTP
services, and Debian's prometheus scraping them every second with the repository's
recording and alert rules evaluated every second. Its load mixes all four actors with
failures (retries), invalid payloads (dead letters) and one organization over its rate
limit (throttling), so every dashboard panel has something to show.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stack import prom
from stack.poll import wait_until
from stack.prom import PrometheusError
from stack.servers import (
    HttpServer,
    PrometheusServer,
    RedisServer,
    free_port,
    group_pids,
    listening_pids,
    prometheus_server,
    redis_server,
    running,
)
from stack.twin_config import rules_at
from worker.app import setup
from worker.config import Settings

ROOT = Path(__file__).resolve().parent.parent

#: Environment a replica must not inherit from whoever starts it.
_NOT_INHERITED = ("REDIS", "BROKER", "METRICS", "SENTRY", "PROMETHEUS_MULTIPROC", "JOB_QUEUE")


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a Python process of the stack: this checkout importable (also
    without an installed package), output unbuffered, no broker or metrics settings of
    whoever starts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    path = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(path)), PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def alert_receiver(workdir: Path, *options: str, port: int | None = None) -> HttpServer:
    """``stack alert-receiver`` on loopback (``port``, or a free one), storing into
    ``workdir/alerts.jsonl``, with ``options`` (``--deadman-timeout 1.5``, ...); started by
    the caller. The twin's receiver, and the tests'."""
    port = free_port() if port is None else port
    argv = [sys.executable, "-m", "stack", "alert-receiver", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--store", str(workdir / "alerts.jsonl"), *options]
    return HttpServer(
        argv, port, workdir, name="alert-receiver", env=python_env(), ready_path="/healthz"
    )


def replica_env(redis_url: str, **env: str) -> dict[str, str]:
    """A replica's environment; METRICS_PORT 0 (the default here) lets it take any free
    port, so replicas of a test (and of parallel runs) never collide."""
    return python_env(
        **{"REDIS_URL": redis_url, "METRICS_HOST": "127.0.0.1", "METRICS_PORT": "0", **env}
    )


class Replica(HttpServer):
    """One ``python -m worker run`` replica (a process group), as an operator runs it.

    Ready when its metrics endpoint answers, at ``port`` (default: the environment's
    ``METRICS_PORT``; with 0, as soon as it runs). SIGTERM goes to the main process only,
    as ``docker stop`` or systemd deliver it: the worker then stops its own processes and
    lets running jobs finish. SIGKILL (a crash), SIGSTOP and SIGCONT take the whole group.
    """

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *,
        port: int | None = None,
        ready_path: str = "/metrics",
    ) -> None:
        port = port or int(env.get("METRICS_PORT") or 0) or None
        argv = [sys.executable, "-m", "worker", "run"]
        super().__init__(argv, port, log.parent, log.stem, env, ready_path=ready_path)
        self.log = log

    def start(self, timeout: float = 30.0) -> Replica:
        return super().start(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the replica (its running jobs finish within its grace period); its exit
        code, or None if it never started."""
        super().stop(sig, timeout)
        return self.proc.returncode if self.proc else None

    def send_signal(self, sig: int) -> None:
        if sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
            super().send_signal(sig)
        elif self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def wait_for_metrics(self, timeout: float = 30.0) -> Replica:
        """Return once the endpoint serves the job metrics, i.e. the worker processes have
        booted (the endpoint itself answers before they do); stop the replica and raise
        AssertionError with its log otherwise."""

        def serves() -> bool:
            try:
                return "worker_jobs_total" in scrape(self.port, timeout=1)
            except OSError:
                return False

        try:
            wait_until(serves, timeout, interval=0.1)
        except AssertionError:
            self.stop()
            raise AssertionError(f"no metrics endpoint: {self.output[-3000:]}") from None
        return self

    @property
    def output(self) -> str:
        """Everything the replica logged so far."""
        return self.log.read_text(errors="replace")

    @property
    def target(self) -> str:
        """Its metrics endpoint as a Prometheus target."""
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


def scrape(port: int, path: str = "/metrics", timeout: float = 5.0) -> str:
    """The text a scraper gets from a replica's endpoint on 127.0.0.1."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return response.read().decode()


class Scrape:
    """One scrape, parsed: ``value("worker_jobs_total", queue="fast", job_type="x")``."""

    def __init__(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for f in self.families.values()
            for s in f.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict[frozenset, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def scraped(port: int) -> Scrape:
    return Scrape(scrape(port))


RULES_DIR = ROOT / "prometheus" / "rules"

#: Small limits so that one busy organization is throttled within seconds.
RATE_LIMITS = "minute=20/60,hour=2000/3600,day=20000/86400"


def prometheus_config(targets: list[str], rules_dir: Path, interval: str = "1s") -> str:
    """Scraping ``targets`` and evaluating the committed rules every ``interval``, a group
    with an interval of its own scaled alike (copies in ``rules_dir``: twin_config.rules_at)."""
    rule_files = rules_at(sorted(RULES_DIR.glob("*.yml")), interval, rules_dir)
    return json.dumps(
        {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": "worker", "static_configs": [{"targets": targets}]},
            ],
        }
    )


@dataclass
class Fleet:
    redis: RedisServer
    prometheus: PrometheusServer
    replicas: list[Replica]
    instances: list[str]
    _stop: threading.Event = field(default_factory=threading.Event)
    _sent: int = 0

    @property
    def prometheus_url(self) -> str:
        return self.prometheus.url

    def send_batch(self, n: int = 1) -> None:
        """One round of every kind of job the dashboards show."""
        from worker import actors

        for _ in range(n):
            i = self._sent = self._sent + 1
            org = f"org-{i % 4}"
            actors.agent_run.send(job_id=f"a{i}", org_id=org, prompt="summarize")
            actors.agent_run.send(job_id=f"b{i}", org_id="org-busy", prompt="again")
            actors.crm_sync.send(job_id=f"c{i}", org_id=org, record={"name": "Ada"})
            actors.message_send.send(
                job_id=f"m{i}", org_id=org, channel="sms", recipient="+1", text="hi"
            )
            actors.job_status_update.send(job_id=f"s{i}", org_id=org, status="running")
            if i % 3 == 0:  # invalid payloads: dead-lettered at once, never retried
                actors.job_status_update.send(job_id=f"x{i}", org_id=org, status="bogus")
                actors.agent_run.send(job_id=f"y{i}", org_id=org, prompt="")

    def start_load(self, per_second: float = 2.0) -> None:
        """Keep sending batches in the background until the fleet stops."""

        def loop() -> None:
            while not self._stop.wait(1 / per_second):
                with contextlib.suppress(Exception):  # a stopping broker is not a failure
                    self.send_batch()

        threading.Thread(target=loop, daemon=True, name="fleet-load").start()

    def wait_for(self, promql: str, timeout: float = 60.0) -> list[dict]:
        """The first non-empty result of ``promql``; AssertionError with the replicas'
        logs after ``timeout`` seconds."""

        def no_data() -> str:
            logs = "\n".join(r.log_tail(2000) for r in self.replicas)
            return f"data for {promql}; replica logs:\n{logs}"

        return wait_until(
            lambda: prom.query(self.prometheus_url, promql),
            timeout,
            no_data,
            interval=0.5,
            ignore=(PrometheusError,),
        )

    def stop(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def simulated_fleet(workdir: Path, replicas: int = 1, **env: str) -> Iterator[Fleet]:
    """Start redis, ``replicas`` worker replicas and a Prometheus; stop them all after."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(running(redis_server(workdir / "redis")))
        ports = [free_port() for _ in range(replicas)]
        fleet_replicas = []
        for n, port in enumerate(ports):
            replica_settings = {
                "SIM_LATENCY_SECONDS": "0.2-0.6",
                "SIM_FAILURE_RATIO": "0.2",
                "RETRY_TIME_SCALE": "0.05",
                "RATE_LIMITS": RATE_LIMITS,
                "JOB_CONCURRENCY": "8",
                "WORKER_PROCESSES": "2",
                "METRICS_PORT": str(port),
                "REDIS_HEALTH_INTERVAL_SECONDS": "1",
                **env,
            }
            replica = Replica(
                replica_env(redis.url, **replica_settings), workdir / f"replica-{n}.log"
            ).start(timeout=60)
            stack.callback(replica.stop, timeout=20)
            fleet_replicas.append(replica)
        instances = [f"127.0.0.1:{p}" for p in ports]
        prometheus = stack.enter_context(
            running(
                prometheus_server(
                    workdir / "prometheus", prometheus_config(instances, workdir / "rules")
                )
            )
        )
        setup(Settings(_env_file=None, REDIS_URL=redis.url))  # this process sends the jobs
        fleet = Fleet(redis, prometheus, fleet_replicas, instances)
        stack.callback(fleet.stop)
        fleet.wait_for('up{job="worker"} == 1', timeout=60)
        yield fleet
