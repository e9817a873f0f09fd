"""Jobs as an application sends them, and the Redis client a test reads the broker with:
one way for the twin's end-to-end tests and the compose test alike."""

from __future__ import annotations

import json
import subprocess
import sys

import redis

from stack.fleet import ROOT, python_env

#: A valid payload of each actor (besides ``job_id`` and ``org_id``).
PAYLOADS = {
    "agent_run": {"prompt": "Summarize the ticket."},
    "crm_sync": {"record": {"contact": "c-1", "stage": "lead"}},
    "message_send": {"channel": "email", "recipient": "user-1", "text": "Report ready."},
    "job_status_update": {"status": "running"},
}

_SEND = """
import json, sys, time
from worker.app import setup
from worker.config import Settings
url, namespace, actor, count, orgs, payload = json.loads(sys.argv[1])
setup(Settings(_env_file=None, REDIS_URL=url, JOB_QUEUE_NAME=namespace))
from worker import actors
send, run = getattr(actors, actor).send, time.monotonic_ns()
sent = {}
for i in range(count):
    job_id = f"{actor}-{run}-{i}"
    sent[send(job_id=job_id, org_id=f"org-{i % orgs}", **payload).message_id] = job_id
print(json.dumps(sent))
"""


def send_jobs(
    redis_url: str, namespace: str, actor: str, count: int, *, orgs: int = 3
) -> dict[str, str]:
    """Send ``count`` valid jobs of ``actor`` (e.g. "crm_sync") through the worker's own
    actors, spread over ``orgs`` organizations; returns message id -> job id.

    They are sent from a process of their own, so this one's Dramatiq broker stays as
    other tests left it."""
    args = json.dumps([redis_url, namespace, actor, count, orgs, PAYLOADS[actor]])
    done = subprocess.run(
        [sys.executable, "-c", _SEND, args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=python_env(),
    )
    if done.returncode != 0:
        raise RuntimeError(f"sending {count} {actor} jobs failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def client(redis_url: str, *, decode_responses: bool = False) -> redis.Redis:
    """A client of the broker's Redis, as a test reads it."""
    return redis.Redis.from_url(redis_url, decode_responses=decode_responses)
