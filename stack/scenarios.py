"""Named days for the twin: timelines of load and faults, replayed at a chosen speed.

A scenario is data: phases, each with a length in day-time minutes, a load (a multiple
of the mean rate), the simulated LLM's knobs, and optionally Redis flapping or one
organization flooding. ``Replay`` plays one through the load generator's sender, so that
the twin's Prometheus records a day an operator can backtest alerts on.

How time scales (``speed``, default 60: an hour in a minute, a day in 24 minutes):

- phase lengths are divided by ``speed``;
- the simulated LLM's latency is a day-time duration too, divided by ``speed`` (15-20 s
  calls take 0.25-0.33 s at speed 60), so a shortened day needs no more job slots than
  its real rate times the shortened latency, which the twin's two replicas have;
- rates are not scaled: a scaled hour sends the real hour's jobs per second (450,000 a
  day is 5.21/s on average, the diurnal peak 1.7 times that), so a day at speed 60 sends
  a 60th of its jobs;
- Redis flaps and the flooding organization's rate are real time: the worker's probe,
  backoff and rate-limit windows run on real seconds, and what they do is the point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from stack import loadgen

#: Mean jobs per day of the scenarios: the fleet's planned load (450,000 a day).
DEFAULT_PER_DAY = 450_000
#: Day-time seconds per replayed second (60: an hour in a minute).
DEFAULT_SPEED = 60.0

#: An hour a second: at most one scrape per hour of the day at the twin's fastest (1 s).
MAX_SPEED = 3_600.0

#: The simulated LLM as it normally is (day-time latency, in seconds); a phase's ``llm``
#: changes some of these.
NORMAL_LLM: Mapping[str, Any] = {"latency": (15.0, 20.0), "failure_ratio": 0.0, "ratio_429": 0.0}


@dataclass(frozen=True)
class Flap:
    """Redis refuses clients for ``down`` s, then takes them for ``up`` s (real seconds)."""

    down: float
    up: float


@dataclass(frozen=True)
class Phase:
    """A stretch of the day: ``minutes`` of day time, ``load`` times the mean rate."""

    name: str
    minutes: float
    load: float = 1.0
    #: Changes to NORMAL_LLM for this phase (latency in day-time seconds).
    llm: Mapping[str, Any] = field(default_factory=dict)
    redis: Flap | None = None
    #: Extra agent runs per second (real time) from FLOOD_ORG, over its rate limit.
    flood: float = 0.0

    def describe(self, speed: float, mean_rate: float) -> str:
        knobs = {**NORMAL_LLM, **self.llm}
        low, high = knobs["latency"]
        parts = [
            f"{self.name:<9} {self.minutes:3g} min ({self.minutes * 60 / speed:5.1f} s)",
            f"load x{self.load:<4g} ({self.load * mean_rate:5.2f} jobs/s)",
            f"llm {low:g}-{high:g} s",
        ]
        if knobs["failure_ratio"]:
            parts.append(f"failing {knobs['failure_ratio']:.0%}")
        if knobs["ratio_429"]:
            parts.append(f"429 {knobs['ratio_429']:.0%}")
        if self.redis:
            parts.append(
                f"Redis down {self.redis.down:g} s every {self.redis.down + self.redis.up:g} s"
            )
        if self.flood:
            parts.append(f"{FLOOD_ORG} +{self.flood:g} agent runs/s")
        return "  ".join(parts)


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    phases: tuple[Phase, ...]

    @property
    def minutes(self) -> float:
        return sum(p.minutes for p in self.phases)


#: The organization that floods in ``org-over-limit``: the load generator's largest one.
FLOOD_ORG = "org-0001"

#: Share of the mean rate in each hour of the day, from midnight: a night trough at
#: 0.25, a working-day plateau, the peak at 1.7 in the early afternoon. Mean 1.
DIURNAL_CURVE = (
    0.30, 0.25, 0.25, 0.25, 0.30, 0.40, 0.60, 0.90, 1.30, 1.60, 1.70, 1.70,
    1.60, 1.70, 1.70, 1.60, 1.50, 1.50, 1.30, 1.10, 0.80, 0.70, 0.55, 0.40,
)  # fmt: skip

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "diurnal",
            "a day of 450,000 jobs: night trough, working-day peak",
            tuple(Phase(f"{h:02d}:00", 60, load) for h, load in enumerate(DIURNAL_CURVE)),
        ),
        Scenario(
            "llm-brownout",
            "the LLM slows to 60-90 s a call and fails a third of them for half an hour",
            (
                Phase("before", 10),
                Phase("brownout", 30, llm={"latency": (60.0, 90.0), "failure_ratio": 0.35}),
                Phase("recovery", 20),
            ),
        ),
        Scenario(
            "429-storm",
            "the LLM answers 429 (Retry-After) to most calls for 20 minutes",
            (
                Phase("before", 10),
                Phase("storm", 20, llm={"ratio_429": 0.6}),
                Phase("after", 10),
            ),
        ),
        Scenario(
            "redis-flapping",
            "Redis refuses the fleet for 3 s every 6 s for half an hour",
            (
                Phase("before", 10),
                Phase("flapping", 30, redis=Flap(down=3, up=3)),
                Phase("after", 10),
            ),
        ),
        Scenario(
            "org-over-limit",
            f"{FLOOD_ORG} sends 10 agent runs/s more (6x its 100/minute limit) for 20 minutes",
            (
                Phase("before", 10),
                Phase("flood", 20, flood=10.0),
                Phase("after", 10),
            ),
        ),
    )
}


def describe(
    scenario: Scenario, *, speed: float = DEFAULT_SPEED, per_day: float = DEFAULT_PER_DAY
) -> str:
    """The scenario and its timeline, as ``--scenario list`` prints it."""
    lines = [
        f"{scenario.name}: {scenario.summary} "
        f"({scenario.minutes:g} min, {scenario.minutes * 60 / speed:.0f} s at speed {speed:g})"
    ]
    lines += [f"  {p.describe(speed, per_day / 86_400)}" for p in scenario.phases]
    return "\n".join(lines)


def listing(*, speed: float = DEFAULT_SPEED) -> str:
    """Every scenario with its phases."""
    return "\n\n".join(describe(s, speed=speed) for s in SCENARIOS.values())


def problem(name: str | None, speed: float | None, duration: float) -> str | None:
    """What is wrong with ``--scenario``/``--speed``, in one line; None when nothing is."""
    if name is None:
        return "--speed applies to a --scenario"
    if name not in SCENARIOS:
        return f"unknown scenario {name!r} (one of {', '.join(SCENARIOS)}; --scenario list)"
    if speed is not None and not (0 < speed <= MAX_SPEED):
        return f"--speed {speed:g}: must be above 0 and at most {MAX_SPEED:g}"
    if duration:
        return "--duration does not apply to a scenario: its phases set how long it runs"
    return None


def simulation(phase: Phase, speed: float) -> dict[str, float]:
    """The ``<ns>:simulation`` fields of ``phase``, latency scaled to replay time."""
    knobs = {**NORMAL_LLM, **phase.llm}
    low, high = knobs["latency"]
    return {
        "failure_ratio": knobs["failure_ratio"],
        "ratio_429": knobs["ratio_429"],
        "latency_min": low / speed,
        "latency_max": high / speed,
    }


class RedisOutage:
    """Redis refusing the fleet, from a client: ``begin`` lowers ``maxclients`` to 1 (this
    client's connection) and drops every other client (CLIENT KILL TYPE normal); ``end``
    puts ``maxclients`` back.

    Why this, of what a client can do: a flapping Redis refuses connections and drops
    those it had, so every user fails at once and reconnects, probe and broker alike. A
    full Redis answers a new connection "max number of clients reached" and closes it,
    which redis-py raises as a ConnectionError as fast as a refused connection: the
    replicas' probes report ``worker_redis_connection_status`` 0, each attempt counts in
    ``worker_redis_reconnect_attempts_total``, and the metrics endpoint keeps answering.
    CLIENT PAUSE instead leaves every command hanging until a timeout, so each process
    counts about one attempt per outage and scrapes that sample the backlog time out,
    which a refused connection never does. Needs CONFIG SET (some managed Redis deny it).
    Keep the client's connection: the one slot left is its.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._maxclients: str | None = None

    def begin(self) -> None:
        if self._maxclients is None:
            self._maxclients = self.client.config_get("maxclients")["maxclients"]
        self.client.config_set("maxclients", 1)
        self.client.client_kill_filter(_type="normal", skipme=True)

    def end(self) -> None:
        if self._maxclients is not None:
            self.client.config_set("maxclients", self._maxclients)
            self._maxclients = None


@dataclass
class PhaseResult:
    name: str
    seconds: float
    target_rate: float
    sent: int
    failed: int
    flood_sent: int = 0
    flaps: int = 0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        extra = f", {FLOOD_ORG} +{self.flood_sent}" if self.flood_sent else ""
        extra += f", {self.flaps} flaps" if self.flaps else ""
        failed = f", {self.failed} not sent (broker unreachable)" if self.failed else ""
        return (
            f"phase {self.name}: {self.seconds:.1f} s, sent {self.sent} "
            f"({self.rate:.2f}/s, target {self.target_rate:.2f}/s){failed}{extra}"
        )


class Replay:
    """Plays ``scenario``: per phase, sets the simulation, starts its faults, sends its load.

    Options (keyword-only):
      send        ``send(job_type, kwargs)``: enqueue one job (an actor's ``send``)
      client      a Redis client of the fleet's broker, for the simulation hash
      outage_client   a client of its own for Redis flaps (RedisOutage; default: client)
      namespace   the fleet's JOB_QUEUE_NAME
      speed       day-time seconds per replayed second (default DEFAULT_SPEED, 60)
      per_day     mean jobs per day of the load (default DEFAULT_PER_DAY, 450,000)
      orgs, seed  the load generator's organizations and random seed
      stop        returns True to end the replay early (SIGTERM)
      report      called with each phase's result as it ends
    The simulation is reset and Redis takes clients again when the replay ends, however it ends.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        send: Callable[[str, dict[str, Any]], None],
        client: redis.Redis,
        namespace: str,
        speed: float = DEFAULT_SPEED,
        per_day: float = DEFAULT_PER_DAY,
        orgs: int = 50,
        seed: int | None = None,
        stop: Callable[[], bool] = lambda: False,
        report: Callable[[PhaseResult], None] = lambda result: None,
        outage_client: redis.Redis | None = None,
    ) -> None:
        self.scenario, self.send, self.client, self.namespace = scenario, send, client, namespace
        self.speed, self.mean_rate, self.orgs, self.seed = speed, per_day / 86_400, orgs, seed
        self.stop, self.report = stop, report
        self.outage = RedisOutage(outage_client or client)
        self._halt = threading.Event()

    def run(self) -> list[PhaseResult]:
        results = []
        try:
            for phase in self.scenario.phases:
                if self.stop():
                    break
                results.append(self._phase(phase))
                self.report(results[-1])
        finally:
            self._halt.set()
            self.reset()
        return results

    def reset(self) -> None:
        """Redis answering again and the simulation back to each replica's own settings."""
        self.outage.end()
        loadgen.set_simulation(self.client, self.namespace, {}, reset=True)

    def _stopping(self) -> bool:
        return self._halt.is_set() or self.stop()

    def _phase(self, phase: Phase) -> PhaseResult:
        seconds = phase.minutes * 60 / self.speed
        loadgen.set_simulation(self.client, self.namespace, simulation(phase, self.speed))
        result = PhaseResult(phase.name, seconds, phase.load * self.mean_rate, 0, 0)
        end = time.monotonic() + seconds
        helpers = []
        if phase.redis is not None:
            helpers.append(threading.Thread(target=self._flapping, args=(phase.redis, end, result)))
        flood = loadgen.Totals()
        if phase.flood:
            helpers.append(
                threading.Thread(target=self._flooding, args=(phase.flood, seconds, flood))
            )
        for helper in helpers:
            helper.start()
        try:
            totals = loadgen.run(
                self.send,
                rate=result.target_rate,
                duration=seconds,
                mix=loadgen.DEFAULT_MIX,
                orgs=self.orgs,
                seed=self.seed,
                stop=self._stopping,
                offset=0.5,  # phases of a few jobs each: no extra job at each start
            )
            self._wait(end)  # run() returns at its last job; the phase lasts its length
        except BaseException:
            self._halt.set()  # Ctrl-C: the helpers stop too, and Redis is given back
            raise
        finally:
            if self.stop():
                self._halt.set()
            for helper in helpers:
                helper.join()
        result.sent, result.failed, result.flood_sent = totals.count, totals.failed, flood.count
        result.seconds = time.monotonic() - totals.started  # its length, unless stopped
        return result

    def _flapping(self, every: Flap, end: float, result: PhaseResult) -> None:
        try:
            while not self._stopping() and time.monotonic() + every.down < end:
                self.outage.begin()
                result.flaps += 1
                self._wait(time.monotonic() + every.down)
                self.outage.end()
                self._wait(min(end, time.monotonic() + every.up))
        finally:
            self.outage.end()

    def _wait(self, until: float) -> None:
        while not self._stopping() and (left := until - time.monotonic()) > 0:
            self._halt.wait(min(left, 0.1))

    def _flooding(self, rate: float, seconds: float, totals: loadgen.Totals) -> None:
        loadgen.run(
            self.send,
            rate=rate,
            duration=seconds,
            mix={"agent.run": 1.0},
            orgs=1,
            seed=self.seed,
            stop=self._stopping,
            totals=totals,
        )
