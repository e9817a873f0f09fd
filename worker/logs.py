"""What the worker's log lines may carry: a job's identity, never its payload; one line
each, of bounded size.

Dramatiq logs a message by its ``str()``, which is the actor call with every argument
(``agent.run(prompt='...5 MB...')``), and logs each failed attempt at ERROR with that and
a traceback. ``SafeRecords``, a filter on the process's log handlers, rewrites every
record before it is written:

- a message among the arguments becomes ``<id> (<actor>)``, and an actor's
  "Received args=... kwargs=..." (DEBUG) keeps the keyword names only;
- Dramatiq's "Failed to process message" becomes ``job <id> (<actor>) on queue <queue>
  attempt <n> failed: <error type>: <error message, cut>`` with where it was raised,
  no traceback (Sentry, when configured, has the traceback, scrubbed);
- secrets are removed (``worker.redact``: the configured ones, and credential patterns);
- control characters are escaped (a newline in a value cannot forge a line) and the line
  is cut to ``MAX_LINE_CHARS``; a traceback of any other record keeps at most
  ``MAX_TRACEBACK_LINES`` lines, each cut likewise.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from typing import Any

from dramatiq import Message, MessageProxy

from worker.redact import REDACTOR

#: No log line of the worker is longer (characters, before the handler's prefix).
MAX_LINE_CHARS = 2_000
#: Characters of an exception's text kept in a failure line.
MAX_ERROR_CHARS = 300
MAX_TRACEBACK_LINES = 30

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_FAILED = "Failed to process message %s with unhandled exception."
#: Dramatiq's actor logs its call's arguments at DEBUG: kept as their names only.
_CALLED = "Received args=%r kwargs=%r."


def escape(text: str) -> str:
    """``text`` with control characters (newlines included) written as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    tail = f"... ({len(text)} chars)"
    return text[: max(0, limit - len(tail))] + tail


def brief(exception: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """``Type: message`` of an exception, on one line, cut to ``limit``."""
    return cut(escape(f"{type(exception).__name__}: {exception}"), limit)


def identity(message: Message | MessageProxy) -> str:
    return f"{message.message_id} ({escape(str(message.actor_name))[:100]})"


class SafeRecords(logging.Filter):
    """Rewrites each record as the module docstring says; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.msg == _FAILED and record.args and record.exc_info:
                self._failure(record)
            elif record.msg == _CALLED and isinstance(record.args, tuple):
                args, kwargs = (record.args + ((), {}))[:2]
                record.msg = "called with %d positional arguments and keywords %s"
                record.args = (len(args), sorted(kwargs) if isinstance(kwargs, dict) else "?")
            args = record.args
            if isinstance(args, tuple) and any(isinstance(a, Message | MessageProxy) for a in args):
                record.args = tuple(
                    identity(a) if isinstance(a, Message | MessageProxy) else a for a in args
                )
            text = cut(escape(REDACTOR.redact(record.getMessage())), MAX_LINE_CHARS)
            record.msg, record.args = text, None
            if record.exc_info and not record.exc_text:
                lines = "".join(traceback.format_exception(*record.exc_info)).splitlines()
                kept = [
                    cut(escape(REDACTOR.redact(line)), MAX_LINE_CHARS)
                    for line in lines[-MAX_TRACEBACK_LINES:]
                ]
                record.exc_text = "\n".join(kept)
        except Exception:  # a log line must never break the code that logs it
            text = REDACTOR.redact(str(record.msg))
            record.msg, record.args = cut(escape(text), MAX_LINE_CHARS), None
        return True

    @staticmethod
    def _failure(record: logging.LogRecord) -> None:
        message: Any = record.args[0]  # type: ignore[index]
        error = record.exc_info[1]  # type: ignore[index]
        frames = traceback.extract_tb(error.__traceback__) if error is not None else []
        where = ""
        if frames:
            file = "/".join(frames[-1].filename.split("/")[-2:])  # worker/backends.py
            where = f" at {file}:{frames[-1].lineno} in {frames[-1].name}"
        options = getattr(message, "options", {}) or {}
        retries = options.get("retries", 0)
        attempt = retries + 1 if isinstance(retries, int) else "?"
        record.msg = "job %s (%s) on queue %s attempt %s failed: %s%s"
        record.args = (
            getattr(message, "message_id", "?"),
            escape(str(getattr(message, "actor_name", "?")))[:100],
            getattr(message, "queue_name", "?"),
            attempt,
            brief(error) if error is not None else "?",
            where,
        )
        record.exc_info, record.exc_text = None, None


def check_log_level(value: str) -> str:
    if value.strip().upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value.strip().upper()


_SAFE = SafeRecords()


def install(level: str | None = None, *, secrets: Iterable[str] = ()) -> None:
    """Put ``SafeRecords`` on every handler of the root logger (once), and set its level.
    ``secrets``: values never to log (``Settings.secret_values()``; default none)."""
    REDACTOR.add(*secrets)
    root = logging.getLogger()
    if level:
        root.setLevel(level)
    for handler in root.handlers:
        if _SAFE not in handler.filters:
            handler.addFilter(_SAFE)
