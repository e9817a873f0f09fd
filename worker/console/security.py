"""The console's defences: login lockout per client address, server-side sessions with a
CSRF token each, the security headers and an access log that never carries a body, a
query string, a cookie or a password.

Sessions live in the console's memory: a restart logs everyone out, and logging out ends
the session on the server, not only in the browser."""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.logs import escape

log = logging.getLogger("worker.console.access")

SESSION_COOKIE = "console_session"
LOGIN_COOKIE = "console_login"

#: No inline script, no plugin, no framing, forms post only to the console.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class LoginGuard:
    """Counts failed logins per client address: ``attempts`` failures within
    ``lockout_seconds`` lock the address out for ``lockout_seconds``, whatever password it
    sends then. A success clears the address's count."""

    def __init__(
        self, attempts: int, lockout_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.attempts, self.lockout_seconds, self.clock = attempts, lockout_seconds, clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked_for(self, address: str) -> float:
        """Seconds the address stays locked out (0: it may try)."""
        with self._lock:
            left = self._locked_until.get(address, 0.0) - self.clock()
            if left <= 0:
                self._locked_until.pop(address, None)
            return max(left, 0.0)

    def failed(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            recent = [t for t in self._failures.get(address, []) if t > now - self.lockout_seconds]
            recent.append(now)
            if len(recent) >= self.attempts:
                self._locked_until[address] = now + self.lockout_seconds
                recent = []
                log.warning(
                    "login: %s locked out after %d failures", escape(address), self.attempts
                )
            self._failures[address] = recent
            if len(self._failures) > 10_000:  # a flood of addresses: forget the quiet ones
                self._failures = {a: f for a, f in self._failures.items() if f}

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


def password_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Session:
    csrf: str
    expires: float
    address: str


class Sessions:
    """Random session ids (256 bits) mapped to their CSRF token and expiry."""

    def __init__(self, lifetime: float, clock: Callable[[], float] = time.time) -> None:
        self.lifetime, self.clock = lifetime, clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, address: str) -> tuple[str, Session]:
        with self._lock:
            now = self.clock()
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            session_id = secrets.token_urlsafe(32)
            session = Session(secrets.token_urlsafe(32), now + self.lifetime, address)
            self._sessions[session_id] = session
            return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.expires <= self.clock():
                self._sessions.pop(session_id, None)
                return None
            return session

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)


def token_matches(given: str | None, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


class LoginTokens:
    """The login form's CSRF defence, before any session exists: a random nonce in a
    short-lived cookie, and in the form its HMAC under a key of this process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def new(self) -> tuple[str, str]:
        nonce = secrets.token_urlsafe(24)
        return nonce, self.token(nonce)

    def token(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), "sha256").hexdigest()

    def valid(self, nonce: str | None, token: str | None) -> bool:
        return bool(nonce) and token_matches(token, self.token(nonce or ""))


class Hardened:
    """ASGI middleware: the security headers on every response, and one access-log line
    per request: method, path (no query string), status, milliseconds, client address."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), [0]

        async def send_hardened(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                names = {name for name, _ in HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + HEADERS}
            await send(message)

        try:
            await self.app(scope, receive, send_hardened)
        finally:
            client = (scope.get("client") or ("-", 0))[0]
            log.info(
                "%s %s %d %.0fms %s",
                scope["method"],
                escape(scope["path"][:200]),
                status[0],
                (time.monotonic() - started) * 1000,
                escape(client),
            )
