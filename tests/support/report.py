"""The run's report: what tests measured (times to notify, the chaos run's counts, build
times), printed at the end of the run, where CI's log keeps it.

A test or fixture of any scope asks for the ``report`` fixture and adds lines or table rows
under a section. Under pytest-xdist each worker process keeps its own entries and hands
them to the controller when it finishes (``workeroutput``), so the controller prints one
report for the whole run, whichever process measured what.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

#: Entries measured in this process: {"section", "text"} or {"section", "header", "cells"}.
_ENTRIES: list[dict[str, Any]] = []


class Report:
    def line(self, section: str, text: str) -> None:
        """A line of ``section``: "- text"."""
        _ENTRIES.append({"section": section, "text": text})

    def value(self, section: str, what: str, value: object) -> None:
        """A measured value of ``section``: "- what: value"."""
        self.line(section, f"{what}: {value}")

    def took(self, section: str, what: str, since: float) -> None:
        """How long ``what`` took, from ``since`` (a ``time.monotonic()``) to now."""
        self.value(section, what, f"{time.monotonic() - since:.1f} s")

    def row(self, section: str, header: Sequence[str], cells: Sequence[object]) -> None:
        """A row of ``section``'s table; every row of a section has the same ``header``."""
        _ENTRIES.append({"section": section, "header": list(header), "cells": list(cells)})


@pytest.fixture(scope="session")
def report() -> Report:
    return Report()


def render(entries: list[dict[str, Any]]) -> str:
    """The entries as Markdown, a section each, sections in the order of their names."""
    sections: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        sections.setdefault(entry["section"], []).append(entry)
    out: list[str] = []
    for name in sorted(sections):
        out += [f"{name}:", ""]
        rows = [e for e in sections[name] if "cells" in e]
        if rows:
            header = rows[0]["header"]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(map(str, e["cells"])) + " |" for e in rows]
        out += [f"- {e['text']}" for e in sections[name] if "text" in e]
        out.append("")
    return "\n".join(out)


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller prints the report
        workeroutput["report"] = list(_ENTRIES)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist's controller: a worker finished; keep what it measured."""
    _ENTRIES.extend(getattr(node, "workeroutput", {}).get("report", []))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if _ENTRIES and not hasattr(config, "workeroutput"):
        terminalreporter.write_sep("=", "measured by the tests")
        terminalreporter.write_line(render(_ENTRIES))
