"""Job statuses and organization look-ups in Supabase, for workers (service role).

One client per process (``create_supabase_client``), made for a server rather than a
browser: the service-role key on every request, no user session kept or refreshed
(``persist_session=False``, ``auto_refresh_token=False``, so no auth traffic at all),
headers naming the worker and its version (``x-application-name``,
``x-worker-version``) so its requests can be told apart in Supabase's API logs, a
request timeout, and a bounded keep-alive pool shared by the process's threads.

Errors follow the project's policy (``worker.errors``): a timeout, a network error, 408,
429 or 5xx is retried; another 4xx (a wrong key, a missing column) dead-letters the job
with PostgREST's reason. postgrest-py's own retries are off, so a failing request gives
its job slot back at once and the job's retry policy decides.

The tables are in ``schema/supabase.sql``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from postgrest import APIError
from postgrest.types import ReturnMethod
from supabase import Client, ClientOptions, create_client
from supabase.lib.client_options import DEFAULT_HEADERS

from worker import __version__
from worker.errors import TransientError, parse_retry_after, raise_for_status
from worker.organizations import Organization
from worker.redact import REDACTOR

T = TypeVar("T")

APPLICATION_NAME = "worker-monitoring"
_REASON_MAX_CHARS = 300


def identifying_headers() -> dict[str, str]:
    return {"x-application-name": APPLICATION_NAME, "x-worker-version": __version__}


def _raise_for_postgrest_status(response: httpx.Response) -> None:
    """An httpx response hook: map a failed response to the error policy, with its reason.

    postgrest-py turns every failure into ``APIError`` and drops the HTTP status, which
    is what tells a retryable failure from a permanent one; this sees it first.
    """
    if response.status_code < 400:
        return
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = None
    reason = None
    if isinstance(body, dict):
        # PostgREST's code and message; never its "details", which may quote row values.
        parts = [str(body[k]) for k in ("code", "message") if body.get(k)]
        reason = REDACTOR.redact(" ".join(parts))[:_REASON_MAX_CHARS] or None
    raise_for_status(
        "supabase",
        response.status_code,
        parse_retry_after(response.headers.get("retry-after")),
        reason=reason,
    )


def create_supabase_client(
    url: str, service_role_key: str, *, timeout: float = 10.0, max_connections: int = 25
) -> Client:
    """The process's Supabase client; ``max_connections`` should be its thread count."""
    http = httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"User-Agent": f"{APPLICATION_NAME}/{__version__}"},
        event_hooks={"response": [_raise_for_postgrest_status]},
    )
    options = ClientOptions(
        auto_refresh_token=False,
        persist_session=False,
        headers={
            **DEFAULT_HEADERS,
            **identifying_headers(),
            # Given here, the client never asks its auth module for a session token.
            "Authorization": f"Bearer {service_role_key}",
        },
        postgrest_client_retry=False,
        httpx_client=http,
    )
    return create_client(url, service_role_key, options)


class SupabaseStore:
    """``set_status`` (the job store of ``job.status_update``) and ``get_organization``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def set_status(self, job_id: str, org_id: str, status: str, detail: str | None) -> None:
        """Upsert the job's row: created on its first status, updated on later ones."""
        row = {
            "id": job_id,
            "organization_id": org_id,
            "status": status,
            "detail": detail,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        self._run(
            lambda: (
                self.client.table("agent_jobs")
                .upsert(row, on_conflict="id", returning=ReturnMethod.minimal)
                .execute()
            )
        )

    def get_organization(self, org_id: str) -> Organization | None:
        response = self._run(
            lambda: (
                self.client.table("organizations")
                .select("id,llm_api_key_encrypted,llm_model")
                .eq("id", org_id)
                .limit(1)
                .execute()
            )
        )
        if not response.data:
            return None
        row: dict[str, Any] = response.data[0]
        return Organization(
            id=org_id,
            llm_api_key_encrypted=row.get("llm_api_key_encrypted") or None,
            llm_model=row.get("llm_model") or None,
        )

    @staticmethod
    def _run(call: Callable[[], T]) -> T:
        try:
            return call()
        except httpx.TimeoutException:
            raise TransientError("supabase did not answer in time") from None
        except httpx.TransportError as exc:
            raise TransientError(f"supabase unreachable: {type(exc).__name__}") from None
        except APIError as exc:  # a 2xx answer postgrest-py could not read
            raise TransientError(f"supabase answered unreadably: {exc.code}") from None
