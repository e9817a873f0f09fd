"""Dead letters replayed on a real redis-server: the Lua moves' guarantees, a replay through
running replicas, and ``kill -9`` of the command midway."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from stack.dead_letter_seed import Seed, seed_dead_letters, varied_seeds
from stack.fleet import python_env
from stack.poll import wait_until
from stack.servers import free_port
from tests.support.fleet import completed_ids, settings_for
from worker.dead_letters import DeadLetters, Pacer, Selection
from worker.jobs import QUEUES
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()
NS = KEYS.namespace


def command(redis_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "worker", "dead-letters", *args]


def places(client: redis.Redis, queue: str) -> dict[str, set[str]]:
    """Where each Redis id of ``queue`` is: its list, its bodies, the dead set, its bodies."""
    xq, xq_bodies = (KEYS.dead_letters(queue), KEYS.dead_letter_messages(queue))
    with client.pipeline(transaction=False) as pipe:
        pipe.lrange(KEYS.queue(queue), 0, -1)
        pipe.hkeys(KEYS.messages(queue))
        pipe.zrange(xq, 0, -1)
        pipe.hkeys(xq_bodies)
        listed, bodies, dead, dead_bodies = pipe.execute()
    assert len(listed) == len(set(listed)), "an id is listed twice on its queue"
    found = {"listed": listed, "bodies": bodies, "dead": dead, "dead_bodies": dead_bodies}
    return {name: {i.decode() for i in ids} for name, ids in found.items()}


def assert_each_in_one_place(client: redis.Redis, queue: str, redis_ids: set[str]) -> tuple:
    """Every id is either queued (listed, with its body) or dead (in the set, with its
    body), never both, never neither; the counts of each."""
    p = places(client, queue)
    queued, dead = p["listed"] & p["bodies"], p["dead"] & p["dead_bodies"]
    assert p["listed"] == p["bodies"], "a queued id without its body, or a body not listed"
    assert p["dead"] == p["dead_bodies"], "a dead id without its body, or a body not in the set"
    assert not queued & dead, f"{len(queued & dead)} ids in both places"
    assert queued | dead == redis_ids, f"{len(redis_ids - queued - dead)} ids lost"
    return len(queued), len(dead)


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_requeue_restores_the_retry_budget_and_records_the_requeue(client):
    [message_id] = seed_dead_letters(client, NS, [Seed(attempts=5)])
    store = DeadLetters(client, namespace=NS)
    [letter] = store.all()
    assert (letter.message_id, letter.attempts, letter.options["retries"]) == (message_id, 5, 4)
    for round_ in (1, 2):
        outcome = store.requeue([letter], rate=1000)
        assert (outcome.done, outcome.gone) == (1, 0)
        body = json.loads(client.hget(KEYS.messages("default"), letter.redis_id))
        assert body["message_id"] == message_id and body["queue_name"] == "default"
        options = body["options"]
        assert "retries" not in options and "eta" not in options
        assert options["requeues"] == round_ and len(options["requeued_at"]) == round_
        assert options["redis_message_id"] == letter.redis_id
        if round_ == 1:  # dead again, as Dramatiq's nack leaves it: the stored body
            client.lrem(KEYS.queue("default"), 0, letter.redis_id)
            client.hdel(KEYS.messages("default"), letter.redis_id)
            xq, xq_bodies = (KEYS.dead_letters("default"), KEYS.dead_letter_messages("default"))
            client.zadd(xq, {letter.redis_id: int(time.time() * 1000)})
            client.hset(xq_bodies, letter.redis_id, json.dumps(body))
            [letter] = store.all()
            assert letter.options["requeues"] == 1
    assert client.hgetall(KEYS.dead_letters_counted("requeued")) == {b"default": b"2"}


def test_a_body_changed_since_it_was_read_is_not_moved(client):
    seed_dead_letters(client, NS, [Seed()])
    store = DeadLetters(client, namespace=NS)
    [letter] = store.all()
    client.hset(KEYS.dead_letter_messages("default"), letter.redis_id, b'{"changed": 1}')
    outcome = store.requeue([letter], rate=1000)
    assert (outcome.done, outcome.failed) == (0, 1)
    assert client.llen(KEYS.queue("default")) == 0 and store.total() == 1


def test_purge_deletes_and_counts_by_queue(client):
    seed_dead_letters(client, NS, [Seed(queue="fast", actor="job.status_update")] * 3)
    store = DeadLetters(client, namespace=NS)
    letters = store.all()
    outcome = store.purge(letters)
    assert (outcome.done, store.total()) == (3, 0)
    assert store.purge(letters).gone == 3  # a second purge finds them gone
    assert client.hgetall(KEYS.dead_letters_counted("purged")) == {b"fast": b"3"}
    assert not client.exists(KEYS.dead_letters("fast"), KEYS.dead_letter_messages("fast"))


def test_two_concurrent_requeues_of_the_same_ids_move_each_once(client, redis_url):
    ids = seed_dead_letters(client, NS, [Seed()] * 300)
    redis_ids = {letter.redis_id for letter in DeadLetters(client, namespace=NS).all()}
    # 3 s each at 100/s: the two overlap whatever their start-up times
    argv = command(redis_url, "requeue", *ids, "--yes", "--rate", "100")
    env = python_env(REDIS_URL=redis_url)
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    summaries = [out.strip().splitlines()[-1] for out in outputs]
    requeued = [int(s.split("requeued ")[1].split(",")[0].replace(",", "")) for s in summaries]
    gone = [int(s.split("already gone ")[1].split(",")[0].replace(",", "")) for s in summaries]
    print(f"\nconcurrent requeues: {summaries}")
    assert sum(requeued) == 300 and sum(gone) == 300
    assert assert_each_in_one_place(client, "default", redis_ids) == (300, 0)
    assert client.hget(KEYS.dead_letters_counted("requeued"), "default") == b"300"


def test_threads_requeueing_the_same_letters_in_any_order_move_each_once(client):
    seed_dead_letters(client, NS, [Seed()] * 200)
    letters = DeadLetters(client, namespace=NS).all()
    redis_ids = {letter.redis_id for letter in letters}
    outcomes = []

    def requeue(order: int) -> None:
        mine = letters[::-1] if order % 2 else letters
        outcomes.append(DeadLetters(client, namespace=NS).requeue(mine, rate=100_000))

    threads = [threading.Thread(target=requeue, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sum(o.done for o in outcomes) == 200 and sum(o.gone for o in outcomes) == 600
    assert assert_each_in_one_place(client, "default", redis_ids) == (200, 0)


def test_kill_9_midway_leaves_every_message_in_exactly_one_place(client, redis_url):
    seed_dead_letters(client, NS, varied_seeds(1000))
    ids_by_queue = collections.defaultdict(set)
    for letter in DeadLetters(client, namespace=NS).all():
        ids_by_queue[letter.queue].add(letter.redis_id)
    proc = subprocess.Popen(
        command(redis_url, "requeue", "--all", "--yes", "--rate", "400"),
        env=python_env(REDIS_URL=redis_url),
        stdout=subprocess.DEVNULL,
    )
    try:

        def moved() -> int:
            return sum(int(v) for v in client.hvals(KEYS.dead_letters_counted("requeued")))

        wait_until(lambda: moved() >= 300, timeout=30, what="300 requeued", interval=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    counts = {q: assert_each_in_one_place(client, q, ids_by_queue[q]) for q in QUEUES}
    queued = sum(q for q, _ in counts.values())
    dead = sum(d for _, d in counts.values())
    print(f"\nkill -9 midway: {queued} requeued, {dead} still dead, of 1000: {counts}")
    assert queued + dead == 1000 and 300 <= queued < 1000
    assert queued == sum(int(v) for v in client.hvals(KEYS.dead_letters_counted("requeued")))
    assert proc.returncode == -signal.SIGKILL


def test_pacer_spaces_calls_at_the_rate():
    clock = [0.0]
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    pacer = Pacer(20, clock=lambda: clock[0], sleep=sleep)
    for _ in range(21):
        pacer.wait()
    assert clock[0] == pytest.approx(1.0)  # 21 calls at 20/s: the last one second after
    clock[0] += 10  # a stall earns no burst afterwards
    before = clock[0]
    pacer.wait()
    pacer.wait()
    assert clock[0] - before == pytest.approx(0.05)


def test_selection_refuses_conflicts():
    from worker.dead_letters import SelectionError

    with pytest.raises(SelectionError, match="--all"):
        Selection(ids=("a",), everything=True).check()
    with pytest.raises(SelectionError, match="unknown queue"):
        Selection(queue="nope").check()


# --- replay through a running fleet --------------------------------------------------------

JOBS = 200
RATE = 20.0


@pytest.mark.slow
def test_replay_of_200_dead_agent_runs_completes_each_once_at_the_rate(
    client, redis_url, start_replica, metrics_env, tmp_path
):
    """The simulated backend fails every call: 200 agent.run jobs are dead-lettered after
    their 5 attempts. Then the backend is fixed and the command replays them at 20/s
    into two running replicas."""
    from worker.app import setup

    knobs = dict(
        SIM_LATENCY_SECONDS="0.01-0.03",
        RETRY_TIME_SCALE="0.005",
        RATE_LIMITS="minute=1000000/60",
        JOB_CONCURRENCY="8",
        WORKER_PROCESSES="1",
    )
    client.hset(KEYS.simulation, "failure_ratio", 1)
    replicas = [
        start_replica(metrics_env(redis_url, free_port(), **knobs), tmp_path / f"r{n}.log")
        for n in range(2)
    ]
    setup(settings_for(redis_url))
    from worker import actors  # declared on the broker setup() made

    sent = [
        actors.agent_run.send(job_id=f"j{i}", org_id=f"org-{i % 10}", prompt="hello")
        for i in range(JOBS)
    ]
    store = DeadLetters(client, namespace=NS)
    wait_until(lambda: store.total() == JOBS, timeout=120, what=lambda: f"{store.total()} dead")
    assert {x.attempts for x in store.all()} == {5}
    client.hset(KEYS.simulation, "failure_ratio", 0)
    time.sleep(1.2)  # the replicas read the knobs at most once a second

    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:  # the replay as Redis sees it, independent of the command
        while not done.is_set():
            count = int(client.hget(KEYS.dead_letters_counted("requeued"), "default") or 0)
            samples.append((time.monotonic(), count))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = subprocess.run(
        command(redis_url, "requeue", "--actor", "agent.run", "--rate", str(RATE), "--yes"),
        env=python_env(REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    done.set()
    sampler.join(timeout=5)
    assert result.returncode == 0, result.stderr
    assert f"matched {JOBS}, requeued {JOBS}, already gone 0, failed 0" in result.stdout

    first = next(t for t, c in samples if c >= 1)
    last = next(t for t, c in samples if c >= JOBS)
    measured = (JOBS - 1) / (last - first)
    print(f"\nreplay: {JOBS} requeued at {measured:.2f}/s against --rate {RATE:g}")
    assert abs(measured - RATE) <= 0.1 * RATE

    wanted = {m.message_id for m in sent}

    def all_completed() -> bool:
        return wanted <= set(completed_ids(client, NS))

    wait_until(all_completed, timeout=60, what="every replayed job completed")
    time.sleep(0.5)  # a duplicate would show up now
    counts = collections.Counter(i for i in completed_ids(client, NS) if i in wanted)
    assert set(counts.values()) == {1}, "a replayed job completed twice"
    assert store.total() == 0
    for replica in replicas:
        replica.stop()
