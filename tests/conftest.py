from __future__ import annotations

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
