"""Bad configuration, one value at a time, across every group of variables: ``python -m
worker`` exits 2 with exactly one line naming the variable, no traceback, and no secret
or URL credential in what it prints."""

from __future__ import annotations

import base64
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from stack.fleet import ROOT, replica_env

SECRET = "PLANTEDsecret42"
#: Sentinels instead of REDIS_URL, with a secret password each (never shown).
NO_URL: dict[str, str | None] = {
    "REDIS_URL": None,
    "REDIS_SENTINELS": "127.0.0.1:1",
    "REDIS_SENTINEL_MASTER": "jobs",
    "REDIS_SENTINEL_PASSWORD": SECRET,
    "REDIS_PASSWORD": SECRET + "x",
}

#: (variable named in the error, extra environment (None: unset), text the line must contain)
CASES: list[tuple[str, dict[str, str | bytes | None], str]] = [
    # broker and Redis
    ("REDIS_URL", {"REDIS_URL": f"redis://:{SECRET}@localhost:abc/0"}, "port must be a number"),
    ("REDIS_URL", {"REDIS_URL": "redis://h:99999/0"}, "port must be a number"),
    ("REDIS_URL", {"REDIS_URL": f"http://u:{SECRET}@host"}, "must start with redis://"),
    ("REDIS_URL", {"REDIS_URL": "redis://"}, "a host is missing"),
    ("BROKER_URL", {"BROKER_URL": f"amqp://guest:{SECRET}@host:x/"}, "port must be a number"),
    # Redis Sentinel instead of REDIS_URL
    ("REDIS_URL", {"REDIS_URL": None}, "required, not set (or REDIS_SENTINELS"),
    ("REDIS_URL", {"REDIS_URL": ""}, "required, not set (or REDIS_SENTINELS"),
    ("REDIS_SENTINELS", {"REDIS_SENTINELS": "127.0.0.1:26379"}, "not with REDIS_URL"),
    ("REDIS_SENTINEL_MASTER", {**NO_URL, "REDIS_SENTINEL_MASTER": " "}, "not empty"),
    ("REDIS_SENTINEL_MASTER", {**NO_URL, "REDIS_SENTINEL_MASTER": None}, "required with"),
    ("REDIS_SENTINEL_MASTER", {"REDIS_SENTINEL_MASTER": "jobs"}, "only with REDIS_SENTINELS"),
    ("REDIS_SENTINELS", {**NO_URL, "REDIS_SENTINELS": "h1:26379,h2"}, "host:port pairs"),
    ("REDIS_SENTINELS", {**NO_URL, "REDIS_SENTINELS": "h1:abc"}, "host:port pairs"),
    ("REDIS_SENTINELS", {**NO_URL, "REDIS_SENTINELS": ":26379"}, "host:port pairs"),
    ("REDIS_SENTINELS", {**NO_URL, "REDIS_SENTINELS": "h1:70000"}, "ports 1 to 65535"),
    ("BROKER_URL", {"BROKER_URL": "kafka://h:9092"}, "must start with redis://"),
    ("JOB_QUEUE_NAME", {"JOB_QUEUE_NAME": "bad name!"}, "must be letters"),
    ("JOB_CONCURRENCY", {"JOB_CONCURRENCY": "100000000"}, "less than or equal to 512"),
    ("JOB_CONCURRENCY", {"JOB_CONCURRENCY": "0"}, "greater than 0"),
    ("JOB_CONCURRENCY", {"JOB_CONCURRENCY": "ten"}, "valid integer"),
    ("JOB_CONCURRENCY", {"JOB_CONCURRENCY": "25", "WORKER_PROCESSES": "3"}, "multiple of"),
    ("JOB_CONCURRENCY", {"JOB_CONCURRENCY": "512"}, "at most 256 threads per process"),
    ("SHUTDOWN_GRACE_SECONDS", {"SHUTDOWN_GRACE_SECONDS": "-1"}, "greater than or equal"),
    ("SHUTDOWN_GRACE_SECONDS", {"SHUTDOWN_GRACE_SECONDS": "inf"}, "finite number"),
    ("JOB_LOCK_TIMEOUT_SECONDS", {"JOB_LOCK_TIMEOUT_SECONDS": "1"}, "greater than 1"),
    ("RETRY_JITTER", {"RETRY_JITTER": "0.9"}, "less than or equal to 0.5"),
    ("DEAD_LETTERS_TTL_SECONDS", {"DEAD_LETTERS_TTL_SECONDS": "99999999"}, "less than"),
    ("WORKER_PROCESSES", {"WORKER_PROCESSES": "65"}, "less than or equal to 64"),
    ("JOB_QUEUE_NAME", {"JOB_QUEUE_NAME": "jobs{org}"}, "must be letters"),
    ("RETRY_MAX_DELAY_SECONDS", {"RETRY_MAX_DELAY_SECONDS": "1"}, "greater than or equal"),
    ("RETRY_TIME_SCALE", {"RETRY_TIME_SCALE": "0"}, "greater than 0"),
    ("COMPLETED_JOBS_MAX", {"COMPLETED_JOBS_MAX": "-1"}, "greater than or equal to 0"),
    # rate limits
    ("RATE_LIMITS", {"RATE_LIMITS": "minute=100"}, "is not name=count/seconds"),
    ("RATE_LIMITS", {"RATE_LIMITS": "minute=0/60"}, "must be positive"),
    ("RATE_LIMITS", {"RATE_LIMITS": "minute=1/99999999999"}, "at most"),
    ("RATE_LIMIT_OVERRIDES", {"RATE_LIMIT_OVERRIDES": '{"o": "Week=1/60"}'}, "name=count"),
    ("RATE_LIMIT_OVERRIDES", {"RATE_LIMIT_OVERRIDES": '{"o": {"Week": [1, 60]}}'}, "name=count"),
    ("RATE_LIMIT_OVERRIDES", {"RATE_LIMIT_OVERRIDES": '{"o": {"minute": [1, 0]}}'}, "positive"),
    ("RATE_LIMIT_OVERRIDES", {"RATE_LIMIT_OVERRIDES": '{"o": "minute=1/0"}'}, "positive"),
    ("RATE_LIMIT_OVERRIDES", {"RATE_LIMIT_OVERRIDES": '{"o": 5}'}, "must be a string"),
    ("RATE_LIMIT_OVERRIDES", {"RATE_LIMIT_OVERRIDES": "[1, 2]"}, "JSON object"),
    ("RATE_LIMIT_OVERRIDES", {"RATE_LIMIT_OVERRIDES": "not json"}, "must be JSON"),
    # observability
    ("LOG_LEVEL", {"LOG_LEVEL": "BOGUS"}, "must be one of DEBUG"),
    ("METRICS_PORT", {"METRICS_PORT": "70000"}, "less than or equal to 65535"),
    ("METRICS_DIR", {"METRICS_DIR": "/proc/forbidden"}, "cannot use"),
    ("SENTRY_DSN", {"SENTRY_DSN": f"https://{SECRET}@sentry.example"}, "must look like"),
    ("SENTRY_TRACES_SAMPLE_RATE", {"SENTRY_TRACES_SAMPLE_RATE": "2"}, "less than or equal"),
    ("SENTRY_PROFILES_SAMPLE_RATE", {"SENTRY_PROFILES_SAMPLE_RATE": "nan"}, "finite number"),
    ("REDIS_HEALTH_INTERVAL_SECONDS", {"REDIS_HEALTH_INTERVAL_SECONDS": "0"}, "greater than 0"),
    ("METRICS_QUEUE_SAMPLE_SECONDS", {"METRICS_QUEUE_SAMPLE_SECONDS": "-1"}, "greater than"),
    # integrations
    ("SUPABASE_URL", {"SUPABASE_URL": f"https://svc:{SECRET}@db:abc"}, "port must be a number"),
    ("SUPABASE_SERVICE_ROLE_KEY", {"SUPABASE_URL": "https://db.example"}, "required when"),
    ("CRM_ENDPOINT_URL", {"CRM_ENDPOINT_URL": f"ftp://u:{SECRET}@crm"}, "http:// or https://"),
    ("MESSAGE_ENDPOINT_URL", {"MESSAGE_ENDPOINT_URL": f"https://u:{SECRET}@h:-5"}, "port"),
    ("OPENROUTER_BASE_URL", {"OPENROUTER_BASE_URL": "file:///etc/passwd"}, "http://"),
    ("OPENROUTER_TIMEOUT_SECONDS", {"OPENROUTER_TIMEOUT_SECONDS": "0"}, "greater than 0"),
    ("SUPABASE_TIMEOUT_SECONDS", {"SUPABASE_TIMEOUT_SECONDS": "soon"}, "valid number"),
    # the encryption key: 32 random bytes, and nothing guessable
    ("ENCRYPTION_KEY", {"ENCRYPTION_KEY": f"{SECRET}-short"}, "must be 32 random bytes"),
    ("ENCRYPTION_KEY", {"ENCRYPTION_KEY": "00" * 32}, "repeats a few byte values"),
    ("ENCRYPTION_KEY", {"ENCRYPTION_KEY": base64.b64encode(bytes(32)).decode()}, "repeats"),
    ("ENCRYPTION_KEY", {"ENCRYPTION_KEY": "password" * 4}, "guessable"),
    ("ENCRYPTION_KEY", {"ENCRYPTION_KEY": "abcdefghijklmnopqrstuvwxyzABCDEF"}, "guessable"),
    ("ENCRYPTION_KEY", {"ENCRYPTION_KEY": "a" * 32}, "guessable"),
    # simulation and size limits
    ("SIM_LATENCY_SECONDS", {"SIM_LATENCY_SECONDS": "20-15"}, "low <= high"),
    ("SIM_FAILURE_RATIO", {"SIM_FAILURE_RATIO": "1.5"}, "less than or equal to 1"),
    ("SIM_429_RATIO", {"SIM_429_RATIO": "-0.1"}, "greater than or equal to 0"),
    ("PAYLOAD_MAX_RECORD_BYTES", {"PAYLOAD_MAX_RECORD_BYTES": "1"}, "greater than or equal"),
    ("PAYLOAD_MAX_PROMPT_CHARS", {"PAYLOAD_MAX_PROMPT_CHARS": "0"}, "greater than or equal"),
    ("MESSAGE_MAX_BYTES", {"MESSAGE_MAX_BYTES": "10"}, "greater than or equal to 1024"),
    ("REDIS_URL", {"REDIS_URL": b"redis://\xff\xfe@h/0"}, "not UTF-8"),
]


def run_worker(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker"], env=env, cwd=ROOT, capture_output=True, timeout=60
    )


@pytest.mark.slow
def test_every_bad_value_exits_2_with_one_line_and_no_secret():
    envs = []
    for _, extra, _ in CASES:
        env: dict = replica_env("redis://127.0.0.1:1/0")
        for name, value in extra.items():
            if value is None:
                env.pop(name, None)
            elif isinstance(value, bytes):  # an environment may hold any bytes
                env.pop(name, None)
                env[name.encode()] = value
            else:
                env[name] = value
        envs.append(env)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run_worker, envs))
    for (variable, extra, expected), result in zip(CASES, results, strict=True):
        err = result.stderr.decode(errors="replace")
        lines = err.strip().splitlines()
        where = (variable, extra, err[-2000:])
        assert result.returncode == 2, where
        assert len(lines) == 1 and result.stdout == b"", where
        assert lines[0].startswith(f"configuration error: {variable}: "), where
        assert expected in lines[0], where
        assert "Traceback" not in err and SECRET not in err, where
    print(
        f"\nconfiguration table: {len(CASES)} bad values tried, each exit 2 with one line, "
        "0 tracebacks, 0 secrets shown"
    )
    assert len(CASES) >= 30 and len({v for v, _, _ in CASES}) >= 25


@pytest.mark.parametrize("key", ["00" * 32, "password" * 4])
def test_weak_encryption_keys_are_refused_and_random_ones_accepted(key):
    import os

    from worker.api_keys import decode_encryption_key

    with pytest.raises(ValueError, match="32 random bytes"):
        decode_encryption_key(key)
    random = os.urandom(32)
    for form in (random.hex(), base64.b64encode(random).decode()):
        assert decode_encryption_key(form) == random
    assert decode_encryption_key("q8L#v2Rz!pW9xT4m@N7kB1fY6hJ0sD3g") is not None  # typed once
