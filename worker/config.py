"""Configuration from the environment, validated once at start.

Every variable is documented in the README's table. A wrong value stops the process with
exit code 2 and one line naming the variable (``ConfigError``); secret values are never
echoed back.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Named rate-limit windows: name -> (max admissions, window seconds).
Limits = dict[str, tuple[int, int]]

DEFAULT_RATE_LIMITS = "minute=100/60,hour=5000/3600,day=100000/86400"

_LIMIT_ITEM = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*=\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_limits(text: str) -> Limits:
    """Parse ``minute=100/60,hour=5000/3600`` into ``{"minute": (100, 60), ...}``."""
    limits: Limits = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _LIMIT_ITEM.match(item)
        if match is None:
            raise ValueError(f"{item!r} is not name=count/seconds")
        name, count, seconds = match.group(1), int(match.group(2)), int(match.group(3))
        if count < 1 or seconds < 1:
            raise ValueError(f"{item!r}: count and seconds must be positive")
        if name in limits:
            raise ValueError(f"window {name!r} is given twice")
        limits[name] = (count, seconds)
    if not limits:
        raise ValueError("at least one window is needed")
    return limits


def decode_encryption_key(raw: str) -> bytes:
    """32 bytes given as 64 hex digits, as base64, or as 32 plain characters."""
    raw = raw.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", raw):
        return bytes.fromhex(raw)
    if len(raw) == 32:
        return raw.encode()
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) == 32:
        return key
    raise ValueError(
        "must be exactly 32 bytes (64 hex digits, base64 of 32 bytes, or 32 characters)"
    )


class ConfigError(SystemExit):
    """A user's configuration mistake: one line on stderr, exit code 2, no traceback."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(2)


#: Never echoed in an error: secrets, and URLs that may carry a password.
_SECRETS = {
    "SUPABASE_SERVICE_ROLE_KEY",
    "ENCRYPTION_KEY",
    "OPENROUTER_API_KEY",
    "SENTRY_DSN",
    "REDIS_URL",
    "BROKER_URL",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", populate_by_name=True)

    # Broker and Redis
    redis_url: str = Field(validation_alias="REDIS_URL")
    broker_url: str | None = Field(None, validation_alias="BROKER_URL")
    job_queue_name: str = Field("agent-jobs", validation_alias="JOB_QUEUE_NAME")
    job_concurrency: int = Field(25, gt=0, validation_alias="JOB_CONCURRENCY")
    worker_processes: int = Field(1, gt=0, le=64, validation_alias="WORKER_PROCESSES")
    shutdown_grace_seconds: float = Field(60.0, ge=0, validation_alias="SHUTDOWN_GRACE_SECONDS")
    job_lock_timeout_seconds: float = Field(30.0, gt=1, validation_alias="JOB_LOCK_TIMEOUT_SECONDS")
    retry_max_delay_seconds: float = Field(300.0, ge=2, validation_alias="RETRY_MAX_DELAY_SECONDS")
    retry_jitter: float = Field(0.2, ge=0, le=0.5, validation_alias="RETRY_JITTER")
    retry_time_scale: float = Field(1.0, gt=0, le=1, validation_alias="RETRY_TIME_SCALE")

    # Integrations (all optional)
    supabase_url: str | None = Field(None, validation_alias="SUPABASE_URL")
    supabase_service_role_key: SecretStr | None = Field(
        None, validation_alias="SUPABASE_SERVICE_ROLE_KEY"
    )
    encryption_key: SecretStr | None = Field(None, validation_alias="ENCRYPTION_KEY")
    sentry_dsn: SecretStr | None = Field(None, validation_alias="SENTRY_DSN")
    sentry_traces_sample_rate: float = Field(
        1.0, ge=0, le=1, validation_alias="SENTRY_TRACES_SAMPLE_RATE"
    )
    sentry_profiles_sample_rate: float = Field(
        0.1, ge=0, le=1, validation_alias="SENTRY_PROFILES_SAMPLE_RATE"
    )
    environment: str = Field(
        "development", validation_alias=AliasChoices("ENVIRONMENT", "NODE_ENV")
    )
    openrouter_api_key: SecretStr | None = Field(None, validation_alias="OPENROUTER_API_KEY")
    openrouter_base_url: str = Field(
        "https://openrouter.ai/api/v1", validation_alias="OPENROUTER_BASE_URL"
    )
    openrouter_model: str = Field("openai/gpt-4o-mini", validation_alias="OPENROUTER_MODEL")
    openrouter_timeout_seconds: float = Field(
        60.0, gt=0, validation_alias="OPENROUTER_TIMEOUT_SECONDS"
    )
    crm_endpoint_url: str | None = Field(None, validation_alias="CRM_ENDPOINT_URL")
    message_endpoint_url: str | None = Field(None, validation_alias="MESSAGE_ENDPOINT_URL")

    # Simulated backends, used when no key / endpoint is configured
    sim_latency_seconds: Annotated[tuple[float, float], NoDecode] = Field(
        (15.0, 20.0), validation_alias="SIM_LATENCY_SECONDS"
    )
    sim_failure_ratio: float = Field(0.0, ge=0, le=1, validation_alias="SIM_FAILURE_RATIO")
    sim_429_ratio: float = Field(0.0, ge=0, le=1, validation_alias="SIM_429_RATIO")

    # Observability
    metrics_host: str = Field("0.0.0.0", validation_alias="METRICS_HOST")
    metrics_port: int = Field(9191, ge=0, le=65535, validation_alias="METRICS_PORT")
    redis_health_interval_seconds: float = Field(
        5.0, gt=0, validation_alias="REDIS_HEALTH_INTERVAL_SECONDS"
    )
    metrics_dir: str | None = Field(None, validation_alias="METRICS_DIR")
    metrics_queue_sample_seconds: float = Field(
        10.0, ge=0, validation_alias="METRICS_QUEUE_SAMPLE_SECONDS"
    )
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")

    # Rate limits per organization
    rate_limits: Annotated[Limits, NoDecode] = Field(
        default_factory=lambda: parse_limits(DEFAULT_RATE_LIMITS), validation_alias="RATE_LIMITS"
    )
    rate_limit_overrides: Annotated[dict[str, Limits], NoDecode] = Field(
        default_factory=dict, validation_alias="RATE_LIMIT_OVERRIDES"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in {"redis", "rediss", "amqp", "amqps"}:
            raise ValueError("must start with redis://, rediss://, amqp:// or amqps://")
        return value or None

    @field_validator("job_queue_name")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9._-]*", value):
            raise ValueError("must be letters, digits, '.', '_' or '-', starting with a letter")
        return value

    @field_validator(
        "supabase_url", "openrouter_base_url", "crm_endpoint_url", "message_endpoint_url"
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in {"http", "https"}:
            raise ValueError("must be an http:// or https:// URL")
        return value or None

    @field_validator("encryption_key")
    @classmethod
    def _encryption_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_encryption_key(value.get_secret_value())
        return value

    @field_validator("sim_latency_seconds", mode="before")
    @classmethod
    def _latency(cls, value: Any) -> tuple[float, float]:
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

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _limits(cls, value: Any) -> Limits:
        return parse_limits(value) if isinstance(value, str) else value

    @field_validator("rate_limit_overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> dict[str, Limits]:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ValueError('must be JSON like {"org-1": "minute=10/60"}') from None
            if not isinstance(value, dict):
                raise ValueError('must be a JSON object like {"org-1": "minute=10/60"}')
        return {
            str(org): parse_limits(lim) if isinstance(lim, str) else lim
            for org, lim in value.items()
        }

    @property
    def encryption_key_bytes(self) -> bytes | None:
        if self.encryption_key is None:
            return None
        return decode_encryption_key(self.encryption_key.get_secret_value())

    @property
    def supabase_enabled(self) -> bool:
        return bool(self.supabase_url)

    def check(self) -> Settings:
        if self.supabase_url and self.supabase_service_role_key is None:
            raise ConfigError(
                "configuration error: SUPABASE_SERVICE_ROLE_KEY: required when SUPABASE_URL is set"
            )
        if self.job_concurrency % self.worker_processes:
            raise ConfigError(
                "configuration error: JOB_CONCURRENCY: must be a multiple of WORKER_PROCESSES "
                f"({self.job_concurrency} slots over {self.worker_processes} processes)"
            )
        return self

    @property
    def threads_per_process(self) -> int:
        return self.job_concurrency // self.worker_processes


def _describe(error: dict[str, Any]) -> str:
    field = Settings.model_fields.get(str(error["loc"][0])) if error["loc"] else None
    alias = field.validation_alias if field else None
    if isinstance(alias, AliasChoices):
        alias = alias.choices[0]
    name = str(alias or (error["loc"][0] if error["loc"] else "configuration"))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required, not set"
    elif name not in _SECRETS and "input" in error and isinstance(error["input"], str | int):
        message = f"{message} (got {error['input']!r})"
    return f"configuration error: {name}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """Read and check the environment; raise ``ConfigError`` (exit 2) on the first problem."""
    try:
        return Settings(**overrides).check()
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors(include_url=False)[0])) from None


def exit_on_config_error(error: ConfigError) -> None:
    print(error.message, file=sys.stderr)
    raise SystemExit(2)
