"""The worker Deployment of deploy/kubernetes/ really runs: `podman kube play` of the
rendered ConfigMap and Deployment, on the worker image built from the Dockerfile, against a
real Redis. No cluster runs here; Podman plays the pod spec as Kubernetes would, with its
securityContext, its emptyDir, its Secret references and its probes.

Adjusted for Podman, and only this: one replica; the host's network (Podman 4 has no
cluster network; the Redis is the host's, on loopback), so the container port is not
mapped and the metrics port is a free one; the image is this test's build; the Secret is a
Podman secret of this run; simulated jobs take 3 s instead of 15-20 s. Podman 4.3 turns an
httpGet probe into a `curl` run inside the container (the slim image has none), so the test
makes the probes' requests itself, and it does not carry terminationGracePeriodSeconds into
the stop timeout, so the test stops the container with it, as the kubelet would.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml

from stack.poll import wait_until
from stack.servers import free_port, redis_server, running
from tests.support.compose import CA_DIR, ROOT, Engine
from tests.support.fleet import completed_ids

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

IMAGE = "worker-monitoring-worker:kube-play"
NAME = "worker-kube-play"
CONTAINER = f"{NAME}-pod-0-worker"
BASE = ROOT / "deploy" / "kubernetes" / "base"


@pytest.fixture(scope="module")
def engine():
    workdir = Path(tempfile.mkdtemp(prefix="worker-monitoring-kube-play-"))
    if shutil.which("catatonit") is None:
        pytest.fail("podman kube play needs catatonit for the pod's infra container")
    yield Engine(workdir)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def image(engine):
    subprocess.run(
        [str(ROOT / "scripts" / "standin-images")],
        env={**engine.env, "ENGINE": "podman"},
        check=True,
        capture_output=True,
        timeout=900,
    )
    engine.podman(
        "build", "-q", "-t", IMAGE, "-v", f"{CA_DIR}:/etc/ssl/certs:ro", str(ROOT), timeout=900
    )
    return IMAGE


def kube_yaml(port: int, secret: str) -> list[dict]:
    config = yaml.safe_load((BASE / "worker-config.yaml").read_text())
    config["data"] |= {"METRICS_PORT": str(port), "SIM_LATENCY_SECONDS": "3"}
    deployment = yaml.safe_load((BASE / "worker-deployment.yaml").read_text())
    deployment["metadata"]["name"] = NAME
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    (container,) = pod["containers"]
    container["image"] = f"localhost/{IMAGE}"
    del container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["port"] = port
    for env in container["env"]:
        env["valueFrom"]["secretKeyRef"]["name"] = secret
    return [config, deployment]


@pytest.fixture(scope="module")
def pod(engine, image, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("kube-play")
    port, secret = free_port(), f"{NAME}-{free_port()}"
    with running(redis_server(workdir / "redis")) as server:
        # Podman reads a secret for secretKeyRef as a JSON map of base64 values.
        values = {"REDIS_URL": base64.b64encode(server.url.encode()).decode()}
        (workdir / "secret.json").write_text(json.dumps(values))
        engine.podman("secret", "create", secret, str(workdir / "secret.json"))
        play = workdir / "kube.yaml"
        docs = kube_yaml(port, secret)
        play.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        try:
            engine.podman("kube", "play", str(play), timeout=300)
            yield {"engine": engine, "port": port, "redis_url": server.url, "docs": docs}
        finally:
            engine.podman("kube", "down", str(play), check=False, timeout=300)
            engine.podman("secret", "rm", secret, check=False)


def _get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.status, answer.read().decode()


def _serves_metrics(port: int) -> bool:
    try:
        return "worker_jobs_total" in _get(port, "/metrics")[1]
    except OSError:
        return False


def test_it_runs_as_uid_10001_on_a_read_only_root_without_privileges(pod):
    exec_ = lambda *argv: pod["engine"].podman("exec", CONTAINER, *argv, check=False)  # noqa: E731
    assert exec_("id", "-u").strip() == "10001"
    refused = subprocess.run(
        ["podman", "exec", CONTAINER, "touch", "/data/x"],
        env=pod["engine"].env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert exec_("sh", "-c", "touch /tmp/x && echo written").strip() == "written"  # emptyDir
    status = dict(
        line.split(":\t", 1)
        for line in exec_("cat", "/proc/1/status").splitlines()
        if ":\t" in line
    )
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0  # drop: [ALL]
    assert status["NoNewPrivs"].strip() == "1"  # allowPrivilegeEscalation: false
    assert status["Seccomp"].strip() == "2"  # a filter: RuntimeDefault


def test_its_probes_pass(pod):
    wait_until(lambda: _serves_metrics(pod["port"]), timeout=60)
    container = pod["docs"][1]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _get(pod["port"], container[probe]["httpGet"]["path"]) == (200, "ok\n")


def test_a_sigterm_within_the_grace_period_loses_no_job(pod):
    from worker.app import setup
    from worker.config import Settings

    engine, spec = pod["engine"], pod["docs"][1]["spec"]["template"]["spec"]
    wait_until(lambda: _serves_metrics(pod["port"]), timeout=60)
    setup(Settings(_env_file=None, REDIS_URL=pod["redis_url"]))
    from worker import actors

    client = redis.Redis.from_url(pod["redis_url"])
    ids = [
        actors.agent_run.send(job_id=f"p{i}", org_id=f"org-{i % 3}", prompt="p").message_id
        for i in range(60)
    ]
    wait_until(lambda: set(completed_ids(client)) & set(ids), timeout=60)  # jobs in flight
    grace = spec["terminationGracePeriodSeconds"]
    started = time.monotonic()
    engine.podman("stop", "-t", str(grace), CONTAINER, timeout=grace + 30)
    took = time.monotonic() - started
    code = engine.podman("inspect", CONTAINER, "--format", "{{.State.ExitCode}}").strip()
    finished = len(set(completed_ids(client)) & set(ids))
    print(f"\nkube play: SIGTERM to exit {took:.1f} s, {finished} of 60 jobs done by then")
    assert code == "0" and took < grace
    assert finished < len(ids)  # some were still queued: the restart must run them
    engine.podman("start", CONTAINER)
    wait_until(lambda: set(ids) <= set(completed_ids(client)), timeout=120)
    done = [m for m in completed_ids(client) if m in set(ids)]
    assert sorted(done) == sorted(ids)  # every job once: none lost, none run twice
