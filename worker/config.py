"""Configuration from the environment, validated once at start.

Every variable is documented in the README's table. A wrong value stops the process with
exit code 2 and one line naming the variable (``ConfigError``); secret values are never
echoed back.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.config_values import (  # noqa: F401  (re-exported: where callers look for them)
    DEFAULT_RATE_LIMITS,
    ENCRYPTION_KEY_FORM,
    Limits,
    check_url,
    decode_encryption_key,
    override_limits,
    parse_limits,
    strip_userinfo,
)


class ConfigError(SystemExit):
    """A user's configuration mistake: one line on stderr, exit code 2, no traceback."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(2)


#: Never echoed in an error: secrets. URL settings are echoed without their userinfo.
_SECRETS = {
    "SUPABASE_SERVICE_ROLE_KEY",
    "ENCRYPTION_KEY",
    "OPENROUTER_API_KEY",
    "SENTRY_DSN",
}

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

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", populate_by_name=True, allow_inf_nan=False
    )

    # Broker and Redis
    redis_url: str = Field(validation_alias="REDIS_URL")
    broker_url: str | None = Field(None, validation_alias="BROKER_URL")
    job_queue_name: str = Field("agent-jobs", validation_alias="JOB_QUEUE_NAME")
    job_concurrency: int = Field(
        25,
        gt=0,
        le=MAX_JOB_CONCURRENCY,
        validation_alias="JOB_CONCURRENCY",
        description="Job slots of one replica (processes x threads); a multiple of "
        "`WORKER_PROCESSES`, at most 512, and at most 256 threads per process.",
    )
    worker_processes: int = Field(1, gt=0, le=64, validation_alias="WORKER_PROCESSES")
    shutdown_grace_seconds: float = Field(60.0, ge=0, validation_alias="SHUTDOWN_GRACE_SECONDS")
    job_lock_timeout_seconds: float = Field(30.0, gt=1, validation_alias="JOB_LOCK_TIMEOUT_SECONDS")
    retry_max_delay_seconds: float = Field(300.0, ge=2, validation_alias="RETRY_MAX_DELAY_SECONDS")
    retry_jitter: float = Field(0.2, ge=0, le=0.5, validation_alias="RETRY_JITTER")
    completed_jobs_max: int = Field(1000, ge=0, validation_alias="COMPLETED_JOBS_MAX")
    completed_jobs_ttl_seconds: float = Field(
        86_400, gt=0, validation_alias="COMPLETED_JOBS_TTL_SECONDS"
    )
    dead_letters_max: int = Field(5000, ge=0, validation_alias="DEAD_LETTERS_MAX")
    dead_letters_ttl_seconds: float = Field(
        7 * 86_400, gt=0, le=7 * 86_400, validation_alias="DEAD_LETTERS_TTL_SECONDS"
    )
    retry_time_scale: float = Field(1.0, gt=0, le=1, validation_alias="RETRY_TIME_SCALE")

    # Size limits of a message and of each free-form payload field (worker.payloads)
    message_max_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        validation_alias="MESSAGE_MAX_BYTES",
        description="Largest message body (JSON bytes) a worker decodes; a larger one is "
        "dead-lettered unread.",
    )
    payload_max_id_chars: int = Field(
        128,
        ge=1,
        validation_alias="PAYLOAD_MAX_ID_CHARS",
        description="Longest `job_id` and `org_id` (characters).",
    )
    payload_max_prompt_chars: int = Field(
        100_000,
        ge=1,
        validation_alias="PAYLOAD_MAX_PROMPT_CHARS",
        description="Longest `agent.run` prompt (characters).",
    )
    payload_max_record_bytes: int = Field(
        65_536,
        ge=2,
        validation_alias="PAYLOAD_MAX_RECORD_BYTES",
        description="Largest `crm.sync` record (bytes of compact JSON).",
    )
    payload_max_text_chars: int = Field(
        10_000,
        ge=1,
        validation_alias="PAYLOAD_MAX_TEXT_CHARS",
        description="Longest `message.send` text and `job.status_update` detail (characters).",
    )
    payload_max_name_chars: int = Field(
        256,
        ge=1,
        validation_alias="PAYLOAD_MAX_NAME_CHARS",
        description="Longest `agent.run` model and `message.send` channel and recipient "
        "(characters).",
    )

    # Integrations (all optional)
    supabase_url: str | None = Field(None, validation_alias="SUPABASE_URL")
    supabase_service_role_key: SecretStr | None = Field(
        None, validation_alias="SUPABASE_SERVICE_ROLE_KEY"
    )
    supabase_timeout_seconds: float = Field(10.0, gt=0, validation_alias="SUPABASE_TIMEOUT_SECONDS")
    encryption_key: SecretStr | None = Field(
        None,
        validation_alias="ENCRYPTION_KEY",
        description="32 random bytes, as base64 (`openssl rand -base64 32`) or 64 hex digits, "
        "that decrypt the organizations' stored API keys; guessable values are refused.",
    )
    sentry_dsn: SecretStr | None = Field(None, validation_alias="SENTRY_DSN")
    sentry_traces_sample_rate: float = Field(
        1.0, ge=0, le=1, validation_alias="SENTRY_TRACES_SAMPLE_RATE"
    )
    sentry_profiles_sample_rate: float = Field(
        0.1, ge=0, le=1, validation_alias="SENTRY_PROFILES_SAMPLE_RATE"
    )
    sentry_release: str | None = Field(None, validation_alias="SENTRY_RELEASE")
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
    log_level: str = Field(
        "INFO",
        validation_alias="LOG_LEVEL",
        description="`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`; `DEBUG` adds "
        "Dramatiq's verbose log.",
    )

    # Rate limits per organization
    rate_limits: Annotated[Limits, NoDecode] = Field(
        default_factory=lambda: parse_limits(DEFAULT_RATE_LIMITS), validation_alias="RATE_LIMITS"
    )
    rate_limit_overrides: Annotated[dict[str, Limits], NoDecode] = Field(
        default_factory=dict, validation_alias="RATE_LIMIT_OVERRIDES"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _utf8(cls, value: Any) -> Any:
        # os.environ keeps bytes that are not UTF-8 as lone surrogates; they would fail
        # later, far from the variable that holds them.
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("is not UTF-8 text") from None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        return check_url(value, {"redis", "rediss", "unix"}, "redis://, rediss:// (TLS) or unix://")

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        if not value:
            return None
        schemes = {"redis", "rediss", "amqp", "amqps"}
        return check_url(value, schemes, "redis://, rediss://, amqp:// or amqps://")

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
        if not value:
            return None
        return check_url(value, {"http", "https"}, "http:// or https://")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return value.strip().upper()

    @field_validator("encryption_key")
    @classmethod
    def _encryption_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # set but empty (e.g. ENCRYPTION_KEY= in a compose file): unset
        decode_encryption_key(value.get_secret_value())
        return value

    @field_validator("sentry_dsn", "openrouter_api_key", "supabase_service_role_key")
    @classmethod
    def _empty_secret_is_unset(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("sentry_dsn")
    @classmethod
    def _sentry_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parts = urlsplit(value.get_secret_value().strip())
            if parts.scheme not in {"http", "https"} or not parts.username or not parts.path[1:]:
                raise ValueError("must look like https://<public key>@<host>/<project id>")
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
        return {str(org): override_limits(str(org), lim) for org, lim in value.items()}

    @property
    def encryption_key_bytes(self) -> bytes | None:
        if self.encryption_key is None:
            return None
        return decode_encryption_key(self.encryption_key.get_secret_value())

    @property
    def supabase_enabled(self) -> bool:
        return bool(self.supabase_url)

    def __repr_args__(self):
        # URL settings may carry a password in their userinfo: never in a repr.
        for name, value in super().__repr_args__():
            yield name, strip_userinfo(value) if name in URL_FIELDS and value else value

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
        if self.threads_per_process > MAX_THREADS_PER_PROCESS:
            raise ConfigError(
                "configuration error: JOB_CONCURRENCY: at most "
                f"{MAX_THREADS_PER_PROCESS} threads per process; raise WORKER_PROCESSES "
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
        shown = error["input"]
        if name.lower() in URL_FIELDS:
            shown = strip_userinfo(str(shown))
        message = f"{message} (got {_bounded(repr(shown))})"
    return f"configuration error: {name}: {_bounded(message, 300)}"


def _bounded(text: str, limit: int = 120) -> str:
    """``text`` on one line, cut to ``limit`` characters: an error names the problem; a
    pasted 10 kB value would bury it."""
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_settings(**overrides: Any) -> Settings:
    """Read and check the environment; raise ``ConfigError`` (exit 2) on the first problem."""
    try:
        return Settings(**overrides).check()
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors(include_url=False)[0])) from None


def exit_on_config_error(error: ConfigError) -> None:
    print(error.message, file=sys.stderr)
    raise SystemExit(2)
