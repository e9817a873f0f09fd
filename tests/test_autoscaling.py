"""`stack capacity --kubernetes`: the KEDA trigger's target and the replica bounds from the
planner (stack/autoscaling.py), in the style of tests/test_capacity.py."""

from __future__ import annotations

import json
import math

from stack.autoscaling import MIN_REPLICAS, bounds, grace_period
from stack.capacity import main, plan

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
