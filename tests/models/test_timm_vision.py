"""timm-vision: hook features equal timm's forward_intermediates; preprocessing; local weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from repalign.data.synthetic import SyntheticCaptions
from repalign.extract.hooks import record
from repalign.models.timm_vision import TimmVisionAdapter
from tests.extract._tiny import tiny_vit


def _extract(adapter, samples, how):
    batch = adapter.collate(samples)
    with record(adapter.model, adapter.layers(), how) as rec, torch.no_grad():
        feats = rec.run(lambda: adapter.forward(batch), masks=adapter.token_masks(batch))
    return batch, feats


@pytest.mark.parametrize("how", ["cls", "mean"])
def test_hooks_equal_forward_intermediates(how):
    adapter = TimmVisionAdapter(tiny_vit(depth=3))
    batch, feats = _extract(adapter, list(SyntheticCaptions(4)), how)
    assert batch["pixel_values"].shape == (4, 3, 32, 32)  # the model's own input size
    with torch.no_grad():
        inter = adapter.model.forward_intermediates(
            batch["pixel_values"], norm=False, output_fmt="NLC", return_prefix_tokens=True,
            intermediates_only=True,
        )  # fmt: skip
    assert len(inter) == 3
    for i, (patches, prefix) in enumerate(inter):
        expected = prefix[:, 0] if how == "cls" else patches.mean(1)
        torch.testing.assert_close(feats[f"vision.block.{i}"], expected, rtol=1e-5, atol=1e-6)


def test_layers_and_prefix_tokens():
    names = [i.name for i in TimmVisionAdapter(tiny_vit(depth=2)).layers()]
    assert names == ["vision.patch_embed", "vision.block.0", "vision.block.1"]
    # no class token: cls pooling must be refused, mean still works
    adapter = TimmVisionAdapter(tiny_vit(depth=2, class_token=False, global_pool="avg"))
    assert adapter.layer("vision.block.0").cls_index is None
    with pytest.raises(ValueError, match="no class token"):
        _extract(adapter, list(SyntheticCaptions(2)), "cls")
    _, feats = _extract(adapter, list(SyntheticCaptions(2)), "mean")
    assert feats["vision.block.1"].shape == (2, 32)


def test_patch_embed_layer_is_block0_input():
    adapter = TimmVisionAdapter(tiny_vit(depth=2))
    batch, feats = _extract(adapter, list(SyntheticCaptions(2)), "tokens")
    x = batch["pixel_values"]
    m = adapter.model
    with torch.no_grad():
        expected = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
    torch.testing.assert_close(feats["vision.patch_embed"], expected)
    assert feats["vision.patch_embed"].shape == (2, 1 + 16, 32)


def test_load_from_timm_directory_restores_weights(tmp_path):
    model = tiny_vit(depth=2, seed=3)
    (tmp_path / "vit").mkdir()
    model_args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    (tmp_path / "vit" / "config.json").write_text(
        json.dumps(
            {
                "architecture": "vit_tiny_patch16_224",
                "num_classes": 0,
                "model_args": model_args,
                "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]},
            }
        )  # fmt: skip
    )
    save_file(model.state_dict(), tmp_path / "vit" / "model.safetensors")
    adapter = TimmVisionAdapter.load(vision_model=str(tmp_path / "vit"))
    for (k, a), b in zip(
        model.state_dict().items(), adapter.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=k)
    assert len(adapter.provenance()["checkpoint_sha256"]) == 64
    normalize = adapter.transform.transforms[-1]
    assert [round(float(m), 3) for m in normalize.mean] == [
        0.1,
        0.2,
        0.3,
    ]  # the directory's data config
    # the same weights through --vision-model NAME --ckpt FILE
    again = TimmVisionAdapter.load(
        vision_model="vit_tiny_patch16_224", ckpt=str(tmp_path / "vit" / "model.safetensors"),
        num_classes=0, **model_args,
    )  # fmt: skip
    torch.testing.assert_close(again.model.cls_token, model.cls_token)


def test_load_errors():
    with pytest.raises(ValueError, match="needs --vision-model"):
        TimmVisionAdapter.load()
    with pytest.raises(ValueError, match="timm cannot create"):
        TimmVisionAdapter.load(vision_model="no_such_model_xyz")
