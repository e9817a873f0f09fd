"""Real servers on loopback ports, owned by whoever started them.

The local-process twin of the stack (``stack.twin``), the test suite and the benchmarks
start Redis (alone or as a cluster), Prometheus, Alertmanager and RabbitMQ through this
module, on free ports, so they never touch a server already running on a standard port
and fault-injection tests can stop and restart what they started. Each process runs in a
process group of its own, so stopping it also stops its children, and it is told to die
with its parent (``PR_SET_PDEATHSIG``) so that even a SIGKILLed owner leaves nothing
running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stack.poll import wait_until

_PR_SET_PDEATHSIG = 1
try:  # resolved here: a forked child must not load libraries before exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on the port now (connections of a stopped server that
    linger in TIME_WAIT do not count, as servers bind with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def group_pids(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from /proc (Linux)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # After "pid (comm) ": state, ppid, pgrp, ... (comm may hold spaces and parentheses)
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry))
    return sorted(pids)


def listening_pids(port: int, among: list[int]) -> set[int]:
    """Which of the processes ``among`` hold a TCP socket listening on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(f"socket:[{inode}]")
    found = set()
    for pid in among:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        found.add(pid)
                        break
    return found


def require_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(
            f"{name} is not installed; scripts/up and scripts/test install it on Debian"
        )
    return path


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the parent thread dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Process:
    """A server process: stop() ends its process group, start() brings it back on the same port.

    ``port`` is what start() waits for (None: only check that the process stays up).
    Processes die with the thread that started them, so start them from a thread that
    lives as long as they should (the main thread, normally).
    """

    argv: list[str]
    port: int | None
    workdir: Path
    name: str = ""
    env: dict[str, str] | None = None
    log: Path = field(init=False)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.name = self.name or f"{Path(self.argv[0]).name}-{self.port}"
        self.log = self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 15.0) -> Process:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            self.wait_ready(timeout)
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"{self.name} did not start ({exc}): {self.log_tail()}") from None
        return self

    def wait_ready(self, timeout: float) -> None:
        """Return once the server serves; raise TimeoutError, or RuntimeError if it exited."""

        def ready() -> bool:
            if not self.running:
                raise RuntimeError(f"exited with code {self.proc.returncode if self.proc else '?'}")
            return self.port is None or self._serves()

        try:
            wait_until(ready, timeout)
        except AssertionError:
            raise TimeoutError(f"not ready after {timeout}s") from None

    def _serves(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
            return True
        return False

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """End the process; SIGKILL its group if it has not exited after ``timeout`` s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.send_signal(sig)
            self.send_signal(signal.SIGCONT)  # a paused process handles SIGTERM only once resumed
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                self.proc.wait()
        # Children that outlived the leader (none, normally) go with the group; return once
        # they are gone (reaped by init), so that "stopped" means no process is left.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(AssertionError):  # a process stuck in the kernel: go on
            wait_until(lambda: not self.group_alive, 5, interval=0.02)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def group_alive(self) -> bool:
        """Whether any process of this server's group still exists."""
        if self.proc is None:
            return False
        self.proc.poll()  # reap the leader if it exited
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass
class RedisServer(Process):
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"


def redis_server(
    workdir: Path, port: int | None = None, *extra: str, password: str | None = None
) -> RedisServer:
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
        *(["--requirepass", password] if password else []),
        *extra,
    ]
    return RedisServer(argv, port, workdir, password=password)


@contextlib.contextmanager
def running(server: Process) -> Iterator[Process]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class HttpServer(Process):
    """A server that is ready when ``GET ready_path`` answers 200, not merely when it listens."""

    #: None: ready as soon as the process runs (for a server with no such endpoint).
    ready_path: str | None = "/-/ready"

    def _serves(self) -> bool:
        if self.ready_path is None:
            return True
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as response:
                return response.status == 200
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class PrometheusServer(HttpServer):
    pass


class AlertmanagerServer(HttpServer):
    pass


def prometheus_server(
    workdir: Path, config: str = "scrape_configs: []\n", port: int | None = None, *extra: str
) -> PrometheusServer:
    """A prometheus on loopback with its TSDB in ``workdir/data`` (backfill blocks go there)."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(config)
    argv = [
        require_binary("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *extra,
    ]
    return PrometheusServer(argv, port, workdir)


def alertmanager_server(
    workdir: Path, config_file: Path, port: int | None = None, *extra: str
) -> AlertmanagerServer:
    """A prometheus-alertmanager on loopback, its state in ``workdir/data``; gossip off, so
    nothing binds 0.0.0.0:9094."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        require_binary("prometheus-alertmanager"),
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        *extra,
    ]
    return AlertmanagerServer(argv, port, workdir)


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
            wait_until(lambda: subprocess.run(node, capture_output=True).returncode != 0,
                       timeout, interval=0.2)  # fmt: skip
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
