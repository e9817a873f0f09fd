"""The capacity planner: Little's-law arithmetic, its CLI, and live numbers from Prometheus."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from stack.capacity import erlang_c, main, plan, slots_for_wait, wait_longer_than
from stack.prom import backfill_openmetrics
from stack.servers import free_port, prometheus_server, running
from worker.ratelimit import parse_limits

CAPACITY_PAGE = Path(__file__).resolve().parents[1] / "docs" / "capacity.md"


# --- arithmetic -----------------------------------------------------------------------


def test_planned_load_needs_91_jobs_in_flight_and_5_replicas():
    p = plan(jobs_per_day=450_000, job_seconds=17.5)
    assert p.arrival_rate_per_s == pytest.approx(5.2083, abs=1e-4)
    assert p.required_concurrency == pytest.approx(91.15, abs=0.01)
    assert p.recommended_concurrency == 114  # ceil(91.15 / 0.8)
    assert p.replicas == 5  # ceil(114 / 25)
    assert p.deployed_slots == 125
    assert p.headroom == pytest.approx(125 / 91.1458 - 1, abs=1e-4)


def test_todays_load_needs_27_jobs_in_flight():
    p = plan(jobs_per_day=135_000, job_seconds=17.5)
    assert p.required_concurrency == pytest.approx(27.34, abs=0.01)
    assert p.recommended_concurrency == 35
    assert p.replicas == 2


def test_original_claim_25_slots_serve_1_43_jobs_per_second_not_25():
    # 25 slots at 17.5 s per job: at most 25 / 17.5 jobs complete each second.
    one_replica = plan(jobs_per_second=25, job_seconds=17.5, deployed_replicas=1)
    assert one_replica.deployed_throughput_per_s == pytest.approx(1.43, abs=0.005)
    assert one_replica.required_concurrency == pytest.approx(437.5)
    assert one_replica.headroom < -0.9  # 25 slots carry about 6 % of that load
    # And the load those 25 slots do carry exactly fills them.
    full = plan(jobs_per_second=25 / 17.5, job_seconds=17.5, utilization=1, deployed_replicas=1)
    assert full.required_concurrency == pytest.approx(25)
    assert full.recommended_concurrency == 25
    assert full.headroom == pytest.approx(0, abs=1e-9)


def test_retries_and_peaks_add_slots():
    p = plan(jobs_per_day=450_000, job_seconds=17.5, retry_fraction=0.1, peak_factor=2)
    assert p.arrival_rate_per_s == pytest.approx(5.2083 * 1.1, abs=1e-3)
    assert p.required_concurrency == pytest.approx(100.26, abs=0.01)  # peak not included
    assert p.recommended_concurrency == math.ceil(100.26 * 2 / 0.8)  # 251
    assert p.replicas == 11
    assert p.headroom == pytest.approx(11 * 25 / (100.2604 * 2) - 1, abs=1e-4)


def test_exact_products_do_not_round_up_a_slot():
    # 21 jobs in flight at 70 % utilization is 30 slots, though 21 / 0.7 = 30.000000000000004.
    p = plan(jobs_per_second=2.1, job_seconds=10, utilization=0.7, concurrency_per_replica=10)
    assert p.required_concurrency == pytest.approx(21)
    assert p.recommended_concurrency == 30
    assert p.replicas == 3


def test_day_limit_binds_so_planned_load_needs_5_organizations():
    p = plan(jobs_per_day=450_000, job_seconds=17.5)
    assert p.binding_window == "day"
    assert p.organization_ceiling_per_s == pytest.approx(100_000 / 86_400)
    assert p.min_organizations == 5
    assert plan(jobs_per_day=135_000, job_seconds=17.5).min_organizations == 2


def test_custom_rate_limits_change_the_binding_window():
    limits = parse_limits("minute=10/60,day=100000/86400")
    p = plan(jobs_per_day=450_000, job_seconds=17.5, rate_limits=limits)
    assert p.binding_window == "minute"
    assert p.min_organizations == math.ceil(5.2083 / (10 / 60))  # 32


@pytest.mark.parametrize(
    "bad",
    [
        {"jobs_per_day": 0},
        {"jobs_per_day": -5},
        {"jobs_per_day": math.nan},
        {"job_seconds": 0},
        {"utilization": 0},
        {"utilization": 1.2},
        {"peak_factor": 0.5},
        {"retry_fraction": -0.1},
        {"concurrency_per_replica": 0},
        {"deployed_replicas": -1},
        {"jobs_per_second": 1},  # both rates given
    ],
)
def test_plan_rejects_bad_input(bad):
    kwargs = {"jobs_per_day": 450_000, "job_seconds": 17.5, **bad}
    with pytest.raises(ValueError):
        plan(**kwargs)


# --- command line ---------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_exit(capsys, *argv: str) -> tuple[int, str, str]:
    """main() for arguments that argparse itself rejects (it raises SystemExit)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_has_the_documented_keys(capsys):
    code, out, err = run(capsys, "--jobs-per-day", "450000", "--job-seconds", "17.5", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    documented = {
        "arrival_rate_per_s",
        "required_concurrency",
        "recommended_concurrency",
        "replicas",
        "headroom",
    }
    assert documented <= data.keys()
    assert round(data["required_concurrency"]) == 91
    assert data["recommended_concurrency"] == 114
    assert data["replicas"] == 5
    assert data["min_organizations"] == 5


# --- sizing from the queue-wait SLO (Erlang C) ------------------------------------------


def test_erlang_c_matches_published_values():
    """Published Erlang C figures, to their printed precision:

    - the step-by-step example of the Erlang-C formula (Mitan Ltd, "The Erlang-C
      formula", www.mitan.co.uk/erlang/elgcmath.htm, repeated by call-centre staffing
      guides): 360 calls per half hour of 4 minutes on 55 agents, 48 Erlangs: a 24 %
      probability of waiting, an average speed of answer of 8.2 s, 85 % of calls
      answered within the 15 s target;
    - Erlang C tables of C(n, A) (e.g. ITU-D's Teletraffic Engineering Handbook):
      C(11, 10) = 0.682;
    - with one server, M/M/c is M/M/1: P(wait) = utilization, P(wait > t) =
      rho x exp(-(mu - lambda) t) (any queueing text, e.g. Kleinrock, Queueing Systems I).
    """
    pw = erlang_c(55, 48.0)
    assert pw == pytest.approx(0.24, abs=0.005)
    assert pw * 240 / (55 - 48) == pytest.approx(8.2, abs=0.05)
    assert 1 - wait_longer_than(55, 360 / 1800, 240, 15) == pytest.approx(0.85, abs=0.005)
    assert erlang_c(11, 10.0) == pytest.approx(0.682, abs=5e-4)
    assert erlang_c(1, 0.75) == pytest.approx(0.75)
    assert wait_longer_than(1, 0.75, 1.0, 2.0) == pytest.approx(0.75 * math.exp(-0.25 * 2))
    assert erlang_c(48, 48.0) == 1  # as many slots as Erlangs: the queue never drains


def test_slots_for_the_wait_slo_are_the_fewest_that_meet_it():
    rate = 450_000 / 86_400  # 91.1 Erlangs at 17.5 s
    slots = slots_for_wait(rate, 17.5, 0.99, 60)
    assert slots == 93
    assert wait_longer_than(93, rate, 17.5, 60) <= 0.01 < wait_longer_than(92, rate, 17.5, 60)
    # A stricter objective needs more slots, never fewer than the load itself.
    assert slots_for_wait(rate, 17.5, 0.999, 60) > slots
    assert slots_for_wait(rate, 17.5, 0.99, 0) > slots_for_wait(rate, 17.5, 0.99, 60)
    assert slots_for_wait(rate, 17.5, 0.5, 3600) == 92  # just above 91.1 Erlangs
    with pytest.raises(ValueError, match="share"):
        slots_for_wait(rate, 17.5, 1.0, 60)


def test_cli_wait_slo_beside_littles_law(capsys):
    argv = ["--jobs-per-day", "450000", "--job-seconds", "17.5", "--wait-slo", "0.99:60"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert re.search(r"recommended concurrency\s+114 slots", out)
    assert re.search(r"slots for the wait SLO\s+93 slots: 99 % of jobs start within 60 s", out)
    code, out, _ = run(capsys, *argv, "--json")
    data = json.loads(out)
    assert (data["recommended_concurrency"], data["slots_for_wait_slo"]) == (114, 93)
    # At a peak of twice the average rate the SLO must hold at the peak.
    code, out, _ = run(capsys, *argv, "--peak-factor", "2", "--json")
    assert json.loads(out)["slots_for_wait_slo"] == slots_for_wait(
        2 * 450_000 / 86_400, 17.5, 0.99, 60
    )
    code, out, _ = run(capsys, "--jobs-per-day", "450000", "--job-seconds", "17.5", "--json")
    assert json.loads(out)["slots_for_wait_slo"] is None


def test_cli_text_names_the_answer(capsys):
    code, out, _ = run(
        capsys, "--jobs-per-second", "5.2083", "--p95-seconds", "17.5", "--replicas", "4"
    )
    assert code == 0
    assert re.search(r"required concurrency\s+91\.1 ", out)
    assert re.search(r"recommended concurrency\s+114 slots", out)
    assert "p95, used as the mean" in out
    assert re.search(r"deployment\s+4 replicas \(deployed\), 100 slots", out)
    assert re.search(r"headroom\s+\+9\.7%", out)  # 100 / 91.1 - 1
    assert re.search(r"organizations needed\s+5 ", out)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--jobs-per-day", "-1", "--job-seconds", "17"], "--jobs-per-day: must be a positive"),
        (["--jobs-per-day", "lots", "--job-seconds", "17"], "'lots' is not a number"),
        (["--jobs-per-day", "1000", "--job-seconds", "0"], "--job-seconds: must be a positive"),
        (["--jobs-per-day", "1000", "--job-seconds", "17", "--utilization", "1.5"], "(0, 1]"),
        (["--jobs-per-day", "1000", "--job-seconds", "17", "--utilization", "0"], "(0, 1]"),
        (["--jobs-per-day", "1000", "--job-seconds", "17", "--peak-factor", "0.5"], "1 or more"),
        (["--jobs-per-day", "1000", "--job-seconds", "17", "--replicas", "2.5"], "whole number"),
        (["--jobs-per-day", "1000", "--job-seconds", "17", "--rate-limits", "x"], "name=count"),
        (["--jobs-per-day", "1000"], "give --job-seconds"),
        (["--job-seconds", "17"], "give --jobs-per-day"),
        (["--jobs-per-day", "1", "--from-prometheus", "ftp://x"], "http:// or https://"),
        (["--jobs-per-day", "1", "--job-seconds", "17", "--wait-slo", "0.99"], "SHARE:SECONDS"),
        (["--jobs-per-day", "1", "--job-seconds", "17", "--wait-slo", "1:60"], "share in (0, 1)"),
        (["--jobs-per-day", "1", "--job-seconds", "17", "--wait-slo", "0.9:-1"], "seconds >= 0"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(capsys, argv, says):
    code, out, err = run_exit(capsys, *argv)
    assert code == 2
    assert out == ""
    assert says in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_cli_unreachable_prometheus_hides_the_password(capsys):
    url = f"http://ops:hunter2@127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "--from-prometheus", url)
    assert code == 2
    assert "cannot reach Prometheus" in err and "hunter2" not in err
    assert len(err.strip().splitlines()) == 1


def test_module_runs_as_a_script():
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stack.capacity",
            "--jobs-per-day",
            "135000",
            "--job-seconds",
            "17.5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["required_concurrency"] == pytest.approx(27.34, abs=0.01)


def test_capacity_page_table_matches_the_planner():
    text = CAPACITY_PAGE.read_text()
    section = text.split("## Today's and the planned load", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| ([\d,]+) \| ([\d.]+) \| (.+) \|$", section, re.MULTILINE)
    assert len(rows) == 6
    for jobs, seconds, rest in rows:
        p = plan(
            jobs_per_day=float(jobs.replace(",", "")),
            job_seconds=float(seconds),
            wait_slo=(0.99, 60),
        )
        expected = [
            f"{p.arrival_rate_per_s:.2f}",
            f"{p.required_concurrency:.1f}",
            str(p.recommended_concurrency),
            str(p.replicas),
            str(p.slots_for_wait_slo),
            str(p.min_organizations),
        ]
        assert [cell.strip() for cell in rest.split("|")] == expected, (jobs, seconds)


# --- live numbers from a real Prometheus ----------------------------------------------

# Two queues over the last two hours (and ten minutes ahead, so that "now" is covered
# whatever the clock reads when the query runs): 2 attempts/s of 20 s and 0.5 attempts/s of
# 5 s, so 2.5 attempts/s with a mean of (2 x 20 + 0.5 x 5) / 2.5 = 17 s.
SERIES = [
    ('queue="default",job_type="agent.run"', 2.0, 20.0),
    ('queue="critical",job_type="crm.sync"', 0.5, 5.0),
]


def _openmetrics(now: int, step: int = 15) -> str:
    start, end = now - 7200, now + 600
    times = range(start, end, step)
    jobs = ["# TYPE worker_jobs counter"]
    hist = ["# TYPE worker_job_duration_seconds histogram"]
    for labels, rate, seconds in SERIES:
        for t in times:
            count = rate * (t - start)
            jobs.append(f"worker_jobs_total{{{labels}}} {count} {t}")
            hist.append(f'worker_job_duration_seconds_bucket{{{labels},le="+Inf"}} {count} {t}')
            hist.append(f"worker_job_duration_seconds_count{{{labels}}} {count} {t}")
            hist.append(f"worker_job_duration_seconds_sum{{{labels}}} {count * seconds} {t}")
    return "\n".join([*jobs, *hist, "# EOF"]) + "\n"


@pytest.fixture(scope="module")
def prometheus_with_history(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("prometheus")
    backfill_openmetrics(_openmetrics(int(time.time())), workdir)
    with running(prometheus_server(workdir)) as server:
        yield server.url


def test_from_prometheus_measures_rate_and_duration(capsys, prometheus_with_history):
    code, out, err = run(capsys, "--from-prometheus", prometheus_with_history, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["arrival_rate_per_s"] == pytest.approx(2.5, rel=1e-3)
    assert data["job_seconds"] == pytest.approx(17.0, rel=1e-3)
    assert data["required_concurrency"] == pytest.approx(42.5, rel=1e-3)
    assert data["recommended_concurrency"] == 54  # ceil(42.5 / 0.8)
    assert data["replicas"] == 3


def test_explicit_values_override_the_measured_ones(capsys, prometheus_with_history):
    code, out, _ = run(
        capsys,
        "--from-prometheus",
        prometheus_with_history,
        "--prometheus-range",
        "30m",
        "--job-seconds",
        "10",
    )
    assert code == 0
    assert "measured by Prometheus  over the last 30m" in out
    assert re.search(r"required concurrency\s+25\.0 ", out)  # 2.5/s measured x 10 s given


def test_prometheus_without_data_is_an_error(capsys, tmp_path):
    with running(prometheus_server(tmp_path / "empty")) as server:
        code, out, err = run(capsys, "--from-prometheus", server.url)
    assert code == 2 and out == ""
    assert "no data for 'sum(rate(worker_jobs_total[1h]))'" in err
    assert len(err.strip().splitlines()) == 1


def test_a_query_prometheus_rejects_is_an_error(capsys, prometheus_with_history):
    code, out, err = run(
        capsys, "--from-prometheus", prometheus_with_history, "--prometheus-range", "0s"
    )
    assert code == 2 and out == ""
    assert "rejected 'sum(rate(worker_jobs_total[0s]))': HTTP 400" in err
    assert len(err.strip().splitlines()) == 1
