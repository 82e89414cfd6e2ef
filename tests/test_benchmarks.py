"""Smoke runs of the benchmark scripts at tiny sizes, so a lent GPU's minutes are never
spent on a script that no longer runs (the numbers themselves are not checked here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: Path, timeout: float = 300) -> str:
    """Run ``benchmarks/SCRIPT ARGS`` on one thread in ``cwd``; its stdout (must exit 0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def test_train_benchmark_runs_and_writes_its_rows(tmp_path):
    out = _run("train.py", "--steps", "1", "--warmup", "1", "--json", "rows.json", cwd=tmp_path)
    assert "steps/s" in out
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert rows["vilbert eager"]["pairs_per_s"] > 0


def test_data_benchmark_runs_with_workers(tmp_path):
    config = str(REPO / "configs" / "vilbert-tiny.yaml")
    out = _run(
        "data.py", "--config", config, "--workers", "0,1", "--batches", "1", "--n-train", "64",
        "--cache", cwd=tmp_path,
    )  # fmt: skip
    assert out.count("| synthetic") == 2 and out.count("| image cache") == 2


@pytest.mark.parametrize(
    "script,args,expect",
    [
        (
            "metrics.py",
            ["--quick", "--sections", "perm,gridstats", "--repeat", "1"],
            "grid statistics",
        ),
        ("extract.py", ["--quick"], "writer only"),
        ("scale.py", ["--sizes", "200", "--metrics", "cka,mutual_knn"], "| cka | 200"),
    ],
)
def test_metric_and_extraction_benchmarks_run(tmp_path, script, args, expect):
    assert expect in _run(script, *args, cwd=tmp_path)


def test_the_gpu_sessions_train_command_lines_parse_and_run_on_cpu(tmp_path):
    """Every train.py line of gpu_session.sh, with --device cpu: a wrong option would
    otherwise first show on a lent GPU, where each minute counts."""
    import shlex

    script = (REPO / "benchmarks" / "gpu_session.sh").read_text().splitlines()
    lines = [ln for ln in script if "step " in ln and "benchmarks/train.py" in ln]
    assert lines
    for line in lines:
        args = shlex.split(line.split("benchmarks/train.py", 1)[1].replace('"$OUT/', '"'))
        args[args.index("--device") + 1] = "cpu"
        out = _run("train.py", *args, "--steps", "1", "--warmup", "1", cwd=tmp_path)
        assert "steps/s" in out, line
