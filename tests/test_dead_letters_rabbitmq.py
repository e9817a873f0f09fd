"""``worker dead-letters`` on a real rabbitmq-server: the job log describes the dead letters,
a requeue takes them from ``<queue>.XQ`` with manual acks and publisher confirms, and a
``kill -9`` midway loses nothing (at least once: at most the one in flight is in both)."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys

import pika
import pytest
import redis
from dramatiq.common import dq_name, xq_name

from stack.fleet import python_env
from stack.poll import wait_until
from stack.servers import free_port, redis_server, running
from tests.support.servers import rabbitmq_server
from worker.app import setup
from worker.config import Settings
from worker.middleware.job_log import JobLog
from worker.redis_keys import RedisKeys

pytestmark = pytest.mark.rabbitmq

#: Dramatiq's dead-letter queue of ``default`` on RabbitMQ (a queue, not a Redis key).
DEAD = xq_name("default")
KEYS = RedisKeys()
NS = KEYS.namespace
QUEUES = ("default", "critical", "fast")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One redis-server and one rabbitmq-server for the module (RabbitMQ takes seconds to
    start); each test starts from empty queues and an empty Redis."""
    with (
        running(redis_server(tmp_path_factory.mktemp("redis"))) as red,
        running(rabbitmq_server(tmp_path_factory.mktemp("rabbitmq"))) as rabbit,
    ):
        yield red.url, rabbit.url


@pytest.fixture
def env(servers):
    redis_url, amqp_url = servers
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    broker = setup(Settings(_env_file=None, REDIS_URL=redis_url, BROKER_URL=amqp_url))
    for queue in QUEUES:  # what a worker declares on its first message
        broker._declare_queue(queue)
        broker._declare_dq_queue(queue)
        broker._declare_xq_queue(queue)
        for name in (queue, dq_name(queue), xq_name(queue)):
            broker.channel.queue_purge(name)
    yield client, broker, python_env(REDIS_URL=redis_url, BROKER_URL=amqp_url)
    client.close()
    broker.close()


def dead_letter(client, broker, reason: str, n: int) -> list[str]:
    """``n`` agent.run messages in ``default.XQ``, recorded by the job log as the worker
    records them."""
    from worker import actors

    log = JobLog(client, namespace=NS)
    ids = []
    for i in range(n):
        message = actors.agent_run.message(job_id=f"j{i}", org_id="o", prompt="p")
        broker.channel.basic_publish(exchange="", routing_key=DEAD, body=message.encode())
        log.record_dead(message.message_id, "default", "agent.run", reason, attempts=5)
        ids.append(message.message_id)
    return ids


def drain(broker, queue: str) -> list[str]:
    """Take every message of ``queue``; their message ids."""
    from dramatiq import Message

    ids = []
    for _ in range(100_000):
        method, _, body = broker.channel.basic_get(queue, auto_ack=True)
        if method is None:
            return ids
        ids.append(Message.decode(body).message_id)
    raise AssertionError(f"{queue} never emptied")


def count(broker, queue: str) -> int:
    return broker.channel.queue_declare(queue, passive=True).method.message_count


def command(env, *args: str, **kwargs):
    argv = [sys.executable, "-m", "worker", "dead-letters", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, **kwargs)


def test_list_requeue_and_purge_through_the_job_log(env):
    client, broker, penv = env
    boom = dead_letter(client, broker, "5 of 5 attempts failed, last: boom", 6)
    other = dead_letter(client, broker, "permanent error: other", 3)
    listed = command(penv, "list")
    assert listed.returncode == 0 and listed.stdout.splitlines()[-1] == (
        "9 of 9 matching; 9 dead letters in all"
    )
    requeue = command(penv, "requeue", "--error", "BOOM", "--yes", "--rate", "100")
    assert requeue.returncode == 0, requeue.stderr
    assert requeue.stdout.splitlines()[-1] == "matched 6, requeued 6, already gone 0, failed 0"
    purge = command(penv, "purge", other[0], "--yes")
    assert purge.stdout.splitlines()[-1] == "matched 1, purged 1, already gone 0, failed 0"
    again = command(penv, "requeue", other[0], "--yes")
    assert again.returncode == 1 and "already gone 1" in again.stdout
    assert sorted(drain(broker, "default")) == sorted(boom)  # the rest were put back
    assert sorted(drain(broker, DEAD)) == sorted(other[1:])
    assert client.hgetall(KEYS.dead_letters_counted("requeued")) == {b"default": b"6"}
    assert client.hgetall(KEYS.dead_letters_counted("purged")) == {b"default": b"1"}


def test_kill_9_midway_loses_nothing(env):
    client, broker, penv = env
    wanted = dead_letter(client, broker, "5 of 5 attempts failed, last: boom", 1000)
    others = dead_letter(client, broker, "permanent error: other", 200)
    argv = [sys.executable, "-m", "worker", "dead-letters"]
    argv += ["requeue", "--error", "boom", "--yes", "--rate", "200"]
    proc = subprocess.Popen(argv, env=penv, stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: count(broker, "default") >= 300, timeout=60, interval=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # RabbitMQ returns a dead connection's unacked messages to the queue.
    wait_until(lambda: count(broker, "default") + count(broker, DEAD) >= 1200, timeout=30)
    queued, dead = drain(broker, "default"), drain(broker, DEAD)
    assert len(queued) == len(set(queued)) and len(dead) == len(set(dead))
    both = set(queued) & set(dead)
    print(
        f"\nRabbitMQ kill -9 midway: {len(queued)} requeued, {len(dead)} in {DEAD}, "
        f"{len(both)} in both (published and confirmed, not yet acked), of 1,200"
    )
    assert set(queued) | set(dead) == set(wanted) | set(others), "a message was lost"
    assert not set(others) & set(queued)
    assert len(both) <= 1  # one message is in flight at a time
    assert 300 <= len(queued) < 1000


def test_unreachable_rabbitmq_is_one_line_and_exit_1(env):
    client, broker, penv = env
    dead_letter(client, broker, "boom", 1)
    penv = {**penv, "BROKER_URL": f"amqp://guest:s3cretpass@127.0.0.1:{free_port()}/%2F"}
    result = command(penv, "requeue", "--all", "--yes")
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert "RabbitMQ" in result.stderr and "s3cretpass" not in result.stderr


def test_org_is_refused_on_rabbitmq(env):
    _, _, penv = env
    result = command(penv, "list", "--org", "o")
    assert result.returncode == 2 and "--org" in result.stderr


def test_the_count_of_every_queue_is_read_passively(env):
    from worker.dead_letters_rabbitmq import RabbitmqDeadLetters

    client, broker, penv = env
    dead_letter(client, broker, "boom", 3)
    store = RabbitmqDeadLetters(client, penv["BROKER_URL"], namespace=NS)
    wait_until(lambda: store.total() == 3, timeout=10)
    letters = store.all()
    assert collections.Counter(x.queue for x in letters) == {"default": 3}
    assert pika.__version__  # the client the command uses


def test_two_concurrent_requeues_of_the_same_ids_move_each_once(env):
    client, broker, penv = env
    ids = dead_letter(client, broker, "boom", 200)
    argv = [sys.executable, "-m", "worker", "dead-letters", "requeue", "--all", "--yes"]
    procs = [
        subprocess.Popen([*argv, "--rate", "100"], env=penv, stdout=subprocess.PIPE, text=True)
        for _ in "ab"
    ]
    summaries = [p.communicate(timeout=60)[0].splitlines()[-1] for p in procs]
    print(f"\nRabbitMQ concurrent requeues: {summaries}")
    queued = drain(broker, "default")
    assert sorted(queued) == sorted(ids) and drain(broker, DEAD) == []
    assert client.hget(KEYS.dead_letters_counted("requeued"), "default") == b"200"
