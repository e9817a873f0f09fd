"""A day of autoscaling, simulated: a diurnal load through the ScaledObject's rules, to choose
the trigger's target from a number (docs/kubernetes.md, "The day simulated").

    stack capacity --jobs-per-day 450000 --job-seconds 17.5 --peak-factor 2 --kubernetes \\
        --simulate-day

The model, one second at a time over 24 h:

- arrivals: a Poisson process whose rate follows a sine over the day, lowest at 04:00 and
  highest at 16:00, averaging ``jobs_per_day / 86400`` with the peak ``peak_factor`` times
  the mean (the trough is ``2 - peak_factor`` times it); a seeded generator, so a run
  repeats;
- each job holds one slot for a time drawn uniformly within +-2.5 s of the mean job time
  (15-20 s for 17.5 s); jobs start in arrival order on any free slot of a ready replica;
- every ``POLL_SECONDS`` (KEDA's pollingInterval) the autoscaler reads the trigger's metric,
  jobs waiting plus jobs running, and computes the HPA's ``desired = ceil(current x metric /
  (current x target))`` = ``ceil(metric / target)``, skipped within the HPA's 10 %
  tolerance, clamped to the bounds;
- scale-up takes effect at once, the new replica's slots after ``STARTUP_SECONDS``;
  scale-down follows the ScaledObject's behaviour: the highest recommendation of the last
  ``STABILIZATION_SECONDS`` (the HPA's window: KEDA's own cooldownPeriod applies only to
  and from zero replicas), at most one replica removed per ``SCALE_DOWN_PERIOD`` seconds;
  a removed replica finishes its running jobs (the grace period covers them) and starts
  none.

- Dramatiq's prefetch: each ready replica holds up to ``PREFETCH`` x its slots of the
  waiting jobs in its ack set, where the trigger does not see them (neither ready nor in
  flight); the metric counts only the waiting jobs beyond those.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from stack.autoscaling import Autoscaling
from stack.capacity import SECONDS_PER_DAY, CapacityPlan

POLL_SECONDS = 15
STARTUP_SECONDS = 30
STABILIZATION_SECONDS = 300
SCALE_DOWN_PERIOD = 60
TOLERANCE = 0.1
JOB_SPREAD_SECONDS = 2.5
TROUGH_HOUR = 4
#: Dramatiq's prefetch: twice the threads of each process (docs/performance.md).
PREFETCH = 2


@dataclass
class Day:
    target: float
    jobs: int = 0
    within_slo: int = 0
    replica_seconds: int = 0
    waits: list[int] = field(default_factory=list)
    #: Per hour: (jobs/s arriving, fewest replicas, most replicas, share started within SLO).
    hours: list[tuple[float, int, int, float]] = field(default_factory=list)

    @property
    def share_within(self) -> float:
        return self.within_slo / self.jobs if self.jobs else 1.0

    def wait_quantile(self, q: float) -> int:
        ordered = sorted(self.waits)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0

    @property
    def replica_hours(self) -> float:
        return self.replica_seconds / 3600


def rate_at(second: float, mean: float, peak_factor: float) -> float:
    amplitude = min(peak_factor, 2.0) - 1
    phase = 2 * math.pi * (second / 3600 - TROUGH_HOUR) / 24
    return mean * (1 - amplitude * math.cos(phase))


def arrivals(mean: float, peak_factor: float, seed: int) -> list[float]:
    """Arrival times over one day (thinning of a Poisson process at the peak rate)."""
    rng, top = random.Random(seed), mean * min(peak_factor, 2.0)
    times, now = [], 0.0
    while True:
        now += rng.expovariate(top)
        if now >= SECONDS_PER_DAY:
            return times
        if rng.random() * top < rate_at(now, mean, peak_factor):
            times.append(now)


def simulate(
    *,
    jobs_per_day: float,
    job_seconds: float,
    peak_factor: float,
    slots_per_replica: int,
    target: float,
    min_replicas: int,
    max_replicas: int,
    slo_seconds: float,
    seed: int = 1,
) -> Day:
    rng = random.Random(seed + 1)
    pending = deque(arrivals(jobs_per_day / SECONDS_PER_DAY, peak_factor, seed))
    waiting: deque[float] = deque()
    running: list[float] = []  # end times of running jobs (a heap)
    replicas = ready = min_replicas
    starting: deque[tuple[int, int]] = deque()  # (ready at, replicas)
    recommendations: deque[tuple[int, int]] = deque()
    last_down = -SCALE_DOWN_PERIOD
    day = Day(target=target)
    hour = {"jobs": 0, "within": 0, "lo": replicas, "hi": replicas, "arrived": 0}
    for now in range(SECONDS_PER_DAY):
        while starting and starting[0][0] <= now:
            ready += starting.popleft()[1]
        while pending and pending[0] < now + 1:
            waiting.append(pending.popleft())
            hour["arrived"] += 1
        while running and running[0] <= now:
            heapq.heappop(running)
        while waiting and len(running) < ready * slots_per_replica:
            arrived = waiting.popleft()
            heapq.heappush(running, now + job_seconds + rng.uniform(-1, 1) * JOB_SPREAD_SECONDS)
            hour["jobs"] += 1
            hour["within"] += now - arrived <= slo_seconds
            day.waits.append(math.ceil(now - arrived))
        if now % POLL_SECONDS == 0:
            hidden = min(len(waiting), PREFETCH * ready * slots_per_replica)
            metric = len(waiting) - hidden + len(running)
            desired = replicas
            if abs(metric / (replicas * target) - 1) > TOLERANCE:
                desired = math.ceil(metric / target)
            desired = max(min_replicas, min(max_replicas, desired))
            recommendations.append((now, desired))
            while recommendations[0][0] <= now - STABILIZATION_SECONDS:
                recommendations.popleft()
            if desired > replicas:  # the HPA's default: at most +100 % or +4 per period
                desired = min(desired, replicas + max(4, replicas))
                starting.append((now + STARTUP_SECONDS, desired - replicas))
                replicas = desired
            else:
                floor = max(r for _, r in recommendations)
                if floor < replicas and now - last_down >= SCALE_DOWN_PERIOD:
                    replicas, last_down = replicas - 1, now
                    # The replica leaving is a ready one unless one is still starting.
                    if starting:
                        at, count = starting.pop()
                        if count > 1:
                            starting.append((at, count - 1))
                    else:
                        ready -= 1
        day.replica_seconds += replicas
        hour["lo"], hour["hi"] = min(hour["lo"], replicas), max(hour["hi"], replicas)
        if (now + 1) % 3600 == 0:
            share = hour["within"] / hour["jobs"] if hour["jobs"] else 1.0
            day.hours.append((hour["arrived"] / 3600, hour["lo"], hour["hi"], share))
            day.jobs += hour["jobs"]
            day.within_slo += hour["within"]
            hour = {"jobs": 0, "within": 0, "lo": replicas, "hi": replicas, "arrived": 0}
    day.jobs += len(waiting)  # never started: outside the SLO
    return day


def render_day(day: Day, slo_seconds: float) -> str:
    lines = [
        f"A day simulated with target {day.target:g} (HPA formula, stabilization "
        f"{STABILIZATION_SECONDS} s, 1 replica/{SCALE_DOWN_PERIOD} s down, startup "
        f"{STARTUP_SECONDS} s)",
        f"  hour  jobs/s  replicas  started within {slo_seconds:g} s",
    ]
    for number, (rate, lo, hi, share) in enumerate(day.hours):
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        lines.append(f"  {number:02d}    {rate:6.2f}  {span:>8}  {share:8.2%}")
    lines.append(
        f"  day: {day.jobs:,} jobs, {day.share_within:.2%} started within {slo_seconds:g} s, "
        f"{day.replica_hours:.0f} replica-hours"
    )
    return "\n".join(lines)


def compare_targets(days: list[Day], slo_seconds: float, max_replicas: int) -> str:
    lines = [
        f"Targets compared (fixed {max_replicas} replicas all day: {max_replicas * 24} "
        "replica-hours)",
        f"  target  started within {slo_seconds:g} s  p99 wait  longest wait  replica-hours",
    ]
    for day in days:
        lines.append(
            f"  {day.target:>6g}  {day.share_within:>18.2%}  {day.wait_quantile(0.99):>6} s"
            f"  {day.wait_quantile(1.0):>10} s  {day.replica_hours:>13.0f}"
        )
    return "\n".join(lines)


def simulate_plan(p: CapacityPlan, scaling: Autoscaling) -> str:
    """The day at the plan's target, then the same day at 0.6 to 1.2 x the slots."""
    slo = p.wait_slo[1] if p.wait_slo else 60.0
    common = dict(
        jobs_per_day=p.jobs_per_day,
        job_seconds=p.job_seconds,
        peak_factor=p.peak_factor,
        slots_per_replica=p.concurrency_per_replica,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        slo_seconds=slo,
    )
    chosen = simulate(target=scaling.trigger_target, **common)
    others = [
        chosen if math.isclose(t, scaling.trigger_target) else simulate(target=t, **common)
        for t in sorted(
            {round(p.concurrency_per_replica * f, 3) for f in (0.6, 0.8, 1.0, 1.2)}
            | {scaling.trigger_target}
        )
    ]
    return render_day(chosen, slo) + "\n" + compare_targets(others, slo, scaling.max_replicas)
