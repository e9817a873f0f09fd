"""Per-organization rate limiter: several sliding windows decided in one Redis round trip.

Semantics (the guarantee the tests check)
-----------------------------------------
Each window ``name -> (N, T)`` is split into ``B`` buckets (``buckets=60`` by default) of
width ``w = ceil(T / B)`` (in microseconds), aligned on the Redis server clock. A request
at server time ``t`` falls in bucket ``k = floor(t / w)``. It is admitted only if, for
every window, the admissions counted in the ``B + 1`` buckets ``k - B .. k`` are fewer
than ``N``; then it is counted once in bucket ``k`` of every window, else nothing changes.

- **Never more than N in any interval of length T** (closed, ``[s, s + T]``), across all
  processes and replicas: take the last admission ``t`` of such an interval; every
  other admission of the interval lies in ``[t - T, t]``, and bucket ``k - B`` starts at
  ``(k - B) * w <= t - B * w <= t - T``, so all of them were counted when ``t`` was
  decided, and ``t`` was admitted only because fewer than ``N`` were.
- **Worst case (conservative side)**: an admission is remembered for up to ``T + w``
  (the oldest bucket is dropped whole, not pro rata). Under steady overload admissions
  are ``N`` per ``T + w``, i.e. at least ``B / (B + 1)`` of the limit: 98.4 % with 60
  buckets. The limiter never admits more than the guarantee; it may refuse a request
  for at most ``w`` (1 s for a minute, 60 s for an hour, 24 min for a day) longer
  than an exact sliding log would.
- ``retry_after`` is the time until enough old buckets leave every refusing window for
  it to have room (if no one else takes the slot first). It is computed once per full
  period and cached; only after a limit is raised can the cached value be early, and an
  early retry is simply refused again.
- A request refused by one window consumes nothing in any window (one atomic script).
- Memory per organization and window: one hash of at most ``B + 4`` small fields (the
  ``B + 1`` buckets, their total, the oldest bucket, the cached ``retry_after``), whatever
  ``N`` and ``T`` (no log of timestamps); it expires ``T + w`` after the last admission.
- Cost: an admission is O(1) per window; the O(B) recount runs when the oldest bucket
  leaves the window (at most once per ``w``), the O(B) ``retry_after`` walk once per
  full period.
- Time is the Redis server's ``TIME``, read inside the script, so clients with skewed
  clocks agree. If the server clock steps back, buckets "from the future" keep counting
  (conservative); a forward step or a failover to a replica whose clock is ahead ages
  admissions early, the one way this guarantee depends on the clock.

Windows are written ``name=count/seconds`` (``RATE_LIMITS``) or given as a mapping;
``parse_limits`` is their one check, for the settings and for ``RateLimiter`` alike.

Every key of one organization carries the hash tag ``{org}``, so the script runs unchanged
on Redis Cluster; keys are ``<prefix>:{<org>}:<window>:<seconds>``, the prefix
``<JOB_QUEUE_NAME>:ratelimit`` for a worker (``from_settings``). The script is sent with
EVALSHA; on NOSCRIPT (new server, failover, SCRIPT FLUSH) that one call falls back to
EVAL, which also caches it on that server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from worker.redis_keys import RedisKeys, rate_limit_window

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Named windows: name -> (max admissions, window seconds).
Limits = dict[str, tuple[int, int]]

DEFAULT_RATE_LIMITS = "minute=100/60,hour=5000/3600,day=100000/86400"

#: Largest window (31 days) and count: beyond them Redis' key expiry and the script's
#: integer arithmetic would overflow.
MAX_WINDOW_SECONDS = 31 * 86_400
MAX_WINDOW_COUNT = 10**9

DEFAULT_BUCKETS = 60

#: Values of the ``decision`` label of ``worker_rate_limit_decisions_total``.
DECISIONS = ("allowed", "throttled", "unavailable")

_WINDOW = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*=\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_limits(spec: str | Mapping[str, tuple[int, int]]) -> Limits:
    """The one check of rate-limit windows, as ``RATE_LIMITS`` text (``minute=100/60,
    hour=5000/3600``) or as a mapping (``{"minute": (100, 60)}``); ``ValueError`` names
    the window that is wrong. A mapping is checked as the text it stands for."""
    if not isinstance(spec, str):
        spec = ",".join(f"{name}={count}/{seconds}" for name, (count, seconds) in spec.items())
    limits: Limits = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        match = _WINDOW.match(item)
        if match is None:
            raise ValueError(f"{item!r} is not name=count/seconds")
        name, count, seconds = match.group(1), int(match.group(2)), int(match.group(3))
        if count < 1 or seconds < 1:
            raise ValueError(f"{item!r}: count and seconds must be positive")
        if count > MAX_WINDOW_COUNT or seconds > MAX_WINDOW_SECONDS:
            raise ValueError(
                f"{item!r}: at most {MAX_WINDOW_COUNT} per window and {MAX_WINDOW_SECONDS} s"
            )
        if name in limits:
            raise ValueError(f"window {name!r} is given twice")
        limits[name] = (count, seconds)
    if not limits:
        raise ValueError("at least one window is needed")
    return limits


def parse_overrides(value: str | Mapping[str, Any]) -> dict[str, Limits]:
    """``RATE_LIMIT_OVERRIDES``: ``{"org-1": "minute=10/60"}`` or ``{"org-1": {"minute":
    [10, 60]}}``, as JSON text or a mapping; each organization's windows checked."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            raise ValueError('must be JSON like {"org-1": "minute=10/60"}') from None
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object like {"org-1": "minute=10/60"}')
    return {str(org): _override(str(org), limits) for org, limits in value.items()}


def _override(org: str, value: Any) -> Limits:
    if isinstance(value, str):
        return parse_limits(value)
    if not isinstance(value, dict):
        raise ValueError(f'{org!r}: must be a string like "minute=10/60"')
    for name, pair in value.items():
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise ValueError(f"{org!r}: window {name!r} must be [count, seconds]")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
            raise ValueError(f"{org!r}: window {name!r}: count and seconds must be integers")
    return parse_limits(value)


# KEYS[i]: hash of window i: field <bucket index> = admissions counted in that bucket, plus
#   n = sum of the bucket fields, lo = every bucket field is >= lo (the oldest bucket at the
#   last recount), free = cached time (us) at which a full window next has room.
# ARGV[1]: B (buckets per window); then for window i: ARGV[2i] = N, ARGV[2i+1] = w (us).
# Reply: {allowed, server seconds, server microseconds, then for each window:
#         admissions counted before this request, microseconds until it has room (0 = has room)}
# An admission costs O(1) per window; the O(B) recount runs once per bucket width (when the
# oldest bucket leaves the window), and the O(B) retry_after walk once per full period.
_SCRIPT = """
local B = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed = 1
local bucket, missing_lo, reply = {}, {}, {0, tonumber(t[1]), tonumber(t[2])}
for i = 1, #KEYS do
  local key = KEYS[i]
  local limit = tonumber(ARGV[2 * i])
  local width = tonumber(ARGV[2 * i + 1])
  local k = math.floor(now / width)
  local oldest = k - B
  local state = redis.call('HMGET', key, 'n', 'lo', 'free')
  local used, lo, free = tonumber(state[1]) or 0, tonumber(state[2]), tonumber(state[3])
  local flat = nil
  if lo == nil or lo < oldest then
    -- the oldest bucket moved on since the last look: drop stale buckets, recount the rest
    flat = redis.call('HGETALL', key)
    local stale, live = {'free'}, 0
    used, free = 0, nil
    for j = 1, #flat, 2 do
      local index = tonumber(flat[j])
      if index then
        if index < oldest then
          stale[#stale + 1] = flat[j]
        else
          used = used + tonumber(flat[j + 1])
          live = live + 1
        end
      end
    end
    if live == 0 then
      if #flat > 0 then redis.call('DEL', key) end
      missing_lo[i] = true
    else
      redis.call('HDEL', key, unpack(stale))
      redis.call('HSET', key, 'n', string.format('%d', used), 'lo', string.format('%d', oldest))
    end
  end
  local wait = 0
  if used >= limit then
    allowed = 0
    if free == nil or free <= now then
      -- earliest moment the window has room: let buckets leave, oldest first
      flat = flat or redis.call('HGETALL', key)
      local live = {}
      for j = 1, #flat, 2 do
        local index = tonumber(flat[j])
        if index and index >= oldest then live[#live + 1] = {index, tonumber(flat[j + 1])} end
      end
      table.sort(live, function(a, b) return a[1] < b[1] end)
      local left = used
      for _, entry in ipairs(live) do
        left = left - entry[2]
        if left < limit then
          free = (entry[1] + B + 1) * width
          break
        end
      end
      redis.call('HSET', key, 'free', string.format('%d', free))
    end
    wait = free - now
  end
  bucket[i] = string.format('%d', k)
  reply[#reply + 1] = used
  reply[#reply + 1] = wait
end
if allowed == 1 then
  for i = 1, #KEYS do
    local width = tonumber(ARGV[2 * i + 1])
    redis.call('HINCRBY', KEYS[i], bucket[i], 1)
    redis.call('HINCRBY', KEYS[i], 'n', 1)
    if missing_lo[i] then
      redis.call('HSET', KEYS[i], 'lo', string.format('%d', math.floor(now / width) - B))
    end
    redis.call('PEXPIRE', KEYS[i], math.ceil(width * (B + 1) / 1000) + 1000)
  end
end
reply[1] = allowed
return reply
"""

_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


@dataclass(frozen=True)
class Window:
    name: str
    limit: int
    seconds: float

    @property
    def micros(self) -> int:
        return round(self.seconds * 1_000_000)


@dataclass(frozen=True)
class WindowDecision:
    """How one window judged a request: ``used`` counts admissions before it."""

    window: Window
    used: int
    retry_after: float

    @property
    def refused(self) -> bool:
        return self.retry_after > 0


@dataclass(frozen=True)
class Decision:
    """Outcome of ``try_acquire``: ``retry_after`` is 0 when allowed, else seconds until
    every refusing window has room; ``server_time_us`` is the Redis TIME of the decision."""

    allowed: bool
    retry_after: float
    server_time_us: int
    windows: tuple[WindowDecision, ...]

    @property
    def refused_by(self) -> tuple[str, ...]:
        return tuple(w.window.name for w in self.windows if w.refused)


class RateLimited(Exception):
    """Raised by ``with_rate_limit`` when the organization has no slot within ``max_wait``."""

    def __init__(self, org_id: str, decision: Decision) -> None:
        self.decision = decision
        self.retry_after = decision.retry_after
        super().__init__(
            f"rate limit reached ({', '.join(decision.refused_by)}); "
            f"retry in {decision.retry_after:.3f}s"
        )


class RateLimiterUnavailable(Exception):
    """Redis could not decide (unreachable, loading, read-only, ...); nothing was admitted."""


def _windows(spec: Mapping[str, tuple[int, int]]) -> tuple[Window, ...]:
    return tuple(Window(name, count, float(seconds)) for name, (count, seconds) in spec.items())


def _hash_tag(org_id: str) -> str:
    # Braces would end the Redis Cluster hash tag early, and an empty tag would hash each
    # key by its full name (keys of one org on different slots): escape them.
    return org_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RateLimiter:
    """Admit at most N requests per organization in any interval of T, for every window.

    ``limits`` maps a window name (the ``window`` metric label) to ``(count, seconds)``;
    ``overrides`` maps an organization id to windows that replace the same-named default
    windows for it (new names add windows). ``buckets`` trades precision for memory and
    script time: admissions are remembered up to ``T / buckets`` longer than ``T``.
    See the module docstring for the exact guarantee.
    """

    def __init__(
        self,
        redis_client: redis.Redis | redis.RedisCluster,
        limits: Mapping[str, tuple[int, int]] | None = None,
        *,
        overrides: Mapping[str, Mapping[str, tuple[int, int]]] | None = None,
        buckets: int = DEFAULT_BUCKETS,
        key_prefix: str = "ratelimit",
    ) -> None:
        if buckets < 1:
            raise ValueError("buckets must be at least 1")
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain braces (it would break the hash tag)")
        self.redis = redis_client
        self.buckets = buckets
        self.key_prefix = key_prefix
        default_spec = parse_limits(limits if limits is not None else DEFAULT_RATE_LIMITS)
        self.default_windows = _windows(default_spec)
        self.overrides = {
            str(org): _windows(parse_limits({**default_spec, **dict(spec)}))
            for org, spec in (overrides or {}).items()
        }
        # Imported here, not at the top: the settings module imports this one, and nothing
        # may import prometheus_client before ``python -m worker`` sets
        # PROMETHEUS_MULTIPROC_DIR (worker.replica).
        from worker.metrics import rate_limit_decisions

        self._decisions = rate_limit_decisions

        # Every configured window x decision exists at 0 from the start: a dashboard shows
        # 0, not "no data", before the first decision.
        for name in {w.name for ws in (self.default_windows, *self.overrides.values()) for w in ws}:
            for decision in DECISIONS:
                self._decisions.labels(name, decision)

    @classmethod
    def from_settings(cls, redis_client: Any, settings: Any, **options: Any) -> RateLimiter:
        """Build from ``Settings.rate_limits`` and ``Settings.rate_limit_overrides``, with
        keys under ``<JOB_QUEUE_NAME>:ratelimit``: deployments sharing one Redis (two
        queue names) never share an organization's counters."""
        options.setdefault("key_prefix", RedisKeys(settings.job_queue_name).rate_limit_prefix)
        return cls(
            redis_client,
            settings.rate_limits,
            overrides=settings.rate_limit_overrides,
            **options,
        )

    def windows_for(self, org_id: str) -> tuple[Window, ...]:
        return self.overrides.get(org_id, self.default_windows)

    def keys_for(self, org_id: str) -> list[str]:
        tag = _hash_tag(org_id)
        return [
            rate_limit_window(self.key_prefix, tag, w.name, w.seconds)
            for w in self.windows_for(org_id)
        ]

    def bucket_micros(self, window: Window) -> int:
        return -(-window.micros // self.buckets)

    def try_acquire(self, org_id: str) -> Decision:
        """Take one slot for ``org_id`` in every window, or none: one EVALSHA.

        Raises ``RateLimiterUnavailable`` when Redis cannot answer (nothing is admitted).
        """
        org_id = str(org_id)
        if not org_id:
            raise ValueError("org_id must not be empty")
        windows = self.windows_for(org_id)
        args: list[int] = [self.buckets]
        for window in windows:
            args += [window.limit, self.bucket_micros(window)]
        try:
            reply = self._run(self.keys_for(org_id), args)
        except redis.RedisError as exc:
            for window in windows:
                self._decisions.labels(window.name, "unavailable").inc()
            raise RateLimiterUnavailable(f"{type(exc).__name__}: {exc}") from exc

        allowed = bool(int(reply[0]))
        per_window = tuple(
            WindowDecision(window, int(reply[3 + 2 * i]), int(reply[4 + 2 * i]) / 1_000_000)
            for i, window in enumerate(windows)
        )
        for wd in per_window:
            if allowed:
                self._decisions.labels(wd.window.name, "allowed").inc()
            elif wd.refused:
                self._decisions.labels(wd.window.name, "throttled").inc()
        return Decision(
            allowed=allowed,
            retry_after=0.0 if allowed else max(wd.retry_after for wd in per_window),
            server_time_us=int(reply[1]) * 1_000_000 + int(reply[2]),
            windows=per_window,
        )

    def with_rate_limit(self, org_id: str, fn: Callable[[], R], *, max_wait: float = 0.0) -> R:
        """Call ``fn()`` once a slot is taken for ``org_id``: the contracted way to limit a
        call made outside an actor (docs/contract.md; actors go through the ``RateLimit``
        middleware, which defers instead of waiting).

        Waits (sleeping ``retry_after``) as long as the total wait stays within
        ``max_wait`` seconds, else raises ``RateLimited`` carrying ``retry_after``.
        """
        deadline = time.monotonic() + max_wait
        while True:
            decision = self.try_acquire(org_id)
            if decision.allowed:
                return fn()
            if time.monotonic() + decision.retry_after > deadline:
                raise RateLimited(org_id, decision)
            time.sleep(decision.retry_after)

    def _run(self, keys: list[str], args: list[int]) -> list[Any]:
        try:
            return self.redis.evalsha(_SCRIPT_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # First call on this server (or after a failover / SCRIPT FLUSH): EVAL runs it
            # and caches it there, routed by the keys' slot like EVALSHA on a cluster.
            log.info("rate-limit script not cached on this Redis; sending it once")
            return self.redis.eval(_SCRIPT, len(keys), *keys, *args)
