"""The services the actors call: the real ones when configured, simulated ones otherwise.

The simulated backend makes the stack produce realistic load with no account: each call
waits a latency drawn uniformly from ``SIM_LATENCY_SECONDS`` (15-20 s by default, like an
LLM call), then fails with probability ``SIM_FAILURE_RATIO`` (a retryable 500) or
``SIM_429_RATIO`` (a 429 with ``Retry-After``). The load generator can change these knobs
on a running fleet through Redis (see ``SimulationKnobs``).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import httpx
import redis

from worker.errors import TransientError, parse_retry_after, raise_for_status
from worker.redis_keys import RedisKeys


@dataclass(frozen=True)
class Simulation:
    latency_seconds: tuple[float, float] = (15.0, 20.0)
    failure_ratio: float = 0.0
    ratio_429: float = 0.0


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


class SimulationKnobs:
    """The simulation's settings, overridable live through the Redis hash ``<ns>:simulation``.

    Fields ``latency_min``, ``latency_max``, ``failure_ratio``, ``ratio_429`` override the
    environment's values; the hash is read at most once per ``refresh`` seconds.
    """

    def __init__(
        self,
        default: Simulation,
        client: redis.Redis | None = None,
        key: str = RedisKeys().simulation,
        refresh: float = 1.0,
    ) -> None:
        self.default, self.client, self.key, self.refresh = default, client, key, refresh
        self._value, self._read_at = default, float("-inf")
        self._lock = threading.Lock()

    def current(self) -> Simulation:
        if self.client is None:
            return self.default
        with self._lock:
            if time.monotonic() - self._read_at >= self.refresh:
                self._read_at = time.monotonic()
                try:
                    raw = {k.decode(): float(v) for k, v in self.client.hgetall(self.key).items()}
                except (redis.RedisError, ValueError):
                    raw = {}
                d = self.default
                self._value = replace(
                    d,
                    latency_seconds=(
                        raw.get("latency_min", d.latency_seconds[0]),
                        raw.get("latency_max", d.latency_seconds[1]),
                    ),
                    failure_ratio=raw.get("failure_ratio", d.failure_ratio),
                    ratio_429=raw.get("ratio_429", d.ratio_429),
                )
            return self._value


class SimulatedService:
    """Answers like a remote HTTP service, after a realistic wait."""

    def __init__(self, name: str, knobs: SimulationKnobs) -> None:
        self.name, self.knobs = name, knobs

    def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        sim = self.knobs.current()
        low, high = sim.latency_seconds
        time.sleep(random.uniform(low, high))
        draw = random.random()
        if draw < sim.ratio_429:
            raise TransientError(f"{self.name} (simulated) answered HTTP 429", retry_after=2.0)
        if draw < sim.ratio_429 + sim.failure_ratio:
            raise TransientError(f"{self.name} (simulated) answered HTTP 500")
        return {"simulated": True, "service": self.name, "echo_keys": sorted(payload)}


class HttpEndpoint:
    """POSTs a JSON payload to a configured endpoint; the status decides retry or not."""

    def __init__(self, name: str, url: str, client: httpx.Client) -> None:
        self.name, self.url, self.client = name, url, client

    def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self.client.post(self.url, json=payload)
        except httpx.TimeoutException:
            raise TransientError(f"{self.name} timed out") from None
        except httpx.TransportError as exc:
            raise TransientError(f"{self.name} unreachable: {type(exc).__name__}") from None
        raise_for_status(
            self.name, response.status_code, parse_retry_after(response.headers.get("retry-after"))
        )
        return {"status": response.status_code}


class SimulatedLLM:
    """A chat-completion stand-in with the latency and failures of the real API."""

    def __init__(self, knobs: SimulationKnobs) -> None:
        self.service = SimulatedService("llm", knobs)

    def complete(self, org_id: str, prompt: str, *, model: str | None = None) -> str:
        self.service.call({"org_id": org_id, "prompt": prompt})
        return f"(simulated completion of a {len(prompt)}-character prompt)"


class RedisJobStore:
    """Job statuses in Redis hashes ``<ns>:job:<job_id>``, kept ``ttl`` seconds (7 days)."""

    def __init__(self, client: redis.Redis, namespace: str, ttl: int = 7 * 86_400) -> None:
        self.client, self.namespace, self.ttl = client, namespace, ttl

    def set_status(self, job_id: str, org_id: str, status: str, detail: str | None) -> None:
        key = RedisKeys(self.namespace).job(job_id)
        fields = {
            "org_id": org_id,
            "status": status,
            "detail": detail or "",
            "updated_at": f"{time.time():.3f}",
        }
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.ttl)
            pipe.execute()

    def get(self, job_id: str) -> dict[str, str]:
        raw = self.client.hgetall(RedisKeys(self.namespace).job(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()}
