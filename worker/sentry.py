"""Sentry for the worker: each failed job attempt reported once, tagged, with secrets removed.

``init_sentry(settings)`` runs in ``worker.app.setup()`` before the broker is built:
Sentry's Dramatiq integration patches ``Broker.__init__`` to put its middleware first
in every broker made afterwards. With no ``SENTRY_DSN`` nothing here is imported or
run; Sentry costs nothing.

What is reported:
  - every failed attempt of a job: exactly one error event, from the Dramatiq
    integration, tagged by ``SentryJobTags`` (``job_type``, ``queue``, ``attempt``,
    ``org_id``, ``job_id``, ``dead_lettered``). Dramatiq also logs the failure at ERROR;
    that log line is not made into a second event (its logger is ignored).
  - any other ERROR log line of the process (e.g. an undecodable message dead-lettered).
  - a transaction per attempt (``SENTRY_TRACES_SAMPLE_RATE``, default 1.0) and a
    profile for a share of them (``SENTRY_PROFILES_SAMPLE_RATE``, default 0.1).

What is not: deferrals by the rate limiter (``SkipMessage``; ``NOT_ERRORS``), warnings
(they are breadcrumbs), trace headers to third parties (OpenRouter, Supabase: the
baggage header would carry the DSN's public key).

``scrub_event`` (``before_send`` and ``before_send_transaction``) walks the whole
event: values under a sensitive name (Authorization, apikey, ...) are replaced, and in
every string the configured secrets, every organization key decrypted so far, and
credential patterns (``worker.redact``) are removed. The integration's copy of the
message keeps only ``job_id`` and ``org_id`` of the payload (prompts and message texts
are customer data); frame variables, Sentry's default, may still show parts of it. If
scrubbing fails, the SDK drops the event rather than send it unscrubbed.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import dramatiq
import sentry_sdk
from dramatiq.middleware import SkipMessage
from dramatiq.rate_limits import RateLimitExceeded
from sentry_sdk.integrations.dramatiq import DramatiqIntegration, SentryMiddleware
from sentry_sdk.integrations.logging import LoggingIntegration, ignore_logger

from worker import __version__
from worker.brokers.redis import WORKER_THREAD_LOGGER
from worker.config import Settings
from worker.middleware.sentry_tags import SentryJobTags
from worker.redact import FILTERED, REDACTOR, secret_settings

#: Exceptions that defer a job rather than fail it: never an error event. A rate limiter
#: that raises its own deferral exception from inside an actor adds it here.
NOT_ERRORS: tuple[type[BaseException], ...] = (SkipMessage, RateLimitExceeded)

#: Names whose values are dropped wherever they occur (headers, frame variables, extras),
#: besides the names of the secret settings (``_SECRET_SETTINGS``).
SENSITIVE_NAMES = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "apikey",
        "api_key",
        "x_api_key",
        "cookie",
        "set_cookie",
        "password",
        "secret",
        "token",
        "access_token",
        "refresh_token",
        "dsn",
        "service_role_key",
        "encryption_key_bytes",
        "plaintext",
        "llm_api_key_encrypted",
    }
)
_SENSITIVE_SUFFIXES = (
    "_api_key",
    "_secret",
    "_password",
    "_token",
    "_dsn",
    "_key_bytes",
    "service_role_key",
    "encryption_key",
)

#: The settings typed secret, by name: those of ``Settings``, and of the subclass that
#: ``init_sentry`` is given.
_SECRET_SETTINGS = set(secret_settings(Settings))

#: Payload fields kept in the event's copy of the message; the rest is customer data.
PAYLOAD_KEPT = frozenset({"job_id", "org_id"})

#: Dramatiq logs every failed attempt here at ERROR, with the message's arguments; the
#: integration already reports the attempt, so this logger would only duplicate it.
_DUPLICATE_LOGGERS = (WORKER_THREAD_LOGGER,)


def is_sensitive(name: str) -> bool:
    normalized = name.lower().replace("-", "_")
    return (
        normalized in SENSITIVE_NAMES
        or normalized in _SECRET_SETTINGS
        or normalized.endswith(_SENSITIVE_SUFFIXES)
    )


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return REDACTOR.redact(value)
    if isinstance(value, dict):
        scrubbed = {}
        for key, item in value.items():
            sensitive = isinstance(key, str) and is_sensitive(key) and item not in (None, "")
            scrubbed[_scrub(key)] = FILTERED if sensitive else _scrub(item)
        return scrubbed
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _reduce_payload(event: dict[str, Any]) -> None:
    data = event.get("contexts", {}).get("dramatiq", {}).get("data")
    if isinstance(data, dict):
        if isinstance(data.get("kwargs"), dict):
            data["kwargs"] = {
                k: v if k in PAYLOAD_KEPT else FILTERED for k, v in data["kwargs"].items()
            }
        if data.get("args"):
            data["args"] = [FILTERED for _ in data["args"]]


def scrub_event(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """``before_send``: drop deferrals, then remove payloads and secrets from the event."""
    exc_info = hint.get("exc_info") if hint else None
    if exc_info and isinstance(exc_info[1], NOT_ERRORS):
        return None
    _reduce_payload(event)
    return _scrub(event)


def init_sentry(settings: Settings) -> None:
    """Start Sentry for this process; call before building the broker."""
    assert settings.sentry_dsn is not None
    REDACTOR.add(*settings.secret_values())
    _SECRET_SETTINGS.update(secret_settings(type(settings)))
    for name in _DUPLICATE_LOGGERS:
        ignore_logger(name)
    with warnings.catch_warnings():
        # Transaction-based profiling (profiles_sample_rate) is what this worker documents;
        # the SDK warns that its next major version replaces it with continuous profiling.
        warnings.filterwarnings("ignore", "Transaction-based profiling", DeprecationWarning)
        _init(settings)


def _init(settings: Settings) -> None:
    assert settings.sentry_dsn is not None
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value().strip(),
        environment=settings.environment,
        release=settings.sentry_release or f"worker-monitoring@{__version__}",
        traces_sample_rate=settings.sentry_traces_sample_rate,
        profiles_sample_rate=settings.sentry_profiles_sample_rate,
        integrations=[
            DramatiqIntegration(),
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
        ignore_errors=list(NOT_ERRORS),
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        trace_propagation_targets=[],
    )


def add_job_tags(broker: dramatiq.Broker) -> None:
    """Put ``SentryJobTags`` right after the integration's middleware, inside its scope."""
    if any(isinstance(m, SentryMiddleware) for m in broker.middleware):
        broker.add_middleware(SentryJobTags(), after=SentryMiddleware)


def close_sentry(timeout: float = 2.0) -> None:
    """Flush and stop this process's Sentry client; later brokers get no Sentry middleware."""
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=timeout)
    sentry_sdk.get_global_scope().set_client(None)
