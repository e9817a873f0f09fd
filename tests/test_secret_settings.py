"""A setting is secret by its type alone: a field typed ``SecretStr`` and a URL typed
``Url`` (``SecretUrl``), added in a ``Settings`` subclass with no other change, stay out
of configuration errors, reprs, log lines and Sentry events."""

from __future__ import annotations

import io
import logging

import pytest
import sentry_sdk
from pydantic import Field, SecretStr

from tests.support.protocol_servers import SentryServer
from worker.app import setup
from worker.config import ConfigError, Settings, Url, load_settings
from worker.sentry import close_sentry

#: No credential pattern of worker.redact matches these: only their type can hide them.
CREDENTIAL = "credential-PLANTED-8c1f2e9a"
PASSWORD = "pw-PLANTED-77d3c0"
#: Registered with no redactor: only the name it is held under can hide it.
UNREGISTERED = "unregistered-PLANTED-0b7e5d"


class WithWebhook(Settings):
    """Settings as a deployment extends them: one new secret, one new URL; nothing else."""

    billing_webhook_credential: SecretStr | None = Field(
        None, min_length=24, description="Signs the billing webhook's calls."
    )
    audit_sink_url: Url | None = Field(
        None, pattern=r"^https://", description="Where audit records go."
    )


def _refused(billing_webhook_credential: str, audit_sink_url: str) -> None:
    """Fails holding values under the new settings' names, as code reading them would (in
    a frame of its own: Sentry sends at most 10 variables a frame)."""
    raise PermissionError(f"{CREDENTIAL} refused; sink {audit_sink_url}")


def test_a_config_error_names_the_new_variable_never_its_secret():
    with pytest.raises(ConfigError) as short:
        load_settings(
            settings_class=WithWebhook,
            REDIS_URL="redis://127.0.0.1:1/0",
            BILLING_WEBHOOK_CREDENTIAL=CREDENTIAL[:20],  # too short: refused
        )
    assert short.value.code == 2
    assert short.value.message.startswith("configuration error: BILLING_WEBHOOK_CREDENTIAL: ")
    assert CREDENTIAL[:20] not in short.value.message
    with pytest.raises(ConfigError) as url:
        load_settings(
            settings_class=WithWebhook,
            REDIS_URL="redis://127.0.0.1:1/0",
            AUDIT_SINK_URL=f"ftp://audit:{PASSWORD}@audit.example.test/in",
        )
    # a URL is shown, as other URLs are, without its user:password@
    assert url.value.message == (
        "configuration error: AUDIT_SINK_URL: String should match pattern '^https://' "
        "(got 'ftp://***@audit.example.test/in')"
    )


def test_the_new_secrets_never_reach_a_repr_a_log_line_or_sentry(redis_url):
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    logging.getLogger().addHandler(handler)  # before setup(): it filters every handler
    try:
        with SentryServer() as server:
            settings = WithWebhook(
                _env_file=None,
                REDIS_URL=redis_url,
                SENTRY_DSN=server.dsn,
                BILLING_WEBHOOK_CREDENTIAL=CREDENTIAL,
                AUDIT_SINK_URL=f"https://audit:{PASSWORD}@audit.example.test/in",
            )
            for text in (repr(settings), str(settings)):
                assert CREDENTIAL not in text and PASSWORD not in text
            setup(settings)
            log = logging.getLogger("test.webhook")
            log.error("webhook refused %s; sink %s", CREDENTIAL, PASSWORD)  # an event too
            try:
                _refused(UNREGISTERED, settings.audit_sink_url)
            except PermissionError:
                sentry_sdk.capture_exception()
            sentry_sdk.flush(timeout=5)
            assert len(server.events()) == 2
            raw = b"".join(envelope.raw for envelope in server.envelopes())
    finally:
        close_sentry()
        logging.getLogger().removeHandler(handler)
    for value in (CREDENTIAL, PASSWORD, UNREGISTERED):
        assert value.encode() not in raw, f"{value} reached Sentry"
        assert value not in output.getvalue(), f"{value} was logged"
    assert b"[Filtered]" in raw
    assert "webhook refused [Filtered]; sink [Filtered]" in output.getvalue()
