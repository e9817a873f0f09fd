"""Organization look-ups: each organization's encrypted LLM API key and preferred model.

Two stores give the same ``get_organization(org_id)``: Supabase's ``organizations`` table
(``worker.supabase_store``) when ``SUPABASE_URL`` is set, else the Redis hash
``<JOB_QUEUE_NAME>:org:<org_id>`` with fields ``llm_api_key_encrypted`` and ``llm_model``.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker.redis_keys import RedisKeys


@dataclass(frozen=True)
class Organization:
    id: str
    #: The key's stored form (``worker.api_keys``), or None to use ``OPENROUTER_API_KEY``.
    llm_api_key_encrypted: str | None = None
    #: The model the organization's jobs use when the job names none.
    llm_model: str | None = None


class RedisOrganizations:
    """Organizations in Redis hashes ``<namespace>:org:<org_id>`` (the default store)."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client, self.namespace = client, namespace

    def key(self, org_id: str) -> str:
        return RedisKeys(self.namespace).organization(org_id)

    def get_organization(self, org_id: str) -> Organization | None:
        raw = self.client.hgetall(self.key(org_id))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return Organization(
            id=org_id,
            llm_api_key_encrypted=fields.get("llm_api_key_encrypted") or None,
            llm_model=fields.get("llm_model") or None,
        )

    def put_organization(self, org: Organization) -> None:
        fields = {"llm_api_key_encrypted": org.llm_api_key_encrypted, "llm_model": org.llm_model}
        self.client.hset(self.key(org.id), mapping={k: v or "" for k, v in fields.items()})
