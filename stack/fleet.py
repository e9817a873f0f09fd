"""Run worker replicas: in this process (a real ``dramatiq.Worker``), as ``python -m worker``
processes, or as a small fleet scraped by a real Prometheus. The one way tests, the local
twin's users, the benchmarks and ``make dashboards-preview`` run workers.

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
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dramatiq
import redis

from stack.servers import (
    PrometheusServer,
    RedisServer,
    free_port,
    prometheus_server,
    redis_server,
    running,
)
from worker.app import setup
from worker.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def settings_for(redis_url: str, **overrides) -> Settings:
    """Settings as the environment would give them, with ``overrides`` by field name."""
    return Settings(_env_file=None, REDIS_URL=redis_url, **overrides)


@contextlib.contextmanager
def in_process_worker(broker: dramatiq.Broker, threads: int = 4) -> Iterator[dramatiq.Worker]:
    """A real Dramatiq worker in this process, polling every 50 ms for precise timing."""
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=threads)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=10_000)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def replica_env(redis_url: str, **env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS", "SENTRY"))}
    # METRICS_PORT 0: any free port, so replicas of a test (and of parallel runs) never collide
    base.update(
        REDIS_URL=redis_url, METRICS_HOST="127.0.0.1", METRICS_PORT="0", PYTHONUNBUFFERED="1"
    )
    base.update({k: str(v) for k, v in env.items()})
    return base


class Replica:
    """One ``python -m worker`` process group, as an operator would run it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log_path = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Replica:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def signal(self, sig: int) -> None:
        """SIGKILL hits the whole group (a crash); other signals go to the main process only,
        as ``docker stop`` or systemd deliver them."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGKILL:
                    os.killpg(self.proc.pid, sig)
                else:
                    os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait()

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def completed_ids(client: redis.Redis, namespace: str = "agent-jobs") -> list[str]:
    """Message ids of every completed job recorded in the job log, duplicates included."""
    return [f[b"message_id"].decode() for _, f in client.xrange(f"{namespace}:completed")]


def dead_letters(client: redis.Redis, namespace: str = "agent-jobs") -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in f.items()}
        for _, f in client.xrange(f"{namespace}:dead")
    ]


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


def prometheus_config(targets: list[str], interval: str = "1s") -> str:
    return json.dumps(
        {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in sorted(RULES_DIR.glob("*.yml"))],
            "scrape_configs": [
                {"job_name": "worker", "static_configs": [{"targets": targets}]},
            ],
        }
    )


def query(url: str, promql: str, at: float | None = None) -> list[dict]:
    """Instant query; the result vector (raises on a PromQL error)."""
    params = {"query": promql} | ({"time": f"{at:.3f}"} if at else {})
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode(params)}") as r:
        body = json.load(r)
    if body["status"] != "success":
        raise RuntimeError(f"{promql}: {body}")
    return body["data"]["result"]


def query_range(url: str, promql: str, start: float, end: float, step: float) -> list[dict]:
    params = {"query": promql, "start": start, "end": end, "step": step}
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{urllib.parse.urlencode(params)}") as r:
        body = json.load(r)
    if body["status"] != "success":
        raise RuntimeError(f"{promql}: {body}")
    return body["data"]["result"]


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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, RuntimeError):
                result = query(self.prometheus_url, promql)
                if result:
                    return result
            time.sleep(0.5)
        logs = "\n".join(r.log[-2000:] for r in self.replicas)
        raise AssertionError(f"no data for {promql} within {timeout}s; replica logs:\n{logs}")

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
            ).start()
            stack.callback(replica.stop, 20)
            fleet_replicas.append(replica)
        instances = [f"127.0.0.1:{p}" for p in ports]
        prometheus = stack.enter_context(
            running(prometheus_server(workdir / "prometheus", prometheus_config(instances)))
        )
        setup(Settings(_env_file=None, REDIS_URL=redis.url))  # this process sends the jobs
        fleet = Fleet(redis, prometheus, fleet_replicas, instances)
        stack.callback(fleet.stop)
        fleet.wait_for('up{job="worker"} == 1', timeout=60)
        yield fleet
