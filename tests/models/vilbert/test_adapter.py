"""The ``vilbert`` adapter: loads a training checkpoint, names every layer, extracts."""

from __future__ import annotations

import pytest
import torch

from repalign.data.synthetic import SyntheticCaptions
from repalign.models import get_adapter
from repalign.models.vilbert.adapter import ViLBERTAdapter
from repalign.train.checkpoint import save_checkpoint
from repalign.train.objectives import PretrainModel

from .conftest import micro_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = micro_config(depth=3, cross_attention_layers=[0, 2])
    model = PretrainModel(config, tasks=["mlm", "mim", "ap", "itc"]).eval()
    path = tmp_path_factory.mktemp("run") / "last"
    run_config = {"kind": "pretrain", "model": config.to_dict(), "tokenizer": "synthetic"}
    save_checkpoint(path, model, run_config)
    return path, model


def test_registered_and_loads_checkpoint(checkpoint):
    path, trained = checkpoint
    adapter = get_adapter("vilbert").load(ckpt=str(path))
    assert isinstance(adapter, ViLBERTAdapter)
    for key, value in trained.vilbert.state_dict().items():
        torch.testing.assert_close(adapter.model.state_dict()[key], value, rtol=0, atol=0)
    assert adapter.provenance()["checkpoint_sha256"]


def test_layer_names_streams_and_depths(checkpoint):
    adapter = get_adapter("vilbert").load(ckpt=str(checkpoint[0]))
    layers = {info.name: info for info in adapter.layers()}
    expected = (
        ["text.embeddings", "text.tower.0", "text.fusion.0", "text.fusion.1", "text.fusion.2"]
        + ["text.pooled", "vision.patch_embed", "vision.tower.0"]
        + ["vision.fusion.0", "vision.fusion.1", "vision.fusion.2", "vision.pooled"]
    )
    assert list(layers) == expected
    assert layers["text.fusion.2"].stream == "text" and layers["vision.fusion.0"].stream == "vision"
    assert layers["text.fusion.0"].output_index == 0 and layers["vision.fusion.0"].output_index == 1
    assert layers["text.tower.0"].depth == 1 and layers["text.fusion.0"].depth == 2
    assert layers["text.fusion.2"].relative_depth == 1.0
    assert layers["vision.fusion.0"].tokens == "vision"
    for info in layers.values():  # every module path resolves
        adapter.model.get_submodule(info.module_path)


def test_extracted_fusion_features_match_a_forward_pass(checkpoint, tmp_path):
    from repalign.extract.run import extract
    from repalign.store.features import open_features

    adapter = get_adapter("vilbert").load(ckpt=str(checkpoint[0]))
    data = SyntheticCaptions(6, seed=5, image_size=32)
    result = extract(
        adapter,
        data,
        tmp_path / "f.nc",
        layers=["text.fusion.*", "vision.fusion.2", "text.pooled"],
        pool="cls",
        batch_size=4,
        progress=False,
    )
    assert result.complete
    batch = adapter.collate(list(data))
    with torch.no_grad():
        out = adapter.model(**batch, return_fusion_states=True)
    features = open_features(tmp_path / "f.nc")
    torch.testing.assert_close(
        torch.as_tensor(features["text.fusion.2"].values), out.text[:, 0], atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        torch.as_tensor(features["vision.fusion.2"].values), out.vision[:, 0], atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(
        torch.as_tensor(features["text.fusion.0"].values),
        out.fusion_states[0][0][:, 0],
        atol=1e-5,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        torch.as_tensor(features["text.pooled"].values), out.text_pooled, atol=1e-5, rtol=1e-4
    )


def test_load_needs_a_checkpoint():
    with pytest.raises(ValueError, match="--ckpt"):
        get_adapter("vilbert").load()


def test_mismatched_checkpoint_is_a_clear_error(checkpoint, tmp_path):
    _, trained = checkpoint
    wrong = micro_config(depth=1, cross_attention_layers=[0])
    save_checkpoint(tmp_path / "bad", trained, {"model": wrong.to_dict(), "tokenizer": "synthetic"})
    with pytest.raises(ValueError, match="does not fit"):
        get_adapter("vilbert").load(ckpt=str(tmp_path / "bad"))
