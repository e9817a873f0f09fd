"""What a dead letter is and how one is selected: the model behind ``worker.dead_letters``.

A dead letter is read from three places: its body (``<queue>.XQ.msgs``), its failure time
(its score in ``<queue>.XQ``) and the job log's record of why it failed (``<ns>:dead``).
A ``Selection`` is what an operator asks for: ids, everything, or filters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.jobs import QUEUES
from worker.redact import REDACTOR

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class SelectionError(ValueError):
    """A selection that cannot be run: bad duration, unknown queue, conflicting selectors."""


def parse_duration(text: str) -> float:
    """Seconds of ``90s``, ``15m``, ``2h`` or ``7d``; ``SelectionError`` otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise SelectionError(f"bad duration {text!r}: use a number and s, m, h or d (e.g. 15m)")
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as RFC 3339 in UTC, to the millisecond."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True)
class Selection:
    """Which dead letters an action applies to: ``ids``, ``everything``, or the filters.

    The filters combine with AND; ``error`` is a case-insensitive substring of the reason;
    ``older_than`` / ``newer_than`` are seconds since the failure. An id is a message's
    Dramatiq ``message_id`` or the id Redis stores it under.
    """

    ids: tuple[str, ...] = ()
    everything: bool = False
    queue: str | None = None
    actor: str | None = None
    error: str | None = None
    org: str | None = None
    older_than: float | None = None
    newer_than: float | None = None

    def check(self, queues: Iterable[str] = QUEUES) -> Selection:
        """``self``, or ``SelectionError`` saying what is wrong with it."""
        if self.everything and self.ids:
            raise SelectionError("--all and ids select differently: give one or the other")
        if self.everything and self.has_filters:
            raise SelectionError("--all selects every dead letter: drop it or the filters")
        if self.queue is not None and self.queue not in tuple(queues):
            known = ", ".join(queues)
            raise SelectionError(f"unknown queue {self.queue!r} (queues: {known})")
        return self

    @property
    def has_filters(self) -> bool:
        filters = (self.queue, self.actor, self.error, self.org, self.older_than, self.newer_than)
        return any(f is not None for f in filters)

    @property
    def is_empty(self) -> bool:
        """Nothing asked for: an action that moves messages refuses it."""
        return not (self.ids or self.everything or self.has_filters)

    def matches(self, letter: DeadLetter, now: float) -> bool:
        if self.ids and not {letter.message_id, letter.redis_id} & set(self.ids):
            return False
        age = now - letter.failed_at
        return (
            (self.queue is None or letter.queue == self.queue)
            and (self.actor is None or letter.actor == self.actor)
            and (self.org is None or letter.org_id == self.org)
            and (self.error is None or self.error.casefold() in letter.reason.casefold())
            and (self.older_than is None or age > self.older_than)
            and (self.newer_than is None or age < self.newer_than)
        )

    def describe(self) -> dict:
        """The selection as the audit trail records it (only what was given)."""
        given = {k: v for k, v in self.__dict__.items() if v not in (None, (), False)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}


@dataclass
class DeadLetter:
    """One dead letter: where it is, what it is, why it failed."""

    redis_id: str
    queue: str
    failed_at: float  # seconds since the epoch
    body: bytes
    #: The decoded body; None when it is not a JSON object (an undecodable message).
    fields: dict | None
    reason: str
    attempts: int
    #: The job log's record of its failure, when the log still has it.
    record: dict[str, str] | None = None

    @property
    def options(self) -> dict:
        options = (self.fields or {}).get("options")
        return options if isinstance(options, dict) else {}

    @property
    def message_id(self) -> str:
        value = (self.fields or {}).get("message_id")
        return value if isinstance(value, str) else self.redis_id

    @property
    def actor(self) -> str:
        value = (self.fields or {}).get("actor_name")
        return value if isinstance(value, str) else "unknown"

    @property
    def org_id(self) -> str | None:
        kwargs = (self.fields or {}).get("kwargs")
        org = kwargs.get("org_id") if isinstance(kwargs, dict) else None
        return org if isinstance(org, str) else None

    def summary(self, now: float) -> dict:
        """The fields of ``list --json`` (no payload)."""
        return {
            "message_id": self.message_id,
            "queue": self.queue,
            "actor": self.actor,
            "org_id": self.org_id,
            "reason": self.reason,
            "attempts": self.attempts,
            "failed_at": rfc3339(self.failed_at),
            "age_seconds": round(max(now - self.failed_at, 0.0), 3),
        }

    def details(self, now: float, *, payload: bool = False) -> dict:
        """Everything about it: the envelope's options, its job-log record, and with
        ``payload`` its arguments, secrets redacted."""
        options = self.options
        shown = {
            **self.summary(now),
            "redis_id": self.redis_id,
            "eta": options.get("eta"),
            "retries": options.get("retries", 0),
            "requeues": options.get("requeues", 0),
            "requeued_at": [rfc3339(ms / 1000) for ms in numbers(options.get("requeued_at"))],
            "options": options,
            "job_log": self.record,
        }
        if payload:
            shown["payload"] = redacted_payload(self)
        return shown


def redacted_payload(letter: DeadLetter) -> dict | str:
    """The arguments of ``letter`` with the secrets the project recognizes redacted."""
    if letter.fields is None:
        return REDACTOR.redact(letter.body.decode("utf-8", "replace"))
    args = {"args": letter.fields.get("args"), "kwargs": letter.fields.get("kwargs")}
    return json.loads(REDACTOR.redact(json.dumps(args)))


def numbers(value: object) -> list[float]:
    items = value if isinstance(value, list) else []
    return [v for v in items if isinstance(v, int | float) and not isinstance(v, bool)]


def decode_body(body: bytes) -> dict | None:
    try:
        fields = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return fields if isinstance(fields, dict) else None
