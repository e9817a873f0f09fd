"""Kubernetes numbers from the capacity planner: the autoscaler's bounds and target, and the
worker's termination grace period (docs/kubernetes.md).

The KEDA trigger counts the work that wants a slot: ready messages in the broker plus the
attempts in flight (``TRIGGER_QUERY``). The Horizontal Pod Autoscaler behind the
ScaledObject asks for ``ceil(metric / target)`` replicas, so with ``target`` = slots per
replica x the planner's utilization (25 x 0.8 = 20) a fleet running ``L`` jobs asks for
``ceil(L / 20)`` replicas: the planner's own recommendation. Dramatiq prefetches messages
into per-worker ack sets, where neither term sees them; but a fleet whose slots are all busy
reports ``slots`` in flight, ``1 / utilization`` (1.25) times the target, so it keeps
scaling up while a backlog hides in the prefetch (docs/kubernetes.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.config import Settings

if TYPE_CHECKING:  # capacity's command line imports this module
    from stack.capacity import CapacityPlan

#: The ScaledObject's floor: two replicas, so that one node's loss leaves a worker running.
MIN_REPLICAS = 2

#: Work that wants a slot: ready messages (every replica samples the same broker, so ``max``
#: across replicas, then summed over queues) plus attempts in flight on every replica.
TRIGGER_QUERY = (
    '(sum(max by (queue) (worker_queue_messages{job="worker",state="ready"})) or vector(0))'
    ' + (sum(worker_jobs_processing{job="worker"}) or vector(0))'
)

#: Seconds after the last job ends for the replica to exit: hand prefetched messages back to
#: the broker, stop its processes, and flush the metrics (compose's 75 s stop grace period
#: is the default SHUTDOWN_GRACE_SECONDS of 60 plus this).
EXIT_MARGIN_SECONDS = 15

#: Connect timeouts of the clients whose calls bound an attempt (worker/openrouter.py).
LLM_CONNECT_SECONDS = 10.0


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    #: Slots' worth of work per replica the HPA aims at (KEDA's ``threshold``).
    trigger_target: float
    trigger_query: str = TRIGGER_QUERY


def bounds(p: CapacityPlan) -> Autoscaling:
    """Replica bounds and the trigger target for a plan: the ceiling is the planner's peak
    (``recommended_concurrency`` includes the peak factor), or the wait SLO's slots when
    those are more, in whole replicas, never below ``MIN_REPLICAS``."""
    peak_slots = max(p.recommended_concurrency, p.slots_for_wait_slo or 0)
    peak = math.ceil(peak_slots / p.concurrency_per_replica)
    return Autoscaling(
        min_replicas=MIN_REPLICAS,
        max_replicas=max(MIN_REPLICAS, peak),
        trigger_target=round(p.concurrency_per_replica * p.utilization, 3),
    )


def render_bounds(a: Autoscaling) -> str:
    return "\n".join(
        [
            "Kubernetes autoscaling (KEDA ScaledObject, Prometheus trigger)",
            f"  trigger target          {a.trigger_target:g} ready or in-flight jobs per replica",
            f"  replicas                min {a.min_replicas}, max {a.max_replicas}",
            f"  trigger query           {a.trigger_query}",
        ]
    )


@dataclass(frozen=True)
class GracePeriod:
    """``terminationGracePeriodSeconds`` and every number it comes from."""

    longest_class: str
    longest_attempt_seconds: float
    default_shutdown_grace_seconds: float
    shutdown_grace_seconds: float
    exit_margin_seconds: float
    termination_grace_period_seconds: int

    def explain(self) -> list[str]:
        return [
            f"longest attempt: job class {self.longest_class!r} (agent.run's LLM call), "
            f"connect {LLM_CONNECT_SECONDS:g} s + answer {self.longest_attempt_seconds - LLM_CONNECT_SECONDS:g} s"  # noqa: E501
            f" (OPENROUTER_TIMEOUT_SECONDS) = {self.longest_attempt_seconds:g} s;",
            f"SHUTDOWN_GRACE_SECONDS = max(default {self.default_shutdown_grace_seconds:g}, "
            f"longest attempt {self.longest_attempt_seconds:g}) = {self.shutdown_grace_seconds:g} s;",  # noqa: E501
            f"terminationGracePeriodSeconds = {self.shutdown_grace_seconds:g} + exit margin "
            f"{self.exit_margin_seconds:g} = {self.termination_grace_period_seconds} s. A job "
            "still running at the SIGKILL is redelivered after JOB_LOCK_TIMEOUT_SECONDS.",
        ]


def grace_period() -> GracePeriod:
    """The grace period from the worker's defaults: the longest attempt of any job class is
    an LLM call of the ``standard`` class, bounded by its connect and answer timeouts (the
    critical class's HTTP endpoints stop at 5 + 30 s, the fast class's Supabase at 5 + 10 s);
    the worker's shutdown grace must cover it, and Kubernetes' must cover that."""
    fields = Settings.model_fields
    answer = float(fields["openrouter_timeout_seconds"].default)
    longest = min(answer, LLM_CONNECT_SECONDS) + answer
    default_grace = float(fields["shutdown_grace_seconds"].default)
    grace = max(default_grace, longest)
    return GracePeriod(
        longest_class="standard",
        longest_attempt_seconds=longest,
        default_shutdown_grace_seconds=default_grace,
        shutdown_grace_seconds=grace,
        exit_margin_seconds=EXIT_MARGIN_SECONDS,
        termination_grace_period_seconds=math.ceil(grace + EXIT_MARGIN_SECONDS),
    )
