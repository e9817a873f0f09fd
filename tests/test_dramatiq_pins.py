"""Every private name of Dramatiq that ``worker/brokers/redis.py`` relies on, pinned (and
the delayed-message handling the queue-wait metric relies on).

Dramatiq keeps its Redis consumer, its ``dispatch`` script, its key layout and its log
lines to itself, and may change any of them in a release. The worker's behaviour tests
would then fail somewhere downstream, or not at all (a log filter that stops matching
only makes the logs noisy). These tests fail first, each naming the one thing that moved.
"""

from __future__ import annotations

import ast
import inspect
import re

import dramatiq
import dramatiq.worker
import pytest
from dramatiq.brokers import redis as dramatiq_redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.errors import ConnectionClosed, DecodeError

from stack.servers import redis_server, running
from worker.brokers import redis as ours
from worker.redis_keys import RedisKeys

DISPATCH_LUA = dramatiq_redis._scripts["dispatch"].decode()
KEYS = RedisKeys("ns")
WORKER_SOURCE = inspect.getsource(dramatiq.worker)


def changed(what: str) -> str:
    return f"Dramatiq {dramatiq.__version__} changed {what}: see worker/brokers/redis.py"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with running(redis_server(tmp_path_factory.mktemp("pins") / "redis")) as server:
        yield RedisBroker(url=server.url, namespace="pins", middleware=[])


def test_the_consumer_class_and_its_constructor():
    consumer = getattr(dramatiq_redis, "_RedisConsumer", None)
    assert inspect.isclass(consumer), changed("dramatiq.brokers.redis._RedisConsumer (gone)")
    params = list(inspect.signature(consumer.__init__).parameters)
    assert params == ["self", "broker", "queue_name", "prefetch", "timeout"], changed(
        f"_RedisConsumer.__init__{inspect.signature(consumer.__init__)}"
    )
    for method in ("__next__", "ack", "nack", "requeue"):
        assert callable(getattr(consumer, method, None)), changed(f"_RedisConsumer.{method}")


def test_the_consumer_keeps_queued_message_ids_and_its_broker(broker):
    consumer = dramatiq_redis._RedisConsumer(broker, "default", 1, 100)
    assert isinstance(getattr(consumer, "queued_message_ids", None), set), changed(
        "_RedisConsumer.queued_message_ids (no longer a set)"
    )
    assert consumer.broker is broker and consumer.queue_name == "default", changed(
        "_RedisConsumer.broker / .queue_name"
    )


def test_broker_consume_signature():
    params = list(inspect.signature(RedisBroker.consume).parameters)
    assert params == ["self", "queue_name", "prefetch", "timeout"], changed(
        f"RedisBroker.consume{inspect.signature(RedisBroker.consume)}"
    )


def test_the_scripts_the_broker_loads():
    assert isinstance(getattr(dramatiq_redis, "_scripts", None), dict), changed(
        "dramatiq.brokers.redis._scripts"
    )
    assert "dispatch" in dramatiq_redis._scripts, changed("the dispatch.lua script")


def test_broker_private_attributes(broker):
    assert isinstance(getattr(broker, "broker_id", None), str), changed("RedisBroker.broker_id")
    for name in ("namespace", "client", "heartbeat_timeout", "dead_message_ttl"):
        assert hasattr(broker, name), changed(f"RedisBroker.{name}")
    scripts = getattr(broker, "scripts", None)
    assert isinstance(scripts, dict) and "dispatch" in scripts, changed(
        'RedisBroker.scripts["dispatch"]'
    )
    assert hasattr(scripts["dispatch"], "sha"), changed('RedisBroker.scripts["dispatch"].sha')


def test_broker_maintenance_and_unpack_size_helpers(broker):
    should = inspect.signature(RedisBroker._should_do_maintenance)
    assert list(should.parameters) == ["self", "command"], changed(
        f"RedisBroker._should_do_maintenance{should}"
    )
    assert broker._should_do_maintenance("ack") in (0, 1), changed(
        "RedisBroker._should_do_maintenance's result (0 or 1)"
    )
    size = inspect.signature(RedisBroker._max_unpack_size)
    assert list(size.parameters) == ["self"], changed(f"RedisBroker._max_unpack_size{size}")
    assert broker._max_unpack_size() > 0, changed("RedisBroker._max_unpack_size's result")


@pytest.mark.parametrize("command", ["ack", "nack", "requeue", "qsize"])
def test_broker_do_commands_reach_the_dispatch_script(broker, command):
    assert callable(getattr(broker, f"do_{command}", None)), changed(
        f"RedisBroker.do_{command} (dispatch command {command!r})"
    )
    assert re.search(rf'command == "{command}"', DISPATCH_LUA), changed(
        f"the dispatch script's command {command!r}"
    )


def test_dispatch_arguments_are_built_as_dramatiq_builds_them():
    """``dispatch_args`` mirrors the list ``RedisBroker._dispatch`` sends; both must match
    the ARGV the Lua script reads."""
    tree = ast.parse(inspect.getsource(RedisBroker._dispatch).strip())
    lists = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.List)
        and [ast.unparse(t) for t in node.targets] == ["args"]
    ]
    assert lists, changed("RedisBroker._dispatch (no `args = [...]` list found)")
    theirs = [ast.unparse(element) for element in lists[0].elts]
    expected = [
        "command",
        "timestamp",
        "queue_name",
        "self.broker_id",
        "self.heartbeat_timeout",
        "self.dead_message_ttl",
        "self._should_do_maintenance(command)",
        "self._max_unpack_size()",
        "*args",
    ]
    assert theirs == expected, changed(f"the dispatch arguments RedisBroker builds: {theirs}")


def test_dispatch_script_argv_layout():
    lua = DISPATCH_LUA
    argv = dict(re.findall(r"local (\w+) = ARGV\[(\d+)\]", lua))
    layout = sorted(argv, key=lambda name: int(argv[name]))
    assert layout == [
        "command",
        "timestamp",
        "queue_name",
        "worker_id",
        "heartbeat_timeout",
        "dead_message_ttl",
        "do_maintenance",
        "max_unpack_size",
    ], changed(f"dispatch.lua's ARGV layout: {layout}")
    assert "for i=9,#ARGV do" in lua, changed("where dispatch.lua's command arguments start")


def test_our_dispatch_args_follow_the_layout(broker):
    args = ours.dispatch_args(broker, "ack", "default", "m-1", maintenance=False)
    assert args[0] == "ack" and args[2] == "default" and args[3] == broker.broker_id
    assert args[4:7] == [broker.heartbeat_timeout, broker.dead_message_ttl, 0]
    assert args[8:] == ["m-1"]


@pytest.mark.parametrize(
    ("lua", "ours_", "expected"),
    [
        ('namespace .. ":__acks__." .. worker_id', KEYS.claimed("b", "q"), "ns:__acks__.b.q"),
        ('acks .. "." .. queue_name', KEYS.claimed("b", "q"), "ns:__acks__.b.q"),
        ('namespace .. ":__heartbeats__"', KEYS.heartbeats, "ns:__heartbeats__"),
        ('namespace .. ":" .. queue_name', KEYS.queue("q"), "ns:q"),
        ('queue_full_name .. ".msgs"', KEYS.messages("q"), "ns:q.msgs"),
        ('namespace .. ":" .. queue_canonical_name .. ".XQ"', KEYS.dead_letters("q"), "ns:q.XQ"),
        ('xqueue_full_name .. ".msgs"', KEYS.dead_letter_messages("q"), "ns:q.XQ.msgs"),
    ],
)
def test_key_layout(lua, ours_, expected):
    """Each key Dramatiq's script builds, and ours for it (through ``RedisKeys``)."""
    assert lua in DISPATCH_LUA, changed(f"the Redis key built as {lua}")
    assert ours_ == expected


def test_queue_name_helpers():
    assert (dq_name("q"), xq_name("q"), q_name("q.DQ")) == ("q.DQ", "q.XQ", "q"), changed(
        "dramatiq.common's queue names (.DQ, .XQ)"
    )
    assert (KEYS.delay_queue("q"), KEYS.delayed_messages("q")) == ("ns:q.DQ", "ns:q.DQ.msgs")
    assert (KEYS.dead_letters("q.DQ"), KEYS.dead_letter_messages("q.DQ")) == (
        "ns:q.XQ",
        "ns:q.XQ.msgs",
    )
    assert ours.delay_queue_name("q") == "q.DQ" and ours.dead_letter_queue_name("q.DQ") == "q.XQ"
    assert ours.is_delay_queue("q.DQ") and not ours.is_delay_queue("q")
    assert KEYS.parse_claimed(KEYS.claimed("broker-1", "q.DQ")) == ("broker-1", "q.DQ")


def test_the_consumer_reads_the_redis_message_id_option():
    source = inspect.getsource(dramatiq_redis._RedisConsumer)
    assert 'message.options["redis_message_id"]' in source, changed(
        'the "redis_message_id" option the consumer acks by'
    )


def test_errors_the_consumer_raises():
    params = list(inspect.signature(DecodeError.__init__).parameters)
    assert params == ["self", "message", "data", "error"], changed("DecodeError(data, error)")
    assert issubclass(ConnectionClosed, dramatiq.errors.BrokerConnectionError), changed(
        "ConnectionClosed"
    )


@pytest.mark.parametrize(
    "line",
    [
        '"Consumer encountered a connection error',
        '"Restarting consumer in',
        '"Failed to post_process_message',
        "Results middleware",
        'self.logger.warning("Message %s was skipped.", message)',
        'get_logger(__name__, "WorkerThread")',
    ],
)
def test_log_lines_the_worker_filters(line):
    assert line in WORKER_SOURCE, changed(f"the log line {line!r} in dramatiq/worker.py")


def test_log_recognizers_match_dramatiq_lines():
    import logging

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, "", 0, msg, args, None)

    assert ours.is_consumer_restart_line(record("Restarting consumer in %0.2f seconds.", 3))
    assert not ours.is_consumer_restart_line(record("Worker process is ready for action."))
    message = object()
    assert ours.skipped_message(record("Message %s was skipped.", message)) is message
    assert ours.WORKER_THREAD_LOGGER == dramatiq.worker.__name__ + ".WorkerThread"


def test_the_consumer_fetches_through_do_fetch_and_pops_its_cache_from_the_front():
    """``WorkerRedisBroker.do_fetch`` returns the bodies with their ids; the consumer must
    still fill ``message_cache`` from ``broker.do_fetch(queue, n)`` and take ``pop(0)``, and
    the fetch must pop the head of the queue's list, for the ids to match the bodies."""
    source = inspect.getsource(dramatiq_redis._RedisConsumer.__next__)
    assert "self.broker.do_fetch(" in source and "self.message_cache.pop(0)" in source, changed(
        "how _RedisConsumer fills and reads its message_cache"
    )
    fetch = DISPATCH_LUA[DISPATCH_LUA.index('command == "fetch"') :]
    fetch = fetch[: fetch.index("elseif")]
    assert 'redis.call("lpop", queue_full_name)' in fetch, changed("the fetch command's pop")
    assert "math.min(ARGS[1], max_unpack_size)" in fetch, changed("the fetch command's batch")


def test_a_queue_is_served_from_its_head():
    """``redis_queue_heads`` reads a queue's next ready message at index 0 of its list:
    the dispatch script pushes new messages to the tail and fetches from the head."""
    assert 'redis.call("rpush", queue_full_name, message_id)' in DISPATCH_LUA, changed("enqueue")
    assert 'redis.call("lpop", queue_full_name)' in DISPATCH_LUA, changed("fetch")


def test_a_delayed_message_loses_its_eta_when_it_is_moved_to_its_queue():
    """``JobMetrics.before_delay_message`` keeps a delayed message's eta as ``ready_at``:
    the copy Dramatiq enqueues once the eta passes has no eta, and keeps the first
    enqueue's ``message_timestamp``."""
    assert 'self.broker.emit_before("delay_message", message)' in WORKER_SOURCE, changed(
        "the delay_message hook"
    )
    assert 'del new_message.options["eta"]' in WORKER_SOURCE, changed("the delayed-message move")
    assert "message.copy(queue_name=queue_name)" in WORKER_SOURCE, changed("the delayed copy")
