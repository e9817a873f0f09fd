"""A replica's log names jobs by id, actor, queue and attempt; it never carries a payload,
and no line is longer than documented."""

from __future__ import annotations

import logging
import re

import redis

from stack.fleet import Replica, replica_env
from stack.poll import wait_until
from tests.support.fleet import dead_letters
from worker.app import setup
from worker.config import Settings
from worker.logs import MAX_LINE_CHARS, SafeRecords

MARKER = "PAYLOAD-MARKER-7f3e"


def test_failed_attempts_are_logged_by_identity_never_by_payload(redis_url, tmp_path):
    client = redis.Redis.from_url(redis_url)
    env = replica_env(
        redis_url,
        SIM_LATENCY_SECONDS="0.01",
        SIM_FAILURE_RATIO="1",
        RETRY_TIME_SCALE="0.001",
        JOB_CONCURRENCY="2",
        LOG_LEVEL="DEBUG",  # Dramatiq's debug lines name messages too
    )
    replica = Replica(env, tmp_path / "worker.log").start()
    try:
        setup(Settings(_env_file=None, REDIS_URL=redis_url))
        from worker import actors

        prompt = (MARKER + "\n") * 5_000  # 100 kB with newlines: one line each, if logged
        failing = actors.agent_run.send(job_id="j1", org_id="o1", prompt=prompt[:99_000])
        actors.crm_sync.send(job_id="j2", org_id="o1", record={"note": MARKER})
        actors.agent_run.send(job_id="j3", org_id="o1", prompt=prompt * 3)  # over the limit
        wait_until(lambda: len(dead_letters(client)) == 3, timeout=60)
    finally:
        assert replica.stop() == 0, replica.output[-3000:]
    log = replica.output
    assert MARKER not in log
    assert max(len(line) for line in log.splitlines()) <= MAX_LINE_CHARS + 200
    line = re.compile(
        rf"job {failing.message_id} \(agent\.run\) on queue default attempt 1 failed: "
        r"TransientError: llm \(simulated\) answered HTTP 500 at \S+:\d+ in \w+$",
        re.M,
    )
    assert line.search(log), log[-3000:]
    assert "Traceback" not in log


def test_a_log_line_is_one_line_and_bounded():
    record = logging.LogRecord(
        "x", logging.INFO, "f", 1, "got %s", ("a\nforged line" * 1000,), None
    )
    SafeRecords().filter(record)
    text = record.getMessage()
    assert "\n" not in text and len(text) <= MAX_LINE_CHARS and "a\\nforged" in text
