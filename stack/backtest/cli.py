"""``stack backtest``: what the alert rules, or a proposed change to them, would have done
on a Prometheus' history, and which notifications Alertmanager would have sent.

    stack backtest --prometheus http://prom:9090 --from 7d
    stack backtest --prometheus URL --from 2026-11-01T00:00:00Z --to 2026-11-08T00:00:00Z \\
        --json --plot week.png --fail-on 'pages_per_week>5'
    stack backtest --prometheus URL --from 7d \\
        --compare --set '{"alerts": {"WorkerDown": {"for": "5m"}}}'

The rules are the rendered ``prometheus/rules`` unless ``--config FILE`` or ``--set JSON``
(the options of ``python -m alerts.render``) render a variant from ``alerts/``. Options
after ``--compare`` describe a second configuration (``--config``, ``--set``,
``--alertmanager-config``; an Alertmanager config not given there is the first one's):
the report then lays the first (today's) and the second (proposed) side by side, and
``--fail-on`` judges the proposed one. Prometheus is only read (``/api/v1/query_range``).

Exit codes: 0 done; 1 a ``--fail-on`` condition holds (each is named on stderr);
2 bad input, in one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from alerts.duration import parse_duration
from alerts.render import RULES_DIR, add_config_options, render_rules, unknown_alerts
from alerts.routes import ALERTMANAGER_CONFIG
from alerts.routing import RoutingError, build_route
from stack.backtest import fail_on, report
from stack.backtest.alertmanager import simulate
from stack.backtest.model import BacktestError
from stack.backtest.rules import evaluate

PROG = "stack backtest"
#: What a critical alert reaches is the pager (DESIGN: critical alerts page).
PAGED_LABELS = {"severity": "critical"}
#: Exit code when a --fail-on condition holds.
EXIT_FAILED_CONDITION = 1
_DURATION_AGO = re.compile(r"\d+(ms|s|m|h|d|w|y)(\d+(ms|s|m|h|d|w|y))*")


def parse_time(text: str, *, now: float, option: str) -> float:
    """RFC 3339 (with its offset) or a Prometheus duration back from ``now`` ('7d')."""
    if _DURATION_AGO.fullmatch(text):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BacktestError(
            f"{option} {text!r}: not an RFC 3339 time with an offset "
            "(2026-11-01T00:00:00Z) nor a duration back from now (7d)"
        )
    return moment.timestamp()


class _Parser(argparse.ArgumentParser):
    """argparse with one line and exit 2 for a bad option (not the whole usage)."""

    def error(self, message: str):  # type: ignore[override]
        raise BacktestError(message)


def _variant_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--config and --set as alerts.render has them, plus --alertmanager-config."""
    add_config_options(parser)
    parser.add_argument(
        "--alertmanager-config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"the Alertmanager config to simulate (default {ALERTMANAGER_CONFIG.name})",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prometheus", required=True, metavar="URL")
    parser.add_argument("--from", dest="start", required=True, metavar="TIME")
    parser.add_argument("--to", dest="end", default=None, metavar="TIME", help="default: now")
    _variant_options(parser)
    parser.add_argument(
        "--compare",
        action="store_true",
        help="the options after it (--config, --set, --alertmanager-config) describe a "
        "proposed configuration, reported side by side with the one before it",
    )
    parser.add_argument("--json", action="store_true", help="the --json contract on stdout")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png")
    parser.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="CONDITION",
        help="e.g. 'pages_per_week>5' (docs/alerts.md); exit 1 when one holds",
    )
    return parser


def compare_parser() -> argparse.ArgumentParser:
    return _variant_options(_Parser(prog=f"{PROG} ... --compare"))


@dataclass(frozen=True)
class Prepared:
    """A variant's inputs, checked: its rule files and Alertmanager config."""

    rule_files: list[Path]
    alertmanager: dict[str, Any]
    receivers: list[str]
    pager: str


@dataclass(frozen=True)
class Variant:
    """One configuration under test: its rule overrides and Alertmanager config."""

    config_files: tuple[str, ...]
    overrides: dict | None
    alertmanager_config: Path

    def prepare(self, workdir: Path) -> Prepared:
        """Render and load everything, so that bad input stops the command before the
        (long) evaluation starts."""
        return Prepared(self._rule_files(workdir), *self._alertmanager())

    def _rule_files(self, workdir: Path) -> list[Path]:
        """The committed rules, or the variant rendered into ``workdir``."""
        if not self.config_files and self.overrides is None:
            return sorted(RULES_DIR.glob("*.yml"))
        if self.overrides is not None and not isinstance(self.overrides, dict):
            raise BacktestError(f"--set {json.dumps(self.overrides)}: not a JSON object")
        for path in self.config_files:
            if not Path(path).is_file():
                raise BacktestError(f"--config {path}: not a file")
        try:
            unknown = unknown_alerts(self.overrides, self.config_files)
            if unknown:
                raise BacktestError(f"the overrides name unknown alerts: {', '.join(unknown)}")
            return sorted(render_rules(self.overrides, workdir, self.config_files))
        except (RuntimeError, ValueError) as error:
            # jsonnet's message, then its stack: the first frame is where the mistake is.
            what, *stack = str(error).splitlines() or ["?"]
            where = f" ({stack[0].strip()})" if stack else ""
            raise BacktestError(f"cannot render the rules: {what}{where}") from None

    def _alertmanager(self) -> tuple[dict[str, Any], list[str], str]:
        """The Alertmanager config, its receivers' names, and the pager's."""
        path = self.alertmanager_config
        try:
            config = yaml.safe_load(path.read_text())
            receivers = [r["name"] for r in config["receivers"]]
            pager = build_route(config).match(PAGED_LABELS)[0].receiver
        except (OSError, yaml.YAMLError, KeyError, TypeError, RoutingError) as error:
            raise BacktestError(f"--alertmanager-config {path}: {error}") from None
        if pager not in receivers:
            raise BacktestError(f"--alertmanager-config {path}: no receiver {pager!r}")
        return config, receivers, pager


def run(prepared: Prepared, prometheus: str, *, start: float, end: float) -> report.Summary:
    """Rules over history, then Alertmanager, summed up."""
    rules = evaluate(prometheus, prepared.rule_files, start=start, end=end)
    notifications = simulate(prepared.alertmanager, rules.intervals, start=start, end=end)
    return report.summarize(
        rules, notifications, receivers=prepared.receivers, pager=prepared.pager
    )


def _variants(argv: Sequence[str]) -> tuple[argparse.Namespace, Variant, Variant | None]:
    """Today's variant from the options before ``--compare``, the proposed one from the
    variant options after it; the other options (--json, --plot, ...) may stand anywhere."""
    argv = list(argv)
    split = argv.index("--compare") if "--compare" in argv else len(argv)
    other, rest = compare_parser().parse_known_args(argv[split + 1 :])
    args = build_parser().parse_args(argv[:split] + rest)
    today = Variant(
        tuple(args.config), args.overrides, args.alertmanager_config or ALERTMANAGER_CONFIG
    )
    if split == len(argv):
        return args, today, None
    proposed = Variant(
        tuple(other.config),
        other.overrides,
        other.alertmanager_config or today.alertmanager_config,
    )
    return args, today, proposed


def backtest(argv: Sequence[str]) -> int:
    """The command; BacktestError for bad input (``main`` prints it)."""
    args, today, proposed = _variants(argv)
    moment = time.time()
    start = parse_time(args.start, now=moment, option="--from")
    end = moment if args.end is None else parse_time(args.end, now=moment, option="--to")
    if start >= end:
        raise BacktestError(
            f"--from {report.rfc3339(start)} is not before --to {report.rfc3339(end)}"
        )
    conditions = fail_on.parse_conditions(args.fail_on)
    if args.plot is not None and (args.plot.suffix != ".png" or not args.plot.parent.is_dir()):
        raise BacktestError(f"--plot {args.plot}: needs a .png file in an existing directory")
    variants = {"today": today, "proposed": proposed}
    with tempfile.TemporaryDirectory(prefix="backtest-") as tmp:
        prepared = {
            name: variant.prepare(Path(tmp, name))
            for name, variant in variants.items()
            if variant is not None
        }
        summaries = {
            name: run(inputs, args.prometheus, start=start, end=end)
            for name, inputs in prepared.items()
        }
    judged = summaries.get("proposed", summaries["today"])
    failed = fail_on.violations(conditions, judged)
    if proposed is None:
        shown = report.to_json(judged) if args.json else report.to_text(judged)
    elif args.json:
        shown = report.compare_json(summaries["today"], summaries["proposed"])
    else:
        shown = report.compare_text(summaries["today"], summaries["proposed"])
    print(json.dumps(shown, indent=2) if args.json else shown)
    if args.plot is not None:
        report.plot(summaries, args.plot)
    for line in failed:
        print(f"{PROG}: {line}", file=sys.stderr)
    return EXIT_FAILED_CONDITION if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return backtest(sys.argv[1:] if argv is None else argv)
    except BacktestError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
