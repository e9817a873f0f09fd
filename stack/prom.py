"""Prometheus from the outside: its durations, its HTTP API, and promtool's backfill."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stack.servers import require_binary


def backfill_openmetrics(text: str, workdir: Path) -> None:
    """Write samples (OpenMetrics with timestamps, ending in '# EOF') as TSDB blocks into
    ``workdir/data`` with promtool, so a prometheus_server(workdir) started afterwards
    holds exactly these samples."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "backfill.om"
    source.write_text(text)
    subprocess.run(
        [require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--quiet",
         str(source), str(workdir / "data")],
        check=True,
        capture_output=True,
    )  # fmt: skip
