"""``stack``: the tooling's command line, apart from the worker's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stack.__main__ import COMMANDS, main
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
