"""The Supabase store (supabase-py) against a local PostgREST-speaking server."""

from __future__ import annotations

import time

import pytest
import redis

from stack.poll import wait_until
from stack.servers import free_port
from tests.support.fleet import completed_ids, dead_letters, in_process_worker, settings_for
from tests.support.protocol_servers import SCHEMA_SQL, OpenRouterServer, PostgrestServer, Reply
from worker import __version__
from worker.api_keys import encrypt_key
from worker.app import setup
from worker.errors import PermanentError, TransientError
from worker.organizations import Organization
from worker.redis_keys import RedisKeys
from worker.supabase_store import SupabaseStore, create_supabase_client

KEYS = RedisKeys()

SERVICE_KEY = "service-role-key-for-tests-0123456789"


@pytest.fixture
def postgrest():
    with PostgrestServer(SERVICE_KEY) as server:
        yield server


@pytest.fixture
def store(postgrest):
    return SupabaseStore(create_supabase_client(postgrest.url, SERVICE_KEY, timeout=1.0))


def test_the_client_identifies_the_worker_and_keeps_no_session(postgrest, store):
    assert postgrest.requests == []  # creating the client costs no request (no auth call)
    store.set_status("job-1", "org-1", "running", None)
    store.get_organization("org-1")
    assert len(postgrest.requests) == 2
    for request in postgrest.requests:
        assert request.path.startswith("/rest/v1/"), "no /auth/v1 session traffic"
        assert request.headers["apikey"] == SERVICE_KEY
        assert request.headers["authorization"] == f"Bearer {SERVICE_KEY}"
        assert request.headers["x-application-name"] == "worker-monitoring"
        assert request.headers["x-worker-version"] == __version__
        assert request.headers["user-agent"] == f"worker-monitoring/{__version__}"
        assert request.headers["x-client-info"].startswith("supabase-py/")


def test_status_update_is_an_upsert_on_the_job_id(postgrest, store):
    store.set_status("job-1", "org-1", "running", None)
    first_row = dict(postgrest.tables["agent_jobs"][("job-1",)])
    time.sleep(0.01)
    store.set_status("job-1", "org-1", "completed", "42 chars")

    for request in postgrest.requests:
        assert (request.method, request.path) == ("POST", "/rest/v1/agent_jobs")
        assert request.query == {"on_conflict": ["id"]}
        prefer = set(request.headers["prefer"].split(","))
        assert prefer == {"resolution=merge-duplicates", "return=minimal"}
    assert postgrest.requests[1].json() == {
        "id": "job-1",
        "organization_id": "org-1",
        "status": "completed",
        "detail": "42 chars",
        "updated_at": postgrest.requests[1].json()["updated_at"],
    }
    # one row per job: created once, then updated in place
    [row] = postgrest.tables["agent_jobs"].values()
    assert row["status"] == "completed" and row["detail"] == "42 chars"
    assert row["created_at"] == first_row["created_at"]
    assert row["updated_at"] > first_row["updated_at"]


def test_organization_look_up(postgrest, store):
    postgrest.put(
        "organizations", {"id": "org-1", "llm_api_key_encrypted": "v1:abc", "llm_model": "x/y"}
    )
    assert store.get_organization("org-1") == Organization("org-1", "v1:abc", "x/y")
    assert store.get_organization("org-unknown") is None
    request = postgrest.requests[0]
    assert (request.method, request.path) == ("GET", "/rest/v1/organizations")
    assert request.query == {
        "select": ["id,llm_api_key_encrypted,llm_model"],
        "id": ["eq.org-1"],
        "limit": ["1"],
    }


def test_5xx_is_retryable_and_not_retried_inside_the_client(postgrest, store):
    postgrest.script(Reply(503, {"message": "upstream unavailable"}, {"Retry-After": "4"}))
    with pytest.raises(TransientError, match="supabase answered HTTP 503") as info:
        store.get_organization("org-1")
    assert info.value.retry_after == 4.0
    assert len(postgrest.requests) == 1  # postgrest-py's own GET retries are off


def test_4xx_is_permanent_with_postgrests_reason(postgrest):
    wrong = SupabaseStore(create_supabase_client(postgrest.url, "not-the-key-0123456789"))
    with pytest.raises(PermanentError, match="supabase answered HTTP 401: Invalid API key"):
        wrong.set_status("job-1", "org-1", "running", None)
    postgrest.script(
        Reply(400, {"code": "PGRST204", "message": "Could not find the 'detail' column"})
    )
    store = SupabaseStore(create_supabase_client(postgrest.url, SERVICE_KEY))
    with pytest.raises(PermanentError, match="HTTP 400: PGRST204 Could not find the 'detail'"):
        store.set_status("job-1", "org-1", "running", None)


def test_timeout_and_unreachable_are_retryable(postgrest, store):
    postgrest.script(Reply(200, [], delay=3.0))
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not answer in time"):
        store.get_organization("org-1")
    assert time.monotonic() - started < 2.0
    down = SupabaseStore(create_supabase_client(f"http://127.0.0.1:{free_port()}", SERVICE_KEY))
    with pytest.raises(TransientError, match="unreachable: ConnectError"):
        down.set_status("job-1", "org-1", "running", None)


def test_shipped_schema_has_what_the_worker_writes_and_reads():
    from tests.support.protocol_servers import schema_columns

    tables = schema_columns(SCHEMA_SQL.read_text())
    assert set(tables["agent_jobs"]) >= {"id", "organization_id", "status", "detail", "updated_at"}
    assert set(tables["organizations"]) >= {"id", "llm_api_key_encrypted", "llm_model"}


def test_jobs_use_supabase_when_it_is_configured(redis_url, postgrest):
    encryption_key = bytes(range(32))
    org_key = "sk-or-v1-" + "c3" * 32
    postgrest.put(
        "organizations",
        {
            "id": "org-1",
            "llm_api_key_encrypted": encrypt_key(org_key, encryption_key, "org-1"),
            "llm_model": "org/model",
        },
    )
    with OpenRouterServer(api_keys={org_key}) as openrouter:
        broker = setup(
            settings_for(
                redis_url,
                SUPABASE_URL=postgrest.url,
                SUPABASE_SERVICE_ROLE_KEY=SERVICE_KEY,
                ENCRYPTION_KEY=encryption_key.hex(),
                OPENROUTER_BASE_URL=openrouter.base_url,
                RETRY_TIME_SCALE=0.01,
            )
        )
        client = redis.Redis.from_url(redis_url)
        from worker import actors

        with in_process_worker(broker):
            actors.job_status_update.send(job_id="job-1", org_id="org-1", status="running")
            actors.agent_run.send(job_id="job-1", org_id="org-1", prompt="hi")
            wait_until(lambda: len(completed_ids(client)) == 2, timeout=15)
        assert dead_letters(client) == []
        [call] = openrouter.completions()
    assert call.headers["authorization"] == f"Bearer {org_key}"
    assert call.json()["model"] == "org/model"
    assert postgrest.tables["agent_jobs"][("job-1",)]["status"] == "running"
    assert client.exists(KEYS.job("job-1")) == 0  # not in the Redis default store
    assert not any(r.path.startswith("/auth/") for r in postgrest.requests)


def test_status_updates_go_to_redis_without_supabase(redis_url):
    broker = setup(settings_for(redis_url))
    client = redis.Redis.from_url(redis_url)
    from worker import actors

    with in_process_worker(broker):
        actors.job_status_update.send(job_id="job-9", org_id="org-1", status="failed", detail="x")
        wait_until(lambda: completed_ids(client), timeout=10)
    stored = client.hgetall(KEYS.job("job-9"))
    assert stored[b"status"] == b"failed" and stored[b"org_id"] == b"org-1"
