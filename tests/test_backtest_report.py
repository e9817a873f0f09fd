"""The backtest's report on constructed intervals and notifications: its arithmetic, the
--json contract, the text, --compare, the plot, and the --fail-on grammar."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from stack.backtest import fail_on, report
from stack.backtest.model import AlertInterval, BacktestError, Notification, RuleRun

DOCS = Path(__file__).resolve().parent.parent / "docs" / "alerts.md"
T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
DAY = 86_400.0
RECEIVERS = ("deadman", "pager", "chat")


def firing(name: str, fired: float, resolved: float | None, **labels: str) -> AlertInterval:
    return AlertInterval({"alertname": name, **labels}, fired - 60, fired, resolved)


def sent(at: float, receiver: str, name: str, status: str = "firing") -> Notification:
    return Notification(at, receiver, {"alertname": name}, status, ({"alertname": name},))


def summary_of(intervals, notifications=(), *, end: float = T0 + 7 * DAY, names=None):
    names = names or ("WorkerDown", "HighJobFailureRate", "Watchdog")
    run = RuleRun(T0, end, tuple(names), tuple(intervals))
    return report.summarize(run, list(notifications), receivers=RECEIVERS, pager="pager")


#: A week: WorkerDown twice on one instance (a flap: 30 min apart), once on another, and
#: still firing at the end; two pages, one resolved notification, one chat message.
WEEK_INTERVALS = [
    firing("WorkerDown", T0 + 100, T0 + 400, instance="a"),
    firing("WorkerDown", T0 + 400 + 1800, T0 + 400 + 1800 + 50, instance="a"),
    firing("WorkerDown", T0 + 7 * DAY - 10, None, instance="b"),
    firing("HighJobFailureRate", T0 + DAY, T0 + DAY + 600, queue="default"),
]
WEEK_NOTIFICATIONS = [
    sent(T0 + 115, "pager", "WorkerDown"),
    sent(T0 + 460, "pager", "WorkerDown", "resolved"),
    sent(T0 + 2300, "pager", "WorkerDown"),
    sent(T0 + DAY + 120, "chat", "HighJobFailureRate"),
]
WEEK = summary_of(WEEK_INTERVALS, WEEK_NOTIFICATIONS)


def test_counts_by_hand():
    down = WEEK.alerts["WorkerDown"]
    assert down.fired == 3
    assert down.firing_seconds == 300 + 50 + 10
    assert down.flaps == 1
    assert down.first_firing == T0 + 100
    assert down.notifications == {"deadman": 0, "pager": 3, "chat": 0}
    assert down.pages == 2  # the resolved notification wakes nobody
    assert down.intervals[-1] == (T0 + 7 * DAY - 10, None)
    assert WEEK.receivers == {"deadman": 0, "pager": 3, "chat": 1}
    assert WEEK.pages_per_week == 2


def test_an_alert_that_never_fired_is_reported_with_zeros():
    watchdog = report.to_json(WEEK)["alerts"]["Watchdog"]
    assert watchdog["fired"] == 0
    assert watchdog["firing_seconds"] == 0
    assert watchdog["intervals"] == []
    assert watchdog["first_firing"] is None
    assert watchdog["notifications"] == {"deadman": 0, "pager": 0, "chat": 0}


def test_a_flap_is_the_same_instance_again_within_an_hour():
    two_instances = summary_of(
        [firing("WorkerDown", T0, T0 + 60, instance="a"), firing("WorkerDown", T0 + 90, None)]
    )
    assert two_instances.alerts["WorkerDown"].flaps == 0
    an_hour_later = summary_of(
        [firing("WorkerDown", T0, T0 + 60), firing("WorkerDown", T0 + 60 + 3600, None)]
    )
    assert an_hour_later.alerts["WorkerDown"].flaps == 1
    later = summary_of(
        [firing("WorkerDown", T0, T0 + 60), firing("WorkerDown", T0 + 61 + 3600, None)]
    )
    assert later.alerts["WorkerDown"].flaps == 0


def test_per_week_scales_by_the_range():
    day = summary_of([], [sent(T0 + 10, "chat", "Watchdog")], end=T0 + DAY)
    assert report.to_json(day)["receivers_per_week"]["chat"] == 7
    assert report.to_json(day)["alerts"]["Watchdog"]["notifications_per_week"]["chat"] == 7


_times = st.floats(min_value=0, max_value=3 * DAY, allow_nan=False)


@given(st.lists(st.tuples(_times, st.one_of(st.none(), _times)), max_size=12))
@example([(0.0, 1.2e-07)])
def test_firing_seconds_sums_the_clipped_intervals(spans):
    end = T0 + 2 * DAY
    intervals = [
        firing("WorkerDown", T0 + a, None if b is None else T0 + max(a, b), n=str(i))
        for i, (a, b) in enumerate(spans)
    ]
    down = summary_of(intervals, end=end).alerts["WorkerDown"]
    assert down.fired == len(spans)
    expected = 0.0
    for a, b in spans:
        until = 2 * DAY if b is None else min(max(a, b), 2 * DAY)
        expected += max(0.0, until - min(a, 2 * DAY))
    # The summary subtracts Unix times, which a float resolves to 0.24 us at these dates:
    # an interval's length is that exact, whatever its size (Hypothesis found one of 0.12 us).
    assert down.firing_seconds == pytest.approx(expected, abs=1e-6 * len(spans))
    assert down.firing_seconds <= len(spans) * 2 * DAY


def test_json_intervals_are_rfc3339():
    down = report.to_json(WEEK)["alerts"]["WorkerDown"]
    assert down["intervals"][0] == ["2026-09-21T14:15:00Z", "2026-09-21T14:20:00Z"]
    assert down["intervals"][-1][1] is None
    assert report.to_json(WEEK)["from"] == "2026-09-21T14:13:20Z"


def _documented_keys(heading: str) -> set[str]:
    """The keys listed in docs/alerts.md's table under ``heading`` (up to the next one)."""
    section = DOCS.read_text().split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


def test_the_documented_json_keys_are_the_emitted_ones():
    emitted = report.to_json(WEEK)
    assert _documented_keys("#### Top level") == set(emitted)
    assert _documented_keys("#### Per alert") == set(emitted["alerts"]["WorkerDown"])
    compared = report.compare_json(WEEK, WEEK)
    assert _documented_keys("#### `--compare`") == {
        *compared,
        *compared["difference"],
        *compared["difference"]["alerts"]["WorkerDown"],
    }


def test_text_names_every_alert_fired_first():
    text = report.to_text(WEEK)
    rows = [line.split()[0] for line in text.splitlines()[2:5]]
    assert rows == ["HighJobFailureRate", "WorkerDown", "Watchdog"]
    assert "WorkerDown" in text and "pager=3" in text
    assert "pages per week (pager, firing): 2.0" in text


def test_compare_gives_the_difference_per_alert():
    quieter = summary_of(
        [firing("WorkerDown", T0 + 100, T0 + 400, instance="a")],
        [sent(T0 + 115, "pager", "WorkerDown")],
    )
    diff = report.compare_json(WEEK, quieter)["difference"]
    assert diff["alerts"]["WorkerDown"]["fired"] == -2
    assert diff["alerts"]["WorkerDown"]["firing_seconds"] == -60
    assert diff["alerts"]["WorkerDown"]["notifications"]["pager"] == -2
    assert diff["alerts"]["HighJobFailureRate"]["fired"] == -1
    assert diff["alerts"]["Watchdog"]["fired"] == 0
    assert diff["receivers"] == {"deadman": 0, "pager": -2, "chat": -1}
    assert diff["pages_per_week"] == -1
    text = report.compare_text(WEEK, quieter)
    assert "3->1 (-2)" in text
    assert "pages per week: 2.0 -> 1.0 (-1.0)" in text


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "week.png"
    report.plot({"today": WEEK, "proposed": summary_of([])}, path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 600 <= width <= 2000 and 150 <= height <= 2000
    assert len(data) > 5_000  # bars and labels, not an empty canvas


@pytest.mark.parametrize(
    ("span", "unit"),
    [
        (62, "seconds"),
        (300, "seconds"),
        (3600, "minutes"),
        (7 * 86400, "hours"),
        (28 * 86400, "days"),
    ],
)
def test_the_plots_time_axis_counts_in_a_unit_that_fits_the_range(span, unit):
    """A minute of a scaled scenario is not 0.017 hours; a week is 168 hours."""
    assert report._time_unit(span)[0] == unit


@pytest.mark.parametrize(
    ("condition", "measured", "holds"),
    [
        ("pages_per_week>1", 2, True),
        ("pages_per_week > 2", 2, False),
        ("pages_per_week>=2", 2, True),
        ("notifications_per_week:chat<1", 1, False),
        ("notifications_per_week:pager[WorkerDown]==3", 3, True),
        ("fired>3", 4, True),
        ("fired[WorkerDown]!=3", 3, False),
        ("firing_seconds[HighJobFailureRate]>=600", 600, True),
        ("flaps[WorkerDown]>0", 1, True),
        ("pages_per_week[HighJobFailureRate]>0", 0, False),
        ("fired[Watchdog]<=0", 0, True),
        ("fired<1e1", 4, True),
    ],
)
def test_fail_on_conditions(condition, measured, holds):
    (parsed,) = fail_on.parse_conditions([condition])
    assert parsed.holds(WEEK) == (holds, measured)


def test_fail_on_several_conditions_name_the_ones_that_hold():
    conditions = fail_on.parse_conditions(["pages_per_week>5,fired>3", "flaps>0"])
    assert fail_on.violations(conditions, WEEK) == [
        "--fail-on fired>3: measured 4",
        "--fail-on flaps>0: measured 1",
    ]


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        ("pages_per_week", "not a condition"),
        ("pages_per_week>>5", "not a condition"),
        ("pages_per_week>five", "not a condition"),
        ("pages>5", "unknown metric 'pages'"),
        ("notifications_per_week>5", "unknown metric 'notifications_per_week'"),
        ("fired:chat>1", "unknown metric 'fired:chat'"),
        ("fired[Worker Down]>1", "not a condition"),
    ],
)
def test_fail_on_bad_grammar(condition, says):
    with pytest.raises(BacktestError, match=re.escape(says)):
        fail_on.parse_conditions([condition])


@pytest.mark.parametrize(
    ("condition", "says"),
    [("fired[WorkerDwn]>1", "no alert WorkerDwn"), ("notifications_per_week:sms>1", "no receiver")],
)
def test_fail_on_unknown_alert_or_receiver(condition, says):
    (parsed,) = fail_on.parse_conditions([condition])
    with pytest.raises(BacktestError, match=says):
        parsed.holds(WEEK)


def test_compare_text_lists_the_changed_alerts_first():
    fewer_chat = summary_of(WEEK_INTERVALS[:3], WEEK_NOTIFICATIONS[:3])
    rows = report.compare_text(WEEK, fewer_chat).splitlines()[2:5]
    assert [row.split()[0] for row in rows] == ["HighJobFailureRate", "WorkerDown", "Watchdog"]
    assert rows[1].endswith("same") and rows[2].endswith("same")
