"""Every metric the worker exports, defined once: the "Metrics" of docs/contract.md.

Labels are bounded sets: ``queue`` (a declared Dramatiq queue) and ``job_type`` (a
declared actor name, or ``unknown`` for a message no actor of this worker can read).
Never an organization, job or message id, nor exception text.

A replica runs several processes. ``python -m worker`` points
``PROMETHEUS_MULTIPROC_DIR`` at a private, freshly emptied directory before any process
imports this module, so every value below lives in a per-process file that the
replica's exposition process (``worker.exposition``) adds up at each scrape. Gauges
use a ``live*`` mode so that a process that exits takes its values with it:

- ``livesum`` for ``worker_jobs_processing``: slots busy in all processes together;
- ``livemax`` for the values only the exposition process sets (Redis status, queue
  backlog, concurrency, build info): every other process holds the default 0, so the
  maximum is the exposition process's value, never a sum over processes.

The dead-letter counters are totals kept in Redis; only the exposition process writes
them (``worker.exposition.QueueBacklog``), so their sum over processes is its value.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOB_LABELS = ("queue", "job_type")

#: ``job_type`` of a dead letter whose actor is unknown or whose body cannot be decoded.
UNKNOWN = "unknown"

#: Upper bounds (seconds) for 0.1 s to 300 s attempts; 15, 20, 30 and 60 are bucket
#: edges so that LLM-call latency and the 30 s alert threshold are read exactly.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300)

#: Upper bounds (seconds) for queue waits from 50 ms to an hour. The queue-wait SLO counts
#: the attempts that started within a queue's threshold (alerts/config.libsonnet: 60 s on
#: critical and fast, 300 s on default), which a histogram reads exactly only at an edge:
#: every threshold configured there must be one of these (a test checks it).
QUEUE_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)

# --- jobs (set by worker.middleware.metrics in every worker process) ------------------

jobs_started = Counter(
    "worker_jobs",
    "Job attempts started: one per execution of an actor, retries included.",
    JOB_LABELS,
)
jobs_completed = Counter(
    "worker_jobs_completed",
    "Job attempts that returned without raising.",
    JOB_LABELS,
)
jobs_failed = Counter(
    "worker_jobs_failed",
    "Job attempts that raised; each is then either retried or dead-lettered.",
    JOB_LABELS,
)
jobs_retried = Counter(
    "worker_jobs_retried",
    "Failed job attempts that were scheduled for another attempt.",
    JOB_LABELS,
)
jobs_dead_lettered = Counter(
    "worker_jobs_dead_lettered",
    "Jobs moved to the dead-letter queue: attempts exhausted, a permanent error, "
    "an unknown actor or an undecodable message (job_type unknown).",
    JOB_LABELS,
)
jobs_processing = Gauge(
    "worker_jobs_processing",
    "Job attempts running now, summed over the processes of this replica.",
    JOB_LABELS,
    multiprocess_mode="livesum",
)
job_duration = Histogram(
    "worker_job_duration_seconds",
    "Wall time of each job attempt, successful or not, in seconds.",
    JOB_LABELS,
    buckets=DURATION_BUCKETS,
)

job_queue_wait = Histogram(
    "worker_job_queue_wait_seconds",
    "Seconds from the moment a message became runnable (enqueued, or its eta when it was "
    "delayed: retry backoff and rate-limit deferrals are not waiting) to the start of its "
    "attempt: what the sender of a job feels before it runs.",
    JOB_LABELS,
    buckets=QUEUE_WAIT_BUCKETS,
)

# --- Redis health (worker.middleware.redis_health) --------------------------------------

redis_connection_status = Gauge(
    "worker_redis_connection_status",
    "1 when the last Redis health probe of this replica succeeded, else 0.",
    multiprocess_mode="livemax",
)
redis_reconnect_attempts = Counter(
    "worker_redis_reconnect_attempts",
    "Attempts to reconnect to Redis after a lost connection, by the health probe and by "
    "the broker connection of each worker process of this replica.",
)

# --- replica (worker.exposition) --------------------------------------------------------

concurrency = Gauge(
    "worker_concurrency",
    "Job slots of this replica: worker processes times threads per process.",
    multiprocess_mode="livemax",
)
queue_messages = Gauge(
    "worker_queue_messages",
    "Messages held by the broker per queue and state (ready, delayed, dead), sampled at "
    "most once per scrape interval; every replica reports the same broker, so aggregate "
    "with max, never sum, across replicas.",
    ("queue", "state"),
    multiprocess_mode="livemax",
)
queue_oldest_message_age = Gauge(
    "worker_queue_oldest_message_age_seconds",
    "Age in seconds of the next ready message of each queue (the head of the queue: the "
    "oldest one waiting), counted from when it became runnable, 0 when none waits; sampled "
    "with the backlog. Grows while nothing starts at all, which the queue-wait histogram "
    "cannot see. Every replica reports the same broker: aggregate with max.",
    ("queue",),
    multiprocess_mode="livemax",
)
build_info = Gauge(
    "worker_build_info",
    "Always 1; the version label names the worker release this replica runs.",
    ("version",),
    multiprocess_mode="livemax",
)

# --- rate limiter (worker.ratelimit) --------------------------------------------------

rate_limit_decisions = Counter(
    "worker_rate_limit_decisions",
    "Rate-limiter decisions per window: allowed, throttled, or unavailable (Redis could not "
    "decide; the job was deferred, not run).",
    ("window", "decision"),
)

# --- dead letters (counted in Redis by `worker dead-letters`; worker.exposition samples) --
# The command runs in no replica: it counts in the hashes of RedisKeys.dead_letters_counted,
# and every replica exports those totals, read with the backlog. Each value is the broker's,
# the same on every replica: aggregate with max, never sum.

dead_letters_requeued = Counter(
    "worker_dead_letters_requeued",
    "Dead letters moved back to their queue by `worker dead-letters requeue`, per queue, "
    "since the Redis data was created: counted in Redis by the command and sampled with "
    "the backlog; every replica reports the same count, so aggregate with max, never sum.",
    ("queue",),
)
dead_letters_purged = Counter(
    "worker_dead_letters_purged",
    "Dead letters deleted by `worker dead-letters purge`, per queue, since the Redis data "
    "was created: counted in Redis by the command and sampled with the backlog; every "
    "replica reports the same count, so aggregate with max, never sum.",
    ("queue",),
)
dead_letters_oldest_age = Gauge(
    "worker_dead_letters_oldest_age_seconds",
    "Age in seconds of the oldest dead letter of each queue, counted from when it was "
    "dead-lettered, 0 when there is none; sampled with the backlog. The broker drops dead "
    "letters older than DEAD_LETTERS_TTL_SECONDS (7 days at most), so it stays under that. "
    "Every replica reports the same broker: aggregate with max.",
    ("queue",),
    multiprocess_mode="livemax",
)
