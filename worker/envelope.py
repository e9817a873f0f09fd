"""The shape every message must have before the worker touches it.

Dramatiq decodes a message body into its fields and trusts them: an ``options.retries``
of ``"abc"`` breaks the retry middleware after the job ran, a body without
``options.redis_message_id`` runs and then cannot be acked, ``kwargs`` given as a list
fails every attempt, an ``eta`` a year ahead holds a worker's memory for a year. Bodies
come from any producer (a Node service writes them straight into Redis), so the worker
checks them once, at decoding, with ``CheckedJSONEncoder`` (installed by
``dramatiq.set_encoder``). A body that fails the check is an ``InvalidMessage``: the
consumer dead-letters it at once with the reason, before any middleware or actor sees it.
(``options.redis_message_id`` is not checked: the Redis consumer replaces it with the id
the body was stored under, see ``worker.brokers.redis``.)
"""

from __future__ import annotations

import time
from typing import Any

from dramatiq.encoder import JSONEncoder

#: Top-level fields of a Dramatiq message and their JSON types.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "queue_name": str,
    "actor_name": str,
    "args": list,
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": int,
}
_REQUIRED = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id")

#: Options the worker's middleware reads as numbers, and their lowest accepted value.
_NUMBER_OPTIONS: dict[str, float] = {
    "retries": 0,
    "rate_limit_deferrals": 0,
    "eta": 0,
    "max_age": 1,
    "time_limit": 1,
}
_INTEGER_OPTIONS = frozenset({"retries", "rate_limit_deferrals", "eta"})

#: Longest queue name, actor name, message id and option string accepted.
MAX_NAME_CHARS = 256

#: Dramatiq refuses delays over 7 days; a day more allows for clocks and queues.
MAX_ETA_AHEAD_MS = 8 * 86_400_000


class InvalidMessage(ValueError):
    """A message body the worker cannot run; its text is the reason, free of payload."""


def check_envelope(fields: Any) -> None:
    """Raise ``InvalidMessage`` when ``fields`` is not a message the worker can run."""
    if not isinstance(fields, dict):
        raise InvalidMessage(f"the body is a JSON {type(fields).__name__}, not an object")
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise InvalidMessage(f"unknown field {_name(unknown[0])}")
    for name in _REQUIRED:
        if name not in fields:
            raise InvalidMessage(f"{name} is missing")
    for name, kind in _FIELDS.items():
        value = fields.get(name)
        if name in fields and (not isinstance(value, kind) or isinstance(value, bool)):
            raise InvalidMessage(f"{name} must be a JSON {_json_type(kind)}")
    if fields.get("message_timestamp", 0) < 0:
        raise InvalidMessage("message_timestamp must be >= 0")
    for name in ("queue_name", "actor_name", "message_id"):
        if not 0 < len(fields[name]) <= MAX_NAME_CHARS:
            raise InvalidMessage(f"{name} must be 1 to {MAX_NAME_CHARS} characters")
    _check_options(fields["options"])


def _check_options(options: dict[str, Any]) -> None:
    for name, lowest in _NUMBER_OPTIONS.items():
        if name not in options or (options[name] is None and name not in _INTEGER_OPTIONS):
            continue
        value = options[name]
        kind = int if name in _INTEGER_OPTIONS else (int, float)
        if not isinstance(value, kind) or isinstance(value, bool) or value < lowest:
            number = "an integer" if kind is int else "a number"
            raise InvalidMessage(f"options.{name} must be {number} >= {lowest:g}")
    eta = options.get("eta")
    if eta is not None and eta > time.time() * 1000 + MAX_ETA_AHEAD_MS:
        raise InvalidMessage("options.eta is more than 8 days ahead")
    reason = options.get("dead_letter_reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidMessage("options.dead_letter_reason must be a string")


def _json_type(kind: type | tuple[type, ...]) -> str:
    return {str: "string", list: "array", dict: "object", int: "integer"}[kind]  # type: ignore[index]


def _name(text: str) -> str:
    shown = text if text.isprintable() else repr(text)[1:-1]
    return repr(shown if len(shown) <= 40 else shown[:37] + "...")


class CheckedJSONEncoder(JSONEncoder):
    """Dramatiq's JSON encoding; decoding also checks the size and shape of the message.

    Parameters:
      max_bytes: the largest body accepted (``MESSAGE_MAX_BYTES``, default 2 MiB).
    """

    def __init__(self, *, max_bytes: int = 2 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) > self.max_bytes:
            raise InvalidMessage(
                f"the body is {len(data)} bytes, over MESSAGE_MAX_BYTES ({self.max_bytes})"
            )
        fields = super().decode(data)
        check_envelope(fields)
        return fields
