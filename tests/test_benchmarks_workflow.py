"""Smoke runs of the CPU workflow benchmarks (benchmarks/workflow.py, benchmarks/cka_routes.py)
at tiny sizes; the numbers are not checked here."""

import pytest

from tests.test_benchmarks import _run


def test_cka_routes_benchmark_times_every_route_and_agrees(tmp_path):
    out = _run("cka_routes.py", "--shapes", "120x30x20", "--draws", "3", cwd=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| 120 x 30 x 20")]
    assert len(rows) == 2  # permutation and bootstrap
    for row in rows:
        assert float(row.strip("| ").split("|")[-1]) < 1e-12  # the routes' largest difference


@pytest.mark.slow
def test_workflow_benchmark_runs_every_step_side_by_side(tmp_path):
    out = _run("workflow.py", "--n", "48", "--before", "HEAD", cwd=tmp_path, timeout=600)
    assert "| plot profile |" in out and out.count("x |") >= 7
