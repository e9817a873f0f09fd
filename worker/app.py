"""Wires one worker process: settings, broker, middleware, and the services actors call.

``setup()`` runs once per process, before any actor is used. The Dramatiq CLI imports
``worker.entrypoint``, which calls it.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
import httpx
import redis
from dramatiq.middleware import (
    Callbacks,
    CurrentMessage,
    Pipelines,
    ShutdownNotifications,
    TimeLimit,
)

from worker import __version__
from worker.backends import (
    HttpEndpoint,
    RedisJobStore,
    SimulatedLLM,
    SimulatedService,
    Simulation,
    SimulationKnobs,
)
from worker.brokers.redis import (
    WORKER_THREAD_LOGGER,
    WorkerRedisBroker,
    is_results_advice,
)
from worker.config import Settings, load_settings
from worker.envelope import CheckedJSONEncoder
from worker.logs import install as install_safe_logs
from worker.middleware.age_limit import AgeLimitWithReason
from worker.middleware.heartbeat import BrokerHeartbeat
from worker.middleware.job_log import JobLog
from worker.middleware.metrics import JobMetrics
from worker.middleware.payload import ValidatePayload
from worker.middleware.ratelimit import RateLimit
from worker.middleware.redis_health import RedisHealth
from worker.middleware.retries import ClassRetries
from worker.organizations import RedisOrganizations
from worker.payloads import PayloadLimits
from worker.ratelimit import RateLimiter
from worker.redis_client import redis_client
from worker.redis_keys import RedisKeys
from worker.services import Services, install

log = logging.getLogger(__name__)


def build_services(settings: Settings) -> Services:
    client = redis_client(settings)
    knobs = SimulationKnobs(
        Simulation(
            settings.sim_latency_seconds, settings.sim_failure_ratio, settings.sim_429_ratio
        ),
        client,
        key=RedisKeys(settings.job_queue_name).simulation,
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


def build_llm(settings: Settings, organizations: Any) -> Any | None:
    """The OpenRouter LLM when there is a key to call it with: ``OPENROUTER_API_KEY``, or
    organizations' own keys (which ``ENCRYPTION_KEY`` decrypts); None otherwise. Its calls
    are not limited again: an actor's job takes its slot in the ``RateLimit`` middleware
    before it runs."""
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
    )


def middleware_stack(settings: Settings, client: redis.Redis) -> list:
    """Dramatiq's useful defaults, minus its ``Retries`` (20 retries, 15 s minimum).

    ``ValidatePayload`` comes first: nothing else may touch a message its actor rejects.

    ``JobMetrics`` comes after what skips a message before it runs (``AgeLimit``,
    ``RateLimit``: a deferred job is not an attempt) and before ``TimeLimit``.
    ``JobLog`` and ``ClassRetries`` come before ``JobMetrics``: Dramatiq runs the
    ``after_*`` hooks in reverse order, and while Redis is unreachable these two may hold the
    worker thread until the record is written or the retry scheduled; by then the
    attempt is already counted, timed and out of ``worker_jobs_processing``, and
    ``TimeLimit`` has disarmed, so it cannot interrupt the wait.
    """
    return [
        ValidatePayload(limits=PayloadLimits.from_settings(settings)),
        AgeLimitWithReason(),
        RateLimit(RateLimiter.from_settings(client, settings)),
        JobLog(
            client,
            namespace=settings.job_queue_name,
            completed_ttl=settings.completed_jobs_ttl_seconds,
            completed_max=settings.completed_jobs_max,
            dead_ttl=settings.dead_letters_ttl_seconds,
            dead_max=settings.dead_letters_max,
        ),
        ClassRetries(
            max_delay=settings.retry_max_delay_seconds,
            jitter=settings.retry_jitter,
            time_scale=settings.retry_time_scale,
        ),
        JobMetrics(),
        TimeLimit(),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        CurrentMessage(),
        BrokerHeartbeat(interval=settings.job_lock_timeout_seconds / 2),
        RedisHealth(
            target=broker_redis(settings) or settings,
            max_backoff=settings.redis_health_interval_seconds,
        ),
    ]


def broker_redis(settings: Settings) -> Settings | str | None:
    """The broker's Redis: the worker's own (its settings), another Redis (``BROKER_URL``),
    or None when the broker is RabbitMQ."""
    url = settings.broker_url
    return settings if url is None else None if url.startswith("amqp") else url


def build_broker(settings: Settings) -> dramatiq.Broker:
    """The Redis broker from ``REDIS_URL``, or RabbitMQ when ``BROKER_URL`` is amqp://."""
    client = redis_client(settings)
    middleware = middleware_stack(settings, client)
    url = settings.broker_url or ""
    # Every body is checked as it is decoded (worker.envelope).
    dramatiq.set_encoder(CheckedJSONEncoder(max_bytes=settings.message_max_bytes))
    if url.startswith("amqp"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url, middleware=middleware, confirm_delivery=True)
    broker_client = client if not url or url == settings.redis_url else redis_client(url)
    return WorkerRedisBroker(
        client=broker_client,
        namespace=settings.job_queue_name,
        middleware=middleware,
        heartbeat_timeout=int(settings.job_lock_timeout_seconds * 1000),
        dead_message_ttl=int(settings.dead_letters_ttl_seconds * 1000),
    )


class _DropResultsAdvice(logging.Filter):
    """Results are kept by the JobLog middleware; Dramatiq's advice to add its own is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_results_advice(record)


def setup(settings: Settings | None = None) -> dramatiq.Broker:
    """Build this process's broker and services, and bind the actors to the broker."""
    logging.getLogger(WORKER_THREAD_LOGGER).addFilter(_DropResultsAdvice())
    settings = settings or load_settings()
    install_safe_logs(settings.log_level, secrets=settings.secret_values())
    if settings.sentry_dsn is not None:
        from worker.sentry import add_job_tags, init_sentry

        init_sentry(settings)  # before the broker: the Dramatiq integration patches Broker
    broker = build_broker(settings)
    if settings.sentry_dsn is not None:
        add_job_tags(broker)
    dramatiq.set_broker(broker)
    install(build_services(settings))
    from worker import actors  # declared on the global broker at first import

    for actor in actors.ACTORS:
        if actor.broker is not broker:
            actor.broker = broker
            broker.declare_actor(actor)
    return broker
