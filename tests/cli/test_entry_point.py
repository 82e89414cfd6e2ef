"""The installed `repalign` command (repalign.cli.main:main): usage errors are one line."""

import subprocess
import sys

import pytest

from tests._signals import default_signals_in_child


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


def test_sigterm_runs_the_verbs_own_interrupt_handling(tmp_path):
    """`data cache` removes its half-built folder on Ctrl-C; a SIGTERM now does the same
    (before, the process ended on the spot and left `.cache.building` behind)."""
    import signal
    import time

    out = tmp_path / "cache"
    building = tmp_path / ".cache.building"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repalign", "data", "cache", "synthetic:20000", "--out", str(out),
         "--size", "224"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_signals_in_child,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (building.exists() and any(building.iterdir())):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not building.exists() and not out.exists()
