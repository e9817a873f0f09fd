"""Hostile requests, sent with raw sockets, against the real alert receiver and a real
replica's metrics endpoint: each gets a clear status, none costs a thread per connection,
and both servers keep serving."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from stack.fleet import Replica, alert_receiver, replica_env
from stack.poll import wait_until
from stack.servers import free_port, group_pids
from worker.http_pool import PooledMixIn

TALLY: Counter = Counter()


def raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` as is and return everything the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status(answer: bytes) -> int:
    TALLY["hostile requests"] += 1
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def threads_of(*pids: int) -> int:
    return sum(
        len(os.listdir(f"/proc/{pid}/task")) for pid in pids if Path(f"/proc/{pid}").exists()
    )


def stall(port: int, n: int) -> list[socket.socket]:
    """``n`` connections that send half a request line and then nothing."""
    stalled = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /heal")
        stalled.append(s)
    TALLY["hostile requests"] += n
    return stalled


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("receiver")
    server = alert_receiver(tmp, "--max-records", "20", "--read-timeout", "1")
    server.start()
    yield server
    server.stop()


def alert(summary: str) -> bytes:
    return json.dumps(
        {
            "status": "firing",
            "alerts": [
                {
                    "labels": {"alertname": "A", "severity": "warning"},
                    "annotations": {"summary": summary},
                }
            ],
        }
    ).encode()


def test_the_receiver_refuses_bad_lengths_and_deep_json(receiver):
    port, body = receiver.port, alert("ok")
    cases = {
        "negative length": (post("/pager", body, "Content-Length: -1"), 400),
        "no length": (post("/pager", body), 411),
        "length not a number": (post("/pager", body, "Content-Length: 12abc"), 400),
        "chunked": (post("/pager", b"5\r\nhello\r\n0\r\n\r\n", "Transfer-Encoding: chunked"), 411),
        "over 1 MiB": (post("/pager", b"", f"Content-Length: {3 << 20}"), 413),
        "nested 200,000 deep": (post("/pager", b"[" * 200_000, "Content-Length: 200000"), 400),
        "not an object": (post("/pager", b"[1]", "Content-Length: 3"), 400),
        "bad page": (b"GET /alerts?limit=0 HTTP/1.0\r\n\r\n", 400),
        "header flood": (b"GET /alerts HTTP/1.0\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
        "request line of 70 kB": (b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n", 414),
    }
    for name, (request, expected) in cases.items():
        assert status(raw(port, request)) == expected, name
    assert "Traceback" not in receiver.log.read_text()
    with urllib.request.urlopen(f"{receiver.url}/alerts", timeout=5) as r:
        assert json.load(r) == []  # nothing refused was stored


def test_a_newline_in_an_alert_cannot_forge_a_log_line(receiver):
    forged = "fine\n2026-01-01 00:00:00,000 chat: RESOLVED Everything - all good\x1b[2J"
    body = alert(forged)
    assert status(raw(receiver.port, post("/chat", body, f"Content-Length: {len(body)}"))) == 200
    lines = receiver.log.read_text().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert any("fine\\n2026-01-01" in line and "\\x1b[2J" in line for line in lines)


def test_the_receiver_keeps_the_newest_alerts_and_pages_them(receiver):
    for i in range(45):
        urllib.request.urlopen(
            urllib.request.Request(f"{receiver.url}/pager", alert(f"alert {i}")), timeout=5
        ).close()
    with urllib.request.urlopen(f"{receiver.url}/alerts?limit=4", timeout=5) as r:
        first, total, link = json.load(r), int(r.headers["X-Total-Count"]), r.headers["Link"]
    assert 10 <= total <= 20  # --max-records 20: the newest half to all of them
    assert [a["summary"] for a in first] == [f"alert {i}" for i in range(45 - total, 49 - total)]
    assert link == '</alerts?limit=4&offset=4>; rel="next"'
    with urllib.request.urlopen(
        f"{receiver.url}/alerts?offset={total - 2}&limit=4", timeout=5
    ) as r:
        assert [a["summary"] for a in json.load(r)] == ["alert 43", "alert 44"]
        assert r.headers["Link"] is None


def test_stalled_connections_cost_no_thread_each_and_time_out(receiver):
    pid = receiver.proc.pid
    before = threads_of(pid)
    stalled = stall(receiver.port, 120)
    time.sleep(0.5)
    assert threads_of(pid) <= before + PooledMixIn.max_threads
    for s in stalled:
        s.close()
    wait_until(lambda: _answers(receiver.port), timeout=15)
    # --read-timeout 1: a silent connection is closed by the server, not held forever
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=8) as silent:
        assert silent.recv(100) == b""


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    from stack.servers import redis_server, running

    tmp = tmp_path_factory.mktemp("replica")
    with running(redis_server(tmp / "redis")) as redis:
        port = free_port()
        r = Replica(replica_env(redis.url, METRICS_PORT=port, JOB_CONCURRENCY=2), tmp / "w.log")
        r.start()
        try:
            wait_until(lambda: _answers(port), timeout=30, interval=0.1)
            yield r, port
        finally:
            r.stop()


def _answers(port: int) -> bool:
    try:
        return raw(port, b"GET /healthz HTTP/1.0\r\n\r\n", timeout=2).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def test_the_metrics_endpoint_answers_only_get_and_head(replica):
    _, port = replica
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/metrics", "/healthz"):
            answer = raw(port, f"{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
            assert status(answer) == 405 and b"Allow: GET, HEAD" in answer, (method, path)
    head = raw(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert status(head) == 200 and head.endswith(b"\r\n\r\n")  # headers only
    assert b"worker_jobs_total" in raw(port, b"GET /metrics HTTP/1.0\r\n\r\n")


def test_stalled_scrapers_cost_the_replica_no_thread_each(replica):
    proc, port = replica
    pids = group_pids(proc.proc.pid)  # the replica runs in a session (group) of its own
    before = threads_of(*pids)
    stalled = stall(port, 120)
    time.sleep(0.5)
    assert threads_of(*pids) <= before + PooledMixIn.max_threads
    for s in stalled:
        s.close()
    wait_until(lambda: _answers(port), timeout=15)
    assert "Traceback" not in proc.output


def test_zz_hostile_request_count(receiver):
    print(f"\nHTTP hardening: {TALLY['hostile requests']} hostile requests, 0 tracebacks")
    assert "Traceback" not in receiver.log.read_text()
