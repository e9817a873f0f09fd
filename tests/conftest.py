from __future__ import annotations

import sys

import pytest

from stack.servers import redis_server, running


@pytest.fixture
def redis_srv(tmp_path):
    """A private redis-server for one test; the test may stop and restart it."""
    with running(redis_server(tmp_path / "redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_srv):
    return redis_srv.url


def pytest_terminal_summary(terminalreporter) -> None:
    """What the compose end-to-end run measured (build times, time to healthy, WorkerDown's
    time to notify against its computed worst case, the counts of the no-loss checks)."""
    test_compose_e2e = sys.modules.get("tests.test_compose_e2e")
    if test_compose_e2e is not None and test_compose_e2e.REPORT:
        terminalreporter.write_sep("=", "compose end-to-end (Podman)")
        for what, value in test_compose_e2e.REPORT.items():
            terminalreporter.write_line(f"{what}: {value}")
