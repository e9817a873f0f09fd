"""The stack as local processes: docker-compose.yml's topology where Docker is absent.

    make up-local                       # or: stack up-local, python -m stack up-local
    stack up-local --replicas 3 --rate 5 --scrape-interval 5s

starts, on free loopback ports and from the same committed config files as the compose
stack: redis-server (AOF on), N worker replicas (``python -m worker``), prometheus, a
gossiping pair of prometheus-alertmanager (cluster on loopback ports), the alert receiver
and the load generator. It prints the URLs, shows the alerts as they arrive, and Ctrl-C
(or SIGTERM) stops everything it started.

The configs are the committed ones with the compose addresses swapped for loopback
(``stack.twin_config``), written into the run directory, so they can be read.

As a library, ``LocalStack`` is what the end-to-end tests drive::

    with LocalStack(tmp_path, scrape_interval="1s", rules_dir=fast_rules) as stack:
        stack.kill_replica(0)
        ...
        assert any(a["alertname"] == "WorkerDown" for a in stack.alerts(receiver="pager"))

Every process runs in its own process group and dies with the thread that started it, so
an interrupted, crashed or even SIGKILLed owner leaves nothing running.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from stack import fleet, prom
from stack.fleet import Replica, python_env
from stack.sentinel import SentinelSet, redis_sentinel_set
from stack.servers import HttpServer, Process, RedisServer, free_port, redis_server
from stack.twin_alertmanagers import alertmanager_cluster, wait_settled
from stack.twin_config import (
    ALERTMANAGER_SERVICES,
    PROMETHEUS_SERVICES,
    RECEIVER_SERVICE,
    WORKER_SERVICE,
    deep_merge,
    twin_alertmanager_config,
    twin_prometheus_config,
    with_route_timing,
)
from stack.twin_prometheus import MEMBERS, prometheus_member, remote_write_error
from worker.redis_keys import DEFAULT_NAMESPACE

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"


class LocalStack:
    """The compose topology as local processes, started and stopped as one.

    Options:
      run_dir              where configs, data and logs go (wiped at start unless keep_data)
      replicas             worker replicas (compose: deploy.replicas, 2)
      replica_env          extra environment for every replica (e.g. SIM_LATENCY_SECONDS)
      namespace            JOB_QUEUE_NAME of the fleet
      rules_dir            rule files to load instead of prometheus/rules (same file names)
      scrape_interval, evaluation_interval   override the committed 15s (e.g. "1s")
      alertmanager_timing  group_wait / group_interval / repeat_interval for every route
                           (e.g. {"group_wait": "1s", "group_interval": "1s"} for a test)
      alertmanager_overrides   deep-merged into the Alertmanager config, after the timing
                           (e.g. {"route": {"group_wait": "8s"}}: the root route and the
                           routes that inherit from it, not those that set their own)
      loadgen_rate         jobs/s of the load generator; None: no load generator
      loadgen_args         more arguments for it (e.g. ["--seed", "1"])
      replica_ready_path   the replica endpoint that says it is up
      redis_password       start Redis with requirepass, and give replicas the password
      sentinel             Redis as compose's `sentinel` profile: a master, a replica and
                           three sentinels (``stack.sentinel``); the replicas and the load
                           generator follow the sentinels (``sentinels``); no password
      alertmanagers        members of the gossiping Alertmanager cluster (compose: 2); the
                           first is ``alertmanager``, all are in ``alertmanagers``
      alertmanager_args    more flags for every Alertmanager (e.g. --cluster.peer-timeout=2s)
      prometheus_args      more flags for Prometheus (e.g. --rules.alert.resend-delay=1s)
      prometheuses         Prometheus members (compose: 1, 2 with the profile
                           `prometheus-pair`), each with its own `replica` label, all
                           scraping the same targets and sending to every Alertmanager;
                           the first is ``prometheus``, all are in ``prometheuses``
      remote_write_url     PROMETHEUS_REMOTE_WRITE_URL of every member (None: unset)
      deadman_timeout      the alert receiver's --deadman-timeout (seconds without a
                           Watchdog before it reports the pipeline silent); None: its default
    """

    def __init__(
        self,
        run_dir: Path | str = REPO / ".run" / "localstack",
        *,
        replicas: int = 2,
        replica_env: Mapping[str, str] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        prometheus_config: Path = PROMETHEUS_CONFIG,
        alertmanager_config: Path = ALERTMANAGER_CONFIG,
        rules_dir: Path | str | None = None,
        scrape_interval: str | None = None,
        evaluation_interval: str | None = None,
        alertmanager_overrides: Mapping[str, Any] | None = None,
        alertmanager_timing: Mapping[str, str] | None = None,
        loadgen_rate: float | None = None,
        loadgen_args: Sequence[str] = (),
        replica_ready_path: str = "/metrics",
        redis_password: str | None = None,
        keep_data: bool = False,
        alertmanagers: int = 2,
        alertmanager_args: Sequence[str] = (),
        prometheus_args: Sequence[str] = (),
        deadman_timeout: float | None = None,
        prometheuses: int = 1,
        remote_write_url: str | None = None,
        sentinel: bool = False,
        console_password: str | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("at least one replica")
        if not 1 <= alertmanagers <= len(ALERTMANAGER_SERVICES):
            raise ValueError(f"1 to {len(ALERTMANAGER_SERVICES)} Alertmanagers")
        if not 1 <= prometheuses <= len(MEMBERS):
            raise ValueError(f"1 to {len(MEMBERS)} Prometheus members")
        if error := remote_write_error(remote_write_url):
            raise ValueError(error)
        self.run_dir = Path(run_dir).resolve()
        self.replica_count = replicas
        self.replica_env = {k: str(v) for k, v in (replica_env or {}).items()}
        self.namespace = namespace
        self.prometheus_config = Path(prometheus_config)
        self.alertmanager_config = Path(alertmanager_config)
        self.rules_dir = Path(rules_dir) if rules_dir is not None else None
        self.scrape_interval, self.evaluation_interval = scrape_interval, evaluation_interval
        self.alertmanager_overrides = alertmanager_overrides
        self.alertmanager_timing = dict(alertmanager_timing or {})
        self.loadgen_rate, self.loadgen_args = loadgen_rate, list(loadgen_args)
        self.replica_ready_path = replica_ready_path
        self.redis_password = redis_password
        self.keep_data = keep_data
        self.alertmanager_count = alertmanagers
        self.alertmanager_args = list(alertmanager_args)
        self.prometheus_args = list(prometheus_args)
        self.deadman_timeout = deadman_timeout
        self.prometheus_count, self.remote_write_url = prometheuses, remote_write_url
        #: Set: the operations console (``worker console``) runs too, with this password.
        self.console_password = console_password
        self.console: HttpServer | None = None
        self.redis: RedisServer | None = None
        self.sentinel = sentinel
        self.sentinels: SentinelSet | None = None
        self._sentinel_stack = contextlib.ExitStack()
        self.receiver: HttpServer | None = None
        self.alertmanagers: list[HttpServer] = []
        self.prometheuses: list[HttpServer] = []
        #: Per member: writes its rule copies and returns its config (``reload_rules``).
        self._prometheus_configs: list[Callable[[], dict[str, Any]]] = []
        self.replicas: list[Replica] = []
        self.loadgen: Process | None = None
        #: Replicas stopped on purpose (kill_replica, stop_replica): supervise() leaves them.
        self._stopped_on_purpose: set[int] = set()
        self.restarts: list[int] = []
        self._atexit_registered = False

    # -- life cycle --

    def start(self, timeout: float = 30.0) -> LocalStack:
        """Start every component in dependency order; on any failure stop what started."""
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._prepare_run_dir()
            self._start_all(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.keep_data:
            for child in ("redis", "receiver", "alertmanager", *MEMBERS, "loadgen"):
                shutil.rmtree(self.run_dir / child, ignore_errors=True)
            for child in self.run_dir.glob("replica-*"):
                shutil.rmtree(child, ignore_errors=True)

    def _start_all(self, timeout: float) -> None:
        ports: set[int] = set()

        def port() -> int:
            while (p := free_port()) in ports:
                pass
            ports.add(p)
            return p

        if self.sentinel:  # the master is ``redis``: stop_redis() and kill tests act on it
            found = redis_sentinel_set(self.run_dir / "redis")
            self.sentinels = self._sentinel_stack.enter_context(found)
            self.redis = self.sentinels.master
        else:
            self.redis = redis_server(self.run_dir / "redis", port(), password=self.redis_password)
            self.redis.start(timeout)

        deadman = (
            [] if self.deadman_timeout is None else ["--deadman-timeout", str(self.deadman_timeout)]
        )
        self.receiver = fleet.alert_receiver(self.run_dir / "receiver", *deadman, port=port())
        self.receiver.start(timeout)

        am_dir = self.run_dir / "alertmanager"
        am_dir.mkdir(parents=True, exist_ok=True)
        am_config = twin_alertmanager_config(
            yaml.safe_load(self.alertmanager_config.read_text()),
            lambda name: f"{self.receiver.url}/{name}",
            config_dir=self.alertmanager_config.parent,
            secrets_dir=am_dir / "secrets",
        )
        # Overrides last, so that they can set one route apart from the common timing (a
        # test: every route 1s, warnings' root group_wait longer than a critical takes).
        am_config = deep_merge(
            with_route_timing(am_config, **self.alertmanager_timing),
            self.alertmanager_overrides or {},
        )
        (am_dir / "alertmanager.yml").write_text(yaml.safe_dump(am_config, sort_keys=False))
        # One config for the cluster, each member its own state; gossip on loopback ports.
        self.alertmanagers = alertmanager_cluster(
            am_dir, self.alertmanager_count, port, self.alertmanager_args
        )
        for member in self.alertmanagers:
            member.start(timeout)
        wait_settled(self.alertmanagers, timeout)

        self.replicas = [self._replica(i, port()) for i in range(self.replica_count)]
        for replica in self.replicas:
            replica.start(timeout)

        worker_and_alertmanagers = {
            WORKER_SERVICE: [r.target for r in self.replicas],
            **{
                service: [f"127.0.0.1:{member.port}"]
                for service, member in zip(ALERTMANAGER_SERVICES, self.alertmanagers, strict=False)
            },
            RECEIVER_SERVICE: [f"127.0.0.1:{self.receiver.port}"],
        }
        self.prometheuses, self._prometheus_configs = [], []
        for index in range(self.prometheus_count):
            member_port = port()
            # Each member scrapes itself, as each compose container's localhost:9090 is.
            own = {name: [f"127.0.0.1:{member_port}"] for name in PROMETHEUS_SERVICES}

            def configure(targets=own, index=index) -> dict[str, Any]:
                return twin_prometheus_config(
                    yaml.safe_load(self.prometheus_config.read_text()),
                    {**worker_and_alertmanagers, **targets},
                    config_dir=self.prometheus_config.parent,
                    rules_dir=self.rules_dir,
                    scrape_interval=self.scrape_interval,
                    evaluation_interval=self.evaluation_interval,
                    scaled_rules_dir=self.run_dir / MEMBERS[index] / "rules",
                )

            self._prometheus_configs.append(configure)
            member = prometheus_member(
                self.run_dir / MEMBERS[index],
                yaml.safe_dump(configure(), sort_keys=False),
                member_port,
                index,
                remote_write_url=self.remote_write_url,
                extra=self.prometheus_args,
            )
            self.prometheuses.append(member)
            member.start(timeout)

        if self.console_password is not None:
            from stack.console_server import console_server

            self.console = console_server(
                self.run_dir / "console",
                self.redis.url,
                self.console_password,
                port=port(),
                JOB_QUEUE_NAME=self.namespace,
            )
            self.console.start(timeout)

        if self.loadgen_rate is not None:
            self.loadgen = Process(
                [
                    sys.executable,
                    "-m",
                    "stack.loadgen",
                    "--rate",
                    str(self.loadgen_rate),
                    *self.loadgen_args,
                ],
                None,
                self.run_dir / "loadgen",
                name="loadgen",
                env=python_env(**self._redis_env(), JOB_QUEUE_NAME=self.namespace),
            )
            self.loadgen.start(timeout=0.5)

    def _redis_env(self) -> dict[str, str]:
        """How a process finds Redis: ``REDIS_URL``, or the sentinels (``REDIS_URL`` unset)."""
        return self.sentinels.env() if self.sentinels else {"REDIS_URL": self.redis.url}

    def _replica(self, index: int, port: int) -> Replica:
        env = fleet.replica_env(
            "",
            **{
                **self._redis_env(),
                "JOB_QUEUE_NAME": self.namespace,
                "METRICS_PORT": str(port),
                # Jobs cut short are redelivered; a twin that stops in seconds is worth more.
                "SHUTDOWN_GRACE_SECONDS": "5",
                **self.replica_env,
            },
        )
        log = self.run_dir / f"replica-{index + 1}" / "worker.log"
        return Replica(env, log, ready_path=self.replica_ready_path)

    def stop(self) -> None:
        """Stop everything this stack started, newest first. Safe to call more than once."""
        grace = float(self.replica_env.get("SHUTDOWN_GRACE_SECONDS", 5)) + 10
        for process in (self.loadgen, self.console, *self.prometheuses):
            if process is not None:
                process.stop()
        # All replicas at once, each finishing its running jobs within its grace period.
        for replica in self.replicas:
            replica.send_signal(signal.SIGCONT)  # a paused replica must hear its SIGTERM
            replica.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for replica in self.replicas:
            if replica.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    replica.proc.wait(max(0.0, deadline - time.monotonic()))
        for replica in self.replicas:
            replica.kill()  # only what outlived its grace, and stray children
        for process in (*self.alertmanagers, self.receiver, self.redis):
            if process is not None:
                process.stop()
        self._sentinel_stack.close()  # the replica and the sentinels

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def processes(self) -> list[Process]:
        """Every process this stack owns (running or not)."""
        named = [self.redis, self.receiver, *self.alertmanagers, *self.prometheuses, self.loadgen]
        named.append(self.console)
        return [p for p in (*named, *self.replicas) if p is not None]

    @property
    def prometheus(self) -> HttpServer | None:
        """The first Prometheus member (compose: ``prometheus``)."""
        return self.prometheuses[0] if self.prometheuses else None

    @property
    def alertmanager(self) -> HttpServer | None:
        """The first member of the Alertmanager cluster (compose: ``alertmanager``)."""
        return self.alertmanagers[0] if self.alertmanagers else None

    # -- faults --

    def start_alertmanager(self, index: int = 0, timeout: float = 30.0) -> None:
        """Start Alertmanager ``index`` again, on its ports; return once it has rejoined its
        peers (stop or kill one with ``alertmanagers[index].stop()`` / ``.kill()``)."""
        self.alertmanagers[index].start(timeout)
        wait_settled(self.alertmanagers, timeout)

    def reload_rules(self) -> None:
        """Load the rule files again (a test rendered new ones into ``rules_dir``): each
        Prometheus' copies with scaled group intervals rewritten, then ``POST /-/reload``."""
        for configure, member in zip(self._prometheus_configs, self.prometheuses, strict=True):
            configure()
            request = urllib.request.Request(f"{member.url}/-/reload", method="POST")
            urllib.request.urlopen(request, timeout=10).close()  # HTTPError unless 200

    def kill_replica(self, index: int) -> None:
        """SIGKILL replica ``index`` and its processes, as an operator's kill or an OOM
        would; its jobs in flight are redelivered once their lock expires."""
        self._stopped_on_purpose.add(index)
        self.replicas[index].kill()

    def stop_replica(self, index: int, timeout: float = 30.0) -> None:
        """Stop replica ``index`` gracefully (SIGTERM), as ``docker compose stop`` would."""
        self._stopped_on_purpose.add(index)
        self.replicas[index].stop(timeout=timeout)

    def start_replica(self, index: int, timeout: float = 30.0) -> None:
        """Start replica ``index`` again, on its port (same Prometheus target)."""
        self._stopped_on_purpose.discard(index)
        self.replicas[index].start(timeout)

    def stop_redis(self) -> None:
        """Stop Redis gracefully: it writes its AOF, so no queued job is lost."""
        self.redis.stop()

    def start_redis(self, timeout: float = 15.0) -> None:
        self.redis.start(timeout)

    def pause_workers(self, indexes: Sequence[int] | None = None) -> None:
        """Freeze replicas (SIGSTOP to their process groups): a stalled, not a dead, fleet.
        Their scrapes time out, their jobs stop progressing, their locks stop renewing."""
        for i in range(len(self.replicas)) if indexes is None else indexes:
            self.replicas[i].send_signal(signal.SIGSTOP)

    def stall_workers(self, indexes: Sequence[int] | None = None) -> None:
        """Freeze the job-processing processes of replicas (SIGSTOP), not their metrics
        endpoint: workers that take no job, as hung jobs or a deadlock leave them, while the
        replica still answers scrapes, probes Redis and reports the growing backlog.
        ``resume_workers`` ends it."""
        for i in range(len(self.replicas)) if indexes is None else indexes:
            for pid in self.replicas[i].worker_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)

    def resume_workers(self, indexes: Sequence[int] | None = None) -> None:
        """End ``pause_workers`` or ``stall_workers`` (SIGCONT to the whole replica)."""
        for i in range(len(self.replicas)) if indexes is None else indexes:
            self.replicas[i].send_signal(signal.SIGCONT)

    def supervise(self, max_restarts: int = 10) -> list[int]:
        """Restart replicas that exited on their own with an error, at most ``max_restarts``
        times each (compose's restart policy); return the indexes restarted now."""
        if len(self.restarts) < len(self.replicas):
            self.restarts += [0] * (len(self.replicas) - len(self.restarts))
        restarted = []
        for i, replica in enumerate(self.replicas):
            code = replica.proc.poll() if replica.proc else None
            if code in (None, 0) or i in self._stopped_on_purpose:
                continue
            if self.restarts[i] >= max_restarts:
                continue
            self.restarts[i] += 1
            with contextlib.suppress(RuntimeError):
                replica.start()
            restarted.append(i)
        return restarted

    # -- reading the stack --

    @property
    def urls(self) -> dict[str, Any]:
        def url(p: HttpServer | None) -> str | None:
            return p.url if p is not None else None

        return {
            "prometheus": url(self.prometheus),
            "prometheuses": [url(member) for member in self.prometheuses],
            "alertmanager": url(self.alertmanager),
            "alertmanagers": [url(member) for member in self.alertmanagers],
            "alert_receiver": url(self.receiver),
            "redis": self.redis.url if self.redis else None,
            "console": url(self.console),
            "replicas": [f"{r.url}/metrics" for r in self.replicas],
        }

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Alerts the receiver got, oldest first (filters: receiver, alertname, status)."""
        query = urllib.parse.urlencode({k: v for k, v in filters.items() if v})
        with urllib.request.urlopen(f"{self.receiver.url}/alerts?{query}", timeout=5) as r:
            return json.load(r)

    def rule_alerts(self) -> list[dict[str, Any]]:
        """Prometheus' pending and firing alerts: labels, annotations, state, activeAt."""
        return prom.alerts(self.prometheus.url, timeout=10)

    def alertmanager_alerts(self, **labels: str) -> list[dict[str, Any]]:
        """Alertmanager's alerts with these label values (its API v2: labels, annotations,
        ``receivers``, and ``status`` with ``state`` active/suppressed and ``inhibitedBy``)."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
        with urllib.request.urlopen(
            f"{self.alertmanager.url}/api/v2/alerts?{query}", timeout=10
        ) as r:
            return json.load(r)

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """Result of an instant query against the twin's Prometheus (at ``at``, or now)."""
        return prom.query(self.prometheus.url, promql, at=at, timeout=10)
