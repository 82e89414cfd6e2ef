"""Researchers' mistakes on the command line: each is one ``error:`` line and exit status 2,
never a traceback, and a failing command leaves existing outputs as they were.

Every case here printed a traceback, a misleading message or damaged a file before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from repalign.cli.main import app
from tests.store._feature_files import write_features

runner = CliRunner()
TINY_VIT = ["--model", "timm-vision", "--vision-model", "vit_tiny_patch16_224",
            "--model-arg", "img_size=32", "--model-arg", "patch_size=8",
            "--model-arg", "embed_dim=32", "--model-arg", "depth=2",
            "--model-arg", "num_heads=2", "--model-arg", "num_classes=0"]  # fmt: skip
TINY_RUN = ["--preset", "tiny", "--data", "synthetic:32", "--tasks", "ap", "--steps", "1",
            "--batch-size", "8", "data.n_eval=8", "loop.progress=false"]  # fmt: skip


def _err(*args: object) -> str:
    """Run the CLI, expect a user error; return its message on one line."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output, result.output
    return " ".join(result.output.split())


def _digest(path: Path) -> str:
    if path.is_dir():
        return "|".join(f"{p.relative_to(path)}:{_digest(p)}" for p in sorted(path.rglob("*"))
                        if p.is_file())  # fmt: skip
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def feats(tmp_path):
    return write_features(tmp_path / "a.nc", n=16)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished one-step pretraining run (a few seconds)."""
    out = tmp_path_factory.mktemp("runs") / "pre"
    result = runner.invoke(app, ["train", "pretrain", *TINY_RUN, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


# ------------------------------------------------------------------ compare / plot / info


def test_compare_invalid_layer_regex(tmp_path, feats):
    msg = _err("compare", feats, "--layers-a", "re:[", "--out", tmp_path / "s.nc")
    assert "'re:[' is not a valid regex" in msg
    msg = _err("compare", feats, "--layers-b", "re:(", "--streaming", "--out", tmp_path / "s.nc")
    assert "is not a valid regex" in msg


@pytest.mark.parametrize("streaming", [[], ["--streaming"]])
def test_compare_unknown_device_name(tmp_path, feats, streaming):
    msg = _err("compare", feats, "--device", "banana", *streaming, "--out", tmp_path / "s.nc")
    assert "'banana' is not a device name" in msg and "cpu" in msg


def test_a_directory_given_as_input_file_says_so(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    assert "results is a directory, not a score file" in _err("plot", folder)
    assert "results is a directory, not a feature file" in _err("info", folder)
    assert "is a directory, not a feature file" in _err(
        "compare", folder, "--out", tmp_path / "s.nc"
    )


def test_metrics_demo_too_few_stimuli():
    assert "--n 3 is too small for" in _err("metrics-demo", "--n", "3")
    result = runner.invoke(app, ["metrics-demo", "--n", "-5"])
    assert result.exit_code == 2 and "--n" in result.output, result.output
