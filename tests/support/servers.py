"""Servers that only tests start: a private RabbitMQ node and a Redis Cluster, on free
loopback ports, owned and stopped like the twin's servers (``stack.servers``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stack.poll import wait_until
from stack.servers import (
    Process,
    RedisServer,
    free_port,
    redis_server,
    require_binary,
    running,
)


@dataclass
class RabbitmqServer(Process):
    epmd_port: int = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        super().stop(sig, timeout)
        node = ["pgrep", "-f", f"test{self.port}@localhost"]
        with contextlib.suppress(AssertionError):  # the node outlives the launcher briefly
            wait_until(
                lambda: subprocess.run(node, capture_output=True).returncode != 0,
                timeout,
                interval=0.2,
            )
        # epmd daemonizes out of our process group; it serves only this node's port.
        subprocess.run(
            ["epmd", "-kill"],
            env={**os.environ, "ERL_EPMD_PORT": str(self.epmd_port)},
            capture_output=True,
            check=False,
        )
        if self.workdir.name.startswith("rabbitmq-test-"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def rabbitmq_server(workdir: Path) -> RabbitmqServer:
    """A private rabbitmq-server: its own node name, ports, epmd and data dirs.

    Debian's ``/etc/rabbitmq`` files are bypassed (they pin the standard port), and as root
    the node runs as the ``rabbitmq`` user, which must own its data dirs.
    """
    server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if not Path(server).exists():
        raise RuntimeError("rabbitmq-server is not installed; scripts/test installs it on Debian")
    if os.geteuid() == 0:
        # the rabbitmq user must reach its data dirs, and pytest's tmp dirs are root-only
        workdir = Path(tempfile.mkdtemp(prefix="rabbitmq-test-"))
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    for sub in ("mnesia", "log"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    (workdir / "enabled_plugins").write_text("[].\n")
    (workdir / "rabbitmq-env.conf").write_text("")
    (workdir / "rabbitmq.conf").write_text(
        f"listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n"
    )
    env = {
        "HOME": str(workdir),
        "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
        "RABBITMQ_NODENAME": f"test{port}@localhost",
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
    }
    argv = ["env", *(f"{k}={v}" for k, v in env.items()), server]
    if os.geteuid() == 0:
        shutil.chown(workdir, "rabbitmq", "rabbitmq")
        for path in workdir.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        argv = ["runuser", "-u", "rabbitmq", "--", *argv]
    return RabbitmqServer(argv, port, workdir, epmd_port=epmd_port)


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
    def ok(node: RedisServer) -> bool:
        info = subprocess.run(
            [require_binary("redis-cli"), "-p", str(node.port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return "cluster_state:ok" in info

    for node in nodes:
        wait_until(lambda node=node: ok(node), timeout, f"cluster ok on port {node.port}", 0.1)
