"""``worker dead-letters list|show|requeue|purge|export|audit``: the operator's command.

It reads the worker's own settings (``REDIS_URL``, ``JOB_QUEUE_NAME``, ``BROKER_URL``) and
acts through ``worker.dead_letters`` (``worker.dead_letters_rabbitmq`` on RabbitMQ), the
library the web console uses too. Every problem is one line on stderr: exit 2 for a
mistake of the caller (bad duration, unknown queue, conflicting selectors, no terminal to
confirm on), exit 1 when Redis or RabbitMQ cannot be reached or an id asked for was not a
dead letter. Whatever it prints from a message is escaped, so a reason with a newline or
an ANSI escape cannot forge lines on the terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

import pika
import redis

from worker.config import load_settings
from worker.dead_letters import (
    DeadLetter,
    DeadLetters,
    Outcome,
    Selection,
    SelectionError,
    parse_duration,
)
from worker.jobs import QUEUES
from worker.logs import cut, escape
from worker.redact import REDACTOR
from worker.redis_client import redis_client


class UsageError(Exception):
    """A mistake of the caller: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake on one line (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except SelectionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: a number of jobs per second > 0")
    return value


def _selection_args(parser: argparse.ArgumentParser, *, ids: bool = True) -> None:
    if ids:
        parser.add_argument("ids", nargs="*", metavar="ID", help="message ids")
        parser.add_argument("--all", action="store_true", help="every dead letter")
    group = parser.add_argument_group("filters (combined with AND)")
    group.add_argument("--queue", help=f"one queue ({', '.join(QUEUES)})")
    group.add_argument("--actor", help="an actor name, e.g. agent.run")
    group.add_argument("--error", metavar="TEXT", help="case-insensitive text in the reason")
    group.add_argument("--org", metavar="ID", help="an organization id")
    group.add_argument("--older-than", type=_duration, metavar="DURATION", help="e.g. 2h, 7d")
    group.add_argument("--newer-than", type=_duration, metavar="DURATION", help="e.g. 90s, 15m")


def _action_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print what would move, move none")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--by", metavar="NAME", help="who acts, for the audit (default: OS user)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="worker dead-letters",
        description="List, inspect, requeue and purge dead letters (docs/dead-letters.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = commands.add_parser("list", help="dead letters, newest first, with counts")
    _selection_args(listing)
    listing.add_argument("--limit", type=int, default=50, help="rows shown (default 50; 0: all)")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")
    show = commands.add_parser("show", help="everything about one dead letter")
    show.add_argument("id", metavar="ID")
    show.add_argument("--payload", action="store_true", help="the arguments, secrets redacted")
    requeue = commands.add_parser("requeue", help="move dead letters back to their queues")
    _selection_args(requeue)
    _action_args(requeue)
    requeue.add_argument("--rate", type=_rate, default=5.0, help="jobs per second (default 5)")
    purge = commands.add_parser("purge", help="delete dead letters for good")
    _selection_args(purge)
    _action_args(purge)
    export = commands.add_parser("export", help="dead letters as JSON lines")
    _selection_args(export)
    export.add_argument("--payload", action="store_true", help="the arguments, secrets redacted")
    audit = commands.add_parser("audit", help="the requeues and purges done so far")
    audit.add_argument("--limit", type=int, default=50, help="entries (default 50; 0: all)")
    audit.add_argument("--json", action="store_true", help="one JSON object a line")
    return parser


def selection_of(args: argparse.Namespace) -> Selection:
    return Selection(
        ids=tuple(getattr(args, "ids", ()) or ()),
        everything=getattr(args, "all", False),
        queue=args.queue,
        actor=args.actor,
        error=args.error,
        org=args.org,
        older_than=args.older_than,
        newer_than=args.newer_than,
    ).check()


def main(argv: list[str]) -> int:
    """Run one subcommand; ``ConfigError`` goes up to ``worker``'s main (exit 2)."""
    try:
        args = build_parser().parse_args(argv)
        selection = selection_of(args) if hasattr(args, "queue") else Selection()
    except UsageError as exc:
        return _fail(str(exc), 2)
    except SelectionError as exc:
        return _fail(f"worker dead-letters: {exc}", 2)
    settings = load_settings()
    client = redis_client(settings)
    rabbitmq = (settings.broker_url or "").startswith("amqp")
    if rabbitmq:
        if getattr(args, "org", None) is not None:
            client.close()
            return _fail(
                "worker dead-letters: --org: on RabbitMQ the job log is read, which does not "
                "name the organization",
                2,
            )
        from worker.dead_letters_rabbitmq import RabbitmqDeadLetters

        store = RabbitmqDeadLetters(client, settings.broker_url, namespace=settings.job_queue_name)
    else:
        store = DeadLetters(client, namespace=settings.job_queue_name)
    try:
        return COMMANDS[args.command](store, args, selection)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except pika.exceptions.AMQPError as exc:  # RabbitMQ unreachable, or the channel lost
        return _fail(f"worker dead-letters: RabbitMQ: {type(exc).__name__}: {_safe(exc)}", 1)
    except redis.RedisError as exc:
        return _fail(f"worker dead-letters: Redis: {type(exc).__name__}: {_safe(exc)}", 1)
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        return 0
    finally:
        client.close()


def _safe(exc: BaseException) -> str:
    return REDACTOR.redact(str(exc) or repr(exc))


def _fail(line: str, code: int) -> int:
    print(escape(line), file=sys.stderr)
    return code


def _out(line: str = "") -> None:
    print(line, flush=False)


def _json(obj: object) -> str:
    # ensure_ascii escapes every control character: one object, one line, whatever it holds.
    return json.dumps(obj, ensure_ascii=True, default=str)


def cmd_list(store: DeadLetters, args, selection: Selection) -> int:
    matching, total = store.select(selection)
    shown = matching if args.limit <= 0 else matching[: args.limit]
    now = store.clock()
    if args.json:
        for letter in shown:
            _out(_json(letter.summary(now)))
    else:
        _out(_table([_row(letter, now) for letter in shown]))
        _out(f"{len(shown):,} of {len(matching):,} matching; {total:,} dead letters in all")
    return _missing_ids(selection, matching)


HEADER = ("FAILED", "AGE", "QUEUE", "ACTOR", "ORG", "TRIES", "MESSAGE ID", "REASON")


def _row(letter: DeadLetter, now: float) -> tuple[str, ...]:
    s = letter.summary(now)
    return (
        s["failed_at"][:19] + "Z",
        _age(s["age_seconds"]),
        escape(s["queue"]),
        cut(escape(s["actor"]), 24),
        cut(escape(s["org_id"] or "-"), 20),
        str(s["attempts"]),
        escape(s["message_id"]),
        cut(escape(s["reason"]), 70),
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    if not rows:
        return "(no dead letters match)"
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [HEADER, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def cmd_show(store: DeadLetters, args, selection: Selection) -> int:
    letter = store.get(args.id)
    if letter is None:
        return _fail(f"worker dead-letters: {escape(args.id)}: not a dead letter (already gone)", 1)
    details = letter.details(store.clock(), payload=args.payload)
    _out(json.dumps(details, indent=2, ensure_ascii=True, default=str))
    return 0


def cmd_export(store: DeadLetters, args, selection: Selection) -> int:
    matching, _ = store.select(selection)
    for row in store.export(matching, payload=args.payload):
        _out(_json(row))
    return _missing_ids(selection, matching)


def cmd_audit(store: DeadLetters, args, selection: Selection) -> int:
    for entry in store.audit_trail(args.limit):
        if args.json:
            _out(_json(entry))
        else:
            counts = json.loads(entry.get("counts", "{}"))
            shown = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items())
            _out(
                escape(
                    f"{entry['at']}  {entry['action']:<8} {entry['status']:<8} by {entry['by']}  "
                    f"{entry['selection']}  {shown}".rstrip()
                )
            )
    return 0


def cmd_requeue(store: DeadLetters, args, selection: Selection) -> int:
    return _act(store, args, selection, "requeue")


def cmd_purge(store: DeadLetters, args, selection: Selection) -> int:
    return _act(store, args, selection, "purge")


def _act(store: DeadLetters, args, selection: Selection, action: str) -> int:
    if selection.is_empty:
        raise UsageError(f"worker dead-letters {action}: give ids, filters or --all")
    matching, total = store.select(selection)
    now = store.clock()
    if args.dry_run:
        for letter in matching:
            _out(f"would {action}  " + "  ".join(_row(letter, now)[2:7]))
        _out(f"dry run: {len(matching):,} of {total:,} dead letters would {action}; none moved")
        return _missing_ids(selection, matching)
    if matching and not args.yes:
        _confirm(f"{action} {len(matching):,} of {total:,} dead letters?")
    store.audit(action, by=args.by, selection=selection, status="started")
    outcome = Outcome("requeued" if action == "requeue" else "purged", matched=len(matching))
    status = "done"
    try:
        if action == "requeue":
            store.requeue(matching, rate=args.rate, on_each=_report, outcome=outcome)
        else:
            store.purge(matching, on_each=_report, outcome=outcome)
    except KeyboardInterrupt:  # Ctrl-C: what moved stays moved, the rest stays dead
        status = "interrupted"
    finally:
        outcome.missing = _missing(selection, matching)
        store.audit(action, by=args.by, selection=selection, outcome=outcome, status=status)
    for missing in outcome.missing:
        _out(f"already gone  {escape(missing)}")
    counts = outcome.counts()
    summary = ", ".join(f"{name.replace('_', ' ')} {n:,}" for name, n in counts.items())
    if status == "interrupted":
        _out(f"interrupted: {summary}")
        return 130
    _out(summary)
    return 1 if counts["already_gone"] or counts["failed"] else 0


def _report(letter: DeadLetter, result: str) -> None:
    if result not in ("requeued", "purged"):
        _out(f"{escape(result)}  {escape(letter.message_id)}")


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError(
            "worker dead-letters: no terminal to confirm on: add --yes (or --dry-run first)"
        )
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("worker dead-letters: not confirmed; nothing moved")


def _missing(selection: Selection, matching: list[DeadLetter]) -> list[str]:
    found = {i for letter in matching for i in (letter.message_id, letter.redis_id)}
    return [i for i in selection.ids if i not in found]


def _missing_ids(selection: Selection, matching: list[DeadLetter]) -> int:
    missing = _missing(selection, matching)
    for message_id in missing:
        print(f"already gone  {escape(message_id)}", file=sys.stderr)
    return 1 if missing else 0


COMMANDS = {
    "list": cmd_list,
    "show": cmd_show,
    "requeue": cmd_requeue,
    "purge": cmd_purge,
    "export": cmd_export,
    "audit": cmd_audit,
}
