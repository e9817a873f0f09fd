"""``worker console``: the operations console on ``CONSOLE_HOST:CONSOLE_PORT``.

It reads the worker's settings and the ``CONSOLE_*`` ones (``worker.console.settings``);
without ``CONSOLE_PASSWORD`` it stops at once: one line, exit 2, as every configuration
error does. uvicorn's own access log is off: ``worker.console.security.Hardened`` writes
one line a request, without query string, body or cookies."""

from __future__ import annotations

import argparse
import logging

from worker.config import load_settings
from worker.console.settings import ConsoleSettings
from worker.logs import install


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="worker console",
        description=(
            "Serve the operations console (queues, replicas, dead letters, job log, audit) "
            "on CONSOLE_HOST:CONSOLE_PORT (default 127.0.0.1:9292). CONSOLE_PASSWORD is "
            "required; CONSOLE_READ_ONLY=1 turns every action off. See docs/console.md."
        ),
    )
    parser.parse_args(argv)
    settings = load_settings(settings_class=ConsoleSettings)
    import uvicorn

    from worker.console.web import build
    from worker.redis_client import redis_client

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install(settings.log_level, secrets=settings.secret_values())
    logging.getLogger("worker.console").setLevel(logging.INFO)
    client = redis_client(settings)
    app = build(settings, client)
    logging.getLogger("worker.console").info(
        "console on http://%s:%d/%s",
        settings.console_host,
        settings.console_port,
        " (read-only)" if settings.console_read_only else "",
    )
    try:
        uvicorn.run(
            app,
            host=settings.console_host,
            port=settings.console_port,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            log_level="warning",
        )
    finally:
        client.close()
    return 0
