"""Job metrics in one process, against a real Redis broker: every way an attempt can end
brings ``worker_jobs_processing`` back to exactly 0 and counts the attempt once."""

from __future__ import annotations

import threading
import time

import pytest
from dramatiq.middleware import CurrentMessage, Middleware, SkipMessage
from prometheus_client import REGISTRY

from stack.poll import wait_until
from tests.support.fleet import in_process_worker, settings_for
from worker.app import setup
from worker.jobs import job
from worker.middleware.metrics import JobMetrics

NAMES = ("total", "completed_total", "failed_total", "retried_total", "dead_lettered_total")


def counts(queue: str, job_type: str) -> dict[str, float]:
    labels = {"queue": queue, "job_type": job_type}
    got = {n: REGISTRY.get_sample_value(f"worker_jobs_{n}", labels) for n in NAMES}
    got["processing"] = REGISTRY.get_sample_value("worker_jobs_processing", labels)
    got["observed"] = REGISTRY.get_sample_value("worker_job_duration_seconds_count", labels)
    got["waited"] = REGISTRY.get_sample_value("worker_job_queue_wait_seconds_count", labels)
    return got


def waited_seconds(queue: str, job_type: str) -> float:
    labels = {"queue": queue, "job_type": job_type}
    return REGISTRY.get_sample_value("worker_job_queue_wait_seconds_sum", labels)


def attempt() -> int:
    return CurrentMessage.get_current_message().options.get("retries", 0) + 1


@pytest.fixture
def broker(redis_url):
    return setup(settings_for(redis_url, RETRY_TIME_SCALE=0.01, RETRY_JITTER=0))


def test_series_exist_at_zero_before_the_first_job(broker):
    job("test.metrics.idle", "critical")(lambda **kw: None)
    assert counts("critical", "test.metrics.idle") == dict.fromkeys(
        [*NAMES, "processing", "observed", "waited"], 0.0
    )


def test_success_failure_retry_and_dead_letter(broker):
    running = threading.Event()
    release = threading.Event()

    @job("test.metrics.mixed", "fast")
    def mixed(*, kind: str, **kw):
        if kind == "hold":
            running.set()
            release.wait(10)
        if kind == "flaky" and attempt() == 1:
            raise RuntimeError("first attempt fails")
        if kind == "broken":
            raise RuntimeError("always fails")

    with in_process_worker(broker, threads=4):
        mixed.send(kind="hold")
        running.wait(5)
        assert counts("fast", "test.metrics.mixed")["processing"] == 1
        release.set()
        for kind in ("ok", "flaky", "broken"):
            mixed.send(kind=kind)
        wait_until(lambda: counts("fast", "test.metrics.mixed")["dead_lettered_total"], 10)
        wait_until(lambda: counts("fast", "test.metrics.mixed")["completed_total"] == 3, 10)
        time.sleep(0.2)
    # hold, ok, flaky x2 (fails, then succeeds), broken x3 (fast class: 3 attempts)
    assert counts("fast", "test.metrics.mixed") == {
        "total": 7,
        "completed_total": 3,
        "failed_total": 4,
        "retried_total": 3,
        "dead_lettered_total": 1,
        "processing": 0,
        "observed": 7,
        "waited": 7,
    }


def test_a_job_that_kills_its_thread_is_counted_and_leaves_no_slot_busy(broker):
    """SystemExit and a TimeLimit interrupt are BaseExceptions raised inside the job's
    thread; the attempt still ends, fails, and is retried."""

    @job("test.metrics.exits", "fast")
    def exits(**kw):
        if attempt() == 1:
            raise SystemExit(3)

    @job("test.metrics.too_slow", "fast", time_limit=200)
    def too_slow(**kw):
        if attempt() == 1:
            for _ in range(100):  # interruptible: the limit lands between two sleeps
                time.sleep(0.05)

    broker.emit_after("process_boot")  # starts TimeLimit's monitor, as the Dramatiq CLI does
    with in_process_worker(broker, threads=2):
        exits.send()
        too_slow.send()
        wait_until(
            lambda: (
                counts("fast", "test.metrics.exits")["completed_total"]
                and counts("fast", "test.metrics.too_slow")["completed_total"]
            ),
            timeout=15,
        )
    for name in ("test.metrics.exits", "test.metrics.too_slow"):
        assert counts("fast", name) == {
            "total": 2,
            "completed_total": 1,
            "failed_total": 1,
            "retried_total": 1,
            "dead_lettered_total": 0,
            "processing": 0,
            "observed": 2,
            "waited": 2,
        }, name


class Defer(Middleware):
    """Stands in for the rate limiter: defers each message once, as it does, by
    re-enqueuing a copy with a delay and skipping the original."""

    def __init__(self) -> None:
        self.deferred = 0

    def before_process_message(self, broker, message):
        if message.actor_name.startswith("test.metrics.deferred") and not message.options.get(
            "deferred"
        ):
            broker.enqueue(message.copy(options={**message.options, "deferred": True}), delay=50)
            self.deferred += 1
            raise SkipMessage()


@pytest.mark.parametrize("where", ["before", "after"])
def test_rate_limit_deferral_is_not_an_attempt_and_leaves_no_slot_busy(broker, where):
    """``before``: the documented place (the deferral runs before JobMetrics sees the
    message). ``after``: the gauge still returns to 0, though the skipped pass counts as
    started (the reason for the documented place)."""
    defer = Defer()
    broker.add_middleware(defer, **{where: JobMetrics})
    name = f"test.metrics.deferred_{where}"
    job(name, "standard")(lambda **kw: None)
    with in_process_worker(broker):
        for _ in range(5):
            broker.get_actor(name).send()
        wait_until(lambda: counts("default", name)["completed_total"] == 5, timeout=10)
        time.sleep(0.2)
    assert defer.deferred == 5
    got = counts("default", name)
    assert got["processing"] == 0
    assert (got["total"], got["failed_total"], got["retried_total"]) == (
        5 if where == "before" else 10,
        0,
        0,
    )


def test_queue_wait_counts_time_in_the_queue_from_enqueue(broker):
    """A job sent while no worker runs waited from its enqueue to its attempt's start."""
    job("test.metrics.queued", "fast")(lambda **kw: None)
    broker.get_actor("test.metrics.queued").send()
    time.sleep(1.0)
    with in_process_worker(broker):
        wait_until(lambda: counts("fast", "test.metrics.queued")["completed_total"], 10)
    assert counts("fast", "test.metrics.queued")["waited"] == 1
    assert waited_seconds("fast", "test.metrics.queued") >= 1.0


def test_queue_wait_leaves_out_retry_backoff_and_sender_delays(redis_url):
    """A retry's backoff (2 s) and a delay asked by the sender (2 s) are not waiting: each
    attempt waits from its eta, not from the message's first enqueue."""
    broker = setup(settings_for(redis_url, RETRY_TIME_SCALE=1, RETRY_JITTER=0))

    @job("test.metrics.backoff", "fast")
    def backoff(**kw):
        if attempt() == 1:
            raise RuntimeError("first attempt fails; retried after 2 s")

    job("test.metrics.delayed", "fast")(lambda **kw: None)
    with in_process_worker(broker):
        backoff.send()
        broker.get_actor("test.metrics.delayed").send_with_options(delay=2000)
        wait_until(
            lambda: (
                counts("fast", "test.metrics.backoff")["completed_total"]
                and counts("fast", "test.metrics.delayed")["completed_total"]
            ),
            timeout=15,
        )
    assert counts("fast", "test.metrics.backoff")["waited"] == 2
    assert counts("fast", "test.metrics.delayed")["waited"] == 1
    # Counted from the first enqueue, each would have waited 2 s or more.
    assert waited_seconds("fast", "test.metrics.backoff") < 1.5
    assert waited_seconds("fast", "test.metrics.delayed") < 1.5


def test_a_body_with_a_bad_ready_at_still_runs_and_waits_from_its_enqueue(broker):
    """A message's body is outside the worker's control: a ready_at that is no number is
    ignored, the job runs, and its wait counts from its enqueue."""
    import dramatiq

    job("test.metrics.odd_body", "fast")(lambda **kw: None)
    broker.enqueue(dramatiq.Message("fast", "test.metrics.odd_body", (), {}, {"ready_at": "soon"}))
    time.sleep(0.5)
    with in_process_worker(broker):
        wait_until(lambda: counts("fast", "test.metrics.odd_body")["completed_total"], 10)
    got = counts("fast", "test.metrics.odd_body")
    assert (got["failed_total"], got["waited"]) == (0, 1)
    assert waited_seconds("fast", "test.metrics.odd_body") >= 0.5


def test_unknown_actor_is_one_dead_letter_with_bounded_labels(broker):
    import dramatiq

    before = REGISTRY.get_sample_value(
        "worker_jobs_dead_lettered_total", {"queue": "default", "job_type": "unknown"}
    )
    with in_process_worker(broker):
        broker.enqueue(
            dramatiq.Message(
                queue_name="default",
                actor_name="org-1234.secret-actor",
                args=(),
                kwargs={},
                options={},
            )
        )
        wait_until(
            lambda: (
                REGISTRY.get_sample_value(
                    "worker_jobs_dead_lettered_total", {"queue": "default", "job_type": "unknown"}
                )
                == (before or 0) + 1
            ),
            timeout=10,
        )
    assert (
        REGISTRY.get_sample_value(
            "worker_jobs_total", {"queue": "default", "job_type": "org-1234.secret-actor"}
        )
        is None
    )


def test_metrics_page_table_is_the_metrics_module():
    """docs/metrics.md's metric table and worker/metrics.py name the same metrics, types and
    labels (the module is where they are defined, once)."""
    import re
    from pathlib import Path

    from worker import metrics as module

    page = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    section = page.split("## Metric reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(worker_\w+)` \| (\w+) \|\s*([\w, ]*?)\s*\|", section, re.MULTILINE)
    documented = {
        name: (typ, tuple(x.strip() for x in labels.split(",") if x.strip()))
        for name, typ, labels in rows
    }
    defined = {}
    for value in vars(module).values():
        if hasattr(value, "_type") and hasattr(value, "_labelnames"):
            name = value._name + ("_total" if value._type == "counter" else "")
            defined[name] = (value._type, tuple(value._labelnames))
    assert documented == defined
