"""The reference actors: real but small. Each validates its payload before any work."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.errors import InvalidPayload
from worker.jobs import job
from worker.services import services


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(min_length=1, max_length=128)
    org_id: str = Field(min_length=1, max_length=128)


class AgentRun(Payload):
    prompt: str = Field(min_length=1, max_length=100_000)
    model: str | None = None


class CrmSync(Payload):
    record: dict[str, Any]


class MessageSend(Payload):
    channel: str = Field(min_length=1, max_length=64)
    recipient: str = Field(min_length=1, max_length=256)
    text: str = Field(min_length=1, max_length=10_000)


class StatusUpdate(Payload):
    status: Literal["queued", "running", "completed", "failed"]
    detail: str | None = Field(None, max_length=2_000)


P = TypeVar("P", bound=Payload)


def validate(model: type[P], kwargs: dict[str, Any]) -> P:
    """The payload, or ``InvalidPayload`` naming the fields at fault (never their values)."""
    try:
        return model(**kwargs)
    except ValidationError as exc:
        fields = ", ".join(
            f"{'.'.join(map(str, e['loc'])) or 'payload'} ({e['type']})" for e in exc.errors()
        )
        raise InvalidPayload(f"invalid {model.__name__} payload: {fields}") from None


@job("agent.run", "standard", rate_limited=True)
def agent_run(**kwargs: Any) -> dict[str, Any]:
    """Runs an agent step: one LLM completion for an organization."""
    p = validate(AgentRun, kwargs)
    text = services().llm.complete(p.org_id, p.prompt, model=p.model)
    return {"job_id": p.job_id, "chars": len(text)}


@job("crm.sync", "critical")
def crm_sync(**kwargs: Any) -> dict[str, Any]:
    """Pushes a record to the CRM."""
    p = validate(CrmSync, kwargs)
    return services().crm.call({"job_id": p.job_id, "org_id": p.org_id, "record": p.record})


@job("message.send", "critical")
def message_send(**kwargs: Any) -> dict[str, Any]:
    """Sends a message to a recipient through the messaging endpoint."""
    p = validate(MessageSend, kwargs)
    return services().messages.call(p.model_dump())


@job("job.status_update", "fast")
def job_status_update(**kwargs: Any) -> dict[str, Any]:
    """Records a job's status in the job store."""
    p = validate(StatusUpdate, kwargs)
    services().job_store.set_status(p.job_id, p.org_id, p.status, p.detail)
    return {"job_id": p.job_id, "status": p.status}


ACTORS = (agent_run, crm_sync, message_send, job_status_update)
