"""``worker console`` over HTTP on a real redis-server: the login and its lockout, the
session cookie, CSRF, read-only mode, escaping, the security headers, a requeue by filter,
GET changing nothing, the access log, and the configuration error at start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx

from stack.dead_letter_seed import Seed, seed_dead_letters
from stack.fleet import ROOT, python_env
from tests.support.console import (
    PASSWORD,
    XSS,
    console,
    csrf_of,
    login,
    redis_digest,
    signed_in,
)
from tests.support.jobs import client as redis_client
from worker.redis_keys import DEFAULT_NAMESPACE, RedisKeys

PAGES = ["/", "/dead-letters", "/completed", "/audit"]


def seed(redis_url: str, seeds: list[Seed]) -> list[str]:
    return seed_dead_letters(redis_client(redis_url), DEFAULT_NAMESPACE, seeds)


def test_refuses_to_start_without_a_password(redis_url):
    done = subprocess.run(
        [sys.executable, "-m", "worker", "console"],
        env=python_env(REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "configuration error: CONSOLE_PASSWORD: required, not set"
    ]


def test_a_short_password_is_refused_and_not_echoed(redis_url):
    env = python_env(REDIS_URL=redis_url, CONSOLE_PASSWORD="hunter2")
    done = subprocess.run(
        [sys.executable, "-m", "worker", "console"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert "CONSOLE_PASSWORD" in done.stderr and "hunter2" not in done.stderr


def test_pages_need_a_login_and_a_wrong_password_gets_the_form_again(redis_url, tmp_path):
    with console(tmp_path, redis_url) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        for path in PAGES + ["/jobs/x", "/replays/x"]:
            response = http.get(path)
            assert (response.status_code, response.headers["location"]) == (303, "/login")
        response = login(http, "wrong password")
        assert response.status_code == 401
        assert "Wrong password." in response.text and 'name="password"' in response.text
        assert "console_session" not in http.cookies
        response = login(http)
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert http.get("/").status_code == 200


def test_failed_logins_lock_the_address_out(redis_url, tmp_path):
    with console(tmp_path, redis_url, CONSOLE_LOGIN_ATTEMPTS="3") as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        for _ in range(3):
            assert login(http, "not the password").status_code == 401
        response = login(http)  # the right password, too late
        assert response.status_code == 429
        assert "locked out" in response.text
        assert "console_session" not in http.cookies


def test_the_session_cookie_is_httponly_strict_and_expires(redis_url, tmp_path):
    with console(tmp_path, redis_url, CONSOLE_SESSION_MINUTES="30") as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        cookies = login(http).headers.get_list("set-cookie")
        (cookie,) = [c for c in cookies if c.startswith("console_session=")]
        flags = [f.strip().lower() for f in cookie.split(";")]
        assert "httponly" in flags and "samesite=strict" in flags and "max-age=1800" in flags


def test_logout_ends_the_session_on_the_server(redis_url, tmp_path):
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        session = http.cookies["console_session"]
        token = csrf_of(http.get("/").text)
        assert http.post("/logout", data={"csrf": token}).status_code == 303
        again = httpx.Client(base_url=server.url, cookies={"console_session": session})
        assert again.get("/").status_code == 303


def test_every_response_carries_the_security_headers(redis_url, tmp_path):
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        for path in [*PAGES, "/login", "/static/console.css", "/nowhere"]:
            headers = http.get(path).headers
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert "default-src 'self'" in csp and "unsafe-inline" not in csp, path
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["x-frame-options"] == "DENY", path
        for path in PAGES:
            html = http.get(path).text
            assert not re.search(r"<script(?![^>]*\bsrc=)", html), f"inline script in {path}"
            assert " on" not in re.sub(r">[^<]*<", "><", html).replace(" onerror", ""), path


def test_a_post_without_the_sessions_csrf_token_is_refused(redis_url, tmp_path):
    ids = seed(redis_url, [Seed()] * 3)
    with console(tmp_path, redis_url) as server:
        http, other = signed_in(server.url), signed_in(server.url)
        before = redis_digest(redis_client(redis_url))
        form = {"do": "requeue all", "rate": "100"}
        for token in (None, "", "forged", csrf_of(other.get("/").text)):
            data = form if token is None else {**form, "csrf": token}
            for path in ("/dead-letters/confirm", "/dead-letters/run"):
                response = http.post(path, data=data)
                assert response.status_code == 403, (path, token)
        assert redis_digest(redis_client(redis_url)) == before
        # The login form's token too: a login posted from elsewhere is refused.
        bare = httpx.Client(base_url=server.url, timeout=30)
        assert bare.post("/login", data={"password": PASSWORD}).status_code == 403
    assert len(ids) == 3


def test_read_only_hides_the_actions_and_refuses_every_post(redis_url, tmp_path):
    seed(redis_url, [Seed()] * 2)
    with console(tmp_path, redis_url, CONSOLE_READ_ONLY="1") as server:
        http = signed_in(server.url)  # the login still works
        page = http.get("/dead-letters").text
        assert "read-only" in page
        assert "Requeue" not in page and "Purge" not in page and 'type="checkbox"' not in page
        before = redis_digest(redis_client(redis_url))
        token = csrf_of(http.get("/").text)  # the logout form's
        for path in ("/dead-letters/confirm", "/dead-letters/run"):
            response = http.post(path, data={"csrf": token, "do": "purge all"})
            assert response.status_code == 403
        assert redis_digest(redis_client(redis_url)) == before


def test_a_reason_with_markup_is_shown_as_text(redis_url, tmp_path):
    (xss_id,) = seed(redis_url, [Seed(reason=XSS, actor="<b>actor</b>", org_id="<i>org</i>")])
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        for path in ("/dead-letters", f"/jobs/{xss_id}", "/dead-letters?error=%3Cimg"):
            html = http.get(path).text
            assert "&lt;img src=x onerror=alert(1)&gt;" in html, path
            assert "<img" not in html and "<b>actor" not in html and "<i>org" not in html, path


def test_a_requeue_by_filter_moves_exactly_the_matching_letters(redis_url, tmp_path):
    matching = seed(redis_url, [Seed(org_id="org-a", reason="HTTP 502 upstream")] * 30)
    others = seed(redis_url, [Seed(org_id="org-b", reason="HTTP 502 upstream")] * 20)
    others += seed(redis_url, [Seed(org_id="org-a", reason="ValueError")] * 5)
    keys, r = RedisKeys(DEFAULT_NAMESPACE), redis_client(redis_url)
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        token = csrf_of(http.get("/dead-letters").text)
        form = {"csrf": token, "do": "requeue all", "org": "org-a", "error": "502", "rate": "200"}
        confirm = http.post("/dead-letters/confirm", data=form)
        assert confirm.status_code == 200
        assert re.search(r'id="confirm-count">30<', confirm.text)
        assert re.search(r'id="confirm-rate">200.0<', confirm.text)
        assert r.llen(keys.queue("default")) == 0  # confirming moves nothing
        run = http.post("/dead-letters/run", data=form)
        assert run.status_code == 303 and run.headers["location"].startswith("/replays/")
        deadline = time.monotonic() + 30
        while 'id="status">done<' not in (page := http.get(run.headers["location"]).text):
            assert time.monotonic() < deadline, page
            time.sleep(0.2)
        assert re.search(r'data-count="requeued">30<', page)
    ready = {r.hget(keys.messages("default"), i) for i in r.lrange(keys.queue("default"), 0, -1)}
    assert {body for body in ready if body} and len(ready) == 30
    assert all(any(m.encode() in body for m in matching) for body in ready)
    left = {
        m
        for m in others
        if any(m.encode() in b for b in r.hvals(keys.dead_letter_messages("default")))
    }
    assert left == set(others) and r.zcard(keys.dead_letters("default")) == 25
    audit = r.xrange(keys.audit)
    assert [e[1][b"status"] for e in audit] == [b"started", b"done"]
    assert b"console@127.0.0.1" in audit[-1][1][b"by"]


def test_get_never_changes_state(redis_url, tmp_path):
    ids = seed(redis_url, [Seed()] * 5)
    r = redis_client(redis_url)
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        before = redis_digest(r)
        for path in [
            *PAGES,
            f"/jobs/{ids[0]}",
            f"/jobs/{ids[0]}?payload=1",
            "/dead-letters?do=requeue+all&rate=100",
            "/dead-letters/confirm?do=requeue+all",
            "/dead-letters/run?do=purge+all",
            "/logout",
        ]:
            assert http.get(path).status_code in (200, 405), path
        assert redis_digest(r) == before
        assert http.get("/").status_code == 200  # still signed in


def test_the_payload_is_hidden_unless_allowed_and_then_behind_a_click(redis_url, tmp_path):
    (message_id,) = seed(redis_url, [Seed(prompt="the customer's secret plan")])
    with console(tmp_path / "a", redis_url) as server:
        http = signed_in(server.url)
        for path in (f"/jobs/{message_id}", f"/jobs/{message_id}?payload=1"):
            page = http.get(path).text
            assert "secret plan" not in page and "CONSOLE_ALLOW_PAYLOADS" in page
    with console(tmp_path / "b", redis_url, CONSOLE_ALLOW_PAYLOADS="1") as server:
        http = signed_in(server.url)
        page = http.get(f"/jobs/{message_id}").text
        assert "secret plan" not in page and 'id="show-payload"' in page
        assert "secret plan" in http.get(f"/jobs/{message_id}?payload=1").text


def test_the_access_log_has_no_password_payload_or_query(redis_url, tmp_path):
    (message_id,) = seed(redis_url, [Seed(prompt="payload-text-42", reason="boom")])
    with console(tmp_path, redis_url, CONSOLE_ALLOW_PAYLOADS="1") as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        login(http, "wrong-password-99")
        login(http)
        http.get(f"/jobs/{message_id}?payload=1")
        http.get("/dead-letters?error=query-text-7")
        log = server.log.read_text()
    assert "POST /login 401" in log and f"GET /jobs/{message_id} 200" in log
    for secret in (PASSWORD, "wrong-password-99", "payload-text-42", "query-text-7", "payload=1"):
        assert secret not in log


def test_a_huge_form_is_refused_unread(redis_url, tmp_path):
    with console(tmp_path, redis_url) as server:
        http = httpx.Client(base_url=server.url, timeout=30)
        response = http.post(
            "/login",
            content=b"password=" + b"x" * 2_000_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 413
        assert response.headers["x-content-type-options"] == "nosniff"


def test_redis_down_is_a_503_page_not_a_traceback(redis_srv, tmp_path):
    with console(tmp_path, redis_srv.url) as server:
        http = signed_in(server.url)
        redis_srv.stop()
        response = http.get("/")
        assert response.status_code == 503
        assert "cannot read the broker now" in response.text and "Traceback" not in response.text
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_filters_are_the_commands_with_its_own_words_for_a_mistake(redis_url, tmp_path):
    seed(redis_url, [Seed(org_id="org-a", age=7200), Seed(org_id="org-a", age=60)])
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        page = http.get("/dead-letters?org=org-a&older_than=1h").text
        assert re.search(r'id="matching">1<', page)
        bad = http.get("/dead-letters?older_than=soon")
        assert bad.status_code == 400
        assert "bad duration &#39;soon&#39;: use a number and s, m, h or d" in bad.text
        unknown = http.get("/dead-letters?queue=nope")
        assert unknown.status_code == 400 and "unknown queue" in unknown.text


def test_completed_jobs_are_searched_by_id_actor_and_organization(redis_url, tmp_path):
    r = redis_client(redis_url)
    for i in range(6):
        fields = {
            "message_id": f"m-{i}",
            "queue": "fast",
            "job_type": ("a.x", "b.y")[i % 2],
            "job_id": f"job-{i}",
            "org_id": f"org-{i % 3}",
            "result": "null",
        }
        r.xadd(RedisKeys(DEFAULT_NAMESPACE).completed, fields)
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)

        def found(query: str) -> int:
            page = http.get(f"/completed?{query}").text
            return int(re.search(r'id="found">(\d+) found', page)[1])

        assert found("") == 6
        assert found("org=org-1") == 2 and found("actor=b.y") == 3
        assert found("text=job-4") == 1 and found("text=m-5") == 1
        assert found("org=org-1&actor=b.y") == 1


def test_purge_of_selected_rows_removes_exactly_them(redis_url, tmp_path):
    ids = seed(redis_url, [Seed(queue="critical", actor="crm.sync")] * 6)
    keys, r = RedisKeys(DEFAULT_NAMESPACE), redis_client(redis_url)
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        token = csrf_of(http.get("/dead-letters").text)
        form = {"csrf": token, "do": "purge selected", "id": ids[:2]}
        confirm = http.post("/dead-letters/confirm", data=form)
        assert re.search(r'id="confirm-count">2<', confirm.text)
        assert "confirm-rate" not in confirm.text  # a purge is not paced
        run = http.post("/dead-letters/run", data=form)
        assert run.status_code == 303
        deadline = time.monotonic() + 30
        while 'id="status">done<' not in (page := http.get(run.headers["location"]).text):
            assert time.monotonic() < deadline, page
            time.sleep(0.2)
        assert re.search(r'data-count="purged">2<', page)
    left = {b.decode() for b in r.hvals(keys.dead_letter_messages("critical"))}
    assert not [i for i in ids[:2] if any(i in b for b in left)]
    assert all(any(i in b for b in left) for i in ids[2:])
    assert r.hget(keys.dead_letters_counted("purged"), "critical") == b"2"


def test_one_action_at_a_time_and_its_progress_while_it_runs(redis_url, tmp_path):
    seed(redis_url, [Seed()] * 6)
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        token = csrf_of(http.get("/dead-letters").text)
        form = {"csrf": token, "do": "requeue all", "rate": "2"}
        first = http.post("/dead-letters/run", data=form)
        assert first.status_code == 303
        progress = http.get(first.headers["location"]).text
        assert 'id="status">running<' in progress and 'http-equiv="refresh"' in progress
        second = http.post("/dead-letters/run", data=form)
        assert second.status_code == 409 and "another requeue or purge is running" in second.text
        assert "A requeue is running" in http.get("/").text


def test_stopping_the_console_interrupts_a_replay_and_audits_how_far_it_got(redis_url, tmp_path):
    seed(redis_url, [Seed()] * 20)
    keys, r = RedisKeys(DEFAULT_NAMESPACE), redis_client(redis_url)
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        token = csrf_of(http.get("/dead-letters").text)
        run = http.post("/dead-letters/run", data={"csrf": token, "do": "requeue all", "rate": "4"})
        assert run.status_code == 303
        time.sleep(1.0)
    audit = [fields for _, fields in r.xrange(keys.audit)]
    assert [a[b"status"] for a in audit] == [b"started", b"interrupted"]
    counts = json.loads(audit[-1][b"counts"])
    moved = r.llen(keys.queue("default"))
    assert 0 < moved < 20 and counts["requeued"] == moved
    assert r.zcard(keys.dead_letters("default")) == 20 - moved


def test_the_operator_stops_a_replay_from_its_page(redis_url, tmp_path):
    seed(redis_url, [Seed()] * 20)
    keys, r = RedisKeys(DEFAULT_NAMESPACE), redis_client(redis_url)
    with console(tmp_path, redis_url) as server:
        http = signed_in(server.url)
        token = csrf_of(http.get("/dead-letters").text)
        run = http.post("/dead-letters/run", data={"csrf": token, "do": "requeue all", "rate": "4"})
        page = http.get(run.headers["location"]).text
        assert 'id="stop"' in page
        assert http.post(run.headers["location"] + "/stop", data={}).status_code == 403
        stop = http.post(run.headers["location"] + "/stop", data={"csrf": csrf_of(page)})
        assert stop.status_code == 303
        deadline = time.monotonic() + 10
        while 'id="status">interrupted<' not in (page := http.get(run.headers["location"]).text):
            assert time.monotonic() < deadline, page
            time.sleep(0.2)
        assert 'id="stop"' not in page
    moved = r.llen(keys.queue("default"))
    assert 0 < moved < 20 and r.zcard(keys.dead_letters("default")) == 20 - moved
    assert [f[b"status"] for _, f in r.xrange(keys.audit)] == [b"started", b"interrupted"]
