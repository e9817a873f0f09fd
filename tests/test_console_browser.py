"""``worker console`` in a real browser: Debian's chromium driven by Playwright, against
a console on a real redis-server with one worker replica that completes the jobs it is
given back. Each test also saves a screenshot of the page it checks: into the test's
temporary directory, or into ``CONSOLE_SCREENSHOTS`` (``make console-screenshots`` sets
it to docs/img/, which docs/console.md shows)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.dead_letter_seed import Seed, seed_dead_letters
from stack.fleet import replica_env
from stack.servers import free_port, redis_server, running
from tests.support.console import PASSWORD, XSS, console
from tests.support.jobs import client as redis_client
from worker.brokers.redis import redis_backlog
from worker.ratelimit import RateLimiter
from worker.redis_keys import DEFAULT_NAMESPACE, RedisKeys

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
ARGS = (
    "--headless --no-sandbox --disable-gpu --disable-background-networking "
    "--disable-component-update --disable-sync --no-first-run"
).split()
#: A namespace of its own for the overview test: no replica there consumes what it writes.
STILL = "console-still"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, browser):
    """A redis-server, one worker replica and a console on it: (redis URL, console URL)."""
    from stack.fleet import Replica

    workdir = tmp_path_factory.mktemp("console-fleet")
    with running(redis_server(workdir / "redis")) as redis:
        env = replica_env(redis.url, METRICS_PORT=str(free_port()))
        replica = Replica(env, workdir / "replica.log").start(timeout=60).wait_for_metrics()
        try:
            with console(workdir, redis.url) as server:
                yield redis.url, server.url
        finally:
            replica.stop()


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def shot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"console-{name}.png"), full_page=True)


def log_in(page, url: str, password: str = PASSWORD):
    page.goto(url + "/login")
    page.fill("input[name=password]", password)
    page.click("#login button[type=submit]")
    return page


def test_login_a_wrong_password_gets_the_form_again_and_too_many_a_lockout(page, tmp_path, browser):
    workdir = tmp_path / "lockout"
    with running(redis_server(workdir / "redis")) as redis:
        with console(workdir, redis.url, CONSOLE_LOGIN_ATTEMPTS="3") as server:
            log_in(page, server.url, "wrong password")
            assert page.locator("#login-message").inner_text() == "Wrong password."
            assert page.locator("input[name=password]").is_visible()
            shot(page, "login", tmp_path)
            for _ in range(2):
                log_in(page, server.url, "still wrong")
            log_in(page, server.url)  # the right one, too late
            assert "locked out" in page.locator("#login-message").inner_text()
            assert page.url.endswith("/login")
            page.goto(server.url + "/")
            assert page.url.endswith("/login")  # no session was made


def test_the_overview_shows_what_redis_holds(page, tmp_path):
    workdir = tmp_path / "overview"
    with running(redis_server(workdir / "redis")) as redis:
        r, keys = redis_client(redis.url), RedisKeys(STILL)
        with r.pipeline() as pipe:
            for i in range(7):
                pipe.rpush(keys.queue("default"), f"r{i}")
                pipe.hset(keys.messages("default"), f"r{i}", json.dumps(_message(i)))
            for i in range(3):
                pipe.hset(keys.delayed_messages("critical"), f"d{i}", "{}")
            pipe.sadd(keys.claimed("broker-a", "default"), "x1", "x2")
            pipe.sadd(keys.claimed("broker-a", "fast"), "x3")
            pipe.zadd(keys.heartbeats, {"broker-a": int(time.time() * 1000)})
            for i in range(4):
                pipe.xadd(keys.completed, {"message_id": f"c{i}", "queue": "fast", "job_type": "a"})
            pipe.execute()
        seed_dead_letters(r, STILL, [Seed(queue="critical")] * 5 + [Seed()] * 2)
        limiter = RateLimiter(r, {"minute": (3, 60)}, key_prefix=keys.rate_limit_prefix)
        for _ in range(5):
            limiter.try_acquire("org-hot")
        env = {"JOB_QUEUE_NAME": STILL, "RATE_LIMITS": "minute=3/60"}
        with console(workdir, redis.url, **env) as server:
            log_in(page, server.url)
            assert page.url == server.url + "/"
            backlog = redis_backlog(r, STILL, ("critical", "default", "fast"))()
            for queue, (ready, delayed, dead) in backlog.items():
                row = page.locator(f"#queues tr[data-queue={queue}]")
                cell = lambda col, row=row: int(row.locator(f"[data-col={col}]").inner_text())  # noqa: E731
                assert (cell("ready"), cell("delayed"), cell("dead")) == (ready, delayed, dead)
            assert backlog["default"][0] == 7 and backlog["critical"][1:] == (3, 5)
            default = page.locator("#queues tr[data-queue=default]")
            assert default.locator("[data-col=in_flight]").inner_text() == "2"
            assert float(default.locator("[data-col=oldest]").inner_text()) >= 60
            fast = page.locator("#queues tr[data-queue=fast]")
            assert fast.locator("[data-col=completed_hour]").inner_text() == "4"
            assert "broker-a" in page.locator("#replicas").inner_text()
            held = page.locator("#held-back tbody tr").first.inner_text()
            assert held.split("\t")[:4] == ["org-hot", "minute", "3", "3"]
            assert page.locator("meta[http-equiv=refresh]").count() == 1
            shot(page, "overview", tmp_path)


def _message(i: int) -> dict:
    old = int((time.time() - 120) * 1000)
    return {
        "queue_name": "default",
        "actor_name": "agent.run",
        "args": [],
        "kwargs": {},
        "options": {},
        "message_id": f"m{i}",
        "message_timestamp": old,
    }


def test_filter_requeue_20_by_filter_and_watch_them_complete(fleet, page, tmp_path):
    redis_url, url = fleet
    r = redis_client(redis_url)
    replay = seed_dead_letters(r, DEFAULT_NAMESPACE, [Seed(org_id="org-replay")] * 20)
    stay = seed_dead_letters(r, DEFAULT_NAMESPACE, [Seed(org_id="org-stay")] * 12)
    log_in(page, url)
    page.goto(url + "/dead-letters")
    page.fill("#filters input[name=org]", "org-replay")
    page.click("#filters button[type=submit]")
    assert page.locator("#matching").inner_text() == "20"
    assert set(page.locator("#dead-letters tbody tr td:nth-child(6)").all_inner_texts()) == {
        "org-replay"
    }
    shot(page, "dead-letters", tmp_path)
    page.fill("#letters input[name=rate]", "20")
    page.click("#requeue-all")
    assert page.locator("#confirm-count").inner_text() == "20"
    assert page.locator("#confirm-rate").inner_text() == "20.0"
    shot(page, "confirm", tmp_path)
    page.click("#confirm button[type=submit]")
    assert "/replays/" in page.url
    deadline = time.monotonic() + 30  # the page refreshes itself every second while it runs
    while _text(page, "#status") != "done":
        assert time.monotonic() < deadline, _text(page, "#progress")
        time.sleep(0.3)
    assert page.locator("[data-count=requeued]").inner_text() == "20"
    shot(page, "replay", tmp_path)
    keys = RedisKeys(DEFAULT_NAMESPACE)
    assert r.zcard(keys.dead_letters("default")) == len(stay)
    deadline = time.monotonic() + 60
    while True:  # the replica runs them; the job log names their organization
        page.goto(url + "/completed?org=org-replay")
        if page.locator("#found").inner_text().startswith("20 found"):
            break
        assert time.monotonic() < deadline, page.locator("#found").inner_text()
        time.sleep(1)
    done = {m.decode() for m in (f[b"message_id"] for _, f in r.xrange(keys.completed))}
    assert set(replay) <= done and not set(stay) & done
    shot(page, "completed", tmp_path)
    page.goto(url + "/audit")
    assert "org-replay" in page.locator("#audit").inner_text()
    shot(page, "audit", tmp_path)


def _text(page, selector: str) -> str | None:
    """The text of ``selector``, or None while the page reloads."""
    try:
        return page.locator(selector).text_content(timeout=2_000)
    except playwright.Error:
        return None


def test_a_reason_with_markup_renders_as_text_and_no_script_runs(fleet, page, tmp_path):
    redis_url, url = fleet
    (xss_id,) = seed_dead_letters(
        redis_client(redis_url), DEFAULT_NAMESPACE, [Seed(org_id="org-xss", reason=XSS)]
    )
    dialogs, errors = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, url)
    page.goto(url + "/dead-letters?org=org-xss")
    assert page.locator("td.reason").inner_text() == XSS
    assert page.locator("main img").count() == 0
    page.goto(f"{url}/jobs/{xss_id}")
    assert page.locator("#reason").inner_text() == XSS
    assert page.locator("main img").count() == 0
    assert XSS in page.locator("#details").inner_text()
    shot(page, "job", tmp_path)
    page.wait_for_timeout(300)
    assert dialogs == [] and errors == []


def test_a_post_without_its_csrf_token_is_refused(fleet, page):
    redis_url, url = fleet
    r = redis_client(redis_url)
    seed_dead_letters(r, DEFAULT_NAMESPACE, [Seed(org_id="org-csrf")] * 3)
    log_in(page, url)
    page.goto(url + "/dead-letters?org=org-csrf")
    page.evaluate("document.querySelector('#letters input[name=csrf]').remove()")
    page.click("#purge-all")
    assert page.locator("h1").inner_text() == "403"
    assert "CSRF" in page.locator("#problem").inner_text()
    page.goto(url + "/dead-letters?org=org-csrf")
    assert page.locator("#matching").inner_text() == "3"


def test_read_only_shows_no_action_and_a_forged_post_gets_403(fleet, page, tmp_path):
    redis_url, _ = fleet
    r = redis_client(redis_url)
    seed_dead_letters(r, DEFAULT_NAMESPACE, [Seed(org_id="org-ro")] * 2)
    with console(tmp_path, redis_url, CONSOLE_READ_ONLY="1") as server:
        log_in(page, server.url)
        page.goto(server.url + "/dead-letters?org=org-ro")
        assert page.locator("#read-only").is_visible()
        assert page.locator("#letters button").count() == 0
        assert page.locator("input[type=checkbox]").count() == 0
        shot(page, "read-only", tmp_path)
        token = page.locator("header input[name=csrf]").get_attribute("value")
        with page.expect_navigation():  # the forged form's answer, not this page
            page.evaluate(
                """token => {
                    const form = document.createElement('form');
                    form.method = 'post';
                    form.action = '/dead-letters/run';
                    for (const [name, value] of [['csrf', token], ['do', 'purge all'],
                                                 ['org', 'org-ro']]) {
                        const input = document.createElement('input');
                        input.name = name; input.value = value; form.appendChild(input);
                    }
                    document.body.appendChild(form);
                    form.submit();
                }""",
                token,
            )
        assert page.locator("h1").inner_text() == "403"
        assert re.search("read-only", page.locator("#problem").inner_text())
    assert r.zcard(RedisKeys(DEFAULT_NAMESPACE).dead_letters("default")) >= 2
