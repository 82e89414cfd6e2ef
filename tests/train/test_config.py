import pytest

from repalign.train.config import (
    FinetuneConfig,
    PretrainConfig,
    load_config,
    parse_overrides,
    save_config,
)


def test_overrides_parse_nested_yaml_values():
    assert parse_overrides(["optim.lr=1e-3", "tasks=[ap,itc]", "loop.compile=true"]) == {
        "optim": {"lr": 1e-3},
        "tasks": ["ap", "itc"],
        "loop": {"compile": True},
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["optim.lr"])


def test_file_then_overrides_and_round_trip(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\ntasks: [ap, itc]\noptim:\n  lr: 0.001\nloop:\n  steps: 50\n")
    cfg = load_config(
        PretrainConfig, path, ["loop.steps=7", "tasks=mlm,ap", "optim.betas=[0.9,0.95]"]
    )
    assert cfg.tasks == ["mlm", "ap"] and cfg.loop.steps == 7 and cfg.optim.lr == 0.001
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.loop.log_every == PretrainConfig().loop.log_every  # defaults kept
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(PretrainConfig, tmp_path / "resolved.yaml") == cfg


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'.*Did you mean 'lr'"):
        load_config(PretrainConfig, overrides=["optim.lrr=1"])
    # every close key is offered, not only the closest
    with pytest.raises(ValueError, match="Did you mean 'tasks' or 'task_ratios'"):
        load_config(PretrainConfig, overrides=["task=mlm"])
    # with nothing close, the valid keys of that section say how to fix it
    with pytest.raises(ValueError, match="'optim.zzz'. Valid keys under 'optim': lr, "):
        load_config(PretrainConfig, overrides=["optim.zzz=1"])


def test_wrong_types_are_named():
    with pytest.raises(ValueError, match="loop.steps must be int"):
        load_config(PretrainConfig, overrides=["loop.steps=many"])
    with pytest.raises(ValueError, match="optim.schedule must be one of"):
        load_config(PretrainConfig, overrides=["optim.schedule=step"])
    with pytest.raises(FileNotFoundError):
        load_config(FinetuneConfig, "missing.yaml")


def test_nested_override_keeps_the_parent_default():
    cfg = load_config(FinetuneConfig, overrides=["data.n_train=10", "loop.eval_every=7"])
    assert cfg.data.name == "synthetic-binary" and cfg.data.n_train == 10
    assert cfg.loop.eval_every == 7 and cfg.loop.steps == FinetuneConfig().loop.steps


@pytest.mark.parametrize("name", ["vilbert-tiny", "vilbert-base", "finetune-tiny"])
def test_shipped_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    cls = FinetuneConfig if name.startswith("finetune") else PretrainConfig
    cfg = load_config(cls, path)
    assert cfg.out.startswith("runs/")


def test_a_synthetic_spec_as_data_name_says_which_keys_to_write():
    with pytest.raises(ValueError, match="write name: synthetic and n_train: 64, seed: 2"):
        load_config(PretrainConfig, None, ["data.name=synthetic:64:2"])
