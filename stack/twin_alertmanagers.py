"""The twin's Alertmanager cluster: members gossiping on loopback ports, as the compose
pair does on its network (``--cluster.peer`` each other), and a wait for it to settle."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from stack.poll import wait_until
from stack.servers import AlertmanagerServer, alertmanager_server


def alertmanager_cluster(
    am_dir: Path, count: int, port: Callable[[], int], extra: Sequence[str] = ()
) -> list[AlertmanagerServer]:
    """``count`` members sharing ``am_dir/alertmanager.yml``, each its own state (the first
    in ``am_dir``, the others in ``am_dir/alertmanager-<n>``); ``port()`` gives free ports.
    One member does not gossip."""
    cluster = [port() for _ in range(count)] if count > 1 else []
    members = []
    for i in range(count):
        workdir = am_dir if i == 0 else am_dir / f"alertmanager-{i + 1}"
        member = alertmanager_server(
            workdir,
            am_dir / "alertmanager.yml",
            port(),
            *extra,
            cluster_port=cluster[i] if cluster else None,
            peers=[f"127.0.0.1:{p}" for j, p in enumerate(cluster) if j != i],
        )
        member.name = "alertmanager" if i == 0 else f"alertmanager-{i + 1}"
        member.log = workdir / "alertmanager.log"
        members.append(member)
    return members


def wait_settled(members: Sequence[AlertmanagerServer], timeout: float = 30.0) -> None:
    """Until every running member sees the others and has settled: a member holds its
    notifications while the cluster settles, so a test that starts earlier measures the
    settling, not the alert."""
    running = [m for m in members if m.running]

    def settled(member: AlertmanagerServer) -> bool:
        with urllib.request.urlopen(f"{member.url}/api/v2/status", timeout=2) as r:
            cluster = json.load(r)["cluster"]
        return cluster["status"] == "ready" and len(cluster["peers"]) >= len(running)

    for member in running if len(members) > 1 else []:
        wait_until(
            lambda m=member: settled(m),
            timeout,
            f"{member.name}: the cluster settled",
            interval=0.2,
            ignore=(OSError, ValueError),
        )
