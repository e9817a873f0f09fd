from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from stack.fleet import Replica, replica_env
from stack.servers import redis_server, running

#: The run's report of what tests measured (the ``report`` fixture).
pytest_plugins = ["tests.support.report"]

# CI draws the same Hypothesis examples every run: a failure there can be replayed, and a
# submission is not refused by the luck of a draw. Anywhere else each run explores anew
# (and replays what failed before, from .hypothesis/).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

#: Markers of the tests outside the quick tier (docs/testing.md, "Tiers").
NOT_QUICK = {"e2e", "compose", "rabbitmq", "cluster", "sentinel", "mutation", "slow", "browser"}

#: Run first, being the longest (docs/testing.md, "Where the time goes"): under
#: pytest-xdist the run lasts at least as long as its longest module, so these start at
#: once and the short tests fill the other workers around them.
LONGEST_FIRST = [
    "tests/test_compose_e2e.py",
    "tests/e2e/test_pipeline.py",
    "tests/e2e/test_alerts.py",
    "tests/e2e/test_nothing_lost.py",
    "tests/e2e/test_slo_alerts.py",
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the quick tier; keep the tests that share a module-scoped fixture in one
    pytest-xdist group (one process starts the fixture once), and the end-to-end modules
    in one group of their own; longest modules first."""
    for item in items:
        if not {mark.name for mark in item.iter_markers()} & NOT_QUICK:
            item.add_marker(pytest.mark.quick)
        if item.get_closest_marker("xdist_group"):
            continue
        if item.get_closest_marker("e2e"):
            # One twin at a time: under four twins at once, a 2-core machine slowed the
            # simulated jobs past HighJobProcessingTime's 1 s test threshold.
            item.add_marker(pytest.mark.xdist_group("e2e"))
        elif _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    first = {path: rank for rank, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::")[0], len(first)))


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    fixtures = getattr(item, "_fixtureinfo", None)
    defs = fixtures.name2fixturedefs.values() if fixtures else ()
    return any(d.scope in ("module", "package", "class") for chain in defs for d in chain)


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
