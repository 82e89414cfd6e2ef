"""Researchers' mistakes on the command line: each is one ``error:`` line and exit status 2,
never a traceback, and a failing command leaves existing outputs as they were.

Every case here printed a traceback, a misleading message or damaged a file before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
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


# ------------------------------------------------------------------ extract / layers / merge


def test_extract_out_is_a_directory_says_so_not_pass_overwrite(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    msg = _err("extract", *TINY_VIT, "--data", "synthetic:4", "--out", folder)
    assert "is a directory; give a file path" in msg and "--overwrite" not in msg


def test_extract_unknown_device_name(tmp_path):
    msg = _err("extract", *TINY_VIT, "--data", "synthetic:4", "--device", "gpu0",
               "--out", tmp_path / "f.nc")  # fmt: skip
    assert "'gpu0' is not a device name" in msg
    assert not (tmp_path / "f.nc").exists()


@pytest.mark.parametrize("ckpt", ["missing", "notes.txt", "empty_dir"])
def test_vilbert_bad_checkpoint_is_an_error_line(tmp_path, ckpt):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    (tmp_path / "empty_dir").mkdir()
    msg = _err("layers", "vilbert", "--ckpt", tmp_path / ckpt)
    assert "cannot load model 'vilbert'" in msg
    assert "no checkpoint at" in msg or "is not a repalign checkpoint" in msg


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"hello\n", "is not a readable weights file"),
        (b"", "is not a readable weights file"),
        (None, "does not exist or is not a file"),
    ],
)
def test_timm_bad_weights_file(tmp_path, content, expected):
    weights = tmp_path / "w.pth"
    if content is not None:
        weights.write_bytes(content)
    assert expected in _err("layers", *TINY_VIT[1:], "--ckpt", weights)


def test_timm_weights_of_another_model_are_refused_not_ignored(tmp_path):
    """strict=False loading used to accept a file sharing no tensor name: random weights."""
    from safetensors.torch import save_file

    weights = tmp_path / "other.safetensors"
    save_file({"encoder.w": torch.zeros(3)}, str(weights))
    assert "holds no weight of timm model" in _err("layers", *TINY_VIT[1:], "--ckpt", weights)


def test_hf_text_directory_without_config(tmp_path):
    msg = _err("layers", "hf-text", "--text-model", tmp_path)
    assert "directory without config.json" in msg


def _shard(tmp_path: Path, spec: str) -> Path:
    k, n = spec.split("/")
    out = tmp_path / f"f.shard{k}of{n}.nc"
    args = ["extract", *TINY_VIT, "--data", "synthetic:4", "--shard", spec, "--out", str(out),
            "--no-progress", "--workers", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_merge_out_directory_and_shards_of_different_runs(tmp_path):
    a, b = _shard(tmp_path, "0/2"), _shard(tmp_path, "1/2")
    other = _shard(tmp_path, "0/3")
    folder = tmp_path / "merged"
    folder.mkdir()
    msg = _err("merge", a, b, "--out", folder, "--overwrite", "--no-progress")
    assert "is a directory; give a file path" in msg
    msg = _err("merge", a, other, "--out", tmp_path / "m.nc", "--no-progress")
    assert "different extractions" in msg and "given twice" not in msg


# ------------------------------------------------------------------ train / data


def test_rerunning_pretrain_into_a_finished_run_is_refused(tmp_path, run_dir):
    before = _digest(run_dir)
    msg = _err("train", "pretrain", *TINY_RUN, "--out", run_dir)
    assert "already holds a training run" in msg and "--resume" in msg and "--overwrite" in msg
    assert _digest(run_dir) == before
    assert "exclude each other" in _err(
        "train", "pretrain", *TINY_RUN, "--out", run_dir, "--resume", "--overwrite"
    )


def test_pretrain_overwrite_trains_over_an_existing_run(tmp_path):
    out = tmp_path / "run"
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, ["train", "pretrain", *TINY_RUN, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("verb", ["pretrain", "finetune"])
def test_train_bad_device(tmp_path, verb):
    assert "'banana' is not a device name" in _err(
        "train", verb, "--device", "banana", "--out", tmp_path / "r"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pretrain_cuda_without_cuda(tmp_path):
    msg = _err("train", "pretrain", "loop.device=cuda", "--out", tmp_path / "r")
    assert "CUDA is not available" in msg
    assert not (tmp_path / "r").exists()  # checked before the run folder is created


@pytest.mark.parametrize("init", ["missing", "notes.txt"])
def test_finetune_bad_init_is_an_error_line(tmp_path, init):
    (tmp_path / "notes.txt").write_text("x\n")
    msg = _err("train", "finetune", "--init", tmp_path / init, "--steps", "1",
               "--out", tmp_path / "ft")  # fmt: skip
    assert "no checkpoint at" in msg or "is not a repalign checkpoint" in msg


def test_resume_without_a_checkpoint_is_an_error_line(tmp_path):
    msg = _err("train", "pretrain", *TINY_RUN, "--out", tmp_path / "new", "--resume")
    assert "no checkpoint at" in msg


def test_pretrain_negative_steps_and_bad_synthetic_spec(tmp_path):
    result = runner.invoke(app, ["train", "pretrain", "--steps", "-1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--steps" in result.output
    msg = _err("train", "pretrain", "--data", "synthetic:abc", "--out", tmp_path / "r")
    assert "bad synthetic spec 'synthetic:abc'" in msg and "synthetic:N" in msg


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:8:x", "synthetic:8:1:2"])
def test_data_cache_bad_synthetic_spec(tmp_path, spec):
    msg = _err("data", "cache", spec, "--out", tmp_path / "c")
    assert f"bad synthetic spec {spec!r}" in msg


def test_data_cache_out_is_a_file_is_left_alone(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    assert "is a file; the cache is a folder" in _err(
        "data", "cache", "synthetic:4", "--out", target
    )
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("override", ["optim.lr=[1", "tasks=[mlm", "out=:"])
def test_override_value_that_is_not_yaml(tmp_path, override):
    msg = _err("train", "pretrain", override, "--out", tmp_path / "r")
    assert f"override {override!r}: the value is not valid YAML" in msg
    assert "tasks=[ap,itc]" in msg  # brackets in a message are printed, not read as markup


def test_config_file_that_is_not_yaml(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("loop:\n  steps: [1\n")
    msg = _err("train", "pretrain", "--config", cfg, "--out", tmp_path / "r")
    assert "is not valid YAML" in msg and "line" in msg


def test_plot_training_damaged_log_line_and_a_half_written_last_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    good = '{"step": 1, "split": "train", "loss": 1.0, "ap_loss": 0.7}\n'
    (run / "log.jsonl").write_text(good + '{"step": 2, "spl\n' + good.replace("1,", "3,", 1))
    assert "log.jsonl, line 2 is not a JSON record" in _err("plot-training", run)
    (run / "log.jsonl").write_text(good + '{"step": 2, "spl')  # the run is writing line 2
    result = runner.invoke(app, ["plot-training", str(run), "--out", str(tmp_path / "t.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.png").stat().st_size > 0


def test_compare_never_writes_scores_over_an_input_feature_file(tmp_path, feats):
    before = _digest(feats)
    msg = _err("compare", feats, "--out", feats, "--overwrite")
    assert "is one of the feature files being compared" in msg
    assert _digest(feats) == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_extract_never_writes_features_over_the_data_file(tmp_path, overwrite):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    data = tmp_path / "caps.tsv"
    data.write_text("a red square\tred.png\nanother one\tred.png\n")
    before = _digest(data)
    msg = _err("extract", *TINY_VIT, "--data", data, "--out", data, *overwrite)
    assert "is the --data file" in msg and "even with --overwrite" in msg
    msg = _err("extract", *TINY_VIT, "--data", data, "--out", tmp_path / "feats.json")
    assert "name it with .nc" in msg
    assert _digest(data) == before and not (tmp_path / "feats.json").exists()


def test_stray_commas_in_tasks_and_probe_metrics(tmp_path):
    msg = _err("train", "pretrain", "--probe-metrics", "cka,,nope", "--out", tmp_path / "r")
    assert "unknown metric 'nope'" in msg  # was a YAML error about an override never typed
    args = [*TINY_RUN, "--tasks", "ap, itc,", "--probe-metrics", "cka,", "--out", tmp_path / "ok"]
    result = runner.invoke(app, ["train", "pretrain", *map(str, args)])
    assert result.exit_code == 0, result.output
    assert "- itc" in (tmp_path / "ok" / "config.yaml").read_text()


def test_an_empty_shard_says_so(tmp_path):
    """More shards than samples: was 'no sample could be read from synthetic:4'."""
    out = tmp_path / "f.nc"
    msg = _err("extract", *TINY_VIT, "--data", "synthetic:4", "--shard", "0/8", "--out", out)
    assert "--shard 0/8 of 4 samples holds none: split into at most 4 shards" in msg
    assert not out.exists()


def test_model_arg_of_the_wrong_type_points_at_model_arg():
    msg = _err("layers", *TINY_VIT[1:], "--model-arg", "depth=abc")
    assert "check the --model-arg values" in msg and "depth=abc" in msg


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("synthetic", "fine-tuning data 'synthetic' is unknown: use synthetic-binary"),
        ("missing.jsonl", "fine-tuning data 'missing.jsonl' is not a file"),
    ],
)
def test_finetune_data_that_is_not_there(tmp_path, data, expected):
    """Both said 'fine-tuning on a file needs a dev split', sending the user the wrong way."""
    msg = _err("train", "finetune", "--data", data, "--steps", "1", "--out", tmp_path / "ft")
    assert expected in msg


def test_finetune_on_an_empty_dev_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    msg = _err("train", "finetune", "--data", tmp_path / "empty.jsonl", "--steps", "1",
               f"data.eval_path={tmp_path / 'empty.jsonl'}", "--out", tmp_path / "ft")  # fmt: skip
    assert "has no samples" in msg


def test_pretrain_data_folder_that_is_not_a_cache(tmp_path):
    msg = _err("train", "pretrain", "--data", tmp_path, "--out", tmp_path / "r")
    assert "is a folder but not an image cache" in msg  # said: cannot tell the format from ''


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("loop.log_every=0", "loop.log_every must be >= 1, got 0"),  # was a ZeroDivisionError
        ("loop.steps=-3", "loop.steps must be >= 0, got -3"),  # exited 0 without training
        ("loop.grad_accum=0", "loop.grad_accum must be >= 1, got 0"),
        ("optim.warmup_steps=-5", "optim.warmup_steps must be >= 0, got -5"),
        ("probe.n=0", "probe.n must be >= 1, got 0"),  # said 'batch_size must be >= 1'
    ],
)
def test_config_values_out_of_range(tmp_path, override, expected):
    out = tmp_path / "r"
    assert expected in _err("train", "pretrain", *TINY_RUN, override, "--out", out)
    assert not out.exists()


def test_zero_steps_saves_the_initialisation(tmp_path):
    """--steps 0 stays allowed: the untrained model, evaluated and saved (a baseline)."""
    out = tmp_path / "r"
    result = runner.invoke(app, ["train", "pretrain", *TINY_RUN, "--steps", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "last" / "model.safetensors").is_file()


def test_plot_pattern_matching_nothing_gives_a_score_file_example(tmp_path):
    msg = _err("plot", tmp_path / "run*.nc")
    assert "no file matches" in msg and "'scores-*.nc'" in msg and "shard" not in msg
