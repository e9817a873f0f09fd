"""Real servers for tests: started on free loopback ports, stopped afterwards.

Every test that needs Redis, Prometheus or Alertmanager starts its own process through
this module, so the suite never touches a server already running on a standard port and
fault-injection tests can stop and restart what they started.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from worker.procs import (  # noqa: F401  (the suite's server helpers live in the package)
    AlertmanagerServer,
    HttpServer,
    Process,
    PrometheusServer,
    RedisServer,
    alertmanager_server,
    free_port,
    port_is_free,
    prometheus_server,
    redis_server,
    require_binary,
    running,
    wait_for_port,
)


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
