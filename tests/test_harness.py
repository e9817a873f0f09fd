"""The harness itself: under pytest-xdist, the tests that share a module-scoped fixture run
in one worker process (the fixture starts once), and the others are spread out."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stack.fleet import ROOT, python_env

CONFTEST = "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"

SHARED = """
import json, os, pytest

@pytest.fixture(scope="module")
def expensive():
    return os.environ["PYTEST_XDIST_WORKER"]

@pytest.mark.parametrize("i", range(6))
def test_shared(i, expensive, tmp_path_factory):
    out = tmp_path_factory.getbasetemp().parent / f"shared-{i}.json"
    out.write_text(json.dumps([expensive, os.environ["PYTEST_XDIST_WORKER"]]))
"""

ALONE = """
import os, time, pytest

@pytest.mark.parametrize("i", range(6))
def test_alone(i, tmp_path_factory):
    time.sleep(0.2)
    out = tmp_path_factory.getbasetemp().parent / f"alone-{i}.txt"
    out.write_text(os.environ["PYTEST_XDIST_WORKER"])
"""


# It runs a suite of its own under xdist (about 12 s): not the edit loop's.
@pytest.mark.slow
def test_tests_sharing_a_module_fixture_run_in_one_worker_and_the_rest_spread(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_shared.py").write_text(SHARED)
    (tmp_path / "test_alone.py").write_text(ALONE)
    base = tmp_path / "base"
    argv = ["-n", "3", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q"]
    argv += [f"--basetemp={base}", "--rootdir", str(tmp_path), str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=python_env(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shared = [json.loads((base / f"shared-{i}.json").read_text()) for i in range(6)]
    workers = {ran_in for _, ran_in in shared}
    assert len(workers) == 1, f"one module's fixture users ran in {workers}"
    assert all(fixture == ran_in for fixture, ran_in in shared)
    alone = {(base / f"alone-{i}.txt").read_text() for i in range(6)}
    assert len(alone) > 1, "tests without a shared fixture all ran in one worker"
