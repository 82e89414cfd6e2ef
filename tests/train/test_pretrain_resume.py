"""Resume of a real (tiny) ViLBERT pretraining run: slow, run with -m slow."""

import json
import shutil

import pytest
import torch

from repalign.train.checkpoint import load_model_weights
from repalign.train.config import PretrainConfig, load_config
from repalign.train.pretrain import run_pretraining

SMALL = (
    "model={vision: {patch_size: 16, embed_dim: 32, depth: 1}, text: {hidden_size: 32, "
    "intermediate_size: 64, num_hidden_layers: 1}, hidden_size: 32, intermediate_size: 64, "
    "depth: 2, cross_attention_layers: [1]}"
)


def _config(out, steps):
    return load_config(
        PretrainConfig,
        overrides=[
            f"out={out}",
            f"loop.steps={steps}",
            SMALL,
            "batch_size=8",
            "data.n_train=64",
            "data.n_eval=8",
            "loop.log_every=1",
            "loop.checkpoint_every=2",
            "loop.progress=false",
            "loop.threads=1",
            "optim.warmup_steps=2",
            "task_ratios={mim: 0.5}",
        ],
    )


@pytest.mark.slow
def test_pretraining_resume_matches_uninterrupted(tmp_path):
    run_pretraining(_config(tmp_path / "full", 5))
    run_pretraining(_config(tmp_path / "part", 3))
    shutil.rmtree(tmp_path / "part" / "last")
    shutil.copytree(tmp_path / "part" / "checkpoints" / "step-2", tmp_path / "part" / "last")
    torch.manual_seed(99)
    run_pretraining(_config(tmp_path / "part", 5), resume=True)

    def losses(run):
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if r["split"] == "train"]

    assert losses("part") == losses("full")
    a, _ = load_model_weights(tmp_path / "full")
    b, _ = load_model_weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
