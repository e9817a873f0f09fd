"""Job classes: each is a queue with its own retry policy and priority.

An actor declares its class in one word (``@job("crm.sync", "critical")``); a retry
policy is changed here and nowhere else. Separate queues keep a flood of one class from
starving another: every worker consumes all three queues, and within a worker the lower
``priority`` value runs first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq


@dataclass(frozen=True)
class JobClass:
    name: str
    queue: str
    #: Total attempts, the first one included.
    max_attempts: int
    #: Dramatiq actor priority: lower runs first when a worker holds several messages.
    priority: int
    #: Nominal delay before the first retry; each later retry doubles it.
    first_delay_seconds: float = 2.0

    def nominal_delay(self, retry: int, max_delay: float) -> float:
        """Delay before retry number ``retry`` (1 = the first retry), capped at ``max_delay``."""
        return min(max_delay, self.first_delay_seconds * 2 ** (retry - 1))


JOB_CLASSES: dict[str, JobClass] = {
    c.name: c
    for c in (
        JobClass("critical", queue="critical", max_attempts=10, priority=0),
        JobClass("fast", queue="fast", max_attempts=3, priority=10),
        JobClass("standard", queue="default", max_attempts=5, priority=20),
    )
}

QUEUES: tuple[str, ...] = tuple(c.queue for c in JOB_CLASSES.values())


def job_class_of(actor: dramatiq.Actor) -> JobClass:
    return JOB_CLASSES[actor.options.get("job_class", "standard")]


def job(name: str, job_class: str = "standard", **options: Any) -> Callable:
    """Declare an actor of a job class: ``@job("agent.run", "standard", rate_limited=True)``."""
    cls = JOB_CLASSES[job_class]
    return dramatiq.actor(
        actor_name=name,
        queue_name=cls.queue,
        priority=cls.priority,
        job_class=cls.name,
        **options,
    )
