"""Every Redis key the worker, the tools, the benchmarks and the tests use, named here.

A deployment keeps all of its keys under one namespace, ``JOB_QUEUE_NAME`` (default
``DEFAULT_NAMESPACE``, written here and nowhere else); ``RedisKeys(namespace)`` names
each of them. They are of two kinds:

- Dramatiq's: queues, delay queues, dead-letter queues and their bodies, the sets of
  claimed messages (``acks``), the heartbeats. Their layout is Dramatiq's private
  business; ``worker/brokers/redis.py`` holds it with every other private name of
  Dramatiq's (``tests/test_dramatiq_pins.py`` pins it), and the methods here delegate to
  it, so a change in Dramatiq is made there once.
- The worker's own: the job log, the simulation knobs, the rate limiter's, job statuses,
  organizations. Their layout is written here. A new key (the dead-letter audit stream
  ``<ns>:audit``, per-queue counters of requeued or purged dead letters) is a new
  property or method in that section.

``tests/test_redis_keys.py`` fails when a key is built anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.brokers import redis as dramatiq_layout

#: The namespace of a deployment that sets no ``JOB_QUEUE_NAME``.
DEFAULT_NAMESPACE = "agent-jobs"


@dataclass(frozen=True)
class RedisKeys:
    """The Redis keys of the deployment whose ``JOB_QUEUE_NAME`` is ``namespace``."""

    namespace: str = DEFAULT_NAMESPACE

    # --- Dramatiq's layout (delegated to worker.brokers.redis) ---------------------------

    def queue(self, queue: str) -> str:
        """The list of message ids ready on ``queue`` (a delay queue's: due or not)."""
        return dramatiq_layout.queue_key(self.namespace, queue)

    def messages(self, queue: str) -> str:
        """The hash of ``queue``'s message bodies by Redis message id."""
        return dramatiq_layout.messages_key(self.namespace, queue)

    def delay_queue(self, queue: str) -> str:
        """The list of ``queue``'s delayed message ids (retries, deferrals, ``eta``)."""
        return self.queue(dramatiq_layout.delay_queue_name(queue))

    def delayed_messages(self, queue: str) -> str:
        """The bodies of ``queue``'s delayed messages."""
        return dramatiq_layout.delayed_messages_key(self.namespace, queue)

    def dead_letters(self, queue: str) -> str:
        """The sorted set of ``queue``'s dead-lettered message ids, by time of death."""
        return dramatiq_layout.dead_letter_keys(self.namespace, queue)[0]

    def dead_letter_messages(self, queue: str) -> str:
        """The bodies of ``queue``'s dead-lettered messages."""
        return dramatiq_layout.dead_letter_keys(self.namespace, queue)[1]

    def claimed(self, broker_id: str, queue: str) -> str:
        """The set of ``queue``'s message ids the broker ``broker_id`` fetched and has not
        acknowledged (``*`` for either makes a pattern)."""
        return dramatiq_layout.claimed_key(self.namespace, broker_id, queue)

    @property
    def claimed_pattern(self) -> str:
        """A ``SCAN`` pattern for every broker's claimed set of every queue."""
        return dramatiq_layout.claimed_keys_pattern(self.namespace)

    def parse_claimed(self, key: str | bytes) -> tuple[str, str]:
        """(broker id, queue) of a key ``claimed_pattern`` found."""
        return dramatiq_layout.parse_claimed_key(self.namespace, key)

    @property
    def heartbeats(self) -> str:
        """The sorted set of each broker's last heartbeat, in milliseconds."""
        return dramatiq_layout.heartbeats_key(self.namespace)

    # --- the worker's own keys -----------------------------------------------------------

    @property
    def everything(self) -> str:
        """A ``SCAN`` pattern for every key of the namespace."""
        return f"{self.namespace}:*"

    @property
    def completed(self) -> str:
        """The capped stream of completed jobs and their results (``JobLog``)."""
        return f"{self.namespace}:completed"

    @property
    def dead_letter_reasons(self) -> str:
        """The capped stream of why each job was dead-lettered (``JobLog``)."""
        return f"{self.namespace}:dead"

    @property
    def simulation(self) -> str:
        """The hash of live overrides of the simulated backends (``SimulationKnobs``)."""
        return f"{self.namespace}:simulation"

    @property
    def rate_limit_prefix(self) -> str:
        """The prefix of the rate limiter's keys (``rate_limit_window``)."""
        return f"{self.namespace}:ratelimit"

    @property
    def audit(self) -> str:
        """The capped stream of every dead-letter requeue and purge (``worker.dead_letters``)."""
        return f"{self.namespace}:audit"

    def dead_letters_counted(self, action: str) -> str:
        """The hash of dead letters requeued or purged (``action``) so far, by queue: the
        ``worker dead-letters`` command counts them, every replica exports them."""
        return f"{self.namespace}:dead-letters.{action}"

    def job(self, job_id: str) -> str:
        """The hash of a job's status (``RedisJobStore``)."""
        return f"{self.namespace}:job:{job_id}"

    def organization(self, org_id: str) -> str:
        """The hash of an organization's encrypted LLM API key and model."""
        return f"{self.namespace}:org:{org_id}"


def rate_limit_window(prefix: str, org_tag: str, window: str, seconds: float) -> str:
    """The counters of one organization's window. ``prefix`` is ``rate_limit_prefix`` for a
    worker (a limiter used on its own may have another); the ``{org_tag}`` hash tag keeps
    an organization's windows in one Redis Cluster slot."""
    return f"{prefix}:{{{org_tag}}}:{window}:{seconds:g}"


def rate_limit_pattern(prefix: str) -> str:
    """A ``SCAN`` pattern for every window of every organization under ``prefix``."""
    return f"{prefix}:{{*}}:*"


def parse_rate_limit_window(prefix: str, key: str | bytes) -> tuple[str, str, float] | None:
    """(organization tag, window name, window seconds) of a key ``rate_limit_window`` built
    under ``prefix``; None for another key."""
    text = key.decode() if isinstance(key, bytes) else key
    head = f"{prefix}:{{"
    if not text.startswith(head) or "}:" not in text:
        return None
    tag, _, rest = text[len(head) :].partition("}:")
    window, _, seconds = rest.rpartition(":")
    try:
        return tag, window, float(seconds)
    except ValueError:
        return None
