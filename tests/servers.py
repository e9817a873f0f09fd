"""Real servers for tests: started on free loopback ports, stopped afterwards.

Every test that needs Redis, Prometheus or Alertmanager starts its own process through
this module, so the suite never touches a server already running on a standard port and
fault-injection tests can stop and restart what they started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; scripts/test installs it on Debian")
    return path


@dataclass
class Process:
    """A server process the tests own: stop() ends it, start() brings it back on the same port."""

    argv: list[str]
    port: int
    workdir: Path
    log: Path = field(init=False)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.log = self.workdir / f"{Path(self.argv[0]).name}-{self.port}.log"

    def start(self, timeout: float = 15.0) -> Process:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"{self.argv[0]} did not start: {self.log.read_text()[-2000:]}"
            ) from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RedisServer(Process):
    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def redis_server(workdir: Path, port: int | None = None, *extra: str) -> RedisServer:
    """A redis-server on loopback with AOF on, so a restart keeps queued jobs."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        require_binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
        *extra,
    ]
    return RedisServer(argv, port, workdir)


@contextlib.contextmanager
def running(server: Process) -> Iterator[Process]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class AlertmanagerServer(Process):
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def alertmanager_server(
    workdir: Path, config_file: Path, port: int | None = None
) -> AlertmanagerServer:
    """A prometheus-alertmanager on loopback, gossip off, its state kept in workdir."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        require_binary("prometheus-alertmanager"),
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        # Empty: no cluster listener, so nothing binds 0.0.0.0:9094.
        "--cluster.listen-address=",
    ]
    return AlertmanagerServer(argv, port, workdir)
