"""What one replica prepares before it starts its processes: a private metrics directory
and a free metrics port.

This module must not import prometheus_client (nor anything that does): the library
decides at import whether values live in process memory or in files, and it has to see
``PROMETHEUS_MULTIPROC_DIR`` set when the worker processes, forked from this one, import
it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from worker.config import ConfigError

ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def private_metrics_dir(configured: str | None) -> Iterator[Path]:
    """Claim, empty and export (``PROMETHEUS_MULTIPROC_DIR``) this replica's directory.

    - ``configured`` None: a new temporary directory, removed when the replica stops.
    - a path: created if missing; its ``*.db`` files (left by an earlier run, which would
      add their old counts to the new ones) are deleted, nothing else is touched. The
      directory is locked (``flock`` on ``.lock``, held by every process of the replica)
      so that a second replica given the same directory stops with exit code 2 instead
      of mixing its counts into the first one's.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before the metrics directory was set")
    temporary = configured is None
    path = Path(tempfile.mkdtemp(prefix="worker-metrics-") if temporary else configured)
    lock = None
    try:
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = open(path / ".lock", "a")  # noqa: SIM115 - held for the replica's life
        except OSError as exc:
            raise ConfigError(
                f"configuration error: METRICS_DIR: cannot use {path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"configuration error: METRICS_DIR: {path} is in use by another running "
                "replica; give each replica a directory of its own"
            ) from None
        for stale in path.glob("*.db"):
            stale.unlink()
        os.environ[ENV] = str(path)
        yield path
    finally:
        if lock is not None:
            lock.close()
        if temporary:
            shutil.rmtree(path, ignore_errors=True)


def check_metrics_port(host: str, port: int) -> None:
    """Stop at start (exit 2) when the metrics address cannot be bound, rather than run a
    replica nobody can scrape. Port 0 asks for any free port (logged at start)."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(
            f"configuration error: METRICS_PORT: cannot listen on {host}:{port} "
            f"({exc.strerror or exc})"
        ) from None
