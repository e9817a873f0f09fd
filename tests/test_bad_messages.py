"""Any body a producer can push into Redis ends in exactly one place: completed, or
dead-lettered with a specific reason. Nothing lost, nothing left claimed, worker healthy.

Bodies are pushed the way Dramatiq's Redis broker enqueues (``HSET <ns>:<q>.msgs id body``
then ``RPUSH <ns>:<q> id``, what its dispatch script's ``enqueue`` does), as a producer in
another language would. One redis-server and one in-process worker (the real broker and
middleware stack of a replica) serve the whole module.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stack.poll import wait_until
from stack.servers import redis_server, running
from tests.support.fleet import in_process_worker, settings_for
from worker.app import setup
from worker.jobs import QUEUES
from worker.ratelimit import RateLimiter
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()
ACTORS = {
    "agent.run": ("default", {"prompt": "hello"}),
    "crm.sync": ("critical", {"record": {"name": "Ada"}}),
    "message.send": ("critical", {"channel": "sms", "recipient": "+1", "text": "hi"}),
    "job.status_update": ("fast", {"status": "running"}),
}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    with running(redis_server(tmp_path_factory.mktemp("redis"))) as server:
        broker = setup(
            settings_for(
                server.url,
                SIM_LATENCY_SECONDS="0.005",
                RETRY_TIME_SCALE=0.001,
                RATE_LIMITS="minute=1000000/60",
            )
        )
        client = redis.Redis.from_url(server.url)
        with in_process_worker(broker, threads=4) as w:
            yield client, broker, w


def envelope(actor: str = "job.status_update", kwargs=None, queue=None, **changes):
    queue_name, defaults = ACTORS.get(actor, ("fast", {}))
    body = {
        "queue_name": queue or queue_name,
        "actor_name": actor,
        "args": [],
        "kwargs": {"job_id": "j", "org_id": "org-1", **defaults} if kwargs is None else kwargs,
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": 1_700_000_000_000,
    }
    body.update(changes)
    return body


def push(client, body, queue: str | None = None, *, with_redis_id: bool = True) -> tuple:
    """Enqueue ``body`` (a dict, or raw bytes) as Dramatiq's dispatch script does."""
    redis_id = str(uuid.uuid4())
    if isinstance(body, dict) and isinstance(body.get("message_id"), str):
        # unique, so that each message's outcome is found by its id (a long one may now
        # be over the limit: it is then dead-lettered as invalid, still accounted for)
        body["message_id"] += f"-{redis_id}"
    if isinstance(body, dict):
        if queue is None:
            queue = body["queue_name"] if body.get("queue_name") in QUEUES else "fast"
        if with_redis_id and isinstance(body.get("options"), dict):
            body["options"].setdefault("redis_message_id", redis_id)
        data = json.dumps(body).encode()
    else:
        data, queue = body, queue or "fast"
    with client.pipeline() as pipe:
        pipe.hset(KEYS.messages(queue), redis_id, data)
        pipe.rpush(KEYS.queue(queue), redis_id)
        pipe.execute()
    message_id = body.get("message_id") if isinstance(body, dict) else None
    return queue, redis_id, message_id if isinstance(message_id, str) else None


def drained(client) -> bool:
    held = [
        key
        for q in QUEUES
        for key in (KEYS.queue(q), KEYS.messages(q), KEYS.delay_queue(q), KEYS.delayed_messages(q))
    ]
    with client.pipeline() as pipe:
        for key in held:
            pipe.exists(key)
        pipe.keys(KEYS.claimed_pattern)
        *present, acks = pipe.execute()
    return not any(present) and not any(client.scard(k) for k in acks)


def place_of(client, queue: str, redis_id: str, message_id: str | None) -> str:
    """Where one pushed message is: completed, dead, lost, or stuck (still held).

    Dead: its body in the dead-letter queue, or its message id among the dead letters (a
    message with an ``eta`` is re-enqueued under a new Redis id before it runs, as
    Dramatiq's delayed messages are)."""
    recorded = {f[b"message_id"].decode() for _, f in client.xrange(KEYS.dead_letter_reasons)}
    dead = client.zscore(KEYS.dead_letters(queue), redis_id) is not None or message_id in recorded
    held = client.hexists(KEYS.messages(queue), redis_id) or any(
        client.sismember(k, redis_id) for k in client.keys(KEYS.claimed_pattern)
    )
    completed = message_id is not None and any(
        f[b"message_id"].decode() == message_id for _, f in client.xrange(KEYS.completed)
    )
    if held:
        return "stuck"
    if dead + completed != 1:
        return "lost" if not dead else "twice"
    return "dead" if dead else "completed"


def reason_of(client, *ids: str | None) -> str | None:
    for _, f in client.xrange(KEYS.dead_letter_reasons):
        if f[b"message_id"].decode() in ids:
            return f[b"reason"].decode()
    return None


def settle(client, pushed) -> list[tuple[str, str | None]]:
    """Where each message ended and its recorded reason, once the queues are drained and
    the reason of each dead letter is in: the job log writes it just after the nack that
    moved the message (a reader reading in between found the letter but no reason)."""

    def settled() -> list[tuple[str, str | None]] | None:
        if not drained(client):
            return None
        found = [(place_of(client, q, r, m), reason_of(client, r, m)) for q, r, m in pushed]
        return None if any(p == "dead" and why is None for p, why in found) else found

    return wait_until(settled, timeout=30, what="the queues drained, every dead letter's reason in")


# --- the fixed corpus: the cases of the issue, each with the reason it must be dead-lettered


def _agent(**kwargs):
    return envelope("agent.run", {"job_id": "j", "org_id": "o", **kwargs})


CORPUS = {
    "retries not an integer": (
        lambda c: push(c, envelope(options={"retries": "abc"})),
        "invalid message: options.retries must be an integer >= 0",
    ),
    "kwargs a list": (
        lambda c: push(c, envelope(kwargs=["j", "org-1", "running"])),
        "invalid message: kwargs must be a JSON object",
    ),
    "unknown actor": (
        lambda c: push(c, envelope("billing.charge", queue="fast")),
        "unknown actor 'billing.charge'",
    ),
    "prompt over the limit": (
        lambda c: push(c, _agent(prompt="x" * 100_001)),
        "permanent error: invalid AgentRun payload: over the size limit: prompt (100001 > 100000 "
        "PAYLOAD_MAX_PROMPT_CHARS)",
    ),
    "record over the limit": (
        lambda c: push(
            c, envelope("crm.sync", {"job_id": "j", "org_id": "o", "record": {"a": "x" * 70_000}})
        ),
        "record (70008 > 65536 PAYLOAD_MAX_RECORD_BYTES)",
    ),
    "5 MB body": (
        lambda c: push(c, _agent(prompt="x" * 5_000_000)),
        "over MESSAGE_MAX_BYTES (2097152)",
    ),
    "undecodable bytes": (lambda c: push(c, b"\xff{not json"), "undecodable message"),
    "JSON nested 200,000 deep": (lambda c: push(c, b"[" * 200_000), "undecodable message"),
    "body names another queue": (
        lambda c: push(c, envelope(queue="nowhere"), "fast"),
        "invalid message: names queue 'nowhere'",
    ),
    "older than its max_age": (
        lambda c: push(c, envelope(options={"max_age": 1})),
        "expired: older than its max_age",
    ),
    "eta a year ahead": (
        lambda c: push(c, envelope(options={"eta": 2**53})),
        "options.eta is more than 8 days ahead",
    ),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_a_bad_message_is_dead_lettered_at_once_with_its_reason(worker, case):
    client, _, _ = worker
    make, expected = CORPUS[case]
    pushed = make(client)
    [(place, reason)] = settle(client, [pushed])
    assert place == "dead", (case, place)
    assert reason is not None and expected in reason, (case, reason)
    assert reason_of(client, pushed[1], pushed[2]) == reason  # recorded once


@pytest.mark.parametrize(
    "options", [{}, {"redis_message_id": "not-the-id-it-was-stored-under"}, {"redis_message_id": 7}]
)
def test_a_message_without_its_redis_id_runs_once_and_is_acked(worker, options):
    """A producer that is not Dramatiq (a Node service) may omit the id or get it wrong:
    the consumer knows the id it fetched, so the job runs and nothing stays claimed."""
    client, _, _ = worker
    pushed = push(client, envelope(options=options), with_redis_id=False)
    assert settle(client, [pushed]) == [("completed", None)]


def test_an_id_pushed_without_a_body_is_dead_lettered_not_left_claimed(worker):
    client, _, _ = worker
    client.rpush(KEYS.queue("fast"), "id-without-body")
    wait_until(lambda: drained(client), timeout=30)
    assert reason_of(client, "id-without-body") == "no message body is stored under it"


def test_invalid_jobs_spend_no_slot_and_create_no_key(worker):
    """Three agent runs with a 1 MB org_id, and an invalid run of a real organization,
    are dead-lettered before the rate limiter: no key, no slot spent."""
    client, _, _ = worker
    big = "o" * (1 << 20)
    pushed = [
        push(client, envelope("agent.run", {"job_id": "j", "org_id": big, "prompt": "p"}))
        for _ in range(3)
    ]
    pushed.append(push(client, envelope("agent.run", {"job_id": "j", "org_id": "acme"})))
    assert [place for place, _ in settle(client, pushed)] == ["dead"] * 4
    limiter = RateLimiter(client, key_prefix=KEYS.rate_limit_prefix)
    assert not any(client.exists(k) for k in limiter.keys_for("acme"))
    assert max((len(k) for k in client.keys("*")), default=0) < 1000


# --- generated bodies ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
wrong = st.one_of(json_values, st.text(max_size=300), st.integers(-(2**70), 2**70))
actor_names = st.sampled_from([*ACTORS, "unknown.actor"]) | st.text(max_size=300)


@st.composite
def kwargs_for(draw, actor):
    _, defaults = ACTORS.get(actor, ("fast", {}))
    kwargs = {"job_id": draw(st.text(min_size=1, max_size=10)), "org_id": "org-gen", **defaults}
    for name in draw(st.lists(st.sampled_from([*kwargs, "extra"]), max_size=2, unique=True)):
        kwargs[name] = draw(
            wrong | st.sampled_from(["", "y" * 129, "z" * 100_001, {"k": "v" * 70_000}])
        )
    return kwargs


@st.composite
def bodies(draw):
    kind = draw(st.sampled_from(["valid", "envelope", "envelope", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    actor = draw(st.sampled_from(list(ACTORS))) if kind == "valid" else draw(actor_names)
    body = envelope(actor, draw(kwargs_for(actor)) if kind != "valid" else None)
    if kind == "envelope":
        options = draw(
            st.dictionaries(
                st.sampled_from(
                    [
                        "retries",
                        "eta",
                        "max_age",
                        "time_limit",
                        "redis_message_id",
                        "rate_limit_deferrals",
                        "dead_letter_reason",
                        "other",
                    ]
                ),
                wrong,
                max_size=3,
            )
        )
        body["options"] = options
        for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=2, unique=True)):
            if draw(st.booleans()):
                del body[name]
            else:
                body[name] = draw(wrong)
        if draw(st.booleans()):
            body["kwargs"] = draw(wrong)
    return body


# The worker's threads draw jitter from ``random`` while Hypothesis generates: harmless.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_every_generated_message_ends_in_exactly_one_place(worker, report):
    client, _, _ = worker
    tally: Counter = Counter()

    @settings(
        max_examples=80,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(bodies(), min_size=1, max_size=4))
    @example(
        batch=[
            envelope(options={"retries": "abc"}),
            envelope(kwargs=["a"]),
            envelope("nobody.home", queue="fast"),
            b"\x00\xff",
        ]
    )
    # Due at once, so Dramatiq re-enqueues it under a new Redis id; then its payload fails.
    @example(
        batch=[envelope(options={"eta": 0}, kwargs={"job_id": "j"}), envelope(options={"eta": 1})]
    )
    def one_batch(batch):
        pushed = [push(client, body) for body in batch]
        outcomes = settle(client, pushed)
        tally.update(place for place, _ in outcomes)
        tally["tried"] += len(outcomes)
        for (place, reason), body in zip(outcomes, batch, strict=True):
            assert place in ("completed", "dead"), (place, body)
            if place == "dead":
                assert reason and reason != "rejected by the broker", reason

    one_batch()
    report.value(
        "Bad messages",
        "generated messages",
        f"{tally['tried']} tried, {tally['completed']} completed, {tally['dead']} dead-lettered",
    )
    assert tally["tried"] >= 80


def test_the_fetch_reloads_the_dispatch_script_after_a_flush(worker, caplog):
    """A restarted Redis has lost its scripts: the id-aware fetch loads it and goes on,
    without an error (no consumer restart)."""
    client, _, _ = worker
    client.script_flush()
    assert settle(client, [push(client, envelope())]) == [("completed", None)]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_worker_is_healthy_after_every_bad_message(worker):
    client, broker, w = worker
    from worker import actors

    message = actors.job_status_update.send(job_id="after", org_id="o", status="completed")
    wait_until(
        lambda: any(
            f[b"message_id"].decode() == message.message_id
            for _, f in client.xrange(KEYS.completed)
        ),
        timeout=20,
    )
    assert all(t.is_alive() for t in w.workers) and all(t.is_alive() for t in w.consumers.values())
    assert drained(client)
