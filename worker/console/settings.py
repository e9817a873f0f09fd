"""The console's settings: every setting of the worker (``REDIS_URL``, ``JOB_QUEUE_NAME``,
...) and the ``CONSOLE_*`` ones. ``CONSOLE_PASSWORD`` has no default: without it
``load_settings`` raises ``ConfigError`` (one line, exit 2), and being a ``SecretStr``
it is never echoed nor logged."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from worker.config import Settings


class ConsoleSettings(Settings):
    console_host: str = Field(
        "127.0.0.1",
        description="Bind address of the console; `0.0.0.0` only behind a private network.",
    )
    console_port: int = Field(9292, ge=0, le=65535, description="Port of the console.")
    console_password: SecretStr = Field(
        description="The console's login password (required, no default; secret).",
    )
    console_read_only: bool = Field(
        False, description="`1`: the actions are hidden and every POST but login is refused."
    )
    console_allow_payloads: bool = Field(
        False,
        description="`1`: the job page can show a message's arguments (secrets redacted), "
        "behind a click.",
    )
    console_session_minutes: float = Field(
        60, gt=0, le=7 * 24 * 60, description="Lifetime of a login session."
    )
    console_login_attempts: int = Field(
        5, ge=1, le=1000, description="Failed logins from one address before its lockout."
    )
    console_lockout_seconds: float = Field(
        300, gt=0, description="How long an address is locked out after too many failures."
    )
    console_secure_cookie: bool = Field(
        False, description="`1`: the session cookie is `Secure` (set it behind HTTPS)."
    )
    console_replay_rate: float = Field(
        5.0, gt=0, le=10_000, description="Default requeue rate of the console, jobs a second."
    )

    @field_validator("console_password")
    @classmethod
    def _password(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 8:
            raise ValueError("must be at least 8 characters")
        return value
