"""docker-compose.yml for real: the worker image built from the Dockerfile, the stack run by
the Compose v2 binary on Podman (its Docker API), proven on the running containers.

Every service but Grafana runs (no Grafana image or package is reachable here; its
dashboards are checked against Grafana's schema instead). The base images are the
stand-ins of ``scripts/standin-images``. The run uses the committed compose file, plus an
override of the test's own that only publishes Redis and the alert receiver on loopback
(so the test reads them) and mounts Prometheus' and Alertmanager's committed configs with
shorter intervals (``prometheus.yml``: scrape every 3 s; the rules: WorkerDown's ``for``
3 s; Alertmanager: group_wait 1 s), so that the run costs CI minutes, not tens of them.

The tests run in order on one stack: each leaves it as the next one expects.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from alerts.detect import time_to_detect
from alerts.render import render_rules
from stack.servers import free_port
from tests.support.compose import (
    CA_DIR,
    NAMESPACE,
    ROOT,
    Engine,
    Project,
    alertmanager_config,
    alerts,
    by_instance,
    claimed,
    completed_ids,
    held,
    proc_status,
    prom,
    prometheus_config,
    replica_address,
    wait_for,
    worker_targets,
)
from tests.support.jobs import client, send_jobs

# A cold run builds the stand-in images (2-3 min) in its first test.
pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

PROJECT = "worker-monitoring-e2e"
IMAGE = "worker-monitoring-worker:local"
ALERT_OVERRIDES = {
    "alerts": {"WorkerDown": {"for": "3s"}},
    "pipelineAlerts": {"WorkerReplicasMissing": {"for": "3s"}},
}
#: Published by the override only: the test's way in (the stack publishes neither).
TEST_PORTS = {"redis": 6379, "alert-receiver": 9095}
#: The section of the run's report (tests/support/report.py) with what this test measured.
COMPOSE = "Compose end-to-end (Podman)"


# --- the stack ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir():
    """The engine's socket and the files the stack mounts, for as long as it runs: not in
    pytest's basetemp, which another pytest session on the machine may prune meanwhile."""
    path = Path(tempfile.mkdtemp(prefix="worker-monitoring-compose-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(workdir):
    (workdir / "podman").mkdir()
    engine = Engine(workdir / "podman")
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def image(engine, report):
    """The stand-in base images (cached by recipe), then the worker image built with the
    repository's Dockerfile: what every container of the fleet runs."""
    start = time.monotonic()
    subprocess.run(
        [str(ROOT / "scripts" / "standin-images")],
        env={**engine.env, "ENGINE": "podman"},
        check=True,
        capture_output=True,
        timeout=900,
    )
    report.took(COMPOSE, "stand-in base images (scripts/standin-images)", start)
    previous = engine.podman("image", "inspect", "-f", "{{.Id}}", IMAGE, check=False).strip()
    start = time.monotonic()
    engine.podman(
        "build", "-q", "-t", IMAGE, "-v", f"{CA_DIR}:/etc/ssl/certs:ro", str(ROOT), timeout=900
    )
    report.took(COMPOSE, f"worker image build (storage: {engine.driver})", start)
    if previous and previous != engine.podman("image", "inspect", "-f", "{{.Id}}", IMAGE).strip():
        # The image this build replaced (its layers stay as the build's cache).
        engine.podman("rmi", previous, check=False)
    return IMAGE


@pytest.fixture(scope="module")
def stack(engine, image, workdir, report):
    """The stack up and healthy (every service but Grafana, load generator included);
    taken down with its volumes at the end, whatever happened."""
    work = workdir / "compose"
    work.mkdir()
    ports = {name: free_port() for name in ("prometheus", "alertmanager", "console", *TEST_PORTS)}
    env_file = work / "env"
    env_file.write_text(
        "\n".join(
            [
                "GRAFANA_ADMIN_PASSWORD=unused-grafana-does-not-run",
                f"REDIS_PASSWORD={secrets.token_hex(16)}",
                f"PROMETHEUS_PORT={ports['prometheus']}",
                f"ALERTMANAGER_PORT={ports['alertmanager']}",
                f"CONSOLE_PASSWORD={secrets.token_hex(16)}",
                f"CONSOLE_PORT={ports['console']}",
                "SIM_LATENCY_SECONDS=2-4",
                "METRICS_QUEUE_SAMPLE_SECONDS=2",
                "LOADGEN_JOBS_PER_DAY=259200",  # 3 jobs/s
                "LOADGEN_ORGS=50",
                "",
            ]
        )
    )
    override = work / "override.yml"
    override.write_text("services: {}\n")
    project = Project(engine, PROJECT, env_file, override)
    project.compose("down", "-v", "--remove-orphans", "-t", "5")  # a crashed run's leftovers
    services = project.config()["services"]
    alertmanagers = [n for n, s in services.items() if "prom/alertmanager" in s.get("image", "")]
    rules = work / "rules"
    render_rules(ALERT_OVERRIDES, rules)
    prom, am = prometheus_config(work), alertmanager_config(work)
    override.write_text(
        yaml.safe_dump(
            {
                "services": {
                    **{
                        name: {"ports": [f"127.0.0.1:{ports[name]}:{port}"]}
                        for name, port in TEST_PORTS.items()
                    },
                    "prometheus": {
                        "volumes": [
                            f"{prom}:/etc/prometheus/prometheus.yml:ro",
                            f"{rules}:/etc/prometheus/rules:ro",
                        ]
                    },
                    **{
                        name: {"volumes": [f"{am}:/etc/alertmanager/alertmanager.yml:ro"]}
                        for name in alertmanagers
                    },
                }
            }
        )
    )
    project.ports = ports
    project.alertmanagers = alertmanagers
    project.services = [name for name in services if name != "grafana"]
    project.bound = {d.alert: d for d in time_to_detect(prom, am, overrides=ALERT_OVERRIDES)}
    project.password = env_file.read_text().split("REDIS_PASSWORD=")[1].split()[0]
    engine.run_health_checks(PROJECT)
    try:
        start = time.monotonic()
        project.up(project.services)
        report.took(COMPOSE, "compose up --wait to healthy (cold volumes)", start)
        yield project
    finally:
        project.remove()


# --- the tests, in order --------------------------------------------------------------------


def test_the_image_runs_every_command_the_stack_gives_it(engine, image):
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    commands = {tuple(s["command"][:2]) for s in services.values() if "build" in s}
    assert {("worker", "run"), ("stack", "alert-receiver"), ("stack", "loadgen")} <= commands
    commands.add(("worker", "healthcheck"))
    script = " && ".join(f"{a} {b} --help >/dev/null" for a, b in sorted(commands))
    out = engine.podman("run", "--rm", image, "sh", "-c", f"{script} && id -u")
    assert out.split() == ["10001"]


def test_prometheus_finds_both_replicas_by_dns_loads_the_rules_and_reaches_alertmanager(stack):
    replicas = {replica_address(c) for c in stack.containers("worker")}
    assert len(replicas) == 2
    wait_for(
        lambda: worker_targets(stack) == dict.fromkeys(replicas, "up"),
        60,
        lambda: f"both replicas {sorted(replicas)} up, Prometheus has {worker_targets(stack)}",
    )
    assert by_instance(stack, 'up{job="worker"}') == dict.fromkeys(replicas, 1.0)
    groups = prom(stack, "rules")["groups"]
    alert_rules = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert "WorkerDown" in alert_rules and len(alert_rules) >= 7
    # Every rule healthy; the long-window SLO records (every 2m30s) may not have run yet.
    slow = {g["name"] for g in groups if g["interval"] > min(h["interval"] for h in groups)}
    assert slow == {"worker-slo-records-long"}, slow
    bad = [(g["name"], r) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert all(name in slow and r["health"] == "unknown" for name, r in bad), bad
    wanted = {f"http://{name}:9093/api/v2/alerts" for name in stack.alertmanagers}
    wait_for(
        lambda: {a["url"] for a in prom(stack, "alertmanagers")["activeAlertmanagers"]} == wanted,
        30,
        f"Prometheus sending to {sorted(wanted)}",
    )


def test_load_generator_jobs_complete_on_both_replicas(stack):
    query = 'sum by (instance) (worker_jobs_completed_total{job="worker"})'
    before = by_instance(stack, query)
    wait_for(
        lambda: (
            len(now := by_instance(stack, query)) == 2
            and all(now[i] > before.get(i, 0) for i in now)
        ),
        60,
        lambda: f"completions growing on both replicas: {before} -> {by_instance(stack, query)}",
    )


def test_each_container_runs_as_its_user_hardened(stack):
    expected_uid = {s: "10001" for s in ("worker", "alert-receiver", "loadgen", "console")}
    seen = set()
    for container in stack.containers():
        service = container["Config"]["Labels"]["com.docker.compose.service"]
        seen.add(service)
        status = proc_status(stack, container)
        uid = status["Uid"].split()[0]
        if service in expected_uid:
            assert uid == expected_uid[service], (service, uid)
        assert uid != "0", f"{service} runs as root"
        # no-new-privileges, no capability left, a memory limit, a read-only root.
        assert status["NoNewPrivs"].strip() == "1", service
        assert int(status["CapEff"], 16) == 0, (service, status["CapEff"])
        host = container["HostConfig"]
        assert host["Memory"] > 0, service
        assert host["ReadonlyRootfs"] is True, service
    assert seen == set(stack.services)
    (redis_ctr,) = stack.containers("redis")
    users = stack.engine.podman("top", redis_ctr["Id"], "user", "args").splitlines()[1:]
    assert users and all(line.split()[0] == "redis" for line in users), users
    # So does whatever runs beside it: the health check, an operator's `exec`.
    assert stack.engine.podman("exec", redis_ctr["Id"], "id", "-un").strip() == "redis"
    # The password: needed by every client, given to redis-cli by environment, never argv.
    refused = stack.engine.podman(
        "exec", "-e", "REDISCLI_AUTH=", redis_ctr["Id"], "redis-cli", "ping", check=False
    )
    assert "NOAUTH" in refused
    assert stack.password not in json.dumps(redis_ctr["Config"]["Healthcheck"])
    assert f"REDISCLI_AUTH={stack.password}" in redis_ctr["Config"]["Env"]
    # Prometheus' lifecycle API is off: nothing that reaches its port can shut it down.
    quit_url = f"http://127.0.0.1:{stack.ports['prometheus']}/-/quit"
    with pytest.raises(urllib.error.HTTPError) as refused_quit:
        urllib.request.urlopen(urllib.request.Request(quit_url, method="POST"), timeout=10)
    assert refused_quit.value.code == 403
    assert prom(stack, "query", query="up")["result"]


def test_a_killed_replica_comes_back_by_its_restart_policy(stack, report):
    victim = stack.containers("worker")[0]
    restarts = victim["RestartCount"]
    os.kill(victim["State"]["Pid"], signal.SIGKILL)
    start = time.monotonic()

    def back():
        (now,) = [c for c in stack.containers("worker") if c["Id"] == victim["Id"]] or [None]
        return (
            now
            and now["RestartCount"] == restarts + 1
            and now["State"]["Running"]
            and now["State"]["Pid"] != victim["State"]["Pid"]
        )

    wait_for(back, 60, "the killed replica restarted by on-failure")
    wait_for(
        lambda: (
            worker_targets(stack)
            == dict.fromkeys(map(replica_address, stack.containers("worker")), "up")
        ),
        60,
        lambda: f"both replicas scraped up again: {worker_targets(stack)}",
    )
    report.took(COMPOSE, "kill -9 of a replica to both targets up again", start)


def test_a_replica_that_keeps_crashing_is_given_up_after_ten_restarts(stack, report):
    """The restart policy's max_attempts (10): a replica killed again each time it comes
    back stays down after its tenth restart, until an operator starts it. Given up, it
    leaves DNS and so `up` (WorkerDown cannot see it): WorkerReplicasMissing tells the
    chat, and resolves once the replica is started again."""
    victim_id = stack.containers("worker")[0]["Id"]
    before = len(alerts(stack, "WorkerReplicasMissing"))

    def victim() -> dict:
        return next(c for c in stack.containers("worker", all=True) if c["Id"] == victim_id)

    for _ in range(12):  # bounded: the policy must give up within 10 restarts
        now = victim()
        if not now["State"]["Running"]:
            break
        os.kill(now["State"]["Pid"], signal.SIGKILL)
        wait_for(
            lambda now=now: (
                victim()["RestartCount"] > now["RestartCount"]
                or victim()["State"]["Status"] == "exited"
            ),
            30,
            "a restart, or the policy giving up",
            interval=0.2,
        )
        wait_for(
            lambda: victim()["State"]["Running"] or victim()["State"]["Status"] == "exited",
            30,
            "the replica running again, or left exited",
            interval=0.2,
        )
    given_up_at = time.monotonic()
    time.sleep(3)  # still down: nothing restarts it any more
    given_up = victim()
    assert given_up["State"]["Status"] == "exited" and given_up["RestartCount"] == 10

    def last_missing() -> str | None:
        """The status of the latest WorkerReplicasMissing notification since the test began."""
        notified = alerts(stack, "WorkerReplicasMissing")[before:]
        return notified[-1]["status"] if notified else None

    # The crash loop itself may have raised it (and resolved it while the replica was back).
    fired_already = last_missing() == "firing"
    wait_for(
        lambda: last_missing() == "firing",
        60,
        lambda: f"WorkerReplicasMissing firing: {alerts(stack, 'WorkerReplicasMissing')}",
        interval=0.25,
    )
    fired = alerts(stack, "WorkerReplicasMissing")[-1]
    assert fired["receiver"] == "chat"
    assert "Fewer than 2 worker replicas up" in fired["summary"]
    bound, measured = stack.bound["WorkerReplicasMissing"], time.monotonic() - given_up_at
    took = "notified during the crash loop already" if fired_already else f"{measured:.1f} s"
    what = "WorkerReplicasMissing, replica given up: last kill to notification"
    report.value(COMPOSE, what, f"{took} (computed worst case {bound.total:g} s)")
    # As for WorkerDown below: the bound, plus what Alertmanager and the receiver take.
    assert fired_already or measured <= bound.total + 5, (measured, bound)
    stack.compose("start", "worker")
    wait_for(
        lambda: (
            worker_targets(stack)
            == dict.fromkeys(map(replica_address, stack.containers("worker")), "up")
        ),
        60,
        lambda: f"both replicas scraped up again once started: {worker_targets(stack)}",
    )
    wait_for(lambda: last_missing() == "resolved", 60, "WorkerReplicasMissing resolved")


def test_worker_down_pages_for_a_hung_replica_and_resolves(stack, report):
    """A replica that stops answering (frozen: ``pause``) is down for Prometheus after its
    scrape times out; WorkerDown reaches the receiver within the computed worst case and
    is resolved when the replica answers again. (A replica killed outright is back in
    about a second, by the restart policy, too soon for any ``for`` to page.)"""
    victim = stack.containers("worker")[1]
    instance = replica_address(victim)
    before = len(alerts(stack, "WorkerDown"))
    stack.engine.podman("pause", victim["Id"])
    fault = time.monotonic()

    def notified(status: str) -> list[dict]:
        return [
            a
            for a in alerts(stack, "WorkerDown")[before:]
            if a["status"] == status and instance in a["summary"]
        ]

    def got() -> str:
        return f"WorkerDown for {instance}; the receiver has {alerts(stack, 'WorkerDown')[before:]}"

    try:
        fired = wait_for(lambda: notified("firing"), 90, lambda: f"firing: {got()}", interval=0.25)
        measured = time.monotonic() - fault
    finally:
        stack.engine.podman("unpause", victim["Id"])
    assert fired[0]["receiver"] == "pager"
    bound = stack.bound["WorkerDown"]
    parts = f"{bound.scrape:g} + {bound.evaluation:g} + {bound.for_:g} + {bound.group_wait:g}"
    what = "WorkerDown, replica hung: measured fault to notification"
    worst = f"computed worst case {bound.total:g} s = scrape+timeout, evaluation, for, group_wait"
    report.value(COMPOSE, what, f"{measured:.1f} s ({worst}: {parts})")
    # The computed worst case, plus the time Alertmanager and the receiver take to deliver.
    assert measured <= bound.total + 5, (measured, bound)
    wait_for(lambda: notified("resolved"), 90, lambda: f"resolved: {got()}")


def test_stop_with_jobs_in_flight_loses_nothing(stack, report):
    stack.compose("stop", "loadgen")
    r = client(stack.redis_url, decode_responses=True)
    sent = set(send_jobs(stack.redis_url, NAMESPACE, "agent_run", 80, orgs=25))
    in_flight = wait_for(
        lambda: claimed(r) & sent,
        30,
        lambda: (
            f"some of the jobs sent running; Redis has {sorted(r.scan_iter('*'))[:40]}, "
            f"{len(sent & set(completed_ids(r)))} of them completed, {len(claimed(r))} claimed"
        ),
        interval=0.2,
    )
    before = sent & set(completed_ids(r))
    start = time.monotonic()
    stack.compose("stop", "worker", timeout=200)
    report.took(COMPOSE, "compose stop worker with jobs in flight", start)
    completed, queued = completed_ids(r), set(held(r))
    # A replica killed mid-job would leave its messages claimed (redelivered only after the
    # lock timeout, as the one killed above left some of the load generator's); a graceful
    # stop finishes the running ones and hands the rest back.
    assert not claimed(r) & sent, "a stopped worker still holds messages"
    done = sent & set(completed)
    assert done - before, "no job finished during the grace period"
    assert done | (sent & queued) == sent, f"lost: {sorted(sent - set(completed) - queued)}"
    assert not done & queued
    assert len(completed) == len(set(completed)), "a job completed twice"
    counts = sent, in_flight, done - before, sent & queued, sent - done - queued
    what = "stop: jobs sent / claimed at stop / completed during the stop / left queued / lost"
    report.value(COMPOSE, what, " / ".join(str(len(c)) for c in counts))
    stack.sent, stack.left = sent, sent - done


def test_restart_redis_keeps_every_queued_job(stack, report):
    r = client(stack.redis_url, decode_responses=True)
    # the replicas are stopped: every one of these waits
    more = set(send_jobs(stack.redis_url, NAMESPACE, "agent_run", 40, orgs=25))
    queued = stack.left | more
    assert queued <= set(held(r))
    time.sleep(1.5)  # appendfsync everysec: on disk within a second
    stack.compose("restart", "redis", timeout=120)
    wait_for(
        lambda: stack.containers("redis")[0]["State"]["Health"]["Status"] == "healthy",
        60,
        "redis healthy again",
    )
    r = client(stack.redis_url, decode_responses=True)
    kept = set(held(r))
    assert queued <= kept, f"lost in the restart: {sorted(queued - kept)}"
    stack.compose("start", "worker", "loadgen", timeout=120)
    everything = stack.sent | more
    wait_for(
        lambda: everything <= set(completed_ids(r)),
        120,
        lambda: f"{len(everything - set(completed_ids(r)))} of {len(everything)} not completed",
        interval=1,
    )
    completed = completed_ids(r)
    assert len(completed) == len(set(completed)), "a job completed twice"
    what = "restart redis: jobs queued across it / completed after"
    report.value(COMPOSE, what, f"{len(queued)} / {len(queued & set(completed))}")


def test_down_keeps_the_volumes_down_v_removes_everything(stack, report):
    r = client(stack.redis_url, decode_responses=True)
    r.set("compose-test:kept", "1")
    time.sleep(1.5)  # appendfsync everysec
    wait_for(lambda: alerts(stack, "WorkerDown"), 10, "the receiver's record of WorkerDown")
    mark = time.time()
    volumes = stack.resources()["volume"]
    assert len(volumes) >= 4, volumes
    stack.compose("down", "-t", "30", timeout=200)
    left = stack.resources()
    assert not left["container"] and not left["network"], left
    assert sorted(left["volume"]) == sorted(volumes)
    start = time.monotonic()
    stack.up(stack.services)
    report.took(COMPOSE, "compose up --wait to healthy (after down, volumes kept)", start)
    # Redis' AOF, Prometheus' TSDB and the receiver's store are the ones from before.
    assert client(stack.redis_url, decode_responses=True).get("compose-test:kept") == "1"
    assert alerts(stack, "WorkerDown")
    before = prom(
        stack, "query_range", query='up{job="prometheus"}', start=mark - 60, end=mark - 1, step=5
    )["result"]
    assert before and before[0]["values"], "Prometheus lost its data across down/up"

    stack.compose("down", "-v", "-t", "30", timeout=200)
    assert stack.resources() == {"container": [], "network": [], "volume": []}
