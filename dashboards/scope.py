"""The signals as queries of a scope. Two scopes share every panel definition:

- the fleet (``Scope(replica=False)``): recording rules, i.e. the very series the alerts
  evaluate; ``$instance`` narrows only the per-replica panels (up, Redis);
- one replica (``Scope(replica=True)``): the raw series of ``instance=~"$instance"``,
  since the recording rules aggregate the instance label away.
"""

from __future__ import annotations

from dataclasses import dataclass

from dashboards.alerting import Alerting

RATE = "$__rate_interval"
SECONDS_PER_DAY = 86_400


COUNTERS = {
    "started": "worker_jobs_total",
    "completed": "worker_jobs_completed_total",
    "failed": "worker_jobs_failed_total",
    "retried": "worker_jobs_retried_total",
    "deadLettered": "worker_jobs_dead_lettered_total",
}


def _sum(by: str, expr: str) -> str:
    return f"sum by ({by}) ({expr})" if by else f"sum({expr})"


@dataclass(frozen=True)
class Scope:
    """Whose series the queries read: the fleet, or the replica chosen by $instance."""

    alerts: Alerting
    replica: bool

    def _matchers(
        self,
        *,
        queue: bool = True,
        job_type: bool = True,
        instance: bool | None = None,
        extra: str = "",
    ) -> str:
        """The worker selector plus the dashboard's variables; ``instance`` defaults to
        the scope (a replica's queries always narrow to $instance)."""
        parts = [self.alerts.selector]
        if self.replica if instance is None else instance:
            parts.append('instance=~"$instance"')
        if queue:
            parts.append('queue=~"$queue"')
        if job_type:
            parts.append('job_type=~"$job_type"')
        if extra:
            parts.append(extra)
        return "{" + ", ".join(parts) + "}"

    def _record(self, role: str, *, queue: bool = True, job_type: bool = True) -> str:
        parts = (['queue=~"$queue"'] if queue else []) + (
            ['job_type=~"$job_type"'] if job_type else []
        )
        return self.alerts.records[role] + ("{" + ", ".join(parts) + "}" if parts else "")

    def window(self, alert: str) -> str:
        return self.alerts.alert(alert)["window"]

    def attempts(self, role: str, by: str = "") -> str:
        """Attempts per second: started, completed, failed, retried or deadLettered."""
        if self.replica:
            return _sum(by, f"rate({COUNTERS[role]}{self._matchers()}[{RATE}])")
        return _sum(by, self._record(role))

    def failure_ratio(self) -> str:
        """Failed / started attempts per (queue, job_type) over HighJobFailureRate's window."""
        if self.replica:
            w, m = self.window("HighJobFailureRate"), self._matchers()
            failed, started = COUNTERS["failed"], COUNTERS["started"]
            return (
                f"sum by (queue, job_type) (rate({failed}{m}[{w}]))"
                f" / sum by (queue, job_type) (rate({started}{m}[{w}]))"
            )
        return self._record("failureRatio")

    def _buckets(self, by: str) -> str:
        if self.replica:
            w = self.window("HighJobProcessingTime")
            return _sum(by, f"rate(worker_job_duration_seconds_bucket{self._matchers()}[{w}])")
        return _sum(by, self._record("durationBuckets"))

    def duration_quantile(self, q: float) -> str:
        """The q-quantile of attempt duration over every selected (queue, job_type)."""
        return f"histogram_quantile({q:g}, {self._buckets('le')})"

    def worst_duration_quantile(self, q: float) -> str:
        """The highest q-quantile of one (queue, job_type): what HighJobProcessingTime sees
        (for the fleet, the very recording rule it reads)."""
        if self.replica:
            return f"max(histogram_quantile({q:g}, {self._buckets('queue, job_type, le')}))"
        record = self._record("durationQuantile")
        return f'max({record[:-1]}, quantile="{q:g}"}})'

    def duration_heatmap(self) -> str:
        bucket = f"worker_job_duration_seconds_bucket{self._matchers()}"
        return f"sum by (le) (increase({bucket}[{RATE}]))"

    def in_flight(self) -> str:
        if self.replica:
            return f"sum(worker_jobs_processing{self._matchers()})"
        return _sum("", self._record("processing"))

    def slots(self) -> str:
        if self.replica:
            return f"sum(worker_concurrency{self._matchers(queue=False, job_type=False)})"
        return f"sum({self.alerts.records['concurrency']})"

    def backlog(self) -> str:
        """Broker messages per (queue, state); every replica samples the same broker: max."""
        if self.replica:
            m = self._matchers(job_type=False)
            return f"max by (queue, state) (worker_queue_messages{m})"
        return self._record("queueMessages", job_type=False)

    def ready_backlog(self) -> str:
        if self.replica:
            m = self._matchers(queue=False, job_type=False, extra='state="ready"')
            return f"max by (queue) (worker_queue_messages{m})"
        return self.alerts.records["queueMessages"] + '{state="ready"}'

    def dead_letters(self) -> str:
        """Dead letters held per queue (the ``dead`` backlog); max across replicas."""
        if self.replica:
            m = self._matchers(job_type=False, extra='state="dead"')
            return f"max by (queue) (worker_queue_messages{m})"
        return self.alerts.records["queueMessages"] + '{queue=~"$queue", state="dead"}'

    def oldest_dead_letter(self) -> str:
        """Age of each queue's oldest dead letter; no recording rule has it: raw, max."""
        m = self._matchers(job_type=False)
        return f"max by (queue) (worker_dead_letters_oldest_age_seconds{m})"

    def dead_letter_replays(self, action: str) -> str:
        """Dead letters ``requeued`` or ``purged`` per second and queue by `worker
        dead-letters`: every replica exports Redis' total, so each replica's rate, then max."""
        m = self._matchers(job_type=False)
        return f"max by (queue) (rate(worker_dead_letters_{action}_total{m}[{RATE}]))"

    def queue_completions(self) -> str:
        """Completions per queue over LowWorkerThroughput's window."""
        if self.replica:
            w = self.window("LowWorkerThroughput")
            m = self._matchers(job_type=False)
            return f"sum by (queue) (rate({COUNTERS['completed']}{m}[{w}]))"
        return self._record("queueCompleted", job_type=False)

    def per_replica(self, metric: str, agg: str = "min") -> str:
        """One series per replica; $instance narrows them on both dashboards."""
        m = self._matchers(queue=False, job_type=False, instance=True)
        return f"{agg} by (instance) ({metric}{m})"

    def up(self) -> str:
        return self.per_replica("up")

    def redis_status(self) -> str:
        return self.per_replica("worker_redis_connection_status")

    def reconnects(self) -> str:
        return f'max by (instance) ({self.alerts.records["reconnects"]}{{instance=~"$instance"}})'

    def rate_limit_decisions(self) -> str:
        m = self._matchers(queue=False, job_type=False)
        return f"sum by (window, decision) (rate(worker_rate_limit_decisions_total{m}[{RATE}]))"

    def versions(self) -> str:
        m = self._matchers(queue=False, job_type=False, instance=True)
        return f"count by (version) (worker_build_info{m})"

    # Little's law: slots busy L = arrival rate lambda x mean attempt duration W.

    def capacity_window(self) -> str:
        return self.window("HighJobFailureRate")

    def arrival_rate(self) -> str:
        """Attempts arriving per second. For the fleet: attempts started plus the growth of
        the ready backlog, so a saturated fleet still shows the demand, not its ceiling."""
        w = self.capacity_window()
        if self.replica:
            m = self._matchers(queue=False, job_type=False)
            return f"sum(rate({COUNTERS['started']}{m}[{w}]))"
        started = f"sum({self.alerts.records['started']})"
        return f"({started} + sum(deriv({self.ready_backlog()}[{w}])))"

    def mean_duration(self) -> str:
        w = self.capacity_window()
        m = self._matchers(queue=False, job_type=False)
        return (
            f"(sum(rate(worker_job_duration_seconds_sum{m}[{w}]))"
            f" / sum(rate(worker_job_duration_seconds_count{m}[{w}])))"
        )

    def required_concurrency(self) -> str:
        return f"{self.arrival_rate()} * {self.mean_duration()}"

    def daily_volume(self) -> str:
        return f"{self.arrival_rate()} * {SECONDS_PER_DAY}"

    def daily_capacity(self) -> str:
        return f"{self.slots()} / {self.mean_duration()} * {SECONDS_PER_DAY}"
