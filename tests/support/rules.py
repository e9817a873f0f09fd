"""Checks shared by the rule test modules: promtool, each alert's promtool test file and
runbook, and the mutation check (a rule changed by one step must fail its own test)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import yaml

from alerts.render import RULES_DIR, render_rules
from stack.servers import require_binary

REPO = RULES_DIR.parent.parent
PROMETHEUS_DIR = REPO / "prometheus"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*_test.yml"))
RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_SECTIONS = [
    "## What it means",
    "## Likely causes",
    "## First checks",
    "## Mitigation",
    "## Escalation",
]


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def unit_test_file(alert: str) -> Path:
    """The promtool test file of an alert: HighJobFailureRate -> high_job_failure_rate_test.yml."""
    return PROMETHEUS_DIR / "tests" / f"{re.sub(r'(?<!^)(?=[A-Z])', '_', alert).lower()}_test.yml"


def expectations(alert: str, files: Iterable[Path] = UNIT_TESTS) -> list[dict]:
    """The ``alert_rule_test`` cases about ``alert`` in the promtool test ``files``."""
    return [
        case
        for f in files
        for test in yaml.safe_load(f.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alert
    ]


def mutation_ids(mutations: list[tuple[str, dict]]) -> list[str]:
    """Test ids of (alert, change) mutations: HighJobFailureRate-('for', '285s')."""
    return [f"{alert}-{next(iter(change.items()))}" for alert, change in mutations]


def promtool_groups(files: Iterable[Path] = UNIT_TESTS) -> list[tuple[Path, int]]:
    """Every test group of the promtool test ``files``, as (file, index)."""
    return [
        (f, index) for f in files for index in range(len(yaml.safe_load(f.read_text())["tests"]))
    ]


def run_group(test_file: Path, index: int, workdir: Path) -> subprocess.CompletedProcess:
    """promtool on group ``index`` of ``test_file`` alone, as a file of its own in
    ``workdir/tests`` with the file's settings, against the rules in ``workdir/rules``.

    promtool evaluates every rule at every step of a group, and the burn-rate files hold
    days of history: a group a test spreads the cost over the workers (a file fails
    exactly when one of its groups does)."""
    spec = yaml.safe_load(test_file.read_text())
    one = workdir / "tests" / f"{test_file.stem}-{index}.yml"
    one.parent.mkdir(exist_ok=True)
    one.write_text(yaml.safe_dump({**spec, "tests": [spec["tests"][index]]}, sort_keys=False))
    return promtool("test", "rules", f"tests/{one.name}", cwd=workdir)


def assert_unit_tests_catch(tmp_path: Path, overrides: dict, test_file: Path) -> None:
    """Render the rules with ``overrides`` and check that the promtool tests of
    ``test_file``, run against them, fail: its groups one at a time until one fails, on
    an expectation the mutated rules miss, not on a file promtool could not read."""
    render_rules(overrides, tmp_path / "rules")
    for _, index in promtool_groups([test_file]):
        result = run_group(test_file, index, tmp_path)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            assert "FAILED" in output and "exp:" in output and "got:" in output, output
            return
    raise AssertionError(f"{test_file.name} passes with {overrides}")


def assert_runbook(alert: str) -> None:
    """The alert's runbook has the five sections in order, and its first checks are at
    least three numbered steps with the query or command to run."""
    text = (RUNBOOKS / f"{alert}.md").read_text()
    assert text.startswith(f"# {alert}\n")
    positions = [text.find(section) for section in RUNBOOK_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), RUNBOOK_SECTIONS
    first_checks = text.split("## First checks")[1].split("## Mitigation")[0]
    assert len(re.findall(r"^\d+\. ", first_checks, re.M)) >= 3
    assert "```" in first_checks, "first checks give the query or command to run"
