"""``worker dead-letters`` as an operator runs it, on a real redis-server: filters against a
brute-force filter, bad input, escaping, dry runs, confirmation, payloads, the audit trail."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from datetime import datetime

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stack.dead_letter_seed import Seed, seed_dead_letters
from stack.fleet import python_env
from stack.poll import wait_until
from stack.servers import free_port, redis_server, running
from worker import dead_letters_cli
from worker.dead_letters import DeadLetters
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()
NS = KEYS.namespace
ACTORS = {"default": ["agent.run"], "critical": ["crm.sync", "message.send"], "fast": ["x.y"]}
REASONS = [
    "5 of 5 attempts failed, last: TransientError: HTTP 500",
    "Permanent error: HTTP 401 from the LLM API",
    "invalid message: options.retries must be an integer >= 0",
    "expired: older than its MAX_AGE",
]
API_KEY = "sk-or-v1-" + "0123456789abcdef" * 4


def run(redis_url: str, *args: str, stdin: str | None = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", "dead-letters", *args],
        env=python_env(REDIS_URL=redis_url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def mixed_seeds() -> list[Seed]:
    """Dead letters at ages of whole hours plus a half, so a filter in whole hours is
    never within minutes of one of them."""
    seeds = []
    for i in range(150):
        queue = ("default", "critical", "fast")[i % 3]
        seeds.append(
            Seed(
                queue=queue,
                actor=ACTORS[queue][i % len(ACTORS[queue])],
                org_id=f"org-{i % 5}",
                reason=REASONS[i % len(REASONS)],
                age=((i * 7) % 200 + 0.5) * 3600,
            )
        )
    return seeds


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A redis-server with 150 dead letters that the tests of this module only read."""
    with running(redis_server(tmp_path_factory.mktemp("redis"))) as server:
        client = redis.Redis.from_url(server.url)
        seed_dead_letters(client, NS, mixed_seeds())
        yield server.url, client
        client.close()


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


# --- the filters against a brute-force filter ----------------------------------------------


@contextlib.contextmanager
def environment(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def in_process(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = dead_letters_cli.main(argv)
    return code, out.getvalue()


def brute_force(rows: list[dict], now: float, **f) -> list[str]:
    def age(row: dict) -> float:
        return now - datetime.fromisoformat(row["failed_at"].replace("Z", "+00:00")).timestamp()

    return [
        r["message_id"]
        for r in rows
        if (f["queue"] is None or r["queue"] == f["queue"])
        and (f["actor"] is None or r["actor"] == f["actor"])
        and (f["org"] is None or r["org_id"] == f["org"])
        and (f["error"] is None or f["error"].lower() in r["reason"].lower())
        and (f["older"] is None or age(r) > f["older"] * 3600)
        and (f["newer"] is None or age(r) < f["newer"] * 3600)
    ]


filters = st.fixed_dictionaries(
    {
        "queue": st.none() | st.sampled_from(["default", "critical", "fast"]),
        "actor": st.none() | st.sampled_from(["agent.run", "crm.sync", "message.send", "x.y"]),
        "org": st.none() | st.sampled_from([f"org-{i}" for i in range(6)]),
        "error": st.none()
        | st.sampled_from(REASONS).flatmap(
            lambda r: st.tuples(st.integers(0, len(r) - 1), st.integers(1, 12), st.booleans()).map(
                lambda t: r[t[0] : t[0] + t[1]].swapcase() if t[2] else r[t[0] : t[0] + t[1]]
            )
        )
        | st.text("abcxyz ", min_size=1, max_size=4),
        "older": st.none() | st.integers(0, 210),
        "newer": st.none() | st.integers(0, 210),
    }
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=filters, unit=st.randoms(use_true_random=False))
def test_filters_agree_with_a_brute_force_filter_of_list_json(shared, everything, f, unit):
    url, _ = shared
    argv = ["list", "--json", "--limit", "0"]
    for name in ("queue", "actor", "org", "error"):
        if f[name] is not None:
            argv += [f"--{name}", f[name]]
    for name, option in (("older", "--older-than"), ("newer", "--newer-than")):
        if f[name] is not None:
            argv += [option, unit.choice([f"{f[name]}h", f"{f[name] * 60}m", f"{f[name]}h"])]
    with environment(REDIS_URL=url):
        code, out = in_process(argv)
    assert code == 0
    rows, now = everything
    got = [json.loads(line)["message_id"] for line in out.splitlines()]
    assert got == brute_force(rows, now, **f)


@pytest.fixture(scope="module")
def everything(shared):
    """``list --json --limit 0`` of the real command, and when it ran."""
    url, _ = shared
    now = datetime.now().timestamp()
    result = run(url, "list", "--json", "--limit", "0")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 150
    failed = [r["failed_at"] for r in rows]
    assert failed == sorted(failed, reverse=True)  # newest first
    assert set(rows[0]) == {
        "message_id",
        "queue",
        "actor",
        "org_id",
        "reason",
        "attempts",
        "failed_at",
        "age_seconds",
    }
    return rows, now


def test_list_prints_a_table_and_the_count_line(shared):
    url, _ = shared
    result = run(url, "list", "--queue", "default", "--limit", "3")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 5
    assert lines[0].split()[:3] == ["FAILED", "AGE", "QUEUE"]
    assert lines[-1] == "3 of 50 matching; 150 dead letters in all"


# --- bad input: one line on stderr, no traceback ------------------------------------------

BAD = [
    (["list", "--older-than", "3x"], 2, "bad duration"),
    (["list", "--newer-than", "15"], 2, "bad duration"),
    (["list", "--queue", "nope"], 2, "unknown queue"),
    (["requeue", "--all", "some-id", "--yes"], 2, "--all and ids"),
    (["purge", "--yes"], 2, "give ids, filters or --all"),
    (["requeue", "--queue", "default", "--rate", "0", "--yes"], 2, "bad rate"),
    (["requeue", "--queue", "default"], 2, "no terminal"),
    (["purge", "--queue", "default"], 2, "no terminal"),
    (["frobnicate"], 2, "invalid choice"),
    (["show", "no-such-id"], 1, "not a dead letter"),
    (["requeue", "no-such-id", "--yes"], 1, None),
    (["list", "no-such-id"], 1, "already gone"),
]


@pytest.mark.parametrize(("argv", "code", "says"), BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_is_one_line_and_an_exit_code(shared, argv, code, says):
    url, client = shared
    result = run(url, *argv)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if says is None:  # an id that is not a dead letter: "already gone" in the summary
        assert "already gone  no-such-id" in result.stdout
        assert result.stdout.splitlines()[-1].endswith("already gone 1, failed 0")
    else:
        assert len(result.stderr.splitlines()) == 1 and says in result.stderr
    assert DeadLetters(client, namespace=NS).total() == 150  # nothing moved


def test_unreachable_redis_is_one_line_and_exit_1():
    result = run(f"redis://:hunter2hunter2@127.0.0.1:{free_port()}/0", "list")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and "Redis" in result.stderr
    assert "hunter2" not in result.stderr


def test_bad_configuration_is_exit_2(shared):
    result = run("not-a-url", "list")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1


# --- escaping, payloads ----------------------------------------------------------------------


def test_control_characters_cannot_forge_lines(client, redis_url):
    evil = "boom\n2026-01-01T00:00:00Z  1m  default  forged\r\x1b[2K\x1b[31mred"
    [message_id] = seed_dead_letters(client, NS, [Seed(reason=evil, org_id="o\x1b]0;x\x07")])
    for args in (["list"], ["list", "--json"], ["show", message_id], ["export"], ["audit"]):
        result = run(redis_url, *args)
        assert result.returncode == 0, result.stderr
        assert not any(c in result.stdout for c in "\x1b\r\x07"), args
    table = run(redis_url, "list").stdout.splitlines()
    assert len(table) == 3 and "boom\\n2026" in table[1]
    [line] = run(redis_url, "list", "--json").stdout.splitlines()
    assert json.loads(line)["reason"] == evil  # escaped, not lost


def test_payload_only_when_asked_and_redacted(client, redis_url):
    [message_id] = seed_dead_letters(client, NS, [Seed(prompt=f"use key {API_KEY} please")])
    for args in (["show", message_id], ["export"]):
        plain = run(redis_url, *args)
        assert "use key" not in plain.stdout and API_KEY not in plain.stdout
        shown = run(redis_url, *args, "--payload")
        assert "use key [Filtered] please" in shown.stdout and API_KEY not in shown.stdout
    details = json.loads(run(redis_url, "show", message_id).stdout)
    assert details["attempts"] == 5 and details["job_log"]["reason"].startswith("5 of 5")


# --- dry runs, confirmation, the audit trail -------------------------------------------------


def test_dry_run_moves_nothing_and_audits_nothing(client, redis_url):
    seed_dead_letters(client, NS, [Seed()] * 4)
    result = run(redis_url, "requeue", "--all", "--dry-run")
    assert result.returncode == 0
    assert sum(x.startswith("would requeue") for x in result.stdout.splitlines()) == 4
    assert result.stdout.splitlines()[-1] == (
        "dry run: 4 of 4 dead letters would requeue; none moved"
    )
    assert DeadLetters(client, namespace=NS).total() == 4
    assert not client.exists(KEYS.audit, KEYS.dead_letters_counted("requeued"))


def test_a_no_on_the_terminal_moves_nothing(client, redis_url, monkeypatch, capsys):
    seed_dead_letters(client, NS, [Seed()] * 2)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert dead_letters_cli.main(["purge", "--all"]) == 2
    assert "not confirmed" in capsys.readouterr().err
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    assert dead_letters_cli.main(["purge", "--all"]) == 0
    assert DeadLetters(client, namespace=NS).total() == 0


def test_requeue_and_purge_are_audited(client, redis_url):
    ids = seed_dead_letters(client, NS, [Seed()] * 3 + [Seed(reason="Bad Gateway")] * 2)
    asked = [*ids[:3], "no-such-id"]
    requeue = run(redis_url, "requeue", *asked, "--yes", "--by", "alice")
    assert requeue.returncode == 1  # one id asked for was missing
    assert requeue.stdout.splitlines()[-1] == "matched 4, requeued 3, already gone 1, failed 0"
    purge = run(redis_url, "purge", "--error", "bad gateway", "--yes")
    assert purge.returncode == 0
    entries = [json.loads(x) for x in run(redis_url, "audit", "--json").stdout.splitlines()]
    assert [(e["action"], e["status"]) for e in entries] == [
        ("purge", "done"),
        ("purge", "started"),
        ("requeue", "done"),
        ("requeue", "started"),
    ]
    purged, _, requeued, _ = entries
    assert requeued["by"] == "alice" and purged["by"]  # the OS user without --by
    assert json.loads(requeued["selection"]) == {"ids": asked}
    assert json.loads(requeued["counts"]) == {
        "matched": 4,
        "requeued": 3,
        "already_gone": 1,
        "failed": 0,
    }
    assert sorted(json.loads(requeued["ids"])) == sorted(ids[:3])
    assert json.loads(purged["selection"]) == {"error": "bad gateway"}
    assert json.loads(purged["counts"])["purged"] == 2
    assert datetime.fromisoformat(purged["at"].replace("Z", "+00:00"))
    table = run(redis_url, "audit").stdout.splitlines()
    assert len(table) == 4 and "by alice" in table[2]


def test_ctrl_c_stops_a_requeue_and_the_audit_says_how_far_it_got(client, redis_url):
    seed_dead_letters(client, NS, [Seed()] * 100)
    argv = [sys.executable, "-m", "worker", "dead-letters", "requeue", "--all", "--yes"]
    proc = subprocess.Popen(
        [*argv, "--rate", "20"],
        env=python_env(REDIS_URL=redis_url),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: int(client.hget(KEYS.dead_letters_counted("requeued"), "default") or 0) >= 10,
            timeout=30,
        )
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    moved = int(client.hget(KEYS.dead_letters_counted("requeued"), "default"))
    assert proc.returncode == 130 and 10 <= moved < 100
    assert out.splitlines()[-1] == (
        f"interrupted: matched 100, requeued {moved}, already gone 0, failed 0"
    )
    last = json.loads(run(redis_url, "audit", "--json", "--limit", "1").stdout)
    assert last["status"] == "interrupted" and json.loads(last["counts"])["requeued"] == moved
    assert DeadLetters(client, namespace=NS).total() == 100 - moved
