"""Prometheus durations (``15s``, ``1m30s``, ``28d``) as seconds.

The one parser of them, here because the rules and their configuration are written in
them: the alerts package needs it, and the tools (stack/), the dashboards and the tests
import it from here, so that the alerts depend on nothing above them.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as '15s', '1m30s' or '0m'; ValueError else."""
    parts = _DURATION.findall(text) if isinstance(text, str) else []
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
