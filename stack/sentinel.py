"""A Redis Sentinel set on loopback: one master, one replica, three sentinels.

What ``REDIS_SENTINELS`` expects in production, small: the sentinels agree (quorum 2 of
3) that the master is down after ``down_after_ms`` and promote the replica. Every port is
free and on 127.0.0.1; ``redis_sentinel_set`` stops every process it started. The tests'
failover proof and the twin (``--sentinel``) start it.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stack.poll import wait_until
from stack.servers import Process, RedisServer, free_port, redis_server, require_binary, running

#: The master's name in ``sentinel monitor``: ``REDIS_SENTINEL_MASTER``.
MASTER_NAME = "worker"


@dataclass
class SentinelSet:
    """The servers of one set; ``master`` and ``replica`` are the roles at start."""

    master: RedisServer
    replica: RedisServer
    sentinels: list[Process]
    name: str = MASTER_NAME

    @property
    def addresses(self) -> str:
        """``REDIS_SENTINELS``: ``127.0.0.1:port,...``."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        """A replica's environment for this set (``REDIS_URL`` must then be unset)."""
        return {"REDIS_SENTINELS": self.addresses, "REDIS_SENTINEL_MASTER": self.name}

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers knows it."""
        for sentinel in self.sentinels:
            out = _cli(sentinel.port, "SENTINEL", "get-master-addr-by-name", self.name)
            lines = out.split()
            if len(lines) == 2 and lines[1].isdigit():
                return int(lines[1])
        return None

    def server_on(self, port: int) -> RedisServer:
        return self.master if self.master.port == port else self.replica


def _cli(port: int, *command: str) -> str:
    done = subprocess.run(
        [require_binary("redis-cli"), "-p", str(port), *command],
        capture_output=True,
        text=True,
        timeout=5,
    )
    return done.stdout


def sentinel_conf(name: str, port: int, master_port: int, down_after_ms: int) -> str:
    return "\n".join(
        [
            f"port {port}",
            "bind 127.0.0.1",
            "daemonize no",
            "sentinel resolve-hostnames no",
            f"sentinel monitor {name} 127.0.0.1 {master_port} 2",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} {max(3 * down_after_ms, 3000)}",
            f"sentinel parallel-syncs {name} 1",
            "",
        ]
    )


@contextlib.contextmanager
def redis_sentinel_set(
    workdir: Path, name: str = MASTER_NAME, down_after_ms: int = 1000
) -> Iterator[SentinelSet]:
    """Start the set and wait until every sentinel knows the replica and the other two;
    stop everything after."""
    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(free_port())
    master_port, replica_port, *sentinel_ports = sorted(ports)
    # AOF off on both: a restarted master must come back empty-handed as a replica,
    # the way a lost host does, not with writes the new master never saw.
    # No delay before the first sync: a set is ready once the replica holds the data.
    common = ("--appendonly", "no", "--repl-diskless-sync-delay", "0")
    master = redis_server(workdir / "master", master_port, *common)
    replica = redis_server(
        workdir / "replica",
        replica_port,
        *common,
        "--replicaof",
        "127.0.0.1",
        str(master_port),
    )
    sentinels = []
    for port in sentinel_ports:
        where = workdir / f"sentinel-{port}"
        where.mkdir(parents=True, exist_ok=True)
        conf = where / "sentinel.conf"  # sentinels rewrite it: one file each
        conf.write_text(sentinel_conf(name, port, master_port, down_after_ms))
        argv = [require_binary("redis-server"), str(conf), "--sentinel"]
        sentinels.append(Process(argv, port, where, name=f"sentinel-{port}"))
    with contextlib.ExitStack() as stack:
        for server in (master, replica, *sentinels):
            stack.enter_context(running(server))
        found = SentinelSet(master, replica, sentinels, name)
        wait_until(
            lambda: "master_link_status:up" in _cli(replica_port, "INFO", "replication"),
            30,
            "the replica to sync with the master",
            0.05,
        )
        for sentinel in sentinels:
            wait_until(
                lambda s=sentinel: _knows_all(s.port, name),
                30,
                f"sentinel {sentinel.port} to see the replica and two other sentinels",
                0.1,
            )
        yield found


def _knows_all(port: int, name: str) -> bool:
    out = _cli(port, "SENTINEL", "master", name).split()
    fields = dict(zip(out[::2], out[1::2], strict=False))
    return fields.get("num-slaves") == "1" and fields.get("num-other-sentinels") == "2"
