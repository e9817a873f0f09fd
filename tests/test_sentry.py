"""Sentry (sentry-sdk) against a local ingestion server receiving the SDK's real envelopes."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import time

import pytest
import redis
import sentry_sdk
from dramatiq.middleware import Middleware, SkipMessage

from stack.fleet import ROOT
from stack.poll import wait_until
from tests.support.fleet import completed_ids, dead_letters, in_process_worker, settings_for
from tests.support.protocol_servers import OpenRouterServer, Reply, SentryServer
from worker import __version__
from worker.api_keys import encrypt_key
from worker.app import setup
from worker.errors import PermanentError, TransientError
from worker.jobs import job
from worker.organizations import Organization, RedisOrganizations
from worker.redis_keys import RedisKeys
from worker.sentry import close_sentry, init_sentry, scrub_event
from worker.services import services

KEYS = RedisKeys()

SCALE = 0.01


@pytest.fixture
def sentry_server():
    with SentryServer() as server:
        try:
            yield server
        finally:
            close_sentry()  # no Sentry client outlives the test


def error_events(server: SentryServer) -> list[dict]:
    sentry_sdk.flush(timeout=5)
    return server.events()


class DeferOnce(Middleware):
    """Stands in for the rate limiter: defers a job once (SkipMessage) before it runs."""

    def before_process_message(self, broker, message):
        if message.kwargs.get("job_id") == "j-deferred" and "deferred" not in message.options:
            message.options["deferred"] = True
            broker.enqueue(message, delay=50)
            raise SkipMessage("throttled: deferred until the window frees")


def test_each_failed_attempt_is_one_tagged_event_and_deferrals_are_none(redis_url, sentry_server):
    broker = setup(
        settings_for(
            redis_url,
            SENTRY_DSN=sentry_server.dsn,
            ENVIRONMENT="staging",
            RETRY_TIME_SCALE=SCALE,
            RETRY_JITTER=0,
        )
    )
    assert [type(m).__name__ for m in broker.middleware[:2]] == [
        "SentryMiddleware",
        "SentryJobTags",
    ]
    broker.add_middleware(DeferOnce())

    @job("test.flaky", "fast")
    def flaky(**kwargs):
        raise TransientError("upstream answered HTTP 503")

    @job("test.broken", "critical")
    def broken(**kwargs):
        raise PermanentError("upstream answered HTTP 404")

    @job("test.skipping", "fast")
    def skipping(**kwargs):
        raise SkipMessage("deferred from inside the actor")

    @job("test.fine", "fast")
    def fine(**kwargs):
        return "ok"

    client = redis.Redis.from_url(redis_url)
    with in_process_worker(broker):
        flaky.send(job_id="j-flaky", org_id="org-7")
        broken.send(job_id="j-broken", org_id="org-8")
        skipping.send(job_id="j-skip", org_id="org-9")
        deferred = fine.send(job_id="j-deferred", org_id="org-9")
        wait_until(lambda: len(dead_letters(client)) == 2, timeout=15)
        wait_until(lambda: deferred.message_id in completed_ids(client), timeout=10)
        time.sleep(0.2)

    events = error_events(sentry_server)
    by_job = sorted(
        ((e["tags"].get("job_id"), e["tags"].get("attempt"), e.get("logger"), e) for e in events),
        key=lambda t: t[:3],
    )
    # exactly one event per failed attempt: 1 for the permanent error, 3 for the fast job's
    # 3 attempts; none from Dramatiq's ERROR log line (logger), none for the two deferrals
    assert [t[:3] for t in by_job] == [
        ("j-broken", "1", None),
        ("j-flaky", "1", None),
        ("j-flaky", "2", None),
        ("j-flaky", "3", None),
    ]
    by_job = [(j, a, e) for j, a, _, e in by_job]
    for job_id, attempt, event in by_job:
        tags = event["tags"]
        flaky_job = job_id == "j-flaky"
        assert tags["job_type"] == ("test.flaky" if flaky_job else "test.broken")
        assert tags["queue"] == ("fast" if flaky_job else "critical")
        assert tags["org_id"] == ("org-7" if flaky_job else "org-8")
        last = (not flaky_job) or attempt == "3"
        assert tags["dead_lettered"] == ("yes" if last else "no")
        assert event["environment"] == "staging"
        assert event["release"] == f"worker-monitoring@{__version__}"
        assert event["exception"]["values"][-1]["mechanism"]["type"] == "dramatiq"
        assert "org-" not in event["exception"]["values"][-1]["value"]  # a tag, not the text
    # the deferral and the skip were transactions without errors; the deferred job then ran
    names = [t["transaction"] for t in sentry_server.transactions()]
    assert names.count("test.fine") == 2 and names.count("test.skipping") == 1


def test_planted_secrets_never_reach_sentry(redis_url, sentry_server):
    openrouter_key = "sk-or-v1-" + "7d" * 32
    service_key = "service-role-PLANTED-5b1e0c"  # no pattern: only its value can find it
    encryption_key = bytes(range(100, 132))
    org_key = "org-provider-key-PLANTED-93af"  # likewise; known once decrypted
    bearer = "tok-PLANTED-b7c2d9e4"
    with OpenRouterServer(api_keys={openrouter_key, org_key}) as openrouter:
        settings = settings_for(
            redis_url,
            SENTRY_DSN=sentry_server.dsn,
            SENTRY_PROFILES_SAMPLE_RATE=1.0,  # profiles too are checked
            OPENROUTER_API_KEY=openrouter_key,
            OPENROUTER_BASE_URL=openrouter.base_url,
            SUPABASE_SERVICE_ROLE_KEY=service_key,
            ENCRYPTION_KEY=encryption_key.hex(),
            RETRY_TIME_SCALE=SCALE,
        )
        broker = setup(settings)
        client = redis.Redis.from_url(redis_url)
        RedisOrganizations(client, KEYS.namespace).put_organization(
            Organization("org-s", encrypt_key(org_key, encryption_key, "org-s"))
        )
        dsn = sentry_server.dsn
        log = logging.getLogger("test.leaky")
        # Neutral names: the actor's closure shows up among its frame's variables, so only
        # the values themselves can give these away.
        plain = [openrouter_key, service_key, encryption_key.hex(), dsn, f"Bearer {bearer}"]

        @job("test.leaky", "critical")
        def leaky(**kwargs):
            # Long enough for the profiler (101 Hz) to sample: it drops a profile of fewer
            # than two samples, which a busy machine gave this job when it took 5 ms.
            time.sleep(0.25)
            api_key, _ = services().llm.credentials(kwargs["org_id"])  # decrypts org_key
            headers = {"Authorization": plain[4], "apikey": plain[1]}  # noqa: F841
            copied = f"{api_key}|{plain[0]}"  # noqa: F841  (a local under a plain name)
            log.warning("retrying with %s and %s", plain[2], api_key)
            sentry_sdk.add_breadcrumb(message=f"dsn {plain[3]}, key {plain[0]}")
            log.error("service role %s rejected", plain[1])  # an event of its own
            raise PermanentError(f"failed: {' '.join(plain)} {api_key}")

        # the org key echoed back in OpenRouter's error, as a careless upstream might
        openrouter.script(Reply(400, {"error": {"code": 400, "message": f"bad key {org_key}"}}))
        from worker import actors

        with in_process_worker(broker):
            leaky.send(job_id="j-leaky", org_id="org-s")
            actors.agent_run.send(job_id="j-llm", org_id="org-s", prompt="hello")
            wait_until(lambda: len(dead_letters(client)) == 2, timeout=15)
            time.sleep(0.2)
        events = error_events(sentry_server)
        [llm_call] = openrouter.completions()

    planted = {
        "OPENROUTER_API_KEY": openrouter_key,
        "SUPABASE_SERVICE_ROLE_KEY": service_key,
        "ENCRYPTION_KEY (hex)": encryption_key.hex(),
        "ENCRYPTION_KEY (base64)": base64.b64encode(encryption_key).decode(),
        "SENTRY_DSN": dsn,
        "organization key": org_key,
        "bearer token": bearer,
    }
    envelopes = sentry_server.envelopes()
    kinds = {h.get("type") for env in envelopes for h, _ in env.items}
    assert {"event", "transaction", "profile"} <= kinds
    assert {e["tags"].get("job_type") for e in events} >= {"test.leaky", "agent.run"}
    assert any(e.get("logger") == "test.leaky" for e in events)  # the ERROR log line's event
    for envelope in envelopes:
        for name, value in planted.items():
            assert value.encode() not in envelope.raw, f"{name} reached Sentry"
    assert b"[Filtered]" in b"".join(env.raw for env in envelopes)
    # no trace headers to third parties: baggage would carry the DSN's public key
    assert "sentry-trace" not in llm_call.headers and "baggage" not in llm_call.headers


def test_sample_rates_default_and_configurable(redis_url, sentry_server):
    init_sentry(settings_for(redis_url, SENTRY_DSN=sentry_server.dsn))
    options = sentry_sdk.get_client().options
    assert (options["traces_sample_rate"], options["profiles_sample_rate"]) == (1.0, 0.1)
    assert options["environment"] == "development"
    assert sentry_sdk.get_client().should_send_default_pii() is False
    init_sentry(
        settings_for(
            redis_url,
            SENTRY_DSN=sentry_server.dsn,
            SENTRY_TRACES_SAMPLE_RATE=0.25,
            SENTRY_PROFILES_SAMPLE_RATE=0,
            SENTRY_RELEASE="worker@abc123",
        )
    )
    options = sentry_sdk.get_client().options
    assert (options["traces_sample_rate"], options["profiles_sample_rate"]) == (0.25, 0.0)
    assert options["release"] == "worker@abc123"


def test_scrubber_drops_values_under_sensitive_names():
    event = {
        "request": {"headers": {"X-Api-Key": "plainvalue-123", "Accept": "json"}},
        "extra": {"supabase_service_role_key": "anothervalue", "count": 3},
        "contexts": {
            "dramatiq": {"data": {"kwargs": {"job_id": "j", "org_id": "o", "prompt": "p"}}}
        },
    }
    scrubbed = scrub_event(event, {})
    assert scrubbed["request"]["headers"] == {"X-Api-Key": "[Filtered]", "Accept": "json"}
    assert scrubbed["extra"] == {"supabase_service_role_key": "[Filtered]", "count": 3}
    kwargs = scrubbed["contexts"]["dramatiq"]["data"]["kwargs"]
    assert kwargs == {"job_id": "j", "org_id": "o", "prompt": "[Filtered]"}


def test_without_a_dsn_sentry_is_never_loaded():
    code = (
        "import sys; from tests.support.fleet import settings_for; from worker.app import setup; "
        "b = setup(settings_for('redis://127.0.0.1:1/0')); "
        "print('sentry_sdk' in sys.modules, [type(m).__name__ for m in b.middleware])"
    )
    env = {"PATH": "/usr/bin:/bin", "SENTRY_DSN": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    loaded, middleware = out.stdout.strip().split(" ", 1)
    assert loaded == "False"
    assert "Sentry" not in middleware


def test_a_worker_replica_reports_to_sentry(redis_url, sentry_server, tmp_path):
    """``python -m worker`` as deployed: Sentry starts in each forked worker process."""
    from stack.fleet import Replica, replica_env

    replica = Replica(
        replica_env(redis_url, SENTRY_DSN=sentry_server.dsn, JOB_CONCURRENCY=2),
        tmp_path / "worker.log",
    ).start()
    try:
        setup(settings_for(redis_url))  # a producer without Sentry
        from worker import actors

        actors.job_status_update.send(job_id="j1", org_id="org-1", status="exploded")
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: dead_letters(client), timeout=30)
        wait_until(sentry_server.events, timeout=10)
    finally:
        assert replica.stop() == 0, replica.output
    [event] = sentry_server.events()
    assert event["tags"]["job_type"] == "job.status_update"
    assert event["tags"]["dead_lettered"] == "yes"
    assert event["exception"]["values"][-1]["type"] == "InvalidPayload"


def test_url_passwords_never_reach_sentry_nor_the_settings_repr(sentry_server):
    """The userinfo of every URL setting is a secret: events and repr leave it out."""
    password, short = "PLANTED-url-pw-41c9", "pw9"  # short: found only by its place in a URL
    settings = settings_for(
        f"redis://:{password}@127.0.0.1:6390/0",
        BROKER_URL=f"redis://worker:{short}@127.0.0.1:6391/0",
        SUPABASE_URL=f"https://svc:{password}x@db.example.test",
        SUPABASE_SERVICE_ROLE_KEY="service-role-key-for-tests",
        CRM_ENDPOINT_URL=f"https://crm:{password}y@crm.example.test/hook",
        SENTRY_DSN=sentry_server.dsn,
    )
    for text in (repr(settings), str(settings)):
        assert password not in text and f":{short}@" not in text
    init_sentry(settings)
    logging.getLogger("test.urls").error(
        "cannot reach %s or %s (%r)", settings.redis_url, settings.broker_url, settings
    )
    try:
        raise ConnectionError(f"Error connecting to {settings.supabase_url} and {password}")
    except ConnectionError:
        sentry_sdk.capture_exception()
    events = error_events(sentry_server)
    assert len(events) == 2
    raw = b"".join(env.raw for env in sentry_server.envelopes())
    assert password.encode() not in raw and f":{short}@".encode() not in raw
    assert b"[Filtered]@127.0.0.1:6390" in raw
