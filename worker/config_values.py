"""Parsers and checks of setting values: the encryption key, URLs, log levels.

Each raises ``ValueError`` with a message fit for a configuration error (it names what is
wrong, never a secret value); ``worker.config`` turns it into one line and exit code 2.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import urlsplit

#: What ENCRYPTION_KEY must be, said in every error about it.
ENCRYPTION_KEY_FORM = (
    "must be 32 random bytes, as base64 (e.g. `openssl rand -base64 32`) or 64 hex digits"
)


def decode_encryption_key(raw: str) -> bytes:
    """32 random bytes given as base64 or 64 hex digits (or, for keys made by other tools,
    32 characters that look random); obvious weak values are refused."""
    raw = raw.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", raw):
        key = bytes.fromhex(raw)
    else:
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32 and len(raw) == 32:
            key = raw.encode()
            if _looks_typed(raw):
                raise ValueError(f"{ENCRYPTION_KEY_FORM}; this one is a guessable text")
    if len(key) != 32:
        raise ValueError(f"{ENCRYPTION_KEY_FORM} (got {len(key)} bytes)")
    # 32 random bytes hold 32 distinct values but for a couple of repeats: fewer than 16
    # distinct bytes (all zeros, a repeated short pattern) is not a random key.
    if len(set(key)) < 16:
        raise ValueError(f"{ENCRYPTION_KEY_FORM}; this one repeats a few byte values")
    return key


def _looks_typed(text: str) -> bool:
    """32 characters a person typed rather than drew at random: few distinct characters,
    one character class only, or a long run like ``abcdefgh`` / ``12345678``."""
    classes = sum(
        any(test(c) for c in text) for test in (str.islower, str.isupper, str.isdigit)
    ) + any(not c.isalnum() for c in text)
    steps = [ord(b) - ord(a) for a, b in zip(text, text[1:], strict=False)]
    longest = run = 0
    for previous, step in zip([None, *steps], steps, strict=False):
        run = run + 1 if step in (1, -1, 0) and step == previous else 0
        longest = max(longest, run)
    return len(set(text)) < 16 or classes < 2 or longest >= 6


def strip_userinfo(url: str) -> str:
    """``url`` without its ``user:password@`` part (kept as ``***@`` to show it was there)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def check_url(value: str, schemes: set[str], what: str) -> str:
    """``value`` when its scheme is one of ``schemes`` and its port (if any) a number."""
    parts = urlsplit(value)
    if parts.scheme not in schemes:
        raise ValueError(f"must start with {what}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError("the port must be a number from 0 to 65535") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("a host is missing")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: Settings holding a URL, whose userinfo (``user:password@``) is a secret.
URL_FIELDS = (
    "redis_url",
    "broker_url",
    "supabase_url",
    "openrouter_base_url",
    "crm_endpoint_url",
    "message_endpoint_url",
)

#: Bounds of JOB_CONCURRENCY (see the configuration docs for why).
MAX_JOB_CONCURRENCY = 512
MAX_THREADS_PER_PROCESS = 256


def check_log_level(value: str) -> str:
    if value.strip().upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value.strip().upper()


def check_utf8(value: Any) -> Any:
    """``value``, unless it is text holding bytes that are not UTF-8: ``os.environ`` keeps
    them as lone surrogates, which would fail later, far from the variable."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not UTF-8 text") from None
    return value


def parse_latency(value: Any) -> tuple[float, float]:
    """``15-20`` or ``15`` (seconds) as ``(low, high)``."""
    if isinstance(value, str):
        low, _, high = value.partition("-")
        try:
            value = (float(low), float(high or low))
        except ValueError:
            raise ValueError("must be seconds, or a range like 15-20") from None
    low, high = value
    if not 0 <= low <= high:
        raise ValueError("range must satisfy 0 <= low <= high")
    return (float(low), float(high))


def describe_error(error: dict[str, Any], name: str, secrets, url_fields) -> str:
    """One line for a pydantic error about variable ``name``: what is wrong, and the value
    given unless it is a secret (a URL is shown without its ``user:password@``)."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required, not set"
    elif name not in secrets and "input" in error and isinstance(error["input"], str | int):
        shown = error["input"]
        if name.lower() in url_fields:
            shown = strip_userinfo(str(shown))
        message = f"{message} (got {_bounded(repr(shown))})"
    return f"configuration error: {name}: {_bounded(message, 300)}"


def _bounded(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut to ``limit`` characters: an error names the problem; a
    pasted 10 kB value would bury it."""
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit - 3] + "..."
