"""``stack``: the tooling's command line, apart from the worker's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from stack.__main__ import COMMANDS, main
from stack.twin import PROMETHEUS_CONFIG
from stack.twin_prometheus import START_SCRIPT
from worker.__main__ import main as worker_main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"stack {command}" in capsys.readouterr().out


def test_unknown_or_missing_subcommand_is_one_clear_error():
    done = subprocess.run(
        [sys.executable, "-m", "stack", "loadgenerator"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "unknown command 'loadgenerator'" in done.stderr and not done.stdout
    done = subprocess.run([sys.executable, "-m", "stack"], capture_output=True, text=True)
    assert done.returncode == 2 and "Subcommands:" in done.stderr and not done.stdout


def test_the_worker_no_longer_runs_the_tooling(capsys):
    """``worker`` keeps what a replica runs; the tools moved to ``stack``."""
    assert worker_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "encrypt-key" in out and "stack" in out
    assert not any(f"  {command}" in out for command in COMMANDS)


def test_a_tool_command_without_the_tools_extra_says_what_to_install():
    """The worker image has no `tools` extra: `stack up-local` there is one clear line."""
    without_yaml = (
        "import sys; sys.modules['yaml'] = None; "  # as if pyyaml were not installed
        "from stack.__main__ import main; sys.exit(main(['up-local', '--help']))"
    )
    done = subprocess.run([sys.executable, "-c", without_yaml], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "stack up-local: needs yaml, from the tools extra: pip install -e '.[tools]' in a "
        "checkout\n"
    )


@pytest.mark.parametrize(
    "url", ["mimir:9009/api/v1/push", "ftp://store/write", "http://store/a b", 'http://s/"']
)
def test_a_bad_remote_write_url_is_one_line_and_exit_2(url, tmp_path):
    """From ``stack up-local`` and from prometheus/start.sh (compose), before anything
    starts; the line names the variable and never repeats the value (it may hold a
    password)."""
    env = {**os.environ, "PROMETHEUS_REMOTE_WRITE_URL": url}
    up_local = [sys.executable, "-m", "stack", "up-local", "--run-dir", str(tmp_path / "run")]
    start = ["/bin/sh", str(START_SCRIPT), "/bin/false", f"--config.file={PROMETHEUS_CONFIG}"]
    for argv in (up_local, start):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done
        (line,) = done.stderr.splitlines()
        assert "PROMETHEUS_REMOTE_WRITE_URL" in line and url not in line, line
    assert not (tmp_path / "run").exists()


def test_start_sh_adds_remote_write_only_when_the_url_is_set(tmp_path):
    """The config Prometheus gets: the committed one, plus remote_write when set."""
    show = ["/bin/sh", "-c", 'cat "${1#--config.file=}"', "sh"]
    argv = ["/bin/sh", str(START_SCRIPT), *show, f"--config.file={PROMETHEUS_CONFIG}"]
    env = {**os.environ, "PROMETHEUS_EFFECTIVE_DIR": str(tmp_path)}
    unset = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    assert unset.stdout == PROMETHEUS_CONFIG.read_text()
    env["PROMETHEUS_REMOTE_WRITE_URL"] = "https://user:secret@store.example:443/api/v1/push"
    written = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    config = yaml.safe_load(written.stdout)
    assert config["remote_write"] == [{"url": env["PROMETHEUS_REMOTE_WRITE_URL"]}]
    assert (
        config["global"]["external_labels"]
        == yaml.safe_load(unset.stdout)["global"]["external_labels"]
    )
    assert (tmp_path / "rules").resolve() == PROMETHEUS_CONFIG.parent / "rules"
