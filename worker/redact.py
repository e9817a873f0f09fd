"""Removes secrets from text before it leaves the process (logs, Sentry events, error
reasons), and says which settings are secret: those typed ``SecretStr``, and URLs marked
``SecretUrl`` (their ``user:password@``), so a new secret setting needs no list updated.

Two nets: the exact values this process knows to be secret (its configured keys, and
every organization key it has decrypted), and patterns of credentials it cannot know in
advance (OpenRouter / OpenAI style keys, bearer tokens, JWTs such as Supabase keys,
Supabase ``sb_secret_`` keys, the ``user:password`` of any URL). Secret values shorter
than 8 characters are not registered: redacting every "abc" in an event would destroy it
and protect nothing (a URL's short password is still found by its place in the URL).
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from typing import Any, get_args
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

FILTERED = "[Filtered]"

PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"sk-or-[A-Za-z0-9_-]{8,}"),  # OpenRouter keys: sk-or-v1-<64 hex>
    re.compile(r"sk-[A-Za-z0-9_-]{20,}"),  # OpenAI-style provider keys
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),  # JWTs
    re.compile(r"sb_secret_[A-Za-z0-9_-]{8,}"),
    # The userinfo of any URL (redis://:password@host, https://user:password@host): a
    # password may be short and anything, so it is found by its place, not its look.
    re.compile(r"(?<=://)[^/\s@'\"]*:[^/\s@'\"]*(?=@)"),
)

_MIN_SECRET_LENGTH = 8


@dataclass(frozen=True)
class SecretUrl:
    """``Annotated`` marker of a setting holding a URL whose ``user:password@`` is secret:
    left out of a repr and of an error, its password scrubbed from logs and events. With
    ``whole=True`` an error never shows the URL at all (a Redis or AMQP URL may also carry
    a password in its query)."""

    whole: bool = False


def _marks(model: type[BaseModel], name: str) -> list[Any]:
    """Every type and ``Annotated`` marker inside a field's type (``X | None`` included)."""
    field = model.model_fields[name]
    found, todo = list(field.metadata), [field.annotation]
    while todo:
        annotation = todo.pop()
        found += [annotation, *getattr(annotation, "__metadata__", ())]
        todo += get_args(annotation)
    return found


@functools.cache
def secret_settings(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` typed ``SecretStr`` (or ``SecretStr | None``)."""
    return frozenset(name for name in model.model_fields if SecretStr in _marks(model, name))


@functools.cache
def secret_urls(model: type[BaseModel]) -> dict[str, SecretUrl]:
    """The fields of ``model`` marked ``SecretUrl``, with their marker."""
    return {
        name: mark
        for name in model.model_fields
        for mark in _marks(model, name)
        if isinstance(mark, SecretUrl)
    }


def secret_values(settings: BaseModel) -> list[str]:
    """The secrets ``settings`` holds, as text may carry them: every ``SecretStr`` value,
    and the password of every ``SecretUrl`` (as written, and decoded: an AUTH error may
    show it alone)."""
    values = []
    for name in secret_settings(type(settings)):
        value = getattr(settings, name)
        values += [value.get_secret_value()] if value is not None else []
    for name in secret_urls(type(settings)):
        password = urlsplit(getattr(settings, name) or "").password
        values += [password, unquote(password)] if password else []
    return values


def strip_userinfo(url: str) -> str:
    """``url`` without its ``user:password@`` part (kept as ``***@`` to show it was there)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


class Redactor:
    """Replaces known secret values and credential patterns in text with ``[Filtered]``."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        """Remember secret values; later ``redact`` calls remove them wherever they occur."""
        new = {v for v in values if v and len(v) >= _MIN_SECRET_LENGTH}
        if new - self._secrets:
            with self._lock:
                self._secrets = self._secrets | new

    def redact(self, text: str) -> str:
        # Longest first, so a secret containing another is removed whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, FILTERED)
        for pattern in PATTERNS:
            text = pattern.sub(FILTERED, text)
        return text

    def clear(self) -> None:
        with self._lock:
            self._secrets = frozenset()


#: The process-wide redactor: configured secrets are added at start, organization keys
#: as they are decrypted.
REDACTOR = Redactor()
