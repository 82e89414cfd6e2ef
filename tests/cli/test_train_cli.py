import json

import pytest
from typer.testing import CliRunner

from repalign.cli.main import app

runner = CliRunner()


def test_pretrain_shortcut_runs_and_writes_eval_json(tmp_path):
    out = tmp_path / "run"
    args = ["train", "pretrain", "--preset", "tiny", "--data", "synthetic:64", "--tasks", "ap,itc"]
    args += ["--out", str(out), "--steps", "3", "--batch-size", "8"]
    args += ["data.n_eval=16", "loop.log_every=1", "loop.progress=false", "optim.warmup_steps=1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval.json").read_text())
    assert {"ap_accuracy", "ap_loss", "ap_margin", "itc_accuracy", "itc_loss"} <= set(metrics)
    assert 0.0 <= metrics["ap_accuracy"] <= 1.0
    assert (out / "config.yaml").read_text().count("- ap") == 1
    assert (out / "last" / "model.safetensors").is_file()
    steps = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert steps[:3] == [1, 2, 3]

    plotted = runner.invoke(app, ["plot-training", str(out), "--out", str(tmp_path / "c.png")])
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_bad_override_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app, ["train", "pretrain", "--out", str(tmp_path), "optim.lrr=1", "--steps", "1"]
    )
    assert result.exit_code == 2
    assert "Did you mean 'lr'" in result.output


def test_unknown_task_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app, ["train", "pretrain", "--tasks", "ap,xyz", "--out", str(tmp_path), "--steps", "1"]
    )
    assert result.exit_code == 2
    assert "subset of mlm, mim, ap, itc" in result.output


def test_data_cache_command(tmp_path):
    result = runner.invoke(
        app, ["data", "cache", "synthetic:8", "--out", str(tmp_path / "c"), "--size", "32"]
    )
    assert result.exit_code == 0, result.output
    header = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert header["n"] == 8 and header["size"] == 32 and header["complete"]


def test_plot_training_without_a_log_says_so(tmp_path):
    result = runner.invoke(app, ["plot-training", str(tmp_path)])
    assert result.exit_code == 2
    assert "log.jsonl does not exist" in result.output


def test_refused_resume_keeps_the_config_and_overwrite_clears_the_old_run(tmp_path):
    out = tmp_path / "run"
    base = ["train", "pretrain", "--preset", "tiny", "--data", "synthetic:32", "--tasks", "itc"]
    base += ["--out", str(out), "--batch-size", "8", "data.n_eval=8", "loop.progress=false"]
    first = runner.invoke(app, [*base, "--steps", "3", "loop.checkpoint_every=2"])
    assert first.exit_code == 0, first.output
    assert (out / "checkpoints" / "step-2").is_dir()
    config = (out / "config.yaml").read_text()

    refused = runner.invoke(app, [*base, "--steps", "4", "--resume", "model.hidden_size=48"])
    assert refused.exit_code == 2 and "model config differs" in refused.output
    assert (out / "config.yaml").read_text() == config  # the run's own config, untouched

    again = runner.invoke(app, [*base, "--steps", "1", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert not (out / "checkpoints").exists()  # the earlier run's step-2 is not left behind
    assert json.loads((out / "eval.json").read_text())
    assert "steps: 1" in (out / "config.yaml").read_text()


def test_data_option_maps_synthetic_specs_to_config_keys():
    from repalign.cli.train_cmd import _data_overrides

    assert _data_overrides("synthetic") == ["data.name=synthetic"]
    assert _data_overrides("synthetic:16:3") == [
        "data.name=synthetic",
        "data.n_train=16",
        "data.seed=3",
    ]
    with pytest.raises(ValueError, match="bad synthetic spec 'synthetic:8:0:junk'"):
        _data_overrides("synthetic:8:0:junk")
