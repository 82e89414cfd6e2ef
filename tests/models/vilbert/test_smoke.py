"""Every preset and task subset builds, runs and returns finite losses of the contract's names."""

from __future__ import annotations

import pytest
import torch

from repalign.models.vilbert import ViLBERT, ViLBERTConfig, preset
from repalign.train.collate import PretrainCollator
from repalign.train.objectives import PretrainModel
from repalign.train.tasks import TASKS

from .conftest import micro_config


@pytest.mark.parametrize("name", ["tiny", pytest.param("base", marks=pytest.mark.slow)])
def test_preset_shapes_and_finite(name):
    config = preset(name)
    model = ViLBERT(config).eval()
    size, patch = config.vision_image_size, config.vision_patch_size
    b, t = 2, 7
    ids = torch.randint(5, 20, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        out = model(ids, mask, torch.randn(b, 3, size, size))
    h, p = config.hidden_size, (size // patch) ** 2
    assert out.text.shape == (b, t, h) and out.vision.shape == (b, 1 + p, h)
    assert out.text_pooled.shape == out.vision_pooled.shape == (b, h)
    for tensor in (out.text, out.vision, out.text_pooled, out.vision_pooled):
        assert torch.isfinite(tensor).all()


def test_config_round_trip_and_errors():
    config = preset("tiny", depth=4, cross_attention_layers=[1, 3], vision={"depth": 3})
    assert config.vision["depth"] == 3 and config.vision["patch_size"] == 16
    assert ViLBERTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="out of range"):
        preset("tiny", depth=2, cross_attention_layers=[2])
    with pytest.raises(ValueError, match="unknown ViLBERTConfig keys"):
        ViLBERTConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown ViLBERT preset"):
        preset("huge")


@pytest.mark.parametrize("tasks", [TASKS, ("ap", "itc"), ("mlm",), ("mim",), ("itc",)])
def test_pretrain_losses_finite(tasks, tokenizer, samples32):
    config = micro_config()
    collate = PretrainCollator(
        tokenizer, tasks=tasks, image_size=32, patch_size=config.vision_patch_size, seed=0
    )
    model = PretrainModel(config, tasks=tasks)
    out = model(collate(samples32[:8]))
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    for task in tasks:
        assert torch.isfinite(out[f"{task}_loss"]) and not out[f"{task}_loss"].requires_grad
    expected = {
        "mlm": "mlm_accuracy",
        "mim": "mim_accuracy",
        "ap": "ap_margin",
        "itc": "itc_accuracy",
    }
    assert all(expected[t] in out for t in tasks)
    # DDP with find_unused_parameters=False: every trainable parameter is in the graph.
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_conv_stem_keeps_the_token_grid():
    config = preset("tiny", vision={"conv_stem": True})
    model = ViLBERT(config).eval()
    assert isinstance(model.vision.patch_embed.proj, torch.nn.Sequential)
    with torch.no_grad():
        out = model(
            torch.randint(5, 20, (2, 5)),
            torch.ones(2, 5, dtype=torch.long),
            torch.randn(2, 3, 64, 64),
        )
    assert out.vision.shape == (2, 1 + (64 // 16) ** 2, config.hidden_size)
    with pytest.raises(ValueError, match="power-of-two"):
        ViLBERT(preset("tiny", vision={"conv_stem": True, "img_size": 60, "patch_size": 12}))
    with pytest.raises(ValueError, match="randomly initialised"):
        ViLBERT(preset("tiny", vision={"conv_stem": True, "weights": "w.safetensors"}))
