"""Record a named day on the twin and backtest it, for the real report in docs/alerts.md.

    python -m stack.backtest_example                       # `make backtest-example`
    python -m stack.backtest_example --scenario redis-flapping --speed 120

It runs ``stack up-local --scenario`` (a recording of a few minutes at most), starts a
Prometheus of its own on the recorded data, and runs ``stack backtest`` on it: the text
report, ``--compare`` with HighJobFailureRate's threshold raised, ``--plot`` into
docs/img/backtest-<scenario>.png and a ``--fail-on``. A recording at ``--speed`` S
shortens durations, not the rules' windows and ``for`` nor Alertmanager's timings, so
both are scaled by S (written beside the recording) for the backtest. The commands and
their output replace the marked block in docs/alerts.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from alerts.duration import parse_duration
from alerts.render import load_config
from alerts.routes import ALERTMANAGER_CONFIG
from dashboards.render import REPO_DIR
from stack.servers import prometheus_server, running
from stack.twin_cli import REPLAY_CONFIG
from stack.twin_config import routes

DOC = REPO_DIR / "docs" / "alerts.md"
BEGIN, END = "<!-- backtest-example: begin -->", "<!-- backtest-example: end -->"
#: Configuration keys holding a duration or a number of seconds: what a speed shortens.
DURATION_KEYS = {
    "for",
    "keep_firing_for",
    "window",
    "long",
    "short",
    "longWindow",
    "longWindowInterval",
}
SECONDS_KEYS = {"thresholdSeconds"}
ROUTE_KEYS = ("group_wait", "group_interval", "repeat_interval")
#: The proposed change of the --compare example.
PROPOSED = '{"alerts": {"HighJobFailureRate": {"threshold": 0.3}}}'
#: The --fail-on example: a warning's chat messages, per week of the scaled history.
FAIL_ON = "notifications_per_week:chat>1000"


def scaled_duration(text: str, speed: float) -> str:
    """``text`` divided by ``speed``, in whole milliseconds ('5m' at 60 is '5s')."""
    ms = round(parse_duration(text) * 1000 / speed)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scaled_overrides(config: Any, speed: float) -> Any:
    """The alerts' configuration with every window, ``for`` and seconds threshold divided
    by ``speed``: only the keys that change, as ``alerts.render --set`` takes them."""
    if not isinstance(config, dict):
        return None
    out = {}
    for key, value in config.items():
        if key in DURATION_KEYS and isinstance(value, str):
            out[key] = scaled_duration(value, speed)
        elif key in SECONDS_KEYS and isinstance(value, int | float):
            out[key] = value / speed
        elif key == "burnRates" and isinstance(value, list):
            out[key] = [{**rate, **scaled_overrides(rate, speed)} for rate in value]
        elif (inner := scaled_overrides(value, speed)) is not None and inner:
            out[key] = inner
    return out


def scaled_alertmanager(config: dict, speed: float) -> dict:
    """The Alertmanager config with each route's group_wait, group_interval and
    repeat_interval (the root's, or a route's own) divided by ``speed``."""
    for route in routes(config["route"]):
        for key in ROUTE_KEYS:
            if key in route:
                route[key] = scaled_duration(route[key], speed)
    return config


def record(scenario: str, speed: float, run_dir: Path) -> tuple[str, str, Path]:
    """Run ``stack up-local --scenario``; the recorded range and its data directory."""
    argv = [sys.executable, "-m", "stack", "up-local", "--scenario", scenario]
    argv += ["--speed", str(speed), "--run-dir", str(run_dir)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    match = re.search(r"Recorded \S+ from (\S+) to (\S+) in (\S+)", out)
    if match is None:
        raise SystemExit(f"backtest-example: no recording in up-local's output:\n{out}")
    return match[1], match[2], Path(match[3])


def backtest(url: str, args: list[str]) -> tuple[int, str, str]:
    """``stack backtest`` on ``url`` with ``args``: its exit code, stdout and stderr."""
    argv = [sys.executable, "-m", "stack", "backtest", "--prometheus", url, *args]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_DIR)
    if done.returncode == 2:
        raise SystemExit(f"backtest-example: stack backtest {' '.join(args)}: {done.stderr}")
    return done.returncode, done.stdout, done.stderr


def write_scaled(run_dir: Path, speed: float) -> tuple[Path, Path]:
    """The rules' override file and the Alertmanager config, scaled by ``speed``."""
    rules = run_dir / "scaled.libsonnet"
    patch = json.dumps(scaled_overrides(load_config(), speed), indent=2, sort_keys=True)
    rules.write_text(f"{{\n  _config:: std.mergePatch(super._config, {patch}),\n}}\n")
    am = run_dir / "alertmanager-scaled.yml"
    am_config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    am.write_text(yaml.safe_dump(scaled_alertmanager(am_config, speed)))
    return rules, am


def block(scenario: str, speed: float, start: str, end: str, outputs: list) -> str:
    """The marked block of docs/alerts.md: each command and what it printed."""
    lines = [
        BEGIN,
        "",
        "Written by `make backtest-example` (`python -m stack.backtest_example`): "
        f"`{scenario}` recorded at speed {speed:g} on the local twin, then backtested "
        f"from {start} to {end} with the rules and Alertmanager timings scaled by the "
        "same speed (a recording shortens durations, not the rules' windows and `for`).",
        "",
        "```sh",
        f"stack up-local --scenario {scenario} --speed {speed:g} --run-dir $RUN",
        "# replay.yml, in the data directory: the recording's intervals, no scrapes",
        "prometheus --storage.tsdb.path=$RUN/prometheus/data --storage.tsdb.retention.time=10y \\",
        "  --config.file=$RUN/prometheus/data/replay.yml --web.listen-address=127.0.0.1:9090 &",
        f"# scaled.libsonnet: every `for`, window and seconds threshold divided by {speed:g};",
        "# alertmanager-scaled.yml: every group_wait, group_interval, repeat_interval too",
        "# (python -m stack.backtest_example writes both beside the recording)",
        "```",
        "",
    ]
    for title, command, code, text in outputs:
        lines += [title, "", "```sh", command, "```", ""]
        lines += ["```", text.rstrip(), "```", ""] if text.strip() else []
        lines += [f"Exit code {code}.", ""]
    lines += [f"![Backtest timeline of {scenario}](img/backtest-{scenario}.png)", "", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.backtest_example")
    parser.add_argument("--scenario", default="llm-brownout", help="(default llm-brownout)")
    parser.add_argument("--speed", type=float, default=60, help="(default 60)")
    parser.add_argument(
        "--run-dir", type=Path, default=Path("/tmp/backtest-example"), help="(emptied)"
    )
    args = parser.parse_args(argv)
    start, end, data = record(args.scenario, args.speed, args.run_dir)
    rules, am = write_scaled(args.run_dir, args.speed)
    image = REPO_DIR / "docs" / "img" / f"backtest-{args.scenario}.png"
    today = ["--from", start, "--to", end, "--config", str(rules)]
    today += ["--alertmanager-config", str(am)]
    runs = [
        ("The report:", today, False),
        (
            "HighJobFailureRate's threshold from 0.1 to 0.3, side by side:",
            [*today, "--compare", "--config", str(rules), "--set", PROPOSED],
            False,
        ),
        (
            "The timeline (the same report, and the image below):",
            [*today, "--plot", str(image)],
            True,
        ),
        (
            f"CI refusing more than {FAIL_ON.split('>')[1]} chat messages a week "
            "(the same report, then on stderr):",
            [*today, "--fail-on", FAIL_ON],
            True,
        ),
    ]
    outputs = []
    workdir = data.parent
    config = (data / REPLAY_CONFIG).read_text()
    with running(
        prometheus_server(workdir, config, None, "--storage.tsdb.retention.time=10y")
    ) as server:
        for title, options, stderr_only in runs:
            code, out, err = backtest(server.url, options)
            shown = " ".join(f"'{o}'" if o.startswith("{") or ">" in o else o for o in options)
            shown = shown.replace(str(args.run_dir), "$RUN").replace(str(REPO_DIR) + "/", "")
            command = f"stack backtest --prometheus http://127.0.0.1:9090 {shown}"
            outputs.append((title, command, code, err if stderr_only else out + err))
    text = DOC.read_text()
    new = block(args.scenario, args.speed, start, end, outputs)
    DOC.write_text(
        re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: new, text, flags=re.S)
    )
    print(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
