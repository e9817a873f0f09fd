"""Wires one worker process: settings, broker, middleware, and the services actors call.

``setup()`` runs once per process, before any actor is used. The Dramatiq CLI imports
``worker.entrypoint``, which calls it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dramatiq
import httpx

from worker import __version__
from worker.backends import (
    HttpEndpoint,
    RedisJobStore,
    SimulatedLLM,
    SimulatedService,
    Simulation,
    SimulationKnobs,
)
from worker.broker import build_broker, redis_client
from worker.config import Settings, load_settings
from worker.logs import install as install_safe_logs
from worker.organizations import RedisOrganizations

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    llm: Any
    crm: Any
    messages: Any
    job_store: Any


_services: Services | None = None


def services() -> Services:
    if _services is None:
        raise RuntimeError("worker.app.setup() has not run in this process")
    return _services


def build_services(settings: Settings) -> Services:
    client = redis_client(settings.redis_url)
    knobs = SimulationKnobs(
        Simulation(
            settings.sim_latency_seconds, settings.sim_failure_ratio, settings.sim_429_ratio
        ),
        client,
        key=f"{settings.job_queue_name}:simulation",
    )
    http = httpx.Client(
        timeout=httpx.Timeout(30.0, connect=5.0),
        headers={"User-Agent": f"worker-monitoring/{__version__}"},
    )

    def endpoint(name: str, url: str | None):
        return HttpEndpoint(name, url, http) if url else SimulatedService(name, knobs)

    if settings.supabase_url and settings.supabase_service_role_key:
        from worker.supabase_store import SupabaseStore, create_supabase_client

        supabase = SupabaseStore(
            create_supabase_client(
                settings.supabase_url,
                settings.supabase_service_role_key.get_secret_value(),
                timeout=settings.supabase_timeout_seconds,
                max_connections=settings.threads_per_process,
            )
        )
        job_store, organizations = supabase, supabase
    else:
        job_store = RedisJobStore(client, settings.job_queue_name)
        organizations = RedisOrganizations(client, settings.job_queue_name)

    return Services(
        settings=settings,
        llm=build_llm(settings, organizations) or SimulatedLLM(knobs),
        crm=endpoint("crm", settings.crm_endpoint_url),
        messages=endpoint("messages", settings.message_endpoint_url),
        job_store=job_store,
    )


def build_llm(settings: Settings, organizations: Any, rate_limit: Any = None) -> Any | None:
    """The OpenRouter LLM when there is a key to call it with: ``OPENROUTER_API_KEY``, or
    organizations' own keys (which ``ENCRYPTION_KEY`` decrypts); None otherwise."""
    if settings.openrouter_api_key is None and settings.encryption_key is None:
        return None
    from worker.openrouter import OpenRouterClient, OpenRouterLLM

    key = settings.openrouter_api_key
    return OpenRouterLLM(
        OpenRouterClient(
            settings.openrouter_base_url,
            timeout=settings.openrouter_timeout_seconds,
            max_connections=settings.threads_per_process,
        ),
        organizations,
        default_model=settings.openrouter_model,
        default_api_key=key.get_secret_value() if key else None,
        encryption_key=settings.encryption_key_bytes,
        # Actors reach the LLM through the RateLimit middleware, which takes the slot before
        # the job runs (and defers it without spending an attempt); this seam is for callers
        # outside an actor, e.g. ``rate_limit=RateLimiter(...).with_rate_limit``.
        rate_limit=rate_limit,
    )


class _DropResultsAdvice(logging.Filter):
    """Results are kept by the JobLog middleware; Dramatiq's advice to add its own is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Results middleware" not in str(record.msg)


def setup(settings: Settings | None = None) -> dramatiq.Broker:
    """Build this process's broker and services, and bind the actors to the broker."""
    global _services
    logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_DropResultsAdvice())
    settings = settings or load_settings()
    install_safe_logs(settings.log_level)
    if settings.sentry_dsn is not None:
        from worker.sentry import add_job_tags, init_sentry

        init_sentry(settings)  # before the broker: the Dramatiq integration patches Broker
    broker = build_broker(settings)
    if settings.sentry_dsn is not None:
        add_job_tags(broker)
    dramatiq.set_broker(broker)
    _services = build_services(settings)
    from worker import actors  # declared on the global broker at first import

    for actor in actors.ACTORS:
        if actor.broker is not broker:
            actor.broker = broker
            broker.declare_actor(actor)
    return broker
