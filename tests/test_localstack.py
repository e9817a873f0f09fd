"""The local-process twin of the stack (``make up-local``), driven as a user and as a library.

One twin runs per test: Redis, two real worker replicas, Prometheus (committed config,
targets swapped, 1 s scrape and evaluation), Alertmanager (committed config, receivers
pointed at the twin's alert receiver), the alert receiver and the load generator. Each
test ends by checking that nothing it started still runs and every port is free again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

from alerts.detect import group_interval
from alerts.render import render_rules
from stack import prom
from stack.fleet import ROOT
from stack.poll import wait_until
from stack.servers import port_is_free, require_binary
from stack.twin import ALERTMANAGER_CONFIG, PROMETHEUS_CONFIG, LocalStack
from stack.twin_config import twin_alertmanager_config, twin_prometheus_config, with_route_timing
from worker.redis_keys import RedisKeys

KEYS = RedisKeys()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FAST = {"scrape_interval": "1s", "evaluation_interval": "1s"}
QUICK_JOBS = {"SIM_LATENCY_SECONDS": "0.05-0.2", "REDIS_HEALTH_INTERVAL_SECONDS": "0.5"}


def worker_up(stack: LocalStack) -> dict[str, str]:
    return {r["metric"]["instance"]: r["value"][1] for r in stack.query('up{job="worker"}')}


def assert_nothing_left(stack: LocalStack) -> None:
    assert len(stack.processes) >= 4 + len(stack.replicas)
    assert [p.name for p in stack.processes if p.group_alive] == []
    ports = [p.port for p in stack.processes if p.port is not None]
    assert [port for port in ports if not port_is_free(port)] == []


def test_twin_scrapes_both_replicas_runs_load_and_stops_cleanly(tmp_path):
    stack = LocalStack(
        tmp_path, **FAST, replica_env=QUICK_JOBS, loadgen_rate=20, loadgen_args=["--seed", "7"]
    )
    try:
        stack.start()
        replicas = {r.target for r in stack.replicas}
        assert len(replicas) == 2
        # Prometheus finds both replicas and scrapes them successfully.
        wait_until(lambda: worker_up(stack) == dict.fromkeys(replicas, "1"), timeout=30)
        # It loaded the committed rules and sends alerts to the twin's Alertmanager.
        groups = {g["name"] for g in prom.api(stack.prometheus.url, "rules", timeout=5)["groups"]}
        committed = set()
        for rule_file in (ROOT / "prometheus" / "rules").glob("*.yml"):
            committed |= {g["name"] for g in yaml.safe_load(rule_file.read_text())["groups"]}
        assert groups == committed and groups
        # ...to both members of the Alertmanager pair, which gossip with each other.
        active = prom.api(stack.prometheus.url, "alertmanagers", timeout=5)["activeAlertmanagers"]
        assert sorted(a["url"] for a in active) == sorted(
            f"{member.url}/api/v2/alerts" for member in stack.alertmanagers
        )
        assert len(stack.alertmanagers) == 2
        for member in stack.alertmanagers:
            with urllib.request.urlopen(f"{member.url}/api/v2/status", timeout=5) as r:
                cluster = json.load(r)["cluster"]
            assert cluster["status"] == "ready" and len(cluster["peers"]) == 2, cluster
        # It scrapes itself and every Alertmanager (jobs prometheus and alertmanager).
        pipeline = 'up{job=~"prometheus|alertmanager"}'
        wait_until(
            lambda: len([r for r in stack.query(pipeline) if r["value"][1] == "1"]) == 3, timeout=30
        )
        # The load generator's jobs are processed by both replicas, in every queue.
        completed = 'sum by (instance, queue) (worker_jobs_completed_total{job="worker"})'

        def both_replicas_all_queues() -> bool:
            seen = {(r["metric"]["instance"], r["metric"]["queue"]) for r in stack.query(completed)}
            return seen >= {(i, q) for i in replicas for q in ("critical", "default", "fast")}

        wait_until(both_replicas_all_queues, timeout=45, interval=0.5)
        assert "sent" in stack.loadgen.log.read_text()
    finally:
        stack.stop()
    assert_nothing_left(stack)


def test_faults_the_end_to_end_tests_inject(tmp_path):
    """kill/start a replica, pause/resume the fleet, stop/start Redis; an alert arrives."""
    rules = tmp_path / "rules"
    render_rules({"alerts": {"WorkerDown": {"for": "2s"}}}, rules)
    stack = LocalStack(
        tmp_path / "run",
        **FAST,
        rules_dir=rules,
        alertmanager_timing={"group_wait": "1s", "group_interval": "1s"},
        replica_env=QUICK_JOBS,
    )
    try:
        stack.start()
        first, second = (r.target for r in stack.replicas)
        wait_until(lambda: worker_up(stack) == {first: "1", second: "1"}, timeout=30)

        stack.kill_replica(0)
        assert not stack.replicas[0].group_alive
        wait_until(lambda: worker_up(stack) == {first: "0", second: "1"}, timeout=15)
        # The alert reaches the pager receiver through the committed routing.
        fired = wait_until(
            lambda: [
                a
                for a in stack.alerts(receiver="pager", alertname="WorkerDown")
                if first in a["summary"] and a["status"] == "firing"
            ],
            timeout=30,
            interval=0.5,
        )
        assert fired[0]["severity"] == "critical"
        assert second not in " ".join(a["summary"] for a in stack.alerts(status="firing"))
        stack.start_replica(0)
        wait_until(lambda: worker_up(stack) == {first: "1", second: "1"}, timeout=15)

        stack.pause_workers([1])  # stalled, not dead: its scrapes time out
        wait_until(lambda: worker_up(stack)[second] == "0", timeout=15)
        stack.resume_workers([1])
        wait_until(lambda: worker_up(stack)[second] == "1", timeout=15)

        # Redis restarts keep queued jobs (AOF); replicas report the outage meanwhile.
        client = redis.Redis.from_url(stack.redis.url)
        client.rpush(KEYS.queue("canary"), b"kept")
        stack.stop_redis()
        status = "max(worker_redis_connection_status)"
        wait_until(lambda: stack.query(status)[0]["value"][1] == "0", timeout=20, interval=0.5)
        stack.start_redis()
        assert client.lrange(KEYS.queue("canary"), 0, -1) == [b"kept"]
        wait_until(lambda: stack.query(status)[0]["value"][1] == "1", timeout=20, interval=0.5)
    finally:
        stack.stop()
    assert_nothing_left(stack)


def test_up_local_prints_urls_and_ctrl_c_stops_everything(tmp_path):
    run_dir = tmp_path / "run"
    # What `make up-local` runs: installs what is missing, then the twin in the foreground.
    proc = subprocess.Popen(
        [
            str(ROOT / "scripts" / "up"),
            "--local",
            "--run-dir",
            str(run_dir),
            "--rate",
            "5",
            "--scrape-interval",
            "1s",
            "--env",
            "SIM_LATENCY_SECONDS=0.1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        urls = dict(
            re.findall(r"^(Prometheus|Alertmanager|Alert receiver)\s+(http://\S+)", output, re.M)
        )
        assert set(urls) == {"Prometheus", "Alertmanager", "Alert receiver"}, output
        pids = [int(p) for p in re.findall(r"pid (\d+)", output)]
        assert len(pids) == 2, output
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", output)]
        # The derived Prometheus config is the committed one with the replicas as targets.
        derived = yaml.safe_load((run_dir / "prometheus" / "prometheus.yml").read_text())
        worker_job = next(j for j in derived["scrape_configs"] if j["job_name"] == "worker")
        assert len(worker_job["static_configs"][0]["targets"]) == 2
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Stopped." in rest
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert [port for port in ports if not port_is_free(port)] == []


def test_derived_prometheus_config_keeps_everything_but_the_addresses(tmp_path):
    committed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    warnings: list[str] = []
    derived = twin_prometheus_config(
        committed,
        {
            "worker:9191": ["127.0.0.1:1001", "127.0.0.1:1002"],
            "alertmanager:9093": ["127.0.0.1:2000"],
            "alertmanager-2:9093": ["127.0.0.1:2001"],
            "localhost:9090": ["127.0.0.1:3000"],
        },
        config_dir=PROMETHEUS_CONFIG.parent,
        warn=warnings.append,
    )
    assert warnings == []
    assert derived["global"] == committed["global"]
    assert derived["rule_files"] == [
        str(PROMETHEUS_CONFIG.parent / p) for p in committed["rule_files"]
    ]
    jobs = {j["job_name"]: j for j in derived["scrape_configs"]}
    assert set(jobs) == {j["job_name"] for j in committed["scrape_configs"]}
    assert jobs["worker"]["static_configs"] == [{"targets": ["127.0.0.1:1001", "127.0.0.1:1002"]}]
    assert "dns_sd_configs" not in jobs["worker"]
    assert derived["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:2000",
        "127.0.0.1:2001",
    ]
    assert jobs["alertmanager"]["static_configs"] == [
        {"targets": ["127.0.0.1:2000", "127.0.0.1:2001"]}
    ]
    # Faster intervals for tests shorten a timeout that would exceed them.
    fast = twin_prometheus_config(
        committed, {}, config_dir=Path("."), scrape_interval="1s", warn=warnings.append
    )
    assert fast["global"]["scrape_interval"] == "1s" and fast["global"]["scrape_timeout"] == "1s"
    assert any("worker:9191" in w for w in warnings)  # an address the twin lacks is reported


def test_a_faster_twin_runs_a_group_with_its_own_interval_as_much_faster(tmp_path):
    """Evaluating every 1 s instead of 15 s, the long-window SLO group runs every 10 s
    instead of 2m30s (a 1 s twin would otherwise wait minutes for its records), and
    alerts.detect counts the same 10 s for the twin's config."""
    committed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    derived = twin_prometheus_config(
        committed,
        {},
        config_dir=PROMETHEUS_CONFIG.parent,
        evaluation_interval="1s",
        scaled_rules_dir=tmp_path / "rules",
        warn=lambda _: None,
    )
    assert sorted(Path(p).name for p in derived["rule_files"]) == sorted(
        p.name for p in (PROMETHEUS_CONFIG.parent / "rules").glob("*.yml")
    )
    groups = {
        g["name"]: g
        for path in derived["rule_files"]
        for g in yaml.safe_load(Path(path).read_text())["groups"]
    }
    assert groups["worker-slo-records-long"]["interval"] == "10000ms"
    assert all("interval" not in g for name, g in groups.items() if not name.endswith("-long"))
    assert group_interval({"interval": "2m30s"}, 1.0) == 10.0


def test_derived_alertmanager_config_sends_every_receiver_to_the_twin(tmp_path):
    committed = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    derived = twin_alertmanager_config(
        committed,
        lambda name: f"http://127.0.0.1:9/{name}",
        config_dir=ALERTMANAGER_CONFIG.parent,
        secrets_dir=tmp_path,
    )
    for receiver in derived["receivers"]:
        for kind, configs in receiver.items():
            if kind.endswith("_configs"):
                for config in configs:
                    url_file = Path(config.get("api_url_file") or config["url_file"])
                    assert url_file.read_text() == f"http://127.0.0.1:9/{receiver['name']}"
    assert (
        derived["route"] == committed["route"]
        and derived["inhibit_rules"] == committed["inhibit_rules"]
    )
    timed = with_route_timing(derived, group_wait="1s", group_interval="2s")
    assert timed["route"]["group_wait"] == "1s" and timed["route"]["group_interval"] == "2s"
    for route in timed["route"].get("routes", []):
        for key in ("group_wait", "group_interval"):
            if key in route:
                assert route[key] in ("1s", "2s")
    # The derived config loads in a real Alertmanager (amtool checks it as the twin writes it).
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(timed))
    result = subprocess.run(
        [require_binary("amtool"), "check-config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
