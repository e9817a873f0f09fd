from __future__ import annotations

from pathlib import Path

import pytest

from stack.fleet import Replica, replica_env
from stack.servers import redis_server, running

#: The run's report of what tests measured (the ``report`` fixture).
pytest_plugins = ["tests.support.report"]


@pytest.fixture
def redis_srv(tmp_path):
    """A private redis-server for one test; the test may stop and restart it."""
    with running(redis_server(tmp_path / "redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_srv):
    return redis_srv.url


@pytest.fixture(scope="session")
def metrics_env():
    """``metrics_env(redis_url, port, **env)``: a replica's environment with its metrics
    endpoint on ``port``, the backlog sampled at every scrape and a fast Redis probe."""

    def env(redis_url: str, port: int, **overrides) -> dict[str, str]:
        defaults = {"METRICS_QUEUE_SAMPLE_SECONDS": 0, "REDIS_HEALTH_INTERVAL_SECONDS": 0.5}
        return replica_env(redis_url, METRICS_PORT=port, **{**defaults, **overrides})

    return env


@pytest.fixture
def start_replica():
    """``start_replica(env, log)``: a ``python -m worker`` replica, returned once its
    endpoint serves the job metrics; stopped after the test if it still runs."""
    started: list[Replica] = []

    def start(env: dict[str, str], log: Path) -> Replica:
        replica = Replica(env, log)
        started.append(replica)
        return replica.start(timeout=30).wait_for_metrics()

    yield start
    for replica in started:
        replica.stop()
