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
class RedisClusterServers:
    """A Redis Cluster of masters only, on loopback; ``nodes`` can be stopped one by one."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return self.nodes[0].url.removesuffix("/0")

    def client(self, **options):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(self.url, **options)


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@contextlib.contextmanager
def redis_cluster(workdir: Path, masters: int = 3) -> Iterator[RedisClusterServers]:
    """Build a real cluster: ``masters`` redis-server nodes, slots assigned by redis-cli."""
    ports = _distinct_free_ports(2 * masters)
    nodes = []
    for i, (port, bus_port) in enumerate(zip(ports[:masters], ports[masters:], strict=True)):
        nodes.append(
            redis_server(
                workdir / f"node{i}",
                port,
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                str(bus_port),
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            )
        )
    with contextlib.ExitStack() as stack:
        for node in nodes:
            stack.enter_context(running(node))
        created = subprocess.run(
            [
                require_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        _wait_cluster_ok(nodes)
        yield RedisClusterServers(nodes)


def _wait_cluster_ok(nodes: list[RedisServer], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        info = subprocess.run(
            [require_binary("redis-cli"), "-p", str(pending[0].port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        if "cluster_state:ok" in info:
            pending.pop(0)
        elif time.monotonic() > deadline:
            raise TimeoutError(f"cluster not ok on port {pending[0].port}: {info[:300]}")
        else:
            time.sleep(0.1)
