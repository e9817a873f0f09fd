"""Organizations' LLM API keys, stored encrypted with ``ENCRYPTION_KEY`` (AES-256-GCM).

Stored form: ``v1:`` + base64( 12-byte random nonce | ciphertext | 16-byte GCM tag ).
The associated data binds a ciphertext to its organization, so a stored key copied to
another organization's row does not decrypt there. The ``v1`` prefix names the
algorithm and layout, so a later format (or key rotation with a key id) can be read
beside this one.

``worker encrypt-key --org-id ORG`` encrypts a key read from standard input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import getpass
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from worker.config import ConfigError, decode_encryption_key
from worker.errors import PermanentError

VERSION = "v1"
NONCE_BYTES = 12
TAG_BYTES = 16


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
        raise ConfigError("configuration error: ENCRYPTION_KEY: required, not set")
    try:
        key = decode_encryption_key(raw_key)
    except ValueError as exc:
        raise ConfigError(f"configuration error: ENCRYPTION_KEY: {exc}") from None
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
