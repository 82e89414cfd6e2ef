"""The installed `repalign` command (repalign.cli.main:main): usage errors are one line."""

import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "repalign", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["compare", "x.nc", "--k", "abc"], "Invalid value for '--k'"),
        (["nope"], "No such command 'nope'"),
        (["compare", "x.nc"], "Missing option '--out'"),
    ],
)
def test_usage_errors_are_one_error_line_with_exit_status_2(args, fragment):
    res = _run(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "--help`" in lines[0] and "Traceback" not in res.stderr


def test_help_and_a_bare_command_still_show_the_help():
    assert _run("--help").returncode == 0
    bare = _run()
    assert bare.returncode == 2 and "compare" in bare.stdout and "Traceback" not in bare.stderr
