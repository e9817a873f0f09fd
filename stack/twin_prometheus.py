"""The twin's Prometheus members, started as compose starts them: through
``prometheus/start.sh`` (which adds ``remote_write`` when a URL is given), with
``--enable-feature=expand-external-labels`` and each member's own ``PROMETHEUS_REPLICA``,
so the committed ``external_labels`` read the same values as in compose."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from stack.servers import PrometheusServer, prometheus_server

START_SCRIPT = Path(__file__).resolve().parent.parent / "prometheus" / "start.sh"
#: The members' compose service names, which are also their ``replica`` label values.
MEMBERS = ("prometheus", "prometheus-2")
#: compose's default ``PROMETHEUS_CLUSTER``: the ``cluster`` label of every member.
CLUSTER = "worker-fleet"


def prometheus_member(
    workdir: Path,
    config: str,
    port: int,
    index: int,
    *,
    remote_write_url: str | None = None,
    extra: Sequence[str] = (),
) -> PrometheusServer:
    """Member ``index`` of the pair (0: ``prometheus``, 1: ``prometheus-2``) on ``config``
    (its compose addresses already swapped), its TSDB and effective config in ``workdir``;
    ``remote_write_url``: what ``PROMETHEUS_REMOTE_WRITE_URL`` would be (None: unset)."""
    name = MEMBERS[index]
    server = prometheus_server(
        workdir, config, port, "--enable-feature=expand-external-labels", *extra
    )
    server.argv = ["/bin/sh", str(START_SCRIPT), *server.argv]
    server.env = {
        **os.environ,
        "PROMETHEUS_REPLICA": name,
        "PROMETHEUS_CLUSTER": CLUSTER,
        "PROMETHEUS_REMOTE_WRITE_URL": remote_write_url or "",
        "PROMETHEUS_EFFECTIVE_DIR": str(workdir / "effective"),
    }
    server.name, server.log = name, workdir / "prometheus.log"
    return server


def remote_write_error(url: str | None) -> str | None:
    """The one line ``start.sh`` stops on for this ``PROMETHEUS_REMOTE_WRITE_URL``, or None
    when it is fine: the script is the one judge of the value, for compose and the twin."""
    if not url:
        return None
    result = subprocess.run(
        ["/bin/sh", str(START_SCRIPT), "--check"],
        env={**os.environ, "PROMETHEUS_REMOTE_WRITE_URL": url},
        capture_output=True,
        text=True,
    )
    if result.returncode == 0:
        return None
    return result.stderr.strip() or "PROMETHEUS_REMOTE_WRITE_URL: rejected"
