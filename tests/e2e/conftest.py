"""The end-to-end session: twins of the stack started through one factory, and a final
check that none of them left a process or a port behind."""

from __future__ import annotations

import pytest

from stack.servers import port_is_free
from stack.twin import LocalStack


@pytest.fixture(scope="session")
def twin(tmp_path_factory):
    """Start a LocalStack from the main thread (its processes die with the thread that
    started them); every stack started here is checked at the end of the session."""
    stacks: list[LocalStack] = []

    def start(name: str, **options) -> LocalStack:
        stack = LocalStack(tmp_path_factory.mktemp(name), **options)
        stacks.append(stack)
        stack.start(timeout=60)  # stops what it started if anything fails to start
        return stack

    yield start
    for stack in stacks:
        stack.stop()  # a no-op for the stopped ones; a module that crashed may not have
    left = [f"{p.name} (pid {p.proc.pid})" for s in stacks for p in s.processes if p.group_alive]
    ports = [p.port for s in stacks for p in s.processes if p.port and not port_is_free(p.port)]
    assert not left and not ports, f"left running: {left}; ports still bound: {ports}"
