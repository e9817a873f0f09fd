"""Workers for tests: in-process Dramatiq workers and real replica processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import dramatiq
import redis

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


__all__ = ["setup", "settings_for", "in_process_worker", "wait_until", "Replica"]
