"""Organizations' API keys encrypted with ENCRYPTION_KEY: format, failures, and the CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from stack.fleet import ROOT
from worker.api_keys import KeyDecryptionError, decrypt_key, encrypt_key
from worker.errors import PermanentError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
PLAINTEXT = "sk-or-v1-" + "5e" * 32


def secrets_absent(text: str) -> bool:
    forms = [PLAINTEXT, PLAINTEXT[-16:], KEY.hex(), base64.b64encode(KEY).decode()]
    return not any(form in text for form in forms)


def test_round_trip_and_versioned_format():
    stored = encrypt_key(PLAINTEXT, KEY, "org-1")
    version, _, body = stored.partition(":")
    raw = base64.b64decode(body, validate=True)
    assert version == "v1"
    assert len(raw) == 12 + len(PLAINTEXT) + 16  # nonce | ciphertext | GCM tag
    assert PLAINTEXT.encode() not in raw
    assert decrypt_key(stored, KEY, "org-1") == PLAINTEXT
    # a random nonce each time: equal keys do not give equal stored values
    assert encrypt_key(PLAINTEXT, KEY, "org-1") != stored


def _flip(stored: str, index: int) -> str:
    raw = bytearray(base64.b64decode(stored.removeprefix("v1:")))
    raw[index] ^= 0x01
    return "v1:" + base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("wrong ENCRYPTION_KEY", lambda s: (s, OTHER_KEY, "org-1")),
        ("nonce altered", lambda s: (_flip(s, 0), KEY, "org-1")),
        ("ciphertext altered", lambda s: (_flip(s, 14), KEY, "org-1")),
        ("tag altered", lambda s: (_flip(s, -1), KEY, "org-1")),
        ("moved to another organization", lambda s: (s, KEY, "org-2")),
    ],
)
def test_undecryptable_key_is_a_clear_permanent_error(case, make):
    stored, key, org = make(encrypt_key(PLAINTEXT, KEY, "org-1"))
    with pytest.raises(KeyDecryptionError) as info:
        decrypt_key(stored, key, org)
    message = str(info.value)
    assert isinstance(info.value, PermanentError), "must dead-letter, not retry"
    assert "cannot be decrypted" in message and "ENCRYPTION_KEY" in message
    assert secrets_absent(message) and secrets_absent(repr(info.value))
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        ("sk-or-v1-plain-text-key", "unknown format"),
        ("v2:AAAA", "unknown format"),
        ("v1:not base64!", "not valid base64"),
        ("v1:" + base64.b64encode(b"x" * 20).decode(), "truncated"),
    ],
)
def test_malformed_stored_values(stored, says):
    with pytest.raises(KeyDecryptionError, match=says) as info:
        decrypt_key(stored, KEY, "org-1")
    assert "sk-or-v1-plain-text-key" not in str(info.value)


def run_cli(*args: str, stdin: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "ENCRYPTION_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "worker", "encrypt-key", *args],
        input=stdin,
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_encrypts_a_key_read_from_stdin():
    result = run_cli("--org-id", "org-9", stdin=PLAINTEXT + "\n", env={"ENCRYPTION_KEY": KEY.hex()})
    assert result.returncode == 0, result.stderr
    stored = result.stdout.strip()
    assert decrypt_key(stored, KEY, "org-9") == PLAINTEXT
    assert PLAINTEXT not in result.stdout + result.stderr


def test_cli_errors_are_one_line_and_never_echo_secrets():
    missing = run_cli("--org-id", "o", stdin=PLAINTEXT, env={})
    assert missing.returncode == 2
    assert missing.stderr.strip() == "configuration error: ENCRYPTION_KEY: required, not set"

    bad_key = "too-short-secret-value"
    bad = run_cli("--org-id", "o", stdin=PLAINTEXT, env={"ENCRYPTION_KEY": bad_key})
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("configuration error: ENCRYPTION_KEY: must be 32 random bytes")
    assert bad_key not in bad.stderr and PLAINTEXT not in bad.stderr

    empty = run_cli("--org-id", "o", stdin="\n", env={"ENCRYPTION_KEY": KEY.hex()})
    assert empty.returncode == 2 and "no API key on standard input" in empty.stderr

    # the plaintext is never accepted as an argument, where `ps` and shell history see it
    argv = run_cli("--org-id", "o", PLAINTEXT, stdin="", env={"ENCRYPTION_KEY": KEY.hex()})
    assert argv.returncode == 2 and argv.stdout == ""
    assert "standard input" in argv.stderr and PLAINTEXT not in argv.stderr
