"""``worker console`` as a server process of the stack: for the local twin, the tests and
the benchmark (``python -m worker console`` on loopback, ready once ``/healthz`` answers)."""

from __future__ import annotations

import sys
from pathlib import Path

from stack.fleet import python_env
from stack.servers import HttpServer, free_port


def console_server(
    workdir: Path, redis_url: str, password: str, *, port: int | None = None, **env: str
) -> HttpServer:
    """A console (not started) on ``127.0.0.1:port`` (default: a free port) reading the
    broker at ``redis_url``; ``env`` adds settings (``CONSOLE_READ_ONLY="1"``, ...)."""
    port = port or free_port()
    environment = python_env(
        REDIS_URL=redis_url,
        CONSOLE_HOST="127.0.0.1",
        CONSOLE_PORT=str(port),
        CONSOLE_PASSWORD=password,
        **env,
    )
    argv = [sys.executable, "-m", "worker", "console"]
    return HttpServer(argv, port, workdir, f"console-{port}", environment, ready_path="/healthz")
