"""Real servers on loopback ports, owned by whoever started them.

The local-process twin of the stack (``stack.twin``), the test suite and the benchmarks
start Redis, Prometheus and Alertmanager through this module, on free ports, so they
never touch a server already running on a standard port and fault-injection tests can
stop and restart what they started (the servers only tests start, RabbitMQ and a Redis
Cluster, are in ``tests.support.servers``). Each process runs in a process group of its
own, so stopping it also stops its children, and it is told to die with its parent
(``PR_SET_PDEATHSIG``) so that even a SIGKILLed owner leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
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
    workdir: Path,
    config_file: Path,
    port: int | None = None,
    *extra: str,
    cluster_port: int | None = None,
    peers: Sequence[str] = (),
) -> AlertmanagerServer:
    """A prometheus-alertmanager on loopback, its state in ``workdir/data``. Gossip is off
    (nothing binds 0.0.0.0:9094) unless ``cluster_port`` is given: then it gossips on
    127.0.0.1:<cluster_port> with ``peers`` (``host:port`` of the others' cluster ports)."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    listen = f"127.0.0.1:{cluster_port}" if cluster_port else ""
    argv = [
        require_binary("prometheus-alertmanager"),
        f"--config.file={config_file}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--cluster.listen-address={listen}",
        *(f"--cluster.peer={peer}" for peer in peers),
        *extra,
    ]
    return AlertmanagerServer(argv, port, workdir)
