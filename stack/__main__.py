"""Command line: ``stack`` (or ``python -m stack``), the tooling around the worker.

Subcommands:
  up-local       run the whole stack as local processes (no Docker); Ctrl-C stops it
  loadgen        enqueue a realistic job mix at a steady rate; set the simulated backend
  alert-receiver receive and keep Alertmanager's notifications (the stack's demo receiver)
  capacity       plan concurrency and replicas with Little's law
  backtest       what the alert rules (or a proposed change) would have done on history
"""

from __future__ import annotations

import importlib
import sys

#: Modules of pyproject's `tools` extra, which the worker image does not install.
TOOLS = {"yaml", "rjsonnet", "grafanalib", "matplotlib"}

COMMANDS = {
    "up-local": "stack.twin_cli",
    "loadgen": "stack.loadgen",
    "alert-receiver": "stack.alert_receiver",
    "capacity": "stack.capacity",
    "backtest": "stack.backtest.cli",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"stack: unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
        return 2
    # Imported only when its subcommand runs: each pulls in what it alone needs.
    from worker.config import ConfigError

    try:
        module = importlib.import_module(COMMANDS[command])
    except ModuleNotFoundError as error:
        if error.name not in TOOLS:
            raise
        print(
            f"stack {command}: needs {error.name}, from the tools extra: "
            "pip install -e '.[tools]' in a checkout",
            file=sys.stderr,
        )
        return 2
    try:
        return module.main(rest)
    except ConfigError as error:
        print(error.message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
