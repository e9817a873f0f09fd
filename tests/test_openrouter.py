"""The OpenRouter client (httpx) against a local chat-completions server, alone and in jobs."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from stack.poll import wait_until
from tests.support.fleet import completed_ids, dead_letters, in_process_worker, settings_for
from tests.support.protocol_servers import OpenRouterServer, Reply
from worker import __version__
from worker.api_keys import encrypt_key
from worker.app import setup
from worker.errors import PermanentError, TransientError
from worker.openrouter import OpenRouterClient, OpenRouterLLM
from worker.organizations import Organization, RedisOrganizations
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()

GLOBAL_KEY = "sk-or-v1-" + "a1" * 32
ORG_KEY = "sk-or-v1-" + "b2" * 32
ENCRYPTION_KEY = bytes(range(32))
SCALE = 0.01  # retry delays: 2 s -> 20 ms
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def openrouter():
    with OpenRouterServer(api_keys={GLOBAL_KEY, ORG_KEY}) as server:
        yield server


@pytest.fixture
def client(openrouter):
    c = OpenRouterClient(openrouter.base_url, timeout=2.0, max_connections=4)
    yield c
    c.close()


def test_success_sends_the_key_model_and_prompt(openrouter, client):
    body = client.chat_completion(GLOBAL_KEY, "openai/gpt-4o-mini", MESSAGES)
    assert body["choices"][0]["message"]["content"] == "echo: hi"
    [request] = openrouter.completions()
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {GLOBAL_KEY}"
    assert request.headers["user-agent"] == f"worker-monitoring/{__version__}"
    assert request.json() == {"model": "openai/gpt-4o-mini", "messages": MESSAGES}


def test_429_is_retryable_and_its_retry_after_is_the_next_delay(openrouter, client):
    openrouter.script(
        Reply(429, {"error": {"code": 429, "message": "Rate limit exceeded"}}, {"Retry-After": "7"})
    )
    with pytest.raises(TransientError, match="HTTP 429: Rate limit exceeded") as info:
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)
    assert info.value.retry_after == 7.0


def test_429_with_an_http_date_retry_after(openrouter, client):
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    openrouter.script(
        Reply(429, {"error": {"code": 429, "message": "slow"}}, {"Retry-After": when})
    )
    with pytest.raises(TransientError) as info:
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)
    assert 25 <= info.value.retry_after <= 30


def test_5xx_is_retryable(openrouter, client):
    openrouter.script(Reply(500, {"error": {"code": 500, "message": "Internal Server Error"}}))
    openrouter.script(Reply(502, b"<html>bad gateway</html>", {"Content-Type": "text/html"}))
    with pytest.raises(TransientError, match="HTTP 500") as info:
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)
    assert info.value.retry_after is None
    with pytest.raises(TransientError, match="HTTP 502"):
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)


def test_error_inside_a_200_body_follows_its_code(openrouter, client):
    openrouter.script(Reply(200, {"error": {"code": 502, "message": "provider returned error"}}))
    with pytest.raises(TransientError, match="provider returned error"):
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)


def test_401_is_permanent_with_the_reason_and_without_the_key(client):
    wrong = "sk-or-v1-" + "ff" * 32
    with pytest.raises(PermanentError) as info:
        client.chat_completion(wrong, "m", MESSAGES)
    assert str(info.value) == "openrouter answered HTTP 401: No auth credentials found"


def test_a_key_echoed_in_an_error_body_is_not_repeated(openrouter, client):
    echoed = {"error": {"code": 400, "message": f"key {GLOBAL_KEY} is not allowed model x"}}
    openrouter.script(Reply(400, echoed))
    with pytest.raises(PermanentError) as info:
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)
    assert GLOBAL_KEY not in str(info.value) and "is not allowed model x" in str(info.value)


def test_slow_answer_past_the_timeout_is_retryable(openrouter):
    client = OpenRouterClient(openrouter.base_url, timeout=0.3)
    openrouter.script(Reply(delay=3.0))
    started = time.monotonic()
    with pytest.raises(TransientError, match="did not answer within 0.3s"):
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)
    assert time.monotonic() - started < 1.5
    client.close()


def test_unreachable_server_is_retryable():
    from stack.servers import free_port

    client = OpenRouterClient(f"http://127.0.0.1:{free_port()}/api/v1", timeout=1)
    with pytest.raises(TransientError, match="unreachable: ConnectError"):
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)


def test_one_pool_per_process_reuses_connections(openrouter):
    client = OpenRouterClient(openrouter.base_url, timeout=2.0, max_connections=2)
    for _ in range(5):
        client.chat_completion(GLOBAL_KEY, "m", MESSAGES)
    assert len({r.client_port for r in openrouter.requests}) == 1  # one kept-alive connection

    # four calls at once through a pool of two: two connections, calls queue for them
    openrouter.requests.clear()
    openrouter.delay = 0.3
    results: list[dict] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(client.chat_completion(GLOBAL_KEY, "m", MESSAGES))
        )
        for _ in range(4)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    client.close()
    assert len(results) == 4
    assert len({r.client_port for r in openrouter.requests}) == 2
    assert 0.6 <= elapsed < 1.2  # two rounds of two parallel calls


def test_rate_limit_seam_wraps_the_call(openrouter, client):
    seen: list[tuple[str, int]] = []

    def with_rate_limit(org_id, fn):
        seen.append((org_id, len(openrouter.requests)))  # nothing sent before admission
        return fn()

    llm = OpenRouterLLM(
        client, None, default_model="m", default_api_key=GLOBAL_KEY, rate_limit=with_rate_limit
    )
    assert llm.complete("org-1", "hello") == "echo: hello"
    assert seen == [("org-1", 0)] and len(openrouter.requests) == 1

    def refuse(org_id, fn):
        raise TransientError("throttled", retry_after=1)

    refused = OpenRouterLLM(
        client, None, default_model="m", default_api_key=GLOBAL_KEY, rate_limit=refuse
    )
    with pytest.raises(TransientError, match="throttled"):
        refused.complete("org-1", "hello")
    assert len(openrouter.requests) == 1  # a refused call never reaches OpenRouter


# --- in real jobs: agent.run on an in-process Dramatiq worker ---------------------------


def job_settings(redis_url, openrouter, **overrides):
    return settings_for(
        redis_url,
        OPENROUTER_BASE_URL=openrouter.base_url,
        OPENROUTER_API_KEY=GLOBAL_KEY,
        OPENROUTER_MODEL="default/model",
        OPENROUTER_TIMEOUT_SECONDS=2,
        ENCRYPTION_KEY=ENCRYPTION_KEY.hex(),
        RETRY_JITTER=0,
        RETRY_TIME_SCALE=SCALE,
        **overrides,
    )


def test_jobs_use_the_organizations_own_key_and_model(redis_url, openrouter):
    broker = setup(job_settings(redis_url, openrouter))
    client = redis.Redis.from_url(redis_url)
    RedisOrganizations(client, KEYS.namespace).put_organization(
        Organization(
            "org-own", encrypt_key(ORG_KEY, ENCRYPTION_KEY, "org-own"), llm_model="org/model"
        )
    )
    from worker import actors

    with in_process_worker(broker):
        ids = [
            actors.agent_run.send(job_id="j-own", org_id="org-own", prompt="one").message_id,
            actors.agent_run.send(job_id="j-plain", org_id="org-plain", prompt="two").message_id,
            actors.agent_run.send(
                job_id="j-pick", org_id="org-own", prompt="three", model="job/model"
            ).message_id,
        ]
        wait_until(lambda: len(completed_ids(client)) == 3, timeout=15)
    assert sorted(completed_ids(client)) == sorted(ids)
    calls = {r.json()["messages"][0]["content"]: r for r in openrouter.completions()}
    assert calls["one"].headers["authorization"] == f"Bearer {ORG_KEY}"
    assert calls["one"].json()["model"] == "org/model"
    assert calls["two"].headers["authorization"] == f"Bearer {GLOBAL_KEY}"  # no key stored
    assert calls["two"].json()["model"] == "default/model"
    assert calls["three"].json()["model"] == "job/model"


def test_job_waits_retry_after_then_succeeds(redis_url, openrouter):
    broker = setup(job_settings(redis_url, openrouter))
    client = redis.Redis.from_url(redis_url)
    openrouter.script(
        Reply(
            429, {"error": {"code": 429, "message": "Rate limit exceeded"}}, {"Retry-After": "30"}
        )
    )
    from worker import actors

    with in_process_worker(broker):
        actors.agent_run.send(job_id="j1", org_id="org-1", prompt="hi")
        wait_until(lambda: completed_ids(client), timeout=15)
    first, second = openrouter.completions()
    # the nominal first delay is 2 s (20 ms scaled); Retry-After 30 s (300 ms) replaced it
    assert 30 * SCALE <= second.at - first.at < 30 * SCALE + 0.5


def test_job_on_401_is_dead_lettered_at_once_with_the_reason(redis_url, openrouter):
    broker = setup(job_settings(redis_url, openrouter))
    openrouter.api_keys.discard(GLOBAL_KEY)  # OpenRouter revoked the key
    client = redis.Redis.from_url(redis_url)
    from worker import actors

    with in_process_worker(broker):
        actors.agent_run.send(job_id="j1", org_id="org-1", prompt="hi")
        wait_until(lambda: dead_letters(client), timeout=10)
        time.sleep(0.2)
    [dead] = dead_letters(client)
    assert (
        dead["reason"] == "permanent error: openrouter answered HTTP 401: No auth credentials found"
    )
    assert dead["attempts"] == "1" and len(openrouter.completions()) == 1


def test_job_on_500_uses_every_attempt_of_its_class(redis_url, openrouter):
    broker = setup(job_settings(redis_url, openrouter))
    openrouter.script(*[Reply(500, {"error": {"code": 500, "message": "upstream"}})] * 5)
    client = redis.Redis.from_url(redis_url)
    from worker import actors

    with in_process_worker(broker):
        actors.agent_run.send(job_id="j1", org_id="org-1", prompt="hi")
        wait_until(lambda: dead_letters(client), timeout=15)
    [dead] = dead_letters(client)
    assert dead["reason"].startswith("5 of 5 attempts failed, last: TransientError")
    assert len(openrouter.completions()) == 5


def test_undecryptable_org_key_dead_letters_without_calling_openrouter(redis_url, openrouter):
    broker = setup(job_settings(redis_url, openrouter))
    client = redis.Redis.from_url(redis_url)
    stored_with_old_key = encrypt_key(ORG_KEY, bytes(range(1, 33)), "org-x")
    RedisOrganizations(client, KEYS.namespace).put_organization(
        Organization("org-x", stored_with_old_key)
    )
    from worker import actors

    with in_process_worker(broker):
        actors.agent_run.send(job_id="j1", org_id="org-x", prompt="hi")
        wait_until(lambda: dead_letters(client), timeout=10)
        time.sleep(0.2)
    [dead] = dead_letters(client)
    assert dead["attempts"] == "1"
    assert dead["reason"].startswith("permanent error: stored LLM API key cannot be decrypted")
    assert ORG_KEY not in dead["reason"] and ENCRYPTION_KEY.hex() not in dead["reason"]
    assert openrouter.completions() == []


def test_without_any_key_the_simulated_llm_is_used(redis_url):
    from worker.backends import SimulatedLLM
    from worker.services import services

    setup(settings_for(redis_url))
    assert isinstance(services().llm, SimulatedLLM)
    setup(settings_for(redis_url, ENCRYPTION_KEY=ENCRYPTION_KEY.hex()))
    assert isinstance(services().llm, OpenRouterLLM)
