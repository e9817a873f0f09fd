"""The services actors call (LLM, CRM, messaging, job store), one set per worker process.

``worker.app.setup()`` builds them and installs them here; actors reach them through
``services()``. Kept apart from ``worker.app`` so that the actors, which ``setup()``
imports, do not import ``worker.app`` back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.config import Settings


@dataclass
class Services:
    settings: Settings
    llm: Any
    crm: Any
    messages: Any
    job_store: Any


_services: Services | None = None


def services() -> Services:
    if _services is None:
        raise RuntimeError("worker.app.setup() has not run in this process")
    return _services


def install(built: Services) -> None:
    """Make ``built`` what ``services()`` returns in this process."""
    global _services
    _services = built
