"""RateLimit middleware in a real Dramatiq worker on a real Redis broker."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Middleware, SkipMessage
from prometheus_client import REGISTRY

from stack.poll import wait_until
from stack.servers import redis_server, running
from tests.support.ratelimit_load import max_in_any_interval
from worker.brokers.redis import WORKER_THREAD_LOGGER
from worker.middleware.ratelimit import RateLimit
from worker.ratelimit import RateLimiter
from worker.redis_keys import RedisKeys

NAMESPACE = "rl-test"
KEYS = RedisKeys(NAMESPACE)


class Outcomes(Middleware):
    """What the rest of the stack sees: failures (errors, retries) and skips."""

    def __init__(self) -> None:
        self.failures: list[BaseException] = []
        self.skipped = 0

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is not None:
            self.failures.append(exception)

    def after_skip_message(self, broker, message):
        self.skipped += 1


@dataclass
class Run:
    job_id: str
    org_id: str
    at: float
    retries: int
    deferrals: int


@dataclass
class Stack:
    broker: RedisBroker
    actor: dramatiq.Actor
    outcomes: Outcomes
    runs: list[Run] = field(default_factory=list)

    def send(self, org_id: str, count: int) -> list[str]:
        ids = [f"{org_id}-{uuid.uuid4().hex[:8]}" for _ in range(count)]
        for job_id in ids:
            self.actor.send(job_id=job_id, org_id=org_id)
        return ids

    def wait_for_runs(self, count: int, timeout: float) -> None:
        wait_until(
            lambda: len(self.runs) >= count,
            timeout,
            lambda: f"{count} jobs run ({len(self.runs)} did); {self.where()}",
        )

    def where(self) -> dict[str, int]:
        """Where the broker holds messages: queue lengths and ack sets (for failures)."""
        client = self.broker.client
        held = {}
        for key in client.scan_iter(KEYS.everything):
            name = key.decode()
            kind = client.type(key).decode()
            size = {"list": client.llen, "set": client.scard, "zset": client.zcard}.get(kind)
            if size is not None:
                held[name] = size(key)
        return held

    def dead_letters(self) -> int:
        return self.broker.client.zcard(KEYS.dead_letters("default"))


@contextlib.contextmanager
def worker_stack(
    broker_url: str, limiter_url: str, limits, threads: int = 4, **options
) -> Iterator[Stack]:
    broker = RedisBroker(url=broker_url, namespace=NAMESPACE, **options.pop("broker", {}))
    limiter = RateLimiter(redis.Redis.from_url(limiter_url), limits)
    outcomes = Outcomes()
    broker.add_middleware(CurrentMessage())
    broker.add_middleware(RateLimit(limiter, **options))
    broker.add_middleware(outcomes)
    runs: list[Run] = []

    @dramatiq.actor(
        broker=broker, actor_name="llm.call", queue_name="default", rate_limited=True, max_retries=0
    )
    def call_llm(job_id: str, org_id: str) -> None:
        opts = CurrentMessage.get_current_message().options
        deferrals = opts.get("rate_limit_deferrals", 0)
        runs.append(Run(job_id, org_id, time.time(), opts.get("retries", 0), deferrals))

    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        yield Stack(broker, call_llm, outcomes, runs)
    finally:
        worker.stop(timeout=10_000)
        broker.close()


def decisions(window: str, decision: str) -> float:
    labels = {"window": window, "decision": decision}
    return REGISTRY.get_sample_value("worker_rate_limit_decisions_total", labels) or 0.0


def test_throttled_jobs_wait_for_their_window_without_spending_attempts(redis_url, caplog):
    caplog.set_level(logging.DEBUG)
    throttled_before = decisions("burst", "throttled")
    with worker_stack(redis_url, redis_url, {"burst": (3, 2)}, max_jitter_seconds=0.2) as stack:
        hot = stack.send("org-hot", 7)
        time.sleep(0.3)  # org-hot's first three run, the others are deferred
        sent_cold = time.time()
        cold = stack.send("org-cold", 2)
        stack.wait_for_runs(9, timeout=15)

        by_job = {run.job_id: run for run in stack.runs}
        assert sorted(by_job) == sorted(hot + cold) and len(stack.runs) == 9  # each once
        assert all(run.retries == 0 for run in stack.runs)  # waiting spent no attempt
        assert stack.outcomes.failures == []  # nothing reported as an error
        assert stack.dead_letters() == 0  # max_retries=0: a counted attempt would dead-letter
        assert sum(run.deferrals > 0 for run in stack.runs if run.org_id == "org-hot") == 4
        assert stack.outcomes.skipped >= 4
        # one DEBUG line per deferral, not Dramatiq's WARNING "was skipped" (a flood at a limit)
        logged = [r for r in caplog.records if r.name == WORKER_THREAD_LOGGER]
        assert not [r for r in logged if "was skipped" in r.getMessage()]
        deferred = [r for r in caplog.records if r.getMessage().startswith("deferred message")]
        assert len(deferred) == stack.outcomes.skipped
        assert decisions("burst", "throttled") - throttled_before >= 4

        hot_runs = sorted(int(run.at * 1e6) for run in stack.runs if run.org_id == "org-hot")
        # the limiter's guarantee is on Redis TIME; allow 0.2 s of scheduling noise here
        assert max_in_any_interval(hot_runs, 1_800_000) <= 3
        assert (hot_runs[-1] - hot_runs[0]) / 1e6 < 2 * (2 + 2 / 60) + 0.2 + 1.0
        # org-cold is not delayed by org-hot's backlog
        assert all(run.at - sent_cold < 1.0 for run in stack.runs if run.org_id == "org-cold")


def test_actors_without_the_option_are_not_limited(redis_url):
    with worker_stack(redis_url, redis_url, {"burst": (1, 60)}) as stack:
        free_runs: list[str] = []

        @dramatiq.actor(broker=stack.broker, actor_name="status.update", queue_name="fast")
        def status_update(job_id: str, org_id: str) -> None:
            free_runs.append(job_id)

        for i in range(5):
            status_update.send(job_id=f"s{i}", org_id="org-1")
        stack.send("org-1", 2)
        stack.wait_for_runs(1, timeout=10)
        wait_until(lambda: len(free_runs) >= 5, 10, "the 5 unlimited jobs run")
        assert len(free_runs) == 5
        assert len(stack.runs) == 1  # the second rate-limited job waits a minute


def test_limiter_redis_down_defers_jobs_and_loses_none(redis_url, tmp_path):
    with running(redis_server(tmp_path / "limiter-redis")) as limiter_redis:
        unavailable_before = decisions("burst", "unavailable")
        with worker_stack(
            redis_url,
            limiter_redis.url,
            {"burst": (10, 1)},
            unavailable_delay_seconds=0.5,
            max_jitter_seconds=0.1,
        ) as stack:
            limiter_redis.stop()
            jobs = stack.send("org-1", 3)
            time.sleep(2.0)
            assert stack.runs == []  # never run unthrottled
            assert decisions("burst", "unavailable") - unavailable_before >= 3
            assert stack.outcomes.failures == []

            limiter_redis.start()
            stack.wait_for_runs(3, timeout=10)
            time.sleep(0.3)
            assert sorted(run.job_id for run in stack.runs) == sorted(jobs)
            assert all(run.retries == 0 and run.deferrals >= 1 for run in stack.runs)
            assert stack.dead_letters() == 0


def test_with_broker_and_limiter_down_the_message_is_held_until_redis_returns(redis_srv):
    broker = RedisBroker(url=redis_srv.url, namespace=NAMESPACE)
    middleware = RateLimit(
        RateLimiter(redis.Redis.from_url(redis_srv.url), {"burst": (1, 60)}),
        unavailable_delay_seconds=0.5,
        max_hold_seconds=0.3,
    )
    broker.add_middleware(middleware)

    @dramatiq.actor(broker=broker, actor_name="llm.call", queue_name="default", rate_limited=True)
    def call_llm(job_id: str, org_id: str) -> None:
        pass

    def message() -> dramatiq.MessageProxy:
        return dramatiq.MessageProxy(call_llm.message_with_options(kwargs={"org_id": "org-1"}))

    middleware.before_process_message(broker, message())  # admitted: returns, job would run
    outcome: list[str] = []

    def decide() -> None:
        try:
            middleware.before_process_message(broker, message())
            outcome.append("run")
        except SkipMessage:
            outcome.append("deferred")

    redis_srv.stop()
    deciding = threading.Thread(target=decide)
    deciding.start()
    deciding.join(2.0)
    assert deciding.is_alive() and outcome == []  # neither run, acked nor failed: held
    redis_srv.start()
    deciding.join(10.0)
    assert outcome == ["deferred"]  # Redis back: the minute window is full, so it waits
    assert broker.client.llen(KEYS.delay_queue("default")) == 1  # the deferred copy
    broker.close()


def test_one_redis_down_and_back_loses_no_job(redis_srv):
    """Broker and limiter share one Redis that stops mid-run (AOF keeps its data).

    Dramatiq drops the deferred messages its consumer held in memory when the connection
    breaks (they stay in that worker's ack set); a restarted worker reclaims them after
    the heartbeat timeout. Every job still runs exactly once and none spends an attempt.
    """
    limits = {"burst": (2, 1)}
    with worker_stack(redis_srv.url, redis_srv.url, limits, max_jitter_seconds=0.1) as first:
        jobs = first.send("org-1", 6)
        first.wait_for_runs(2, timeout=10)
        redis_srv.stop()
        time.sleep(2.0)
        redis_srv.start()
        time.sleep(2.0)
        runs = list(first.runs)
        failures = list(first.outcomes.failures)

    fast_reclaim = {"broker": {"heartbeat_timeout": 1000, "maintenance_chance": 1_000_000}}
    with worker_stack(
        redis_srv.url, redis_srv.url, limits, max_jitter_seconds=0.1, **fast_reclaim
    ) as second:
        second.wait_for_runs(6 - len(runs), timeout=20)
        time.sleep(0.5)
        runs += second.runs
        failures += second.outcomes.failures
        assert second.dead_letters() == 0

    assert sorted(run.job_id for run in runs) == sorted(jobs)  # each exactly once
    assert all(run.retries == 0 for run in runs)
    assert failures == []


def test_repeated_deferrals_spread_out_instead_of_waking_in_a_herd(redis_url):
    broker = RedisBroker(url=redis_url, namespace="spread")
    dramatiq.actor(lambda **kw: None, actor_name="spread.job", broker=broker)
    middleware = RateLimit(
        RateLimiter(redis.Redis.from_url(redis_url), {"m": (1, 60)}),
        max_jitter_seconds=1,
        max_spread_seconds=30,
    )
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys("spread")

    def jitters(waited: int) -> list[tuple[float, float]]:
        """Per deferral, the range its jitter lies in: its eta less 2 s, less the times just
        after and just before the call (a busy machine stretches the call, not the range's
        meaning)."""
        held = keys.delayed_messages("default")
        client.delete(keys.delay_queue("default"), held)
        message = dramatiq.Message(
            queue_name="default",
            actor_name="spread.job",
            args=(),
            kwargs={},
            options={"rate_limit_deferrals": waited},
        )
        ranges = []
        for _ in range(60):
            known = set(client.hkeys(held))
            before = time.time()
            middleware._defer(broker, message, 2.0)
            after = time.time()
            [new] = set(client.hkeys(held)) - known
            eta = dramatiq.Message.decode(client.hget(held, new)).options["eta"] / 1000
            ranges.append((eta - after - 2.0, eta - before - 2.0))
        return ranges

    for waited, cap, spread in ((0, 1, 0), (3, 8, 4), (9, 30, 15)):
        ranges = jitters(waited)
        assert min(most for _, most in ranges) >= 0, (waited, ranges)  # never early
        assert max(least for least, _ in ranges) <= cap, (waited, ranges)  # capped
        # spread out: some deferral's jitter is surely above half its cap
        assert not spread or max(least for least, _ in ranges) > spread, (waited, ranges)
