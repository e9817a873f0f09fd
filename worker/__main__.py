"""Command line: ``worker`` (or ``python -m worker``) runs one replica of the worker.

Subcommands:
  run (default)  run one replica: WORKER_PROCESSES processes sharing JOB_CONCURRENCY slots
  encrypt-key    encrypt an organization's LLM API key (read from stdin) for storage
  healthcheck    exit 0 when this container's /healthz answers 200 (the image's health check)
  dead-letters   list, show, requeue, purge, export dead letters; their audit trail
  console        the operations console: web pages on the queues and dead letters

The tooling around the worker (local twin, load generator, alert receiver, capacity
planner) is the ``stack`` command.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

from worker import __version__
from worker.config import ConfigError, Settings, load_settings
from worker.jobs import QUEUES

#: Functions the Dramatiq CLI runs in processes of their own beside the workers.
FORK_FUNCTIONS: list[str] = ["worker.exposition:serve"]


def dramatiq_argv(settings: Settings) -> list[str]:
    argv = [
        "worker.entrypoint",
        "--processes",
        str(settings.worker_processes),
        "--threads",
        str(settings.threads_per_process),
        "--queues",
        *QUEUES,
        "--worker-shutdown-timeout",
        str(int(settings.shutdown_grace_seconds * 1000)),
    ]
    for fn in FORK_FUNCTIONS:
        argv += ["--fork-function", fn]
    if settings.log_level.upper() == "DEBUG":
        argv.append("-v")
    return argv


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="worker run",
        description=(
            "Run one worker replica: consumes the critical, default and fast queues with "
            "JOB_CONCURRENCY job slots (WORKER_PROCESSES processes x threads), serves "
            "metrics on METRICS_HOST:METRICS_PORT. Configuration comes from the environment "
            "(see docs/configuration.md). SIGTERM or Ctrl-C stops fetching, lets running jobs "
            "finish for SHUTDOWN_GRACE_SECONDS and leaves every other job in the broker."
        ),
    )
    parser.parse_args(argv)
    settings = load_settings()
    from worker.replica import check_metrics_port, private_metrics_dir

    check_metrics_port(settings.metrics_host, settings.metrics_port)
    # Before anything imports prometheus_client: the worker processes forked below must
    # find PROMETHEUS_MULTIPROC_DIR set when they do.
    with private_metrics_dir(settings.metrics_dir):
        import dramatiq.cli

        args = dramatiq.cli.make_argument_parser().parse_args(dramatiq_argv(settings))
        return dramatiq.cli.main(args) or 0


def healthcheck(argv: list[str]) -> int:
    """One word for the compose health checks: Podman's Docker API splits an exec-form
    check's arguments on spaces, so ``python -c "<code>"`` cannot be the check."""
    parser = argparse.ArgumentParser(
        prog="worker healthcheck",
        description="Exit 0 when http://127.0.0.1:PORT/healthz answers 200, else 1.",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=os.environ.get("METRICS_PORT", "9191"),
        help="port of the endpoint (default: METRICS_PORT, else 9191)",
    )
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    url = f"http://127.0.0.1:{args.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, ValueError) as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {
        "run": run,
        "encrypt-key": _lazy("worker.api_keys"),
        "healthcheck": healthcheck,
        "dead-letters": _lazy("worker.dead_letters_cli"),
        "console": _lazy("worker.console.server"),
    }
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    command, rest = (argv[0], argv[1:]) if argv and argv[0] in commands else ("run", argv)
    try:
        return commands[command](rest)
    except ConfigError as error:
        print(error.message, file=sys.stderr)
        return 2


def _lazy(module: str):
    """The ``main(argv)`` of ``module``, imported only when its subcommand runs."""

    def command(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(argv)

    return command


if __name__ == "__main__":
    sys.exit(main())
