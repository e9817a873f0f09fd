"""The replica's metrics endpoint: one process beside the workers serves what all add up.

``python -m worker`` starts ``serve()`` as a Dramatiq fork function (see
``worker.__main__.FORK_FUNCTIONS``) once the worker processes are up. It listens on
``METRICS_HOST:METRICS_PORT`` (default ``0.0.0.0:9191``) and answers:

- ``/metrics``: every metric of ``worker.metrics``, summed (counters, histograms,
  ``livesum`` gauges) or maximized (``livemax`` gauges) over the replica's processes,
  read from the private ``PROMETHEUS_MULTIPROC_DIR``; Prometheus text format, or
  OpenMetrics when the scraper asks for it;
- ``/healthz``: 200 while this replica's main process lives (for container health
  checks; alerting reads Prometheus' own ``up`` instead), else 503.

This process is also the replica's Redis health probe and samples the broker's backlog,
with the dead letters' counts that ``worker dead-letters`` keeps in Redis.
"""

from __future__ import annotations

import glob
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dramatiq import get_encoder
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.mmap_dict import MmapedDict  # private: tests/test_prometheus_client_pins.py

from worker import __version__, metrics
from worker.brokers.redis import Counts, redis_backlog, redis_queue_heads
from worker.config import Settings, load_settings
from worker.http_pool import READ_TIMEOUT, PooledMixIn
from worker.jobs import QUEUES
from worker.logs import install as install_safe_logs
from worker.middleware.metrics import runnable_since
from worker.middleware.redis_health import RedisWatch, probe_client
from worker.redis_keys import RedisKeys
from worker.replica import ENV

log = logging.getLogger(__name__)

STATES = ("ready", "delayed", "dead")

# --- reading the processes' files ---------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compact_dead_processes(path: str, alive: Callable[[int], bool] = pid_alive) -> int:
    """Fold the files of processes that have exited into one archive file per type.

    prometheus_client keeps a file per process and type for as long as the directory
    lives, and reads every one of them at each scrape: a replica whose processes come
    and go would scrape ever slower. Here a dead process's counters and histograms are
    added into ``<type>_archive.db`` (their totals must survive it) and its ``live*``
    gauge files are removed (``mark_process_dead``, also for a process killed before it
    could do that itself). Returns the number of files folded or removed.
    """
    folded: dict[str, list[str]] = defaultdict(list)
    removed = 0
    for file in glob.glob(os.path.join(path, "*.db")):
        parts = os.path.basename(file)[: -len(".db")].split("_")
        if not parts[-1].isdigit() or alive(int(parts[-1])):
            continue
        if parts[0] == "gauge":
            if parts[1].startswith("live"):
                multiprocess.mark_process_dead(int(parts[-1]), path)
                removed += 1
        else:
            folded[parts[0]].append(file)
    for typ, files in folded.items():
        archive = os.path.join(path, f"{typ}_archive.db")
        totals: dict[str, float] = defaultdict(float)
        for file in [archive, *files] if os.path.exists(archive) else files:
            for key, value, _timestamp, _pos in MmapedDict.read_all_values_from_file(file):
                totals[key] += value
        staging = archive + ".new"  # not *.db: invisible to a concurrent reader
        merged = MmapedDict(staging)
        for key, value in totals.items():
            merged.write_value(key, value, 0.0)
        merged.close()
        os.replace(staging, archive)
        for file in files:
            os.remove(file)
        removed += len(files)
    return removed


class ReplicaCollector:
    """prometheus_client's multiprocess collector, compacting dead processes first."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def collect(self):
        with self._lock:
            compact_dead_processes(self.path)
            files = glob.glob(os.path.join(self.path, "*.db"))
            return multiprocess.MultiProcessCollector.merge(files, accumulate=True)


def replica_registry(path: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ReplicaCollector(path))
    return registry


# --- the broker's backlog -------------------------------------------------------------------

#: queue -> age in seconds of its oldest ready message
Ages = dict[str, float]


def redis_oldest_ages(client, namespace: str, queues: Iterable[str]) -> Callable[[], Ages]:
    """Age of each queue's next ready message since it became runnable (its ``ready_at``
    after a delay, else its enqueue time), 0 for an empty queue; one round trip.

    The head is the oldest message in the queue's order. A message a stopping or lost
    worker hands back goes to the tail: older than the head, it is seen once it reaches
    the head (the stall this gauge is for moves no message, so misses nothing)."""
    read_heads = redis_queue_heads(client, namespace, queues)

    def read() -> Ages:
        heads, now, ages = read_heads(), time.time(), {}
        for queue, body in heads.items():
            try:
                message = get_encoder().decode(body)
                since = runnable_since(message.get("options", {}), message["message_timestamp"])
            except Exception:  # none waits, or the head is dead-lettered when fetched
                since = None
            ages[queue] = 0.0 if since is None else max(now - since, 0.0)
        return ages

    return read


#: queue -> (dead letters requeued so far, purged so far, age in seconds of its oldest
#: dead letter, or None where the broker cannot tell)
DeadLetters = dict[str, tuple[int, int, float | None]]


def redis_dead_letters(
    client, namespace: str, queues: Iterable[str], *, oldest: bool = True
) -> Callable[[], DeadLetters]:
    """What ``worker dead-letters`` counted in Redis (``RedisKeys.dead_letters_counted``:
    requeued and purged, by queue; a queue never touched reads 0) and, with ``oldest``, the
    age of each queue's oldest dead letter, 0 when it has none; one round trip.

    Dramatiq scores a dead letter in ``<queue>.XQ`` with the time it was dead-lettered
    (milliseconds, the worker's clock), so the lowest score is the oldest."""
    queues, keys = tuple(queues), RedisKeys(namespace)
    keys = RedisKeys(namespace)
    requeued, purged = keys.dead_letters_counted("requeued"), keys.dead_letters_counted("purged")

    def read() -> DeadLetters:
        with client.pipeline(transaction=False) as pipe:
            pipe.hmget(requeued, queues)
            pipe.hmget(purged, queues)
            for queue in queues if oldest else ():
                pipe.zrange(keys.dead_letters(queue), 0, 0, withscores=True)
            done, gone, *heads = pipe.execute()
        now, ages = time.time(), {}
        for queue, head in zip(queues if oldest else (), heads, strict=True):
            ages[queue] = max(now - head[0][1] / 1000, 0.0) if head else 0.0
        return {
            q: (int(done[i] or 0), int(gone[i] or 0), ages.get(q)) for i, q in enumerate(queues)
        }

    return read


def rabbitmq_backlog(url: str, queues: Iterable[str]) -> Callable[[], Counts]:
    """Counts of Dramatiq's RabbitMQ broker from a passive declare of each queue, its
    delay queue and its dead-letter queue: messages not delivered to a consumer, so a
    delayed message already prefetched by a worker is not counted."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url, middleware=[])
    queues = tuple(queues)
    return lambda: {q: broker.get_queue_message_counts(q) for q in queues}


class QueueBacklog:
    """Sets ``worker_queue_messages`` (and, given ``oldest``, the age of each queue's oldest
    ready message; given ``dead_letters``, the dead letters' counters and oldest age) at
    most once per ``min_interval`` seconds, when a scrape asks. While ``available()`` says
    the broker is unreachable, or for ``retry_after_failure`` seconds after a failed read,
    no read is tried and the last values stay: an outage never makes every scrape wait on
    a connection timeout.

    A dead-letter counter is created only once Redis has been read: exported at 0 before
    that, its first real value would look like that many requeues at once."""

    def __init__(
        self,
        read: Callable[[], Counts],
        *,
        min_interval: float = 10.0,
        available: Callable[[], bool] = lambda: True,
        retry_after_failure: float = 30.0,
        oldest: Callable[[], Ages] | None = None,
        dead_letters: Callable[[], DeadLetters] | None = None,
    ) -> None:
        self.read, self.min_interval, self.available = read, min_interval, available
        self.oldest, self.dead_letters = oldest, dead_letters
        self.retry_after_failure = retry_after_failure
        self._next_read = float("-inf")
        self._lock = threading.Lock()
        self._failing = self._dead_letters_failing = False
        self._totals: dict[tuple[object, str], int] = {}

    def refresh(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_read or not self.available():
                return
            self._next_read = now + self.min_interval
            try:
                counts = self.read()
                ages = self.oldest() if self.oldest is not None else {}
            except Exception as exc:
                if not self._failing:
                    log.warning("cannot sample the queue backlog: %s: %s", type(exc).__name__, exc)
                self._failing = True
                self._next_read = now + max(self.min_interval, self.retry_after_failure)
                return
            if self._failing:
                log.info("sampling the queue backlog again")
            self._failing = False
            for queue, values in counts.items():
                for state, value in zip(STATES, values, strict=True):
                    metrics.queue_messages.labels(queue, state).set(value)
            for queue, age in ages.items():
                metrics.queue_oldest_message_age.labels(queue).set(age)
            if self.dead_letters is not None:
                self._sample_dead_letters(self.dead_letters)

    def _sample_dead_letters(self, read: Callable[[], DeadLetters]) -> None:
        """Read apart from the backlog, which alerts read: when this read fails (a counter
        key of the wrong type, written by hand), only the dead letters' series keep their
        last values; the backlog is sampled as before."""
        try:
            dead = read()
        except Exception as exc:
            if not self._dead_letters_failing:
                log.warning("cannot read the dead letters' counts: %s: %s", type(exc).__name__, exc)
            self._dead_letters_failing = True
            return
        self._dead_letters_failing = False
        for queue, (requeued, purged, oldest) in dead.items():
            self._follow(metrics.dead_letters_requeued, queue, requeued)
            self._follow(metrics.dead_letters_purged, queue, purged)
            if oldest is not None:
                metrics.dead_letters_oldest_age.labels(queue).set(oldest)

    def _follow(self, counter, queue: str, total: int) -> None:
        """Bring ``counter`` of ``queue`` to ``total``, a count kept in Redis: add what it
        grew by; when it shrank (Redis lost the hash), start over from it, which Prometheus
        reads as a counter reset."""
        child, key = counter.labels(queue), (counter, queue)
        last = self._totals.get(key, 0)
        if total < last:
            child.reset()
            last = 0
        child.inc(total - last)
        self._totals[key] = total


def backlog_for(
    settings: Settings,
) -> tuple[Callable[[], Counts], Callable[[], Ages] | None, Callable[[], DeadLetters]]:
    """The backlog reader of the configured broker, its oldest-message reader (None on
    RabbitMQ: a queue's head cannot be read there without taking it) and the dead
    letters' reader (from Redis, where ``worker dead-letters`` counts on either broker;
    no oldest age on RabbitMQ)."""
    url = settings.broker_url
    namespace = settings.job_queue_name
    if url and url.startswith("amqp"):
        redis_client = probe_client(settings, timeout=1.0)
        return (
            rabbitmq_backlog(url, QUEUES),
            None,
            redis_dead_letters(redis_client, namespace, QUEUES, oldest=False),
        )
    client = probe_client(url or settings, timeout=1.0)
    return (
        redis_backlog(client, namespace, QUEUES),
        redis_oldest_ages(client, namespace, QUEUES),
        redis_dead_letters(client, namespace, QUEUES),
    )


# --- HTTP -------------------------------------------------------------------------------------


class _Server(PooledMixIn, WSGIServer):
    """A fixed pool of threads (``worker.http_pool``): scrapers are few; a flood of
    connections waits or is closed instead of starting a thread each."""


class _QuietHandler(WSGIRequestHandler):
    timeout = READ_TIMEOUT  # a silent connection is closed, not held forever

    def log_message(self, format, *args):  # Prometheus scrapes every 15 s: no access log
        pass


def make_app(registry: CollectorRegistry, backlog: QueueBacklog | None, alive: Callable[[], bool]):
    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [*_TEXT, ("Allow", "GET, HEAD")])
            return [b"only GET and HEAD\n"]
        body = _route(path, environ, start_response)
        return [] if method == "HEAD" else body

    def _route(path, environ, start_response):
        if path == "/metrics":
            if backlog is not None:
                backlog.refresh()
            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
            body = encoder(registry)
            start_response("200 OK", [("Content-Type", content_type)])
            return [body]
        if path == "/healthz":
            ok = alive()
            start_response("200 OK" if ok else "503 Service Unavailable", _TEXT)
            return [b"ok\n" if ok else b"replica main process is gone\n"]
        if path == "/":
            start_response("200 OK", _TEXT)
            return [b"worker replica: /metrics, /healthz\n"]
        start_response("404 Not Found", _TEXT)
        return [b"not found\n"]

    return app


_TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def make_http_server(host: str, port: int, app) -> WSGIServer:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("Server", (_Server,), {"address_family": family})
    return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)


def serve(settings: Settings | None = None) -> int:
    """Run the replica's endpoint, Redis probe and backlog sampler until SIGTERM."""
    settings = settings or load_settings()
    install_safe_logs(settings.log_level, secrets=settings.secret_values())
    path = os.environ[ENV]
    parent = os.getppid()

    metrics.concurrency.set(settings.job_concurrency)
    metrics.build_info.labels(__version__).set(1)
    probe = RedisWatch(
        probe_client(settings).ping,
        interval=settings.redis_health_interval_seconds,
        on_status=lambda up: metrics.redis_connection_status.set(1 if up else 0),
        name="Redis",
    ).start()
    read, oldest, dead_letters = backlog_for(settings)
    backlog = QueueBacklog(
        read,
        min_interval=settings.metrics_queue_sample_seconds,
        available=lambda: probe.connected,
        oldest=oldest,
        dead_letters=dead_letters,
    )
    server = make_http_server(
        settings.metrics_host,
        settings.metrics_port,
        make_app(replica_registry(path), backlog, lambda: os.getppid() == parent),
    )
    host, port = server.server_address[:2]
    log.info("serving metrics on http://%s:%d/metrics (liveness: /healthz)", host, port)

    def follow_parent() -> None:
        # Worker processes stop with the main process; this one must not outlive it and
        # keep the port from the replica that replaces it.
        while os.getppid() == parent:
            time.sleep(1)
        log.warning("replica main process is gone; stopping the metrics endpoint")
        server.shutdown()

    threading.Thread(target=follow_parent, name="follow-parent", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        probe.stop()
        server.server_close()
        multiprocess.mark_process_dead(os.getpid(), path)
    return 0
