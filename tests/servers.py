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
import tempfile
import time
import urllib.request
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


@dataclass
class PrometheusServer(Process):
    def start(self, timeout: float = 15.0) -> PrometheusServer:
        """Return once Prometheus answers queries (its port opens before the TSDB is loaded)."""
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prometheus not ready: {self.log.read_text()[-2000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


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


@dataclass
class RabbitmqServer(Process):
    epmd_port: int = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        super().stop(sig, timeout)
        deadline = time.monotonic() + timeout  # the node outlives the launcher briefly
        while (
            time.monotonic() < deadline
            and subprocess.run(
                ["pgrep", "-f", f"test{self.port}@localhost"], capture_output=True
            ).returncode
            == 0
        ):
            time.sleep(0.2)
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
