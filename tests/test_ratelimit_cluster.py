"""The same limiter, unchanged, on a real 3-master Redis Cluster."""

from __future__ import annotations

import pytest
import redis

from tests.support.ratelimit_load import hammer, max_in_any_interval, utilization
from tests.support.servers import redis_cluster
from worker.ratelimit import RateLimiter

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with redis_cluster(tmp_path_factory.mktemp("cluster"), masters=3) as servers:
        yield servers


@pytest.fixture
def cluster_client(cluster):
    client = cluster.client()
    yield client
    client.close()


def test_no_interval_holds_more_than_the_limit_on_a_cluster(cluster):
    result = hammer(
        cluster.url,
        {"burst": (50, 2)},
        "org-cluster",
        seconds=5.0,
        processes=2,
        threads=4,
        cluster=True,
    )
    assert result.attempts > 20 * len(result.admitted_us), "the load was not an overload"
    assert max_in_any_interval(result.admitted_us, 2_000_000) == 50
    assert utilization(result.admitted_us, 50, 2_000_000, windows=2) >= 0.95


def node_of(client, key: str) -> str:
    return client.get_node_from_key(key).name


def test_organizations_spread_over_masters_each_on_one_slot(cluster_client):
    limiter = RateLimiter(cluster_client, {"minute": (3, 60), "hour": (5, 3600), "day": (9, 86400)})
    orgs = [f"org-{i}" for i in range(12)] + ["odd{org}", "}"]
    nodes = set()
    for org in orgs:
        keys = limiter.keys_for(org)
        assert len({cluster_client.keyslot(k) for k in keys}) == 1, keys
        nodes.add(node_of(cluster_client, keys[0]))
        assert [limiter.try_acquire(org).allowed for _ in range(5)] == [True] * 3 + [False] * 2
        assert all(cluster_client.exists(k) for k in keys)
    assert len(nodes) == 3  # the orgs really live on different masters


def test_script_is_reloaded_on_every_master_after_a_flush(cluster, cluster_client):
    limiter = RateLimiter(cluster_client, {"minute": (100, 60)})
    orgs = [f"org-{i}" for i in range(12)]
    for org in orgs:
        assert limiter.try_acquire(org).allowed
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as direct:
            direct.script_flush()
            direct.config_resetstat()
    for org in orgs:
        assert limiter.try_acquire(org).allowed
        assert limiter.try_acquire(org).allowed
    calls = {"evalsha": 0, "eval": 0}
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as direct:
            stats = direct.info("commandstats")
            for name in calls:
                calls[name] += stats.get(f"cmdstat_{name}", {}).get("calls", 0)
    # each master answered NOSCRIPT once, then ran EVAL once; every other call is one EVALSHA
    assert calls == {"evalsha": 24, "eval": 3}
