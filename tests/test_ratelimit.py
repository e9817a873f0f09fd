"""RateLimiter against a real redis-server: the guarantee, its cost and its failure mode."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis
from prometheus_client import REGISTRY

from stack.fleet import ROOT
from tests.support.ratelimit_load import hammer, max_in_any_interval, utilization
from worker.config import load_settings
from worker.ratelimit import RateLimited, RateLimiter, RateLimiterUnavailable
from worker.redis_keys import DEFAULT_NAMESPACE, RedisKeys, rate_limit_window


@pytest.fixture
def client(redis_url):
    with redis.Redis.from_url(redis_url) as c:
        yield c


def decisions(window: str, decision: str) -> float:
    value = REGISTRY.get_sample_value(
        "worker_rate_limit_decisions_total", {"window": window, "decision": decision}
    )
    return value or 0.0


def server_us(client) -> int:
    seconds, micros = client.time()
    return seconds * 1_000_000 + micros


def test_no_interval_holds_more_than_the_limit_under_contention(redis_url):
    result = hammer(redis_url, {"burst": (50, 2)}, "org-hot", seconds=5.0, processes=3, threads=4)
    assert result.attempts > 20 * len(result.admitted_us), "the load was not an overload"
    assert max_in_any_interval(result.admitted_us, 2_000_000) == 50
    assert utilization(result.admitted_us, 50, 2_000_000, windows=2) >= 0.95


def test_every_window_holds_under_contention(redis_url):
    limits = {"second": (20, 1), "three": (45, 3)}
    result = hammer(redis_url, limits, "org-multi", seconds=4.0, processes=2, threads=3)
    assert max_in_any_interval(result.admitted_us, 1_000_000) == 20
    assert max_in_any_interval(result.admitted_us, 3_000_000) == 45


def wait_for_fraction(client, period_us: int, fraction: float) -> None:
    """Sleep until the server clock is at ``fraction`` of a ``period_us`` cycle."""
    offset = server_us(client) % period_us
    target = int(fraction * period_us)
    time.sleep(((target - offset) % period_us) / 1_000_000)


def test_a_burst_straddling_a_window_boundary_is_refused(client):
    limiter = RateLimiter(client, {"second": (10, 1)})
    # Fixed one-second windows would admit 10 at x.9 s and 10 more at (x+1).05 s.
    wait_for_fraction(client, 1_000_000, 0.9)
    first = [limiter.try_acquire("org-1") for _ in range(10)]
    assert all(d.allowed for d in first)
    wait_for_fraction(client, 1_000_000, 0.05)
    second = [limiter.try_acquire("org-1") for _ in range(10)]
    assert not any(d.allowed for d in second)

    # retry_after points at the moment the first burst leaves the window: after
    # first + 1 s, and at most one bucket (1/60 s) later.
    free_at = second[0].server_time_us + second[0].retry_after * 1_000_000
    assert first[0].server_time_us + 1_000_000 < free_at
    assert free_at <= first[0].server_time_us + 1_000_000 + 1_000_000 / 60 + 1
    time.sleep(second[-1].retry_after)
    assert limiter.try_acquire("org-1").allowed


def test_a_refusal_by_one_window_consumes_nothing_in_the_others(client):
    limiter = RateLimiter(client, {"second": (2, 1), "minute": (5, 60)})
    assert all(limiter.try_acquire("org-1").allowed for _ in range(2))
    refused = [limiter.try_acquire("org-1") for _ in range(30)]
    assert all(d.refused_by == ("second",) for d in refused)
    assert refused[-1].windows[1].used == 2  # the minute window still counts 2, not 32

    # Three more are admitted, each as soon as the second window has room: the minute
    # window never refuses one (the 30 refusals cost it nothing). The two first admissions
    # free their slots one after the other, as far apart as they were made.
    for _ in range(3):
        for _attempt in range(10):
            decision = limiter.try_acquire("org-1")
            if decision.allowed:
                break
            assert decision.refused_by == ("second",), decision.refused_by
            time.sleep(decision.retry_after)
        assert decision.allowed
    last = limiter.try_acquire("org-1")  # the sixth of the minute
    assert not last.allowed and "minute" in last.refused_by
    assert 55 < last.retry_after <= 61


def test_one_organization_over_its_limit_does_not_touch_another(client):
    limiter = RateLimiter(client, {"minute": (5, 60)})
    assert [limiter.try_acquire("org-a").allowed for _ in range(8)] == [True] * 5 + [False] * 3
    assert [limiter.try_acquire("org-b").allowed for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.try_acquire("org-a").allowed


def test_per_organization_overrides_from_the_environment(client, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("RATE_LIMITS", "minute=4/60,hour=6/3600")
    monkeypatch.setenv(
        "RATE_LIMIT_OVERRIDES", '{"org-small": "minute=2/60", "org-big": "hour=9/3600"}'
    )
    limiter = RateLimiter.from_settings(client, load_settings())

    def admitted(org: str) -> int:
        return sum(limiter.try_acquire(org).allowed for _ in range(12))

    assert admitted("org-small") == 2  # its own minute, the default hour
    assert admitted("org-big") == 4  # the default minute still applies
    assert admitted("org-other") == 4
    assert [w.name for w in limiter.windows_for("org-big")] == ["minute", "hour"]
    assert limiter.windows_for("org-big")[1].limit == 9


def test_memory_per_organization_is_bounded(client):
    limiter = RateLimiter(client, {"second": (100_000, 1)}, buckets=10)
    deadline = time.monotonic() + 2.5
    calls = 0
    while time.monotonic() < deadline:
        assert limiter.try_acquire("org-1").allowed
        calls += 1
    (key,) = limiter.keys_for("org-1")
    assert calls > 200
    assert client.hlen(key) <= 10 + 1 + 3  # B + 1 live buckets, n, lo, free
    assert 0 < client.pttl(key) <= 1_100 + 1_000


def test_one_command_per_decision_and_reload_after_script_flush(client):
    limiter = RateLimiter(client)  # the three default windows
    limiter.try_acquire("org-1")
    client.config_resetstat()
    for _ in range(50):
        limiter.try_acquire("org-1")
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 50
    assert "cmdstat_eval" not in stats

    client.script_flush()
    assert limiter.try_acquire("org-1").allowed  # NOSCRIPT -> EVAL once
    client.config_resetstat()
    limiter.try_acquire("org-1")
    assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == 1


def test_decisions_are_counted_per_window(client):
    limiter = RateLimiter(client, {"second": (1, 1), "day": (100, 86400)})
    before = {(w, d): decisions(w, d) for w in ("second", "day") for d in ("allowed", "throttled")}
    limiter.try_acquire("org-1")
    limiter.try_acquire("org-1")
    limiter.try_acquire("org-1")
    assert decisions("second", "allowed") - before["second", "allowed"] == 1
    assert decisions("day", "allowed") - before["day", "allowed"] == 1
    assert decisions("second", "throttled") - before["second", "throttled"] == 2
    assert decisions("day", "throttled") - before["day", "throttled"] == 0


def test_with_rate_limit_runs_waits_or_raises(client):
    limiter = RateLimiter(client, {"second": (1, 1)})
    assert limiter.with_rate_limit("org-1", lambda: "called") == "called"
    with pytest.raises(RateLimited) as refused:
        limiter.with_rate_limit("org-1", lambda: "not called")
    assert 0.9 < refused.value.retry_after <= 1.02
    started = time.monotonic()
    assert limiter.with_rate_limit("org-1", lambda: "waited", max_wait=2) == "waited"
    assert 0.8 < time.monotonic() - started < 1.5


def test_redis_down_admits_nothing_and_is_counted(client, redis_srv):
    limiter = RateLimiter(client, {"second": (5, 1)})
    assert limiter.try_acquire("org-1").allowed
    before = decisions("second", "unavailable")
    redis_srv.stop()
    with pytest.raises(RateLimiterUnavailable):
        limiter.try_acquire("org-1")
    assert decisions("second", "unavailable") == before + 1
    redis_srv.start()
    assert limiter.try_acquire("org-1").allowed


@pytest.mark.parametrize(
    "limits",
    [{"Minute": (1, 60)}, {"minute": (0, 60)}, {"minute": (1, 0)}, {}],
)
def test_bad_limits_are_refused(client, limits):
    with pytest.raises(ValueError):
        RateLimiter(client, limits)


def test_two_deployments_sharing_a_redis_keep_their_own_counters(client, redis_url):
    """Keys live under JOB_QUEUE_NAME, so one deployment's organization at its limit does
    not throttle the same organization id of another; the {org} hash tag stays."""
    from tests.support.fleet import settings_for

    limiters = [
        RateLimiter.from_settings(
            client, settings_for(redis_url, JOB_QUEUE_NAME=name, RATE_LIMITS="minute=2/60")
        )
        for name in ("billing-jobs", DEFAULT_NAMESPACE)
    ]
    first, second = ([lim.try_acquire("org-1").allowed for _ in range(3)] for lim in limiters)
    assert first == second == [True, True, False]
    keys = [lim.keys_for("org-1")[0] for lim in limiters]
    assert keys == [
        rate_limit_window(RedisKeys(name).rate_limit_prefix, "org-1", "minute", 60)
        for name in ("billing-jobs", DEFAULT_NAMESPACE)
    ]
    assert keys[0].startswith("billing-jobs:") and keys[0].endswith(":{org-1}:minute:60")
    assert all(client.exists(k) for k in keys)


def test_the_settings_load_the_limiter_but_not_the_metrics_library():
    """worker.config imports the limiter for its windows; prometheus_client must wait:
    ``python -m worker`` reads the settings before it sets PROMETHEUS_MULTIPROC_DIR."""
    names = "{'worker.ratelimit', 'prometheus_client'}"
    code = f"import sys, worker.config; print(sorted({names} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "['worker.ratelimit']", out.stderr
