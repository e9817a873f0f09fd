"""Prometheus from the outside: its HTTP API, and promtool's backfill.

The one client of Prometheus' HTTP API for the twin, the capacity planner, the dashboard
previews and the tests. Its durations are parsed by alerts.duration.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from stack.servers import require_binary
from worker.redact import strip_userinfo


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or gave no usable answer."""


def api(url: str, path: str, params: dict[str, Any] | None = None, timeout: float = 30.0):
    """``data`` of ``GET <url>/api/v1/<path>``; PrometheusError (naming the URL without its
    password) when Prometheus cannot be reached or does not answer with success."""
    shown = strip_userinfo(url)
    if urlsplit(url).scheme not in {"http", "https"}:
        raise PrometheusError(f"Prometheus needs an http:// or https:// URL (got {shown})")
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/v1/{path}", params=params, timeout=timeout)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise PrometheusError(f"cannot reach Prometheus at {shown}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        raise PrometheusError(
            f"Prometheus at {shown} answered HTTP {response.status_code} without JSON"
        ) from None
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        what = (params or {}).get("query", path)
        raise PrometheusError(
            f"Prometheus at {shown} rejected {what!r}: HTTP {response.status_code} {error or ''}"
        )
    return body.get("data")


def query(url: str, promql: str, at: float | None = None, timeout: float = 30.0) -> list[dict]:
    """The result of an instant query (at ``at``, a Unix time, or now)."""
    params = {"query": promql} | ({"time": at} if at is not None else {})
    return (api(url, "query", params, timeout) or {}).get("result") or []


def query_range(
    url: str, promql: str, start: float, end: float, step: float, timeout: float = 30.0
) -> list[dict]:
    params = {"query": promql, "start": start, "end": end, "step": step}
    return (api(url, "query_range", params, timeout) or {}).get("result") or []


def alerts(url: str, timeout: float = 30.0) -> list[dict]:
    """Prometheus' pending and firing alerts: labels, annotations, state, activeAt."""
    return api(url, "alerts", timeout=timeout)["alerts"]


def backfill_openmetrics(text: str, workdir: Path, *, max_block_duration: str = "2h") -> None:
    """Write samples (OpenMetrics with timestamps, ending in '# EOF') as TSDB blocks into
    ``workdir/data`` with promtool, so a prometheus_server(workdir) started afterwards
    holds exactly these samples."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "backfill.om"
    source.write_text(text)
    backfill_openmetrics_file(source, workdir, max_block_duration=max_block_duration)


def backfill_openmetrics_file(
    source: Path, workdir: Path, *, max_block_duration: str = "2h"
) -> None:
    """``backfill_openmetrics`` from a file (samples too many to hold in memory).

    promtool reads the whole input once per block it writes: for days of samples, a
    longer ``max_block_duration`` (e.g. "486h") makes that one pass, not one per 2 h."""
    subprocess.run(
        [
            require_binary("promtool"),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--quiet",
            f"--max-block-duration={max_block_duration}",
            str(source),
            str(workdir / "data"),
        ],
        check=True,
        capture_output=True,
    )
