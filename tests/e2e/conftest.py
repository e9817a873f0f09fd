"""The end-to-end session: twins of the stack started through one factory, a final check
that none of them left a process or a port behind, and the report of what was measured
(time to notify per alert, the chaos run's counts), printed at the end of the run and
written to ``<pytest basetemp>/e2e-report.md``."""

from __future__ import annotations

import pytest

from stack.servers import port_is_free
from stack.twin import LocalStack
from tests.e2e.support import Report

REPORT = Report()


@pytest.fixture(scope="session")
def report(tmp_path_factory) -> Report:
    yield REPORT
    if REPORT.notify or REPORT.chaos or REPORT.notes:
        path = tmp_path_factory.getbasetemp() / "e2e-report.md"
        path.write_text(render(REPORT))
        REPORT.path = path


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


def render(report: Report) -> str:
    out = []
    if report.notify:
        out += ["Time to notify (twin, test config):", "", report.table()]
    if report.chaos:
        out += ["Nothing lost (chaos run):", ""]
        out += [f"- {key}: {value}" for key, value in report.chaos.items()]
        out.append("")
    if report.notes:
        out += ["Notes:", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(out)


def pytest_terminal_summary(terminalreporter) -> None:
    if not (REPORT.notify or REPORT.chaos or REPORT.notes):
        return
    terminalreporter.write_sep("=", "end-to-end proof")
    terminalreporter.write_line(render(REPORT))
    if getattr(REPORT, "path", None):
        terminalreporter.write_line(f"(also written to {REPORT.path})")
