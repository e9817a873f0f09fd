"""Driving ``worker console`` over HTTP as a browser does: its forms' tokens, a login, and a
digest of everything in Redis (to prove a request changed nothing)."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis

from stack.console_server import console_server
from stack.servers import HttpServer, running

PASSWORD = "correct horse battery staple"
XSS = "<img src=x onerror=alert(1)>"

_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


@contextlib.contextmanager
def console(workdir: Path, redis_url: str, **env: str) -> Iterator[HttpServer]:
    with running(console_server(workdir, redis_url, PASSWORD, **env)) as server:
        yield server


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, f"no CSRF token in the page: {html[:500]}"
    return found[1]


def login(http: httpx.Client, password: str = PASSWORD) -> httpx.Response:
    """Open the login page and send its form with ``password``; the answer, unfollowed."""
    token = csrf_of(http.get("/login").text)
    return http.post("/login", data={"csrf": token, "password": password})


def signed_in(url: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    response = login(http)
    assert response.status_code == 303, response.text[:500]
    return http


def redis_digest(client: redis.Redis) -> dict[bytes, str]:
    """Every key with a digest of its content (not ``DUMP``: a read may rehash a hash and
    reorder its dump): equal digests, unchanged Redis."""
    read = {
        b"string": client.get,
        b"list": lambda k: client.lrange(k, 0, -1),
        b"hash": lambda k: sorted(client.hgetall(k).items()),
        b"set": lambda k: sorted(client.smembers(k)),
        b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        b"stream": lambda k: client.xrange(k),
    }
    return {
        key: hashlib.sha256(repr(read[client.type(key)](key)).encode()).hexdigest()
        for key in sorted(client.scan_iter(count=1000))
    }
