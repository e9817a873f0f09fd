"""Load generator: enqueue a realistic mix of jobs for many organizations at a steady rate.

    stack loadgen                                   # 135,000 jobs/day (1.56/s) until Ctrl-C
    stack loadgen --rate 5 --duration 600           # 5 jobs/s for 10 minutes
    stack loadgen --failure-ratio 0.3 --set-only    # make 30 % of backend calls fail, fleet-wide
    stack loadgen --scenario llm-brownout           # replay a named day (--scenario list)

Jobs go through the same actors an application uses, to the broker of ``REDIS_URL`` in
namespace ``JOB_QUEUE_NAME``. The simulation knobs (``--failure-ratio``, ``--ratio-429``,
``--latency``) are written to the Redis hash ``<JOB_QUEUE_NAME>:simulation``, which every
replica reads within a second: they change the simulated backend of the running fleet, so
each alert can be provoked on purpose. They stay in force after the load generator exits;
``--reset-simulation`` clears them (back to each replica's SIM_* environment).

``--scenario NAME`` replays a named day (``stack.scenarios``) at ``--speed`` (default 60:
an hour in a minute): its phases change the load, the simulation knobs and Redis, and the
simulation is reset when it ends or is interrupted.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import dramatiq.errors
import redis

from stack import scenarios
from worker.backends import parse_latency
from worker.jobs import QUEUES
from worker.redis_keys import RedisKeys

#: What a send raises while the broker is unreachable.
BROKER_ERRORS = (redis.RedisError, dramatiq.errors.BrokerConnectionError)

DEFAULT_JOBS_PER_DAY = 135_000
DEFAULT_RATE = DEFAULT_JOBS_PER_DAY / 86_400

#: Share of each job class in the default mix: mostly agent runs, each reported by status
#: updates, with CRM syncs and outgoing messages around them.
DEFAULT_MIX = {"agent.run": 0.5, "job.status_update": 0.3, "message.send": 0.1, "crm.sync": 0.1}

_PROMPTS = (
    "Summarize the customer's last three tickets.",
    "Draft a follow-up email about the renewal.",
    "Classify this lead by industry and size.",
    "Extract the action items from the meeting notes.",
)


def payload(job_type: str, job_id: str, org_id: str, rng: random.Random) -> dict[str, Any]:
    """Keyword arguments of one job of ``job_type``: valid payloads, as actors.py defines them."""
    base = {"job_id": job_id, "org_id": org_id}
    if job_type == "agent.run":
        return {**base, "prompt": rng.choice(_PROMPTS)}
    if job_type == "crm.sync":
        return {**base, "record": {"contact": f"contact-{rng.randrange(10_000)}", "stage": "lead"}}
    if job_type == "message.send":
        channel = rng.choice(("email", "sms", "whatsapp"))
        return {
            **base,
            "channel": channel,
            "recipient": f"user-{rng.randrange(10_000)}",
            "text": "Your report is ready.",
        }
    if job_type == "job.status_update":
        status = rng.choice(("queued", "running", "completed"))
        return {**base, "status": status}
    raise ValueError(f"unknown job type {job_type!r}")


def parse_mix(text: str) -> dict[str, float]:
    """``agent.run=5,crm.sync=1`` -> shares normalized to sum 1."""
    mix: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = item.partition("=")
        name = name.strip()
        if name not in DEFAULT_MIX:
            raise ValueError(f"unknown job type {name!r} (one of {', '.join(DEFAULT_MIX)})")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise ValueError(f"{item!r} is not job_type=weight") from None
        if mix[name] < 0:
            raise ValueError(f"{item!r}: weights must not be negative")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("the mix needs at least one positive weight")
    return {name: weight / total for name, weight in mix.items()}


def latency(text: str) -> tuple[float, float]:
    """``--latency``, read as the workers read SIM_LATENCY_SECONDS."""
    try:
        return parse_latency(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"latency {exc}") from None


def ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("a ratio is between 0 and 1")
    return value


def simulation_fields(args: argparse.Namespace) -> dict[str, float]:
    fields: dict[str, float] = {}
    if args.failure_ratio is not None:
        fields["failure_ratio"] = args.failure_ratio
    if args.ratio_429 is not None:
        fields["ratio_429"] = args.ratio_429
    if args.latency is not None:
        fields["latency_min"], fields["latency_max"] = args.latency
    return fields


def set_simulation(
    client: redis.Redis, namespace: str, fields: dict[str, float], reset: bool = False
) -> dict[str, str]:
    """Apply knobs to ``<namespace>:simulation``; return the hash as the fleet now sees it."""
    key = RedisKeys(namespace).simulation
    with client.pipeline() as pipe:
        if reset:
            pipe.delete(key)
        if fields:
            pipe.hset(key, mapping={k: repr(v) for k, v in fields.items()})
        pipe.hgetall(key)
        current = pipe.execute()[-1]
    return {k.decode(): v.decode() for k, v in current.items()}


@dataclass
class Totals:
    sent: Counter = field(default_factory=Counter)
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return sum(self.sent.values())


class Progress:
    """One status line: rewritten in place on a terminal, printed every ``every`` s otherwise."""

    def __init__(self, stream: TextIO, every: float = 10.0) -> None:
        self.stream, self.tty = stream, stream.isatty()
        self.every = 0.5 if self.tty else every
        self._last = float("-inf")

    def show(self, line: str, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < self.every:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def run(
    send: Callable[[str, dict[str, Any]], None],
    *,
    rate: float,
    duration: float,
    mix: dict[str, float],
    orgs: int,
    seed: int | None = None,
    status: Callable[[Totals, bool], None] = lambda totals, final: None,
    stop: Callable[[], bool] = lambda: False,
    totals: Totals | None = None,
    retry_after: float = 1.0,
    offset: float = 0.0,
) -> Totals:
    """Send jobs on a fixed schedule: job i is due ``i / rate`` s after the start.

    A schedule rather than sleeping ``1 / rate`` between sends keeps the long-run rate exact
    whatever each send costs; jobs that fell behind (a slow Redis) are sent at once.
    ``duration`` 0 runs until ``stop()`` is true. A send that fails because the broker is
    unreachable is counted in ``totals.failed`` and not retried (an application would
    report the error); sending resumes ``retry_after`` s later, and the jobs due meanwhile
    count as failed too. ``offset`` shifts the schedule by a share of a job's interval:
    job i is due ``(i + offset) / rate`` s after the start (0.5 sends, over a short run,
    ``rate * duration`` jobs on average instead of one more).
    """
    rng = random.Random(seed)
    names, weights = list(mix), list(mix.values())
    # A few organizations send most of the jobs, as in real traffic (Zipf-like weights).
    org_ids = [f"org-{i:04d}" for i in range(1, orgs + 1)]
    org_weights = [1 / i for i in range(1, orgs + 1)]
    totals = totals or Totals()
    totals.started = time.monotonic()
    end = totals.started + duration if duration > 0 else float("inf")
    i = 0
    while True:
        due = totals.started + (i + offset) / rate
        if due >= end or stop():
            return totals
        while (wait := due - time.monotonic()) > 0:
            time.sleep(min(wait, 0.5))
            status(totals, False)
            if stop():
                return totals
        job_type = rng.choices(names, weights)[0]
        org_id = rng.choices(org_ids, org_weights)[0]
        i += 1
        try:
            send(job_type, payload(job_type, f"load-{uuid.uuid4().hex[:16]}", org_id, rng))
        except BROKER_ERRORS:
            totals.failed += 1
            status(totals, False)
            time.sleep(min(retry_after, max(0.0, end - time.monotonic())))
            # The jobs that fell due meanwhile are lost too (counted), not sent in a burst.
            now_index = math.ceil((min(time.monotonic(), end) - totals.started) * rate)
            totals.failed += max(0, now_index - i)
            i = max(i, now_index)
            continue
        totals.sent[job_type] += 1
        status(totals, False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stack loadgen",
        description=__doc__.strip().split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.strip().split("\n\n", 1)[1],
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"jobs per second (default {DEFAULT_RATE:.2f} = 135,000/day)",
    )
    load.add_argument("--per-day", type=float, default=None, help="jobs per day, instead of --rate")
    load.add_argument(
        "--duration", type=float, default=0, help="seconds to run; 0 (default) until Ctrl-C"
    )
    load.add_argument(
        "--orgs", type=int, default=50, help="organizations sending jobs (default %(default)s)"
    )
    load.add_argument(
        "--mix",
        type=parse_mix,
        default=DEFAULT_MIX,
        help="job_type=weight,... (default "
        + ",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items())
        + ")",
    )
    load.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable run")
    load.add_argument("--quiet", action="store_true", help="no progress display")
    knobs = parser.add_argument_group("simulated backend, fleet-wide (Redis hash)")
    knobs.add_argument("--failure-ratio", type=ratio, help="share of calls failing with a 500")
    knobs.add_argument("--ratio-429", type=ratio, help="share of calls answered 429")
    knobs.add_argument("--latency", type=latency, help="seconds per call, e.g. 15-20")
    knobs.add_argument("--reset-simulation", action="store_true", help="clear the knobs first")
    knobs.add_argument("--set-only", action="store_true", help="apply the knobs and exit")
    days = parser.add_argument_group("scenarios: named days, replayed faster")
    days.add_argument("--scenario", metavar="NAME", help="replay NAME; 'list' lists them")
    days.add_argument("--list-scenarios", action="store_true", help="list them with their phases")
    days.add_argument(
        "--speed",
        type=float,
        default=None,
        help="day-time seconds per replayed second (default 60: an hour in a minute); "
        "the mean rate is --per-day/86400 (default 450,000 a day), not scaled",
    )
    try:
        args = parser.parse_args(argv)
    except ValueError as exc:  # parse_mix
        parser.error(str(exc))
    if args.list_scenarios or args.scenario == "list":
        print(scenarios.listing(speed=args.speed or scenarios.DEFAULT_SPEED))
        return 0
    if args.scenario is not None or args.speed is not None:
        if problem := scenarios.problem(args.scenario, args.speed, args.duration):
            print(f"stack loadgen: {problem}", file=sys.stderr)
            return 2
        args.per_day = args.per_day or (None if args.rate else scenarios.DEFAULT_PER_DAY)
    if args.rate is not None and args.per_day is not None:
        parser.error("give --rate or --per-day, not both")
    rate = args.per_day / 86_400 if args.per_day is not None else args.rate
    rate = DEFAULT_RATE if rate is None else rate
    if rate <= 0:
        parser.error("the rate must be positive")
    if args.orgs < 1 or args.duration < 0:
        parser.error("--orgs must be at least 1 and --duration not negative")

    from worker.app import setup
    from worker.config import load_settings
    from worker.redis_client import redis_client

    settings = load_settings()
    client = redis_client(settings)
    namespace = settings.job_queue_name
    keys = RedisKeys(namespace)
    try:
        fields = simulation_fields(args)
        if fields or args.reset_simulation or args.set_only:
            current = set_simulation(client, namespace, fields, args.reset_simulation)
            shown = ", ".join(f"{k}={v}" for k, v in sorted(current.items())) or "none"
            print(f"simulation overrides in {keys.simulation}: {shown}", flush=True)
        if args.set_only:
            return 0
    except redis.RedisError as exc:
        print(f"loadgen: Redis unreachable: {type(exc).__name__}", file=sys.stderr)
        return 1

    setup(settings)
    from worker import actors

    by_name = {a.actor_name: a for a in actors.ACTORS}
    progress = Progress(sys.stderr)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))

    def status(totals: Totals, final: bool) -> None:
        if args.quiet and not final:
            return
        elapsed = time.monotonic() - totals.started
        try:
            ready = " ".join(f"{q}={client.llen(keys.queue(q))}" for q in QUEUES)
        except redis.RedisError:
            ready = "(redis unreachable)"
        kinds = " ".join(f"{k}={totals.sent[k]}" for k in args.mix)
        failed = f" failed {totals.failed} (broker unreachable)" if totals.failed else ""
        of = f"/{args.duration:.0f}s" if args.duration else "s"
        progress.show(
            f"loadgen {elapsed:.0f}{of}: sent {totals.count} "
            f"({totals.count / elapsed if elapsed >= 1 else 0:.2f}/s, target {rate:.2f}/s){failed} "
            f"[{kinds}] ready: {ready}",
            final,
        )

    if args.scenario is not None:
        return replay(args, rate * 86_400, client, namespace, by_name, redis_client(settings))
    print(
        f"loadgen: {rate:.2f} jobs/s ({rate * 86_400:,.0f}/day) for "
        f"{f'{args.duration:g} s' if args.duration else 'ever (Ctrl-C stops)'}, "
        f"{args.orgs} organizations, to {namespace} on the broker",
        file=sys.stderr,
        flush=True,
    )
    totals = Totals()
    try:
        run(
            lambda job_type, kwargs: by_name[job_type].send(**kwargs),
            rate=rate,
            duration=args.duration,
            mix=args.mix,
            orgs=args.orgs,
            seed=args.seed,
            status=status,
            stop=lambda: bool(stopping),
            totals=totals,
        )
    except KeyboardInterrupt:
        pass
    status(totals, True)
    return 0


def replay(
    args: argparse.Namespace,
    per_day: float,
    client: redis.Redis,
    namespace: str,
    by_name: dict[str, Any],
    outage_client: redis.Redis,
) -> int:
    """``--scenario``: the phases one after the other, each reported as it ends."""
    scenario = scenarios.SCENARIOS[args.scenario]
    speed = args.speed or scenarios.DEFAULT_SPEED
    print(scenarios.describe(scenario, speed=speed, per_day=per_day), file=sys.stderr, flush=True)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stopping.append(signum))
    player = scenarios.Replay(
        scenario,
        send=lambda job_type, kwargs: by_name[job_type].send(**kwargs),
        client=client,
        namespace=namespace,
        speed=speed,
        per_day=per_day,
        orgs=args.orgs,
        seed=args.seed,
        stop=lambda: bool(stopping),
        report=lambda result: print(result.line(), file=sys.stderr, flush=True),
        outage_client=outage_client,
    )
    try:
        player.run()
    except KeyboardInterrupt:
        print("interrupted: simulation reset", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
