"""What each actor accepts: its payload model, and the size limit of every free-form field.

Types and shapes are pydantic models (``extra="forbid"``: an unknown field is an error).
Sizes are ``PayloadLimits``, configured by the ``PAYLOAD_MAX_*`` settings, so that an
operator can raise a limit without a release. A field's limit is declared beside it with
``Limit("<name>")``, the name of a ``PayloadLimits`` field. ``validate()`` checks both and
raises ``InvalidPayload`` naming the fields at fault, never their values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.errors import InvalidPayload


@dataclass(frozen=True)
class PayloadLimits:
    """Largest size of each kind of free-form field (characters; the record in bytes of
    JSON). Defaults are the ``PAYLOAD_MAX_*`` settings' defaults."""

    id_chars: int = 128  # job_id, org_id
    prompt_chars: int = 100_000  # AgentRun.prompt
    record_bytes: int = 65_536  # CrmSync.record, as JSON
    text_chars: int = 10_000  # MessageSend.text, StatusUpdate.detail
    name_chars: int = 256  # AgentRun.model, MessageSend.channel and .recipient

    @classmethod
    def from_settings(cls, settings: Any) -> PayloadLimits:
        return cls(**{f.name: getattr(settings, f"payload_max_{f.name}") for f in fields(cls)})


#: The setting behind each limit, named in a dead letter's reason.
SETTING = {f.name: f"PAYLOAD_MAX_{f.name.upper()}" for f in fields(PayloadLimits)}


@dataclass(frozen=True)
class Limit:
    """Marks a payload field as bounded by ``PayloadLimits.<name>``."""

    name: str


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: Annotated[str, Field(min_length=1), Limit("id_chars")]
    org_id: Annotated[str, Field(min_length=1), Limit("id_chars")]


class AgentRun(Payload):
    prompt: Annotated[str, Field(min_length=1), Limit("prompt_chars")]
    model: Annotated[str | None, Limit("name_chars")] = None


class CrmSync(Payload):
    record: Annotated[dict[str, Any], Limit("record_bytes")]


class MessageSend(Payload):
    channel: Annotated[str, Field(min_length=1), Limit("name_chars")]
    recipient: Annotated[str, Field(min_length=1), Limit("name_chars")]
    text: Annotated[str, Field(min_length=1), Limit("text_chars")]


class StatusUpdate(Payload):
    status: Literal["queued", "running", "completed", "failed"]
    detail: Annotated[str | None, Limit("text_chars")] = None


P = TypeVar("P", bound=Payload)


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    try:
        return len(json.dumps(value, separators=(",", ":")).encode())
    except (TypeError, ValueError, RecursionError):
        return 1 << 62  # cannot be measured, cannot be sent on: over any limit


def oversized(model: type[Payload], kwargs: dict[str, Any], limits: PayloadLimits) -> list[str]:
    """The bounded fields of ``kwargs`` over their limit, each as ``field (N > limit SETTING)``.

    Measured before the model is built, so an oversized value costs no validation work."""
    found = []
    for name, info in model.model_fields.items():
        limit = next((m for m in info.metadata if isinstance(m, Limit)), None)
        value = kwargs.get(name)
        if limit is None or value is None:
            continue
        size, bound = _size(value), getattr(limits, limit.name)
        if size > bound:
            shown = "too large to measure" if size == 1 << 62 else str(size)
            found.append(f"{name} ({shown} > {bound} {SETTING[limit.name]})")
    return found


def validate(model: type[P], kwargs: Any, limits: PayloadLimits | None = None, args: Any = ()) -> P:
    """The payload, or ``InvalidPayload`` naming the fields at fault (never their values).

    ``limits`` None checks types only (the ``ValidatePayload`` middleware has checked the
    sizes before the actor runs)."""
    name = model.__name__
    if args:
        raise InvalidPayload(f"invalid {name} payload: positional arguments are not accepted")
    if not isinstance(kwargs, dict):
        raise InvalidPayload(f"invalid {name} payload: keyword arguments must be an object")
    if limits is not None:
        over = oversized(model, kwargs, limits)
        if over:
            raise InvalidPayload(f"invalid {name} payload: over the size limit: {', '.join(over)}")
    try:
        return model.model_validate(kwargs)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        # Field names come from the sender: each is shown cut short, and only the first few.
        at_fault = [
            f"{'.'.join(_short(str(part)) for part in e['loc']) or 'payload'} ({e['type']})"
            for e in errors[:MAX_ERRORS_SHOWN]
        ]
        if len(errors) > MAX_ERRORS_SHOWN:
            at_fault.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more")
        raise InvalidPayload(f"invalid {name} payload: {', '.join(at_fault)}") from None


MAX_ERRORS_SHOWN = 5


def _short(text: str, limit: int = 40) -> str:
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."
