"""The named days of ``stack loadgen --scenario``: their timelines are well-formed (quick),
and each, replayed on one twin at high speed, shows in the twin's Prometheus what it says
it does (``slow``: one twin for the module, about three minutes)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from alerts.render import render_rules
from stack import loadgen, scenarios, twin_cli
from stack.fleet import python_env
from stack.poll import wait_until
from stack.scenarios import NORMAL_LLM, SCENARIOS
from stack.twin import LocalStack
from stack.twin_config import deep_merge
from tests.support.e2e import ALERT_OVERRIDES, REPLICA_ENV

# --- the timelines ---------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=list(SCENARIOS))
def test_timeline_is_well_formed(scenario):
    assert scenario.phases and len({p.name for p in scenario.phases}) == len(scenario.phases)
    for phase in scenario.phases:
        assert phase.minutes > 0 and phase.load > 0 and phase.flood >= 0
        assert set(phase.llm) <= set(NORMAL_LLM), phase.llm
        knobs = {**NORMAL_LLM, **phase.llm}
        assert 0 <= knobs["failure_ratio"] + knobs["ratio_429"] <= 1
        low, high = knobs["latency"]
        assert 0 < low <= high
        if phase.redis:  # a flap fits in the phase at the default speed
            assert 0 < phase.redis.down < phase.minutes * 60 / scenarios.DEFAULT_SPEED
    # Each fault scenario starts and ends as a normal day, so the fault is seen to pass.
    if scenario.name != "diurnal":
        for calm in (scenario.phases[0], scenario.phases[-1]):
            assert not (calm.llm or calm.redis or calm.flood) and calm.load == 1


def test_diurnal_averages_450k_a_day():
    day = SCENARIOS["diurnal"]
    assert [p.minutes for p in day.phases] == [60] * 24
    sent = sum(p.load * p.minutes * 60 for p in day.phases) * scenarios.DEFAULT_PER_DAY / 86_400
    assert sent == pytest.approx(450_000)
    loads = [p.load for p in day.phases]
    assert loads.index(min(loads)) < 6 and 9 <= loads.index(max(loads)) < 17


def test_list_prints_every_scenario_with_its_phases(capsys):
    for argv in (["--scenario", "list"], ["--list-scenarios"]):
        assert loadgen.main(argv) == 0
        out = capsys.readouterr().out
        for scenario in SCENARIOS.values():
            assert f"{scenario.name}: {scenario.summary}" in out
            assert all(f"  {p.name} " in out for p in scenario.phases)


BAD_ARGUMENTS = [
    (["--scenario", "nope"], "unknown scenario 'nope'"),
    (["--scenario", "diurnal", "--speed", "0"], "--speed 0: must be above 0"),
    (["--scenario", "diurnal", "--speed", "1e6"], "at most 3600"),
    (["--speed", "10"], "--speed applies to a --scenario"),
]


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [("loadgen", *case) for case in BAD_ARGUMENTS]
    + [("up-local", *case) for case in BAD_ARGUMENTS]
    + [("loadgen", ["--scenario", "diurnal", "--duration", "5"], "--duration does not apply")],
)
def test_bad_scenario_arguments_one_line_exit_2(command, argv, message, capsys):
    main = loadgen.main if command == "loadgen" else twin_cli.main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith(f"stack {command}: ")


# --- replayed on a twin ----------------------------------------------------------------

#: RedisDisconnected waits longer than one flap lasts, as production's `for` (1m) does
#: (the e2e rules' 3 s is a flap's length, and whether it fires would be a race).
FLAP_SHORTER_THAN_FOR = {"alerts": {"RedisDisconnected": {"for": "10s"}}}

#: Day-time seconds per second for the fault scenarios: 36 s for the brownout.
SPEED = 100


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One twin: the e2e rules (short windows and `for`), scraped and evaluated every
    second, no load of its own; each test replays a scenario on it."""
    rules = tmp_path_factory.mktemp("rules")
    render_rules(deep_merge(ALERT_OVERRIDES, FLAP_SHORTER_THAN_FOR), rules)
    with LocalStack(
        tmp_path_factory.mktemp("twin"),
        alertmanagers=1,
        scrape_interval="1s",
        evaluation_interval="1s",
        rules_dir=rules,
        replica_env=REPLICA_ENV,
    ) as twin:
        wait_until(
            lambda: len(twin.query('up{job="worker"} == 1')) == len(twin.replicas),
            30,
            "Prometheus scrapes every replica",
        )
        yield twin


@dataclass
class Recorded:
    """A replayed scenario: when each phase began and ended (Unix times)."""

    stack: LocalStack
    phases: dict[str, tuple[float, float]]
    output: str

    def value(self, promql: str, phase: str, *, trim: float = 0.0) -> float:
        """``promql`` with ``$w`` the phase's length (less ``trim`` s at its start), at its end."""
        start, end = self.phases[phase]
        window = f"{max(1, round(end - start - trim))}s"
        result = self.stack.query(promql.replace("$w", window), end)
        return float(result[0]["value"][1]) if result else 0.0


def replay(stack: LocalStack, name: str, speed: float = SPEED) -> Recorded:
    """Run ``stack loadgen --scenario name`` against the twin; return once Prometheus has
    scraped past its end."""
    done = subprocess.run(
        [sys.executable, "-m", "stack", "loadgen", "--scenario", name, "--speed", str(speed)]
        + ["--seed", "1", "--quiet"],
        env=python_env(REDIS_URL=stack.redis.url, JOB_QUEUE_NAME=stack.namespace),
        capture_output=True,
        text=True,
        timeout=SCENARIOS[name].minutes * 60 / speed + 60,
    )
    ended = time.time()
    assert done.returncode == 0, done.stderr
    # The phases ran one after the other up to the end: lay them back from it.
    phases, end = {}, ended
    for phase in reversed(SCENARIOS[name].phases):
        seconds = phase.minutes * 60 / speed
        phases[phase.name] = (end - seconds, end)
        end -= seconds
    wait_until(
        lambda: (
            min(float(s["value"][1]) for s in stack.query('timestamp(up{job="worker"})'))
            > ended + 1
        ),
        10,
        "a scrape after the replay",
    )
    assert stack.query("count(worker_build_info)"), "the replicas are scraped"
    return Recorded(stack, dict(reversed(phases.items())), done.stderr)


@pytest.mark.slow
def test_llm_brownout_fails_and_slows_calls_then_recovers(stack):
    day = replay(stack, "llm-brownout")
    failed = "sum(increase(worker_jobs_failed_total[$w]))"
    started = "sum(increase(worker_jobs_total[$w]))"
    p95 = (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(worker_job_duration_seconds_bucket{job_type="agent.run"}[$w])))'
    )
    assert day.value(failed, "before") == 0
    share = day.value(failed, "brownout", trim=2) / day.value(started, "brownout", trim=2)
    assert 0.2 < share < 0.5, day.output  # 35 % of calls (status updates call nothing)
    assert day.value(failed, "recovery", trim=3) == 0
    normal, brownout = day.value(p95, "before"), day.value(p95, "brownout", trim=2)
    # 15-20 s calls at speed 100 are 0.15-0.2 s; 60-90 s, 0.6-0.9 s.
    assert normal <= 0.25 and brownout >= 0.5, (normal, brownout)
    assert day.value(p95, "recovery", trim=3) <= 0.25


@pytest.mark.slow
def test_429_storm_retries_calls(stack):
    day = replay(stack, "429-storm")
    retried = "sum(increase(worker_jobs_retried_total[$w]))"
    assert day.value(retried, "before") == 0
    assert day.value(retried, "storm") > 20, day.output
    assert day.value(retried, "after", trim=4) < day.value(retried, "storm") / 4


@pytest.mark.slow
def test_redis_flapping_counts_reconnects_and_warns(stack):
    day = replay(stack, "redis-flapping")
    attempts = "max(increase(worker_redis_reconnect_attempts_total[$w]))"
    assert day.value(attempts, "before") == 0
    assert day.value(attempts, "flapping") > 5, day.output
    assert day.value("min(min_over_time(worker_redis_connection_status[$w]))", "flapping") == 0
    assert day.value("min(min_over_time(worker_redis_connection_status[$w]))", "after") == 1
    # Refused, not hanging: the replicas' endpoints answer every scrape throughout.
    assert day.value('min(min_over_time(up{job="worker"}[$w]))', "flapping") == 1
    fired = 'max_over_time(ALERTS{alertname="%s", alertstate="firing"}[$w])'
    assert day.value(fired % "HighRedisReconnectAttempts", "flapping") == 1
    # Each outage is shorter than RedisDisconnected's `for`: a warning, no page.
    assert day.value(fired % "RedisDisconnected", "flapping") == 0


@pytest.mark.slow
def test_org_over_limit_is_deferred_others_are_not(stack):
    day = replay(stack, "org-over-limit")
    throttled = 'sum(increase(worker_rate_limit_decisions_total{decision="throttled"}[$w]))'
    assert day.value(throttled, "before") == 0
    assert day.value(throttled, "flood") > 10, day.output
    # The others' agent runs start at once: no queue behind the deferred ones.
    wait = (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(worker_job_queue_wait_seconds_bucket{job_type="agent.run"}[$w])))'
    )
    assert day.value(wait, "flood") < 1


@pytest.mark.slow
def test_diurnal_enqueue_rate_follows_the_curve(stack):
    speed = 2_400  # 1.5 s an hour, 36 s the day
    day = replay(stack, "diurnal", speed=speed)
    mean = scenarios.DEFAULT_PER_DAY / 86_400
    hours = list(day.phases)
    measured, expected = [], []
    # The raw counters (increase() extrapolates each series); none yet is none started.
    started = "sum(worker_jobs_total) or vector(0)"
    for block in range(4):  # six hours each, 9 s
        start, end = day.phases[hours[block * 6]][0], day.phases[hours[block * 6 + 5]][1]
        at_start, at_end = (float(stack.query(started, t)[0]["value"][1]) for t in (start, end))
        measured.append(at_end - at_start)
        loads = [p.load for p in SCENARIOS["diurnal"].phases[block * 6 : block * 6 + 6]]
        expected.append(sum(loads) * 3600 / speed * mean)
    for got, want in zip(measured, expected, strict=True):
        assert got == pytest.approx(want, rel=0.25), (measured, expected)
    assert measured[2] > 3 * measured[0]
