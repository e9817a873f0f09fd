"""Prometheus metrics of the worker (names and labels: DESIGN.md "Metrics contract")."""

from __future__ import annotations

from prometheus_client import Counter

#: Per window: ``allowed`` counts admissions, ``throttled`` the refusals that window caused,
#: ``unavailable`` the decisions Redis could not make (the job was deferred, not run).
RATE_LIMIT_DECISIONS = Counter(
    "worker_rate_limit_decisions_total",
    "Rate-limiter outcomes per window.",
    ["window", "decision"],
)
