"""OpenRouter chat completions with each organization's own API key.

One ``OpenRouterClient`` per process holds one pooled ``httpx.Client``: connections to
OpenRouter are kept alive and shared by all job threads of the process, up to one per
thread. The error policy is the project's (``worker.errors``): 408, 429 and 5xx are
retried, a ``Retry-After`` header setting the next delay; other 4xx dead-letter the job
at once with OpenRouter's reason; a timeout or a network error is retried.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import httpx

from worker import __version__
from worker.api_keys import decrypt_key
from worker.errors import PermanentError, TransientError, parse_retry_after, raise_for_status
from worker.organizations import Organization
from worker.redact import REDACTOR

T = TypeVar("T")

#: ``with_rate_limit(org_id, fn)``: runs ``fn`` when the organization's windows admit it.
RateLimit = Callable[[str, Callable[[], T]], T]

_REASON_MAX_CHARS = 300


def no_rate_limit(org_id: str, fn: Callable[[], T]) -> T:
    """The seam's default: call at once (an actor's job took its slot before it ran)."""
    return fn()


class OrganizationStore(Protocol):
    def get_organization(self, org_id: str) -> Organization | None: ...


class OpenRouterClient:
    """Chat completions against ``base_url`` (OpenRouter's ``/api/v1`` or any compatible API).

    ``timeout`` bounds each phase of a call (connect at most 10 s, then the wait for the
    answer): a non-streaming completion sends nothing until it is done, so this is the
    longest a call may take. ``max_connections`` should be the process's thread count.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 60.0,
        max_connections: int = 25,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.timeout = timeout
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={"User-Agent": f"worker-monitoring/{__version__}"},
        )

    def chat_completion(
        self, api_key: str, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> dict[str, Any]:
        """The completion's JSON body, or a ``TransientError`` / ``PermanentError``."""
        try:
            response = self.http.post(
                self.url,
                json={"model": model, "messages": messages, **params},
                headers={"Authorization": f"Bearer {api_key}"},
            )
        except httpx.TimeoutException:
            raise TransientError(f"openrouter did not answer within {self.timeout:g}s") from None
        except httpx.TransportError as exc:
            raise TransientError(f"openrouter unreachable: {type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        status = response.status_code
        if status < 400 and error:
            # OpenRouter reports some upstream failures in a 200 body; its code decides.
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) and code >= 400 else 502
        raise_for_status(
            "openrouter",
            status,
            parse_retry_after(response.headers.get("retry-after")),
            reason=_reason(error, api_key),
        )
        if not isinstance(body, dict) or not body.get("choices"):
            raise TransientError("openrouter answered without choices")
        return body

    def close(self) -> None:
        self.http.close()


def _reason(error: Any, api_key: str) -> str | None:
    message = error.get("message") if isinstance(error, dict) else error
    if not message:
        return None
    text = str(message).replace(api_key, "[Filtered]")
    return REDACTOR.redact(text)[:_REASON_MAX_CHARS]


class OpenRouterLLM:
    """``complete(org_id, prompt, model=None)`` through OpenRouter with the organization's key.

    The key is the organization's own (stored encrypted, see ``worker.api_keys``) when it has
    one, else ``default_api_key`` (``OPENROUTER_API_KEY``); neither is a ``PermanentError``.
    The model is the job's, else the organization's, else ``default_model``. Each call goes
    through ``rate_limit(org_id, fn)`` (``RateLimiter.with_rate_limit``).
    """

    def __init__(
        self,
        client: OpenRouterClient,
        organizations: OrganizationStore | None,
        *,
        default_model: str,
        default_api_key: str | None = None,
        encryption_key: bytes | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.client = client
        self.organizations = organizations
        self.default_model = default_model
        self.default_api_key = default_api_key
        self.encryption_key = encryption_key
        self.rate_limit = rate_limit or no_rate_limit

    def complete(self, org_id: str, prompt: str, *, model: str | None = None) -> str:
        api_key, org_model = self.credentials(org_id)
        chosen = model or org_model or self.default_model
        messages = [{"role": "user", "content": prompt}]
        body = self.rate_limit(
            org_id, lambda: self.client.chat_completion(api_key, chosen, messages)
        )
        try:
            return body["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TransientError("openrouter answered with a malformed choice") from None

    def credentials(self, org_id: str) -> tuple[str, str | None]:
        """The API key and preferred model for one organization's call."""
        org = self.organizations.get_organization(org_id) if self.organizations else None
        model = org.llm_model if org else None
        if org is not None and org.llm_api_key_encrypted:
            if self.encryption_key is None:
                raise PermanentError(
                    "the organization has a stored LLM API key but ENCRYPTION_KEY is not set"
                )
            api_key = decrypt_key(org.llm_api_key_encrypted, self.encryption_key, org_id)
            REDACTOR.add(api_key)
            return api_key, model
        if self.default_api_key:
            return self.default_api_key, model
        raise PermanentError(
            "no LLM API key: the organization has none stored and OPENROUTER_API_KEY is not set"
        )
