"""Organizations' LLM API keys, stored encrypted with ``ENCRYPTION_KEY`` (AES-256-GCM).

Stored form: ``v1:`` + base64( 12-byte random nonce | ciphertext | 16-byte GCM tag ).
The associated data binds a ciphertext to its organization, so a stored key copied to
another organization's row does not decrypt there. The ``v1`` prefix names the
algorithm and layout, so a later format (or key rotation with a key id) can be read
beside this one.

``decode_encryption_key`` is the one check of ENCRYPTION_KEY's form (the settings use it).
``worker encrypt-key --org-id ORG`` encrypts a key read from standard input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import os
import re
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.errors import PermanentError

VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16

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


class KeyDecryptionError(PermanentError):
    """A stored key that cannot be decrypted; retrying cannot help, so it is not retried.

    The message names neither the encryption key nor any part of the plaintext.
    """


def _associated_data(org_id: str) -> bytes:
    return f"worker-monitoring/llm-api-key/{VERSION}/org:{org_id}".encode()


def _aead(key: bytes) -> AESGCM:
    if len(key) != 32:
        raise ValueError("ENCRYPTION_KEY must be 32 bytes (AES-256)")
    return AESGCM(key)


def encrypt_key(plaintext: str, key: bytes, org_id: str) -> str:
    """The stored form of an organization's API key."""
    if not plaintext:
        raise ValueError("the API key to encrypt is empty")
    nonce = os.urandom(NONCE_BYTES)
    sealed = _aead(key).encrypt(nonce, plaintext.encode(), _associated_data(org_id))
    return f"{VERSION}:{base64.b64encode(nonce + sealed).decode('ascii')}"


def decrypt_key(stored: str, key: bytes, org_id: str) -> str:
    """The API key of ``org_id`` from its stored form, or ``KeyDecryptionError``."""
    version, sep, body = stored.strip().partition(":")
    if not sep or version != VERSION:
        raise KeyDecryptionError(
            f"stored LLM API key has an unknown format (expected '{VERSION}:' + base64)"
        )
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise KeyDecryptionError("stored LLM API key is not valid base64") from None
    if len(raw) <= NONCE_BYTES + TAG_BYTES:
        raise KeyDecryptionError("stored LLM API key is truncated")
    try:
        plaintext = _aead(key).decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _associated_data(org_id)
        )
    except InvalidTag:
        raise KeyDecryptionError(
            "stored LLM API key cannot be decrypted: ENCRYPTION_KEY is not the key it was "
            "encrypted with, the stored value was altered, or it was encrypted for another "
            "organization"
        ) from None
    return plaintext.decode()


def main(argv: list[str]) -> int:
    """``worker encrypt-key``: print the stored form of a key read from standard input."""
    parser = argparse.ArgumentParser(
        prog="worker encrypt-key",
        description=(
            "Encrypt an organization's LLM API key with ENCRYPTION_KEY (from the environment) "
            "and print the value to store in organizations.llm_api_key_encrypted (Supabase) "
            "or the llm_api_key_encrypted field of the Redis hash <JOB_QUEUE_NAME>:org:<org>. "
            "The key is read from standard input (never from the command line, where other "
            "users and the shell history would see it); on a terminal it is not echoed."
        ),
    )
    parser.add_argument("--org-id", required=True, help="the organization the key belongs to")
    args, extra = parser.parse_known_args(argv)
    if extra:  # likely the key itself: say why it is refused without repeating it
        print(
            "error: worker encrypt-key takes the API key on standard input, not as an argument",
            file=sys.stderr,
        )
        return 2
    raw_key = os.environ.get("ENCRYPTION_KEY")
    if not raw_key:
        print("configuration error: ENCRYPTION_KEY: required, not set", file=sys.stderr)
        return 2
    try:
        key = decode_encryption_key(raw_key)
    except ValueError as exc:
        print(f"configuration error: ENCRYPTION_KEY: {exc}", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        plaintext = getpass.getpass("API key (not echoed): ")
    else:
        plaintext = sys.stdin.read()
    plaintext = plaintext.strip()
    if not plaintext:
        print("error: no API key on standard input", file=sys.stderr)
        return 2
    print(encrypt_key(plaintext, key, args.org_id))
    return 0
