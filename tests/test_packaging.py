"""The worker image installs the runtime dependencies only: everything a replica, the
alert receiver and the load generator import, and none of the tools (rendering rules and
dashboards, the local twin)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: What the image runs: `worker run`, `stack alert-receiver`, `stack loadgen`.
IMAGE_ENTRY_MODULES = ["worker", "stack.__main__", "stack.alert_receiver", "stack.loadgen"]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=~!; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imports_of_the_image() -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level names) the image's entry points import,
    following the project's own imports (worker/ entirely: any of it may run)."""
    pending = [*IMAGE_ENTRY_MODULES]
    pending += [
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "worker").rglob("*.py")
    ]
    seen: set[str] = set()
    third_party: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen or (path := _module_file(module)) is None:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                top = name.split(".")[0]
                if top in ("worker", "stack", "alerts", "dashboards", "tests"):
                    pending.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    third_party.add(top)
    return seen, third_party


def _with_their_requirements(names: set[str]) -> set[str]:
    """``names`` and every distribution they require, transitively (extras left out)."""
    found, pending = set(), list(names)
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        pending += [_name(r) for r in requires if "extra ==" not in r]
    return found


def test_the_image_imports_no_tool_and_no_test_module():
    project, _ = imports_of_the_image()
    assert not [m for m in project if m.split(".")[0] in ("alerts", "dashboards", "tests")]
    assert "stack.twin" not in project and "stack.fleet" not in project


def test_runtime_dependencies_are_exactly_what_the_image_imports():
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    _, third_party = imports_of_the_image()
    distributions = importlib.metadata.packages_distributions()
    needed = {_name(dist) for top in third_party for dist in distributions.get(top, [top])}
    assert needed - _with_their_requirements(runtime) == set(), (
        "imported by the image but not installed with the runtime dependencies"
    )
    # hiredis speeds redis-py up without an import of its own
    assert runtime - needed - {"hiredis"} == set(), "runtime dependencies the image never imports"


def test_tools_are_an_extra_that_dev_includes():
    extras = PYPROJECT["project"]["optional-dependencies"]
    tools = {_name(r) for r in extras["tools"]}
    assert {"rjsonnet", "grafanalib", "pyyaml"} <= tools
    assert not tools & {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert "worker-monitoring[tools]" in extras["dev"]


#: Issue 13's bound: a hand-written source file over it is doing more than one thing.
MAX_SOURCE_LINES = 500


def test_no_hand_written_source_file_is_over_500_lines():
    sources = [
        p
        for folder in ("worker", "stack", "alerts", "dashboards", "tests", "bench", "scripts")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and (p.suffix in {".py", ".libsonnet", ".sh"} or p.parent.name == "scripts")
    ]
    assert len(sources) > 100
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources
        if (n := len(p.read_text().splitlines())) > MAX_SOURCE_LINES
    }
    assert long == {}
