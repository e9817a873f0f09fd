"""``stack up-local``: the local twin in the foreground, its alerts printed as they come."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from stack.poll import wait_until
from stack.twin import REPO, LocalStack
from stack.twin import __doc__ as TWIN_DOC

#: The config a recording is read with, in its data directory (``recorded``).
REPLAY_CONFIG = "replay.yml"


class _Tail:
    """New complete lines of a growing file."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


class _Stop(Exception):
    pass


def describe(stack: LocalStack) -> str:
    """What the twin runs, where: URLs, pids and logs."""
    urls = stack.urls
    lines = [
        *(f"Prometheus     {u}   (alerts: {u}/alerts)" for u in urls["prometheuses"]),
        *(f"Alertmanager   {u}" for u in urls["alertmanagers"]),
        f"Alert receiver {urls['alert_receiver']}/alerts   (pipeline: "
        f"{urls['alert_receiver']}/status)",
        f"Redis          {urls['redis']}",
    ]
    if urls.get("console"):
        lines.append(f"Console        {urls['console']}   (password: {stack.console_password})")
    for i, replica in enumerate(stack.replicas):
        lines.append(
            f"Worker {i + 1:<7} {replica.url}/metrics   pid {replica.proc.pid}   log {replica.log}"
        )
    if stack.loadgen is not None:
        lines.append(f"Load generator {stack.loadgen_rate:.2f} jobs/s   log {stack.loadgen.log}")
    lines.append("Grafana        not in the local twin (docker compose only)")
    lines.append(f"Configs, data and logs: {stack.run_dir}")
    return "\n".join(lines)


def recorded(stack: LocalStack, scenario: str, started: datetime) -> str:
    """Where the recording of ``scenario`` is, and how to read it once the twin stops. The
    data directory gets ``replay.yml``, a config with the recording's intervals and no
    scrapes: ``stack backtest`` evaluates the rules at the source's evaluation_interval,
    and Prometheus' default (1m) would be 60 times the recording's."""
    data = stack.prometheus.workdir / "data"
    running = yaml.safe_load((stack.prometheus.workdir / "prometheus.yml").read_text())
    intervals = {k: running["global"][k] for k in ("scrape_interval", "evaluation_interval")}
    (data / REPLAY_CONFIG).write_text(yaml.safe_dump({"global": intervals}))

    def stamp(t: datetime) -> str:
        return t.isoformat(timespec="seconds").replace("+00:00", "Z")

    return (
        f"\nRecorded {scenario} from {stamp(started)} to {stamp(datetime.now(UTC))} in {data}"
        "\nRead it later (move it first: the next up-local empties the run directory):"
        f"\n  prometheus --storage.tsdb.path={data} --storage.tsdb.retention.time=10y "
        f"--config.file={data / REPLAY_CONFIG} --web.listen-address=127.0.0.1:9090"
    )


def main(argv: list[str] | None = None) -> int:
    from stack import scenarios
    from stack.loadgen import DEFAULT_RATE

    parser = argparse.ArgumentParser(
        prog="stack up-local",
        description=TWIN_DOC.strip().split("\n\n")[0],
        epilog="Ctrl-C stops everything it started.",
    )
    parser.add_argument("--replicas", type=int, default=2, help="worker replicas (default 2)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="load generator jobs/s (default 1.56; a scenario's mean: 5.21, 450,000/day)",
    )
    parser.add_argument("--no-loadgen", action="store_true", help="start no load generator")
    parser.add_argument(
        "--scenario",
        metavar="NAME",
        help="record a named day (stack loadgen --scenario list), then stop and say where "
        "Prometheus's data is",
    )
    parser.add_argument(
        "--speed", type=float, help="of the scenario (default 60: an hour in a minute)"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=REPO / ".run" / "localstack", help="default %(default)s"
    )
    parser.add_argument("--keep-data", action="store_true", help="keep Redis and Prometheus data")
    parser.add_argument(
        "--sentinel", action="store_true", help="Redis master, replica and three sentinels"
    )
    parser.add_argument(
        "--prometheus-pair",
        action="store_true",
        help="two Prometheus members (compose profile prometheus-pair); both write to "
        "PROMETHEUS_REMOTE_WRITE_URL when it is set",
    )
    parser.add_argument(
        "--scrape-interval", help="instead of the committed 15s (1s with --scenario)"
    )
    parser.add_argument(
        "--evaluation-interval", help="instead of the committed 15s (1s with --scenario)"
    )
    parser.add_argument("--rules-dir", type=Path, help="rule files instead of prometheus/rules")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for every replica, e.g. --env SIM_LATENCY_SECONDS=2-4",
    )
    args = parser.parse_args(argv)
    if args.scenario is not None or args.speed is not None:
        if problem := scenarios.problem(args.scenario, args.speed, 0):
            print(f"stack up-local: {problem}", file=sys.stderr)
            return 2
        if args.no_loadgen:
            parser.error("--scenario needs the load generator")
    if args.rate is None:
        args.rate = scenarios.DEFAULT_PER_DAY / 86_400 if args.scenario else DEFAULT_RATE
    if args.replicas < 1 or args.rate <= 0:
        parser.error("--replicas and --rate must be positive")
    scenario_args = []
    if args.scenario:
        scenario_args = ["--scenario", args.scenario, "--speed", str(args.speed or 60)]
        # A replayed hour is a minute: the committed 15 s would see it four times.
        args.scrape_interval = args.scrape_interval or "1s"
        args.evaluation_interval = args.evaluation_interval or "1s"
    replica_env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
        replica_env[name] = value

    try:
        stack = _stack(args, replica_env, scenario_args)
    except ValueError as exc:
        print(f"stack up-local: {exc}", file=sys.stderr, flush=True)
        return 2
    return _run(stack, args.scenario)


def _stack(
    args: argparse.Namespace, replica_env: dict[str, str], loadgen_args: list[str]
) -> LocalStack:
    return LocalStack(
        args.run_dir,
        replicas=args.replicas,
        replica_env=replica_env,
        rules_dir=args.rules_dir,
        scrape_interval=args.scrape_interval,
        evaluation_interval=args.evaluation_interval,
        loadgen_rate=None if args.no_loadgen else args.rate,
        loadgen_args=loadgen_args,
        keep_data=args.keep_data,
        sentinel=args.sentinel,
        prometheuses=2 if args.prometheus_pair else 1,
        remote_write_url=os.environ.get("PROMETHEUS_REMOTE_WRITE_URL") or None,
        console_password=secrets.token_hex(16),
    )


def _run(stack: LocalStack, scenario: str | None) -> int:
    """Run until Ctrl-C, or until ``scenario`` has been replayed and recorded."""

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # Ctrl-C must work even when started from a script in the background, which would
    # otherwise have it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print("Starting the local stack...", flush=True)
        stack.start()
        started = datetime.now(UTC)
        print(describe(stack), flush=True)
        print(
            "\nProvoke an alert: kill one worker (kill -9 <pid>) for WorkerDown, or make calls"
            f"\nfail: REDIS_URL={stack.redis.url} {sys.executable} -m stack loadgen"
            " --failure-ratio 0.5 --set-only"
            "\nAlerts appear below as the receiver gets them. Ctrl-C stops everything.\n",
            flush=True,
        )
        tails = {"alert": _Tail(stack.receiver.log)}
        if stack.loadgen is not None:
            tails["loadgen"] = _Tail(stack.loadgen.log)
        while True:
            replayed = bool(scenario) and not stack.loadgen.running
            for prefix, tail in tails.items():
                for line in tail.lines():
                    print(f"[{prefix}] {line}", flush=True)
            if replayed:
                # The end of the last phase in the recording: one scrape after it.
                after = f'min(timestamp(up{{job="worker"}})) > {time.time()}'
                wait_until(lambda: stack.query(after), 30)  # noqa: B023 (used at once)
                print(recorded(stack, scenario, started), flush=True)
                break
            for i in stack.supervise():
                print(f"[localstack] worker {i + 1} exited with an error: restarted", flush=True)
            for process in (stack.redis, *stack.prometheuses, *stack.alertmanagers, stack.receiver):
                if not process.running and process is not stack.redis:
                    raise RuntimeError(f"{process.name} exited: {process.log_tail(500)}")
            time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        print("\nStopping...", flush=True)
    except RuntimeError as exc:
        print(f"localstack: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        left = [p.name for p in stack.processes if p.group_alive]
        print("Stopped." if not left else f"Still running: {', '.join(left)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
