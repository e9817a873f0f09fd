"""`stack capacity --kubernetes`: the KEDA trigger's target and the replica bounds from the
planner (stack/autoscaling.py), in the style of tests/test_capacity.py."""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import pytest

from stack.autoscaling import MIN_REPLICAS, bounds, grace_period
from stack.capacity import main, plan
from stack.scaledown import Day, rate_at, simulate

PLANNED = ["--jobs-per-day", "450000", "--job-seconds", "17.5"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_target_asks_the_hpa_for_the_planners_replicas():
    p = plan(jobs_per_day=450_000, job_seconds=17.5)
    a = bounds(p)
    assert a.trigger_target == 20  # 25 slots x 80 % utilization
    # The HPA's desired count for the busy slots on average is the planner's replica count.
    assert math.ceil(p.required_concurrency / a.trigger_target) == p.replicas == 5


def test_the_ceiling_is_the_peak_and_the_floor_two():
    assert bounds(plan(jobs_per_day=450_000, job_seconds=17.5, peak_factor=2)).max_replicas == 10
    assert bounds(plan(jobs_per_day=1_000, job_seconds=17.5)).max_replicas == MIN_REPLICAS
    # A wait SLO that asks for more slots than the utilization rule raises the ceiling.
    tight = plan(jobs_per_day=450_000, job_seconds=17.5, utilization=1.0, wait_slo=(0.99, 1))
    assert tight.slots_for_wait_slo > tight.recommended_concurrency
    assert bounds(tight).max_replicas == math.ceil(tight.slots_for_wait_slo / 25)


def test_cli_kubernetes_json_adds_the_three_keys(capsys):
    code, out, err = run(capsys, *PLANNED, "--peak-factor", "2", "--kubernetes", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert (data["min_replicas"], data["max_replicas"], data["trigger_target"]) == (2, 10, 20)
    assert data["replicas"] == 10  # the plan's keys stay


def test_cli_json_without_kubernetes_has_none_of_them(capsys):
    code, out, _ = run(capsys, *PLANNED, "--json")
    assert (
        code == 0
        and not {"min_replicas", "max_replicas", "trigger_target"} & json.loads(out).keys()
    )


def test_cli_kubernetes_text_names_target_bounds_and_query(capsys):
    code, out, _ = run(capsys, *PLANNED, "--concurrency-per-replica", "50", "--kubernetes")
    assert code == 0
    assert "trigger target          40 ready or in-flight jobs per replica" in out
    assert "replicas                min 2, max 3" in out  # ceil(114 / 50)
    assert "worker_jobs_processing" in out


def test_the_grace_period_is_the_longest_attempt_plus_the_exit():
    g = grace_period()
    assert (g.longest_attempt_seconds, g.shutdown_grace_seconds) == (70, 70)
    assert g.termination_grace_period_seconds == 85
    assert "= 85 s" in g.explain()[-1]


# --- the day simulated (stack/scaledown.py) ----------------------------------------------

DAY = dict(
    jobs_per_day=450_000,
    job_seconds=17.5,
    slots_per_replica=25,
    min_replicas=2,
    max_replicas=10,
    slo_seconds=60,
)


@functools.cache
def diurnal(target: float) -> Day:
    """The planned load's day (peak factor 2) at a target: what docs/kubernetes.md shows."""
    return simulate(peak_factor=2.0, target=target, **DAY)


def test_a_flat_day_settles_at_the_hpas_count():
    day = simulate(peak_factor=1.0, target=20, **DAY)
    assert len(day.hours) == 24
    assert abs(day.jobs - 450_000) < 450_000 * 0.01  # the Poisson arrivals keep the mean
    # 91 jobs in flight on average: ceil(91 / 20) = 5; Poisson bursts of +-10 jobs ask for
    # 6, which the 5 minutes' stabilization keeps. Never the ceiling, never the floor.
    assert all(5 <= lo <= hi <= 7 for _, lo, hi, _ in day.hours[1:])
    assert 5 <= day.replica_hours / 24 <= 6.5
    assert day.share_within > 0.999


def test_a_diurnal_day_follows_the_load_between_the_bounds():
    day = diurnal(20)
    rates = [rate for rate, *_ in day.hours]
    assert rates.index(max(rates)) in (15, 16) and rates.index(min(rates)) in (3, 4)
    assert day.hours[4][1:3] == (2, 2)  # the floor at night
    assert day.hours[15][1:3] == (10, 10)  # the ceiling at the peak
    assert day.replica_hours < 10 * 24 * 0.7  # cheaper than the peak all day
    assert day.share_within > 0.999


def test_a_target_at_the_slot_count_lets_the_prefetch_hide_a_backlog():
    """Prefetched jobs are neither ready nor in flight: at a target equal to the slots the
    fleet sits saturated within the tolerance while they wait; at 0.8 x it scales first."""
    at_slots, below = diurnal(25), diurnal(20)
    assert below.wait_quantile(0.99) <= 5 < 20 <= at_slots.wait_quantile(0.99)
    assert below.replica_hours > at_slots.replica_hours  # what the shorter waits cost


def test_rate_at_averages_the_daily_mean_with_the_peak_factor():
    mean = 450_000 / 86_400
    samples = [rate_at(s, mean, 2.0) for s in range(0, 86_400, 60)]
    assert abs(sum(samples) / len(samples) - mean) < mean * 1e-6
    assert max(samples) == pytest.approx(2 * mean, rel=1e-3)


@pytest.mark.slow
def test_cli_simulate_day_prints_24_hours_and_the_targets_compared(capsys):
    code, out, _ = run(capsys, *PLANNED, "--peak-factor", "2", "--kubernetes", "--simulate-day")
    assert code == 0
    hours = [line for line in out.splitlines() if re.match(r"  \d\d {4}", line)]
    assert len(hours) == 24
    assert "Targets compared (fixed 10 replicas all day: 240 replica-hours)" in out
    assert re.search(r"^ +20 +\d+\.\d\d% +\d+ s +\d+ s +\d+$", out, re.M)


def _doc_table(header: str) -> list[list[str]]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "kubernetes.md").read_text()
    block = text.split(header, 1)[1].split("\n\n", 1)[0]
    return [
        [c.strip().strip("*") for c in line.strip("|").split("|")]
        for line in block.splitlines()[2:]
    ]


@pytest.mark.slow
def test_the_pages_tables_are_the_simulations():
    for target, share, p99, longest, hours in _doc_table("| target | started within 60 s |"):
        day = diurnal(float(target))
        assert share == f"{day.share_within:.2%}".replace("%", " %")
        assert (p99, longest) == (f"{day.wait_quantile(0.99)} s", f"{day.wait_quantile(1.0)} s")
        assert hours == f"{day.replica_hours:.0f}"
    rows = _doc_table("| hour | jobs/s | replicas | started within 60 s |")
    assert len(rows) == 12
    for hour, rate, replicas, share in rows:
        got_rate, lo, hi, got_share = diurnal(20).hours[int(hour)]
        assert rate == f"{got_rate:.2f}" and share == f"{got_share:.2%}".replace("%", " %")
        assert replicas == (f"{lo}" if lo == hi else f"{lo}-{hi}")
