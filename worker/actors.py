"""The reference actors: real but small.

Each declares its payload model (``payload=``): the ``ValidatePayload`` middleware checks
it, sizes included, before anything else touches the message; the actor then reads it.
"""

from __future__ import annotations

from typing import Any

from worker.jobs import job
from worker.payloads import AgentRun, CrmSync, MessageSend, StatusUpdate, validate
from worker.services import services

# The models stay importable from here, where producers look for them.
__all__ = ["ACTORS", "AgentRun", "CrmSync", "MessageSend", "StatusUpdate"]


@job("agent.run", "standard", rate_limited=True, payload=AgentRun)
def agent_run(**kwargs: Any) -> dict[str, Any]:
    """Runs an agent step: one LLM completion for an organization."""
    p = validate(AgentRun, kwargs)
    text = services().llm.complete(p.org_id, p.prompt, model=p.model)
    return {"job_id": p.job_id, "chars": len(text)}


@job("crm.sync", "critical", payload=CrmSync)
def crm_sync(**kwargs: Any) -> dict[str, Any]:
    """Pushes a record to the CRM."""
    p = validate(CrmSync, kwargs)
    return services().crm.call({"job_id": p.job_id, "org_id": p.org_id, "record": p.record})


@job("message.send", "critical", payload=MessageSend)
def message_send(**kwargs: Any) -> dict[str, Any]:
    """Sends a message to a recipient through the messaging endpoint."""
    p = validate(MessageSend, kwargs)
    return services().messages.call(p.model_dump())


@job("job.status_update", "fast", payload=StatusUpdate)
def job_status_update(**kwargs: Any) -> dict[str, Any]:
    """Records a job's status in the job store."""
    p = validate(StatusUpdate, kwargs)
    services().job_store.set_status(p.job_id, p.org_id, p.status, p.detail)
    return {"job_id": p.job_id, "status": p.status}


ACTORS = (agent_run, crm_sync, message_send, job_status_update)
