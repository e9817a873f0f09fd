"""Capacity planner: how many job slots, replicas and organizations a load needs.

The arithmetic is Little's law, ``L = lambda x W``: the number of jobs in flight equals the
arrival rate times the time each spends in the system. A slot (one thread of one worker
process) holds one job for its whole duration, so ``L`` is the number of slots that are busy
on average. The original system claimed that 25 slots with 15-20 s jobs serve about
25 jobs/s; Little's law gives 25 / 17.5 = 1.43 jobs/s.

Definitions (all printed by ``python -m stack.capacity`` and ``stack capacity``):

- ``arrival_rate_per_s`` (lambda): job attempts per second, averaged over the day:
  ``jobs_per_day / 86400 x (1 + retry_fraction)``. A retry is another attempt that holds a
  slot again, so it adds to the rate.
- ``required_concurrency`` (L): ``lambda x W``, the slots busy on average, before any peak
  or utilization margin. At exactly this many slots the queue never drains.
- ``recommended_concurrency``: ``ceil(L x peak_factor / utilization)``: enough slots that
  at the peak rate they are busy ``utilization`` of the time (default 0.8), which keeps
  queueing delay short.
- ``replicas``: ``ceil(recommended_concurrency / concurrency_per_replica)``.
- ``headroom``: ``deployed_slots / (L x peak_factor) - 1`` for the deployment given with
  ``--replicas`` (else for the recommended replica count): the fraction of extra load the
  deployment absorbs at peak before every slot is busy and the backlog grows without
  bound. 0.25 means 25 % spare; a negative value means the deployment is too small.
- Per-organization ceiling: the rate limiter admits at most ``count / seconds`` per window
  for one organization; the smallest of these is the rate an organization can sustain
  (100,000 per day = 1.157 jobs/s by default), so the load needs at least
  ``ceil(lambda / ceiling)`` organizations using their full quota.

``--p95-seconds`` uses the 95th percentile as W. Job durations are skewed to the right
(the mean lies below the p95), so this overestimates L by p95 / mean: a conservative plan,
used when only the percentile is known (for instance from the HighJobProcessingTime alert).

``--wait-slo Q:T`` (e.g. ``0.99:60``) adds ``slots_for_wait_slo``: the fewest slots with
which at most ``1 - Q`` of the jobs wait longer than ``T`` seconds for a slot at the peak
arrival rate (``lambda x peak_factor``), from the M/M/c queue (Erlang C): with ``c`` slots
and ``A = lambda x W`` busy on average, a job waits at all with probability
``C(c, A)`` and longer than ``T`` with ``C(c, A) x exp(-(c - A) x T / W)``. M/M/c takes
job times as exponential; LLM calls vary less than that, so the figure errs on the safe
side. Unlike the utilization rule above it sizes for what senders feel: at 450,000
jobs/day of 17.5 s, 93 slots keep 99 % of waits within 60 s, where 80 % utilization
asks for 114 (a 60 s wait is long next to a 17.5 s job: the queue drains fast).

``--from-prometheus URL`` measures lambda and W instead: ``sum(rate(worker_jobs_total[R]))``
and ``sum(rate(worker_job_duration_seconds_sum[R])) / sum(rate(..._count[R]))``. The
counter counts attempts, so the measured rate already contains retries; leave
``--retry-fraction`` at 0 unless you are planning for more of them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

from alerts.duration import parse_duration
from stack import prom
from stack.autoscaling import bounds, render_bounds
from stack.prom import PrometheusError
from worker.ratelimit import DEFAULT_RATE_LIMITS, Limits, parse_limits

SECONDS_PER_DAY = 86_400

# ceil() of a product like 91.1458 / 0.8 must not round 114.0000000001 up to 115.
_CEIL_SLACK = 1e-9


def _ceil(value: float) -> int:
    return math.ceil(value - _CEIL_SLACK)


@dataclass(frozen=True)
class CapacityPlan:
    """The inputs and every derived number of one plan (see the module docstring)."""

    jobs_per_day: float
    job_seconds: float
    job_seconds_basis: str  # "mean" or "p95" (used as the mean: conservative)
    concurrency_per_replica: int
    utilization: float
    peak_factor: float
    retry_fraction: float
    arrival_rate_per_s: float
    required_concurrency: float
    recommended_concurrency: int
    replicas: int
    deployed_replicas: int
    deployed_slots: int
    deployed_throughput_per_s: float
    headroom: float
    binding_window: str
    organization_ceiling_per_s: float
    min_organizations: int
    #: Slots for the --wait-slo objective (None when not asked): see slots_for_wait.
    slots_for_wait_slo: int | None = None
    wait_slo: tuple[float, float] | None = None  # (share of jobs, within seconds)


def erlang_c(servers: int, load: float) -> float:
    """Probability that a job waits for a slot in an M/M/c queue with ``servers`` slots and
    ``load`` Erlangs (arrival rate x mean job time); 1 when the slots cannot keep up."""
    if servers <= load:
        return 1.0
    blocking = 1.0  # Erlang B by its recursion: no factorial overflows at any size
    for k in range(1, servers + 1):
        blocking = load * blocking / (k + load * blocking)
    return servers * blocking / (servers - load * (1 - blocking))


def wait_longer_than(servers: int, arrival_rate: float, job_seconds: float, wait: float) -> float:
    """Share of jobs that wait more than ``wait`` seconds for one of ``servers`` slots."""
    load = arrival_rate * job_seconds
    if servers <= load:
        return 1.0
    return erlang_c(servers, load) * math.exp(-(servers - load) * wait / job_seconds)


def slots_for_wait(arrival_rate: float, job_seconds: float, share: float, wait: float) -> int:
    """The fewest slots with which at least ``share`` of the jobs wait at most ``wait``
    seconds (Erlang C). Raises ValueError for a share outside (0, 1) or a negative wait."""
    _check(0 < share < 1, "the share of jobs of a wait SLO must be in (0, 1)", share)
    _check(wait >= 0, "the wait of a wait SLO must be >= 0 seconds", wait)
    servers = math.floor(arrival_rate * job_seconds) + 1
    while wait_longer_than(servers, arrival_rate, job_seconds, wait) > 1 - share:
        servers += 1
    return servers


def plan(
    *,
    job_seconds: float,
    jobs_per_day: float | None = None,
    jobs_per_second: float | None = None,
    concurrency_per_replica: int = 25,
    utilization: float = 0.8,
    peak_factor: float = 1.0,
    retry_fraction: float = 0.0,
    deployed_replicas: int | None = None,
    rate_limits: Limits | None = None,
    job_seconds_basis: str = "mean",
    wait_slo: tuple[float, float] | None = None,
) -> CapacityPlan:
    """Size a deployment for a load; raise ``ValueError`` naming the first bad input."""
    if (jobs_per_day is None) == (jobs_per_second is None):
        raise ValueError("give exactly one of jobs_per_day and jobs_per_second")
    if jobs_per_day is None:
        jobs_per_day = jobs_per_second * SECONDS_PER_DAY
    _check(jobs_per_day > 0, "jobs per day must be positive", jobs_per_day)
    _check(job_seconds > 0, "job seconds must be positive", job_seconds)
    _check(
        concurrency_per_replica >= 1,
        "concurrency per replica must be >= 1",
        concurrency_per_replica,
    )
    _check(0 < utilization <= 1, "utilization must be in (0, 1]", utilization)
    _check(peak_factor >= 1, "peak factor must be >= 1", peak_factor)
    _check(retry_fraction >= 0, "retry fraction must be >= 0", retry_fraction)
    if deployed_replicas is not None:
        _check(deployed_replicas >= 0, "deployed replicas must be >= 0", deployed_replicas)
    limits = rate_limits if rate_limits is not None else parse_limits(DEFAULT_RATE_LIMITS)
    if not limits:
        raise ValueError("at least one rate-limit window is needed")

    arrival = jobs_per_day / SECONDS_PER_DAY * (1 + retry_fraction)
    required = arrival * job_seconds
    recommended = _ceil(required * peak_factor / utilization)
    replicas = _ceil(recommended / concurrency_per_replica)
    deployed = replicas if deployed_replicas is None else deployed_replicas
    slots = deployed * concurrency_per_replica
    window, (count, seconds) = min(limits.items(), key=lambda item: item[1][0] / item[1][1])
    ceiling = count / seconds
    return CapacityPlan(
        jobs_per_day=jobs_per_day,
        job_seconds=job_seconds,
        job_seconds_basis=job_seconds_basis,
        concurrency_per_replica=concurrency_per_replica,
        utilization=utilization,
        peak_factor=peak_factor,
        retry_fraction=retry_fraction,
        arrival_rate_per_s=arrival,
        required_concurrency=required,
        recommended_concurrency=recommended,
        replicas=replicas,
        deployed_replicas=deployed,
        deployed_slots=slots,
        deployed_throughput_per_s=slots / job_seconds,
        headroom=slots / (required * peak_factor) - 1,
        binding_window=window,
        organization_ceiling_per_s=ceiling,
        min_organizations=_ceil(arrival / ceiling),
        slots_for_wait_slo=None
        if wait_slo is None
        else slots_for_wait(arrival * peak_factor, job_seconds, *wait_slo),
        wait_slo=wait_slo,
    )


def _check(ok: bool, message: str, value: object) -> None:
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{message} (got {value!r})")


# --- Prometheus -----------------------------------------------------------------------

ARRIVAL_QUERY = "sum(rate(worker_jobs_total[{range}]))"
DURATION_QUERY = (
    "sum(rate(worker_job_duration_seconds_sum[{range}]))"
    " / sum(rate(worker_job_duration_seconds_count[{range}]))"
)


def query_scalar(url: str, promql: str, timeout: float = 10.0) -> float:
    """Evaluate an instant query that yields one sample and return its value."""
    result = prom.query(url, promql, timeout=timeout)
    if not result:
        raise PrometheusError(f"Prometheus has no data for {promql!r}")
    try:
        value = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        raise PrometheusError(f"Prometheus answered {promql!r} with no single value") from None
    if not math.isfinite(value) or value <= 0:
        raise PrometheusError(f"Prometheus gives {value} for {promql!r}: no jobs in that range")
    return value


def measure(url: str, range_: str = "1h") -> tuple[float, float]:
    """Live (attempts per second, mean attempt seconds) from the worker metrics."""
    rate = query_scalar(url, ARRIVAL_QUERY.format(range=range_))
    seconds = query_scalar(url, DURATION_QUERY.format(range=range_))
    return rate, seconds


# --- command line ---------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit code 2, like bad configuration."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: str, ok, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {kind} (got {text})")
    return value


def _positive(text: str) -> float:
    return _number("a positive number", lambda v: v > 0, text)


def _non_negative(text: str) -> float:
    return _number("zero or more", lambda v: v >= 0, text)


def _utilization(text: str) -> float:
    return _number("in (0, 1]", lambda v: 0 < v <= 1, text)


def _peak(text: str) -> float:
    return _number("1 or more", lambda v: v >= 1, text)


def _count(text: str) -> int:
    value = _number("a whole number >= 1", lambda v: v >= 1 and v == int(v), text)
    return int(value)


def _replica_count(text: str) -> int:
    value = _number("a whole number >= 0", lambda v: v >= 0 and v == int(v), text)
    return int(value)


def _limits(text: str) -> Limits:
    try:
        return parse_limits(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _wait_slo(text: str) -> tuple[float, float]:
    share, sep, wait = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not SHARE:SECONDS like 0.99:60")
    return (
        _number("a share in (0, 1)", lambda v: 0 < v < 1, share),
        _number("seconds >= 0", lambda v: v >= 0, wait),
    )


def _prom_range(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Prometheus duration like 1h or 30m"
        ) from None
    return text


def build_parser(prog: str = "stack capacity") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Size the worker fleet with Little's law (L = arrival rate x job time).",
        epilog="Definitions of every number: see the docstring of stack/capacity.py.",
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--jobs-per-day", type=_positive, help="jobs submitted per day")
    load.add_argument("--jobs-per-second", type=_positive, help="jobs submitted per second")
    duration = parser.add_mutually_exclusive_group()
    duration.add_argument("--job-seconds", type=_positive, help="mean seconds per job attempt")
    duration.add_argument(
        "--p95-seconds",
        type=_positive,
        help="95th percentile of job seconds, used as the mean (overestimates: conservative)",
    )
    parser.add_argument(
        "--concurrency-per-replica",
        type=_count,
        default=25,
        help="job slots per replica, JOB_CONCURRENCY (default 25)",
    )
    parser.add_argument(
        "--utilization",
        type=_utilization,
        default=0.8,
        help="target share of slots busy at peak, in (0, 1] (default 0.8)",
    )
    parser.add_argument(
        "--peak-factor",
        type=_peak,
        default=1.0,
        help="peak arrival rate / daily average, >= 1 (default 1)",
    )
    parser.add_argument(
        "--retry-fraction",
        type=_non_negative,
        default=0.0,
        help="extra attempts per job from retries, e.g. 0.05 (default 0)",
    )
    parser.add_argument(
        "--replicas",
        type=_replica_count,
        help="replicas deployed now, to report their headroom (default: the recommended count)",
    )
    parser.add_argument(
        "--rate-limits",
        type=_limits,
        default=parse_limits(DEFAULT_RATE_LIMITS),
        metavar="LIMITS",
        help=f"per-organization windows, RATE_LIMITS format (default {DEFAULT_RATE_LIMITS})",
    )
    parser.add_argument(
        "--from-prometheus",
        metavar="URL",
        help="measure the arrival rate and mean job seconds from this Prometheus "
        "(values given explicitly take precedence)",
    )
    parser.add_argument(
        "--prometheus-range",
        type=_prom_range,
        default="1h",
        help="range of the rate() windows for --from-prometheus (default 1h)",
    )
    parser.add_argument(
        "--wait-slo",
        type=_wait_slo,
        metavar="SHARE:SECONDS",
        help="also size for a queue-wait SLO, e.g. 0.99:60: at most 1 %% of jobs wait over "
        "60 s at the peak rate (Erlang C, M/M/c)",
    )
    parser.add_argument(
        "--kubernetes",
        action="store_true",
        help="also print the KEDA trigger's target and the replica bounds (with --json: "
        "min_replicas, max_replicas, trigger_target); see docs/kubernetes.md",
    )
    parser.add_argument(
        "--simulate-day",
        action="store_true",
        help="with --kubernetes: replay a day of the load (sine, --peak-factor) through the "
        "autoscaler and print replicas and the share of jobs started within the wait SLO",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as a JSON object")
    return parser


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def render(p: CapacityPlan, measured_over: str | None = None) -> str:
    basis = "mean" if p.job_seconds_basis == "mean" else "p95, used as the mean"
    which = "recommended" if p.deployed_replicas == p.replicas else "deployed"
    lines = ["Capacity plan (Little's law: jobs in flight = arrival rate x job time)"]
    if measured_over:
        lines.append(f"  measured by Prometheus  over the last {measured_over}")
    lines += [
        f"  arrival rate            {p.arrival_rate_per_s:.3f} attempts/s "
        f"({p.jobs_per_day:,.0f} jobs/day, +{p.retry_fraction:.0%} retries)",
        f"  job time (W)            {p.job_seconds:g} s ({basis})",
        f"  required concurrency    {p.required_concurrency:.1f} slots busy on average",
        f"  recommended concurrency {_plural(p.recommended_concurrency, 'slot')} "
        f"(peak x{p.peak_factor:g}, {p.utilization:.0%} utilization)",
        f"  replicas                {p.replicas} of {_plural(p.concurrency_per_replica, 'slot')}",
        f"  deployment              {_plural(p.deployed_replicas, 'replica')} ({which}), "
        f"{_plural(p.deployed_slots, 'slot')}, at most {p.deployed_throughput_per_s:.2f} jobs/s",
        f"  headroom                {p.headroom:+.1%} "
        + (
            "more load fits at peak before every slot is busy"
            if p.headroom >= 0
            else "short: at peak the backlog grows without bound"
        ),
    ]
    if p.slots_for_wait_slo is not None:
        share, wait = p.wait_slo
        lines.append(
            f"  slots for the wait SLO  {_plural(p.slots_for_wait_slo, 'slot')}: "
            f"{share * 100:g} % of jobs start within {wait:g} s at the peak rate "
            "(Erlang C, M/M/c), "
            f"{_ceil(p.slots_for_wait_slo / p.concurrency_per_replica)} replicas"
        )
    lines += [
        "Per-organization ceiling (rate limits)",
        f"  binding window          {p.binding_window}: "
        f"{p.organization_ceiling_per_s:.3f} jobs/s per organization",
        f"  organizations needed    {p.min_organizations} at full quota",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rate_per_day = args.jobs_per_day
    if args.jobs_per_second is not None:
        rate_per_day = args.jobs_per_second * SECONDS_PER_DAY
    seconds = args.job_seconds if args.job_seconds is not None else args.p95_seconds
    basis = "p95" if args.p95_seconds is not None else "mean"
    try:
        if args.from_prometheus:
            measured_rate, measured_seconds = measure(args.from_prometheus, args.prometheus_range)
            if rate_per_day is None:
                rate_per_day = measured_rate * SECONDS_PER_DAY
            if seconds is None:
                seconds = measured_seconds
        if rate_per_day is None:
            parser.error("give --jobs-per-day, --jobs-per-second or --from-prometheus")
        if seconds is None:
            parser.error("give --job-seconds, --p95-seconds or --from-prometheus")
        result = plan(
            jobs_per_day=rate_per_day,
            job_seconds=seconds,
            job_seconds_basis=basis,
            concurrency_per_replica=args.concurrency_per_replica,
            utilization=args.utilization,
            peak_factor=args.peak_factor,
            retry_fraction=args.retry_fraction,
            deployed_replicas=args.replicas,
            rate_limits=args.rate_limits,
            wait_slo=args.wait_slo,
        )
    except (PrometheusError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    measured_over = args.prometheus_range if args.from_prometheus else None
    output, text = asdict(result), render(result, measured_over)
    if args.kubernetes:
        scaling = bounds(result)
        output |= {
            k: getattr(scaling, k) for k in ("min_replicas", "max_replicas", "trigger_target")
        }
        text += "\n" + render_bounds(scaling)
        if args.simulate_day:
            from stack.scaledown import simulate_plan  # it imports this module

            text += "\n" + simulate_plan(result, scaling)
    print(json.dumps(output, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
