"""ModuleAdapter: any nn.Module, layers by module path / glob, features equal a manual forward."""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch
from torch import nn

from repalign.compare import compare
from repalign.data.base import Sample
from repalign.data.synthetic import VOCABULARY, SyntheticCaptions
from repalign.extract import extract
from repalign.extract.hooks import record
from repalign.models import ModuleAdapter
from repalign.models.hf import HFTextAdapter
from repalign.models.module import state_sha256
from repalign.models.module_inputs import image_transform
from repalign.models.module_layers import module_paths, resolve_module_paths
from repalign.store.features import open_features
from tests.extract._tiny import tiny_bert, tiny_tokenizer


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))  # (B, 8, H/4, W/4)
        return self.head(h.mean(dim=(2, 3)))


class TinyEncoder(nn.Module):
    """A transformer text encoder taking keyword inputs, with padding."""

    def __init__(self, vocab: int, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True)
            for _ in range(2)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h, src_key_padding_mask=attention_mask == 0)
        return h


WORDS = {w: i + 1 for i, w in enumerate(VOCABULARY)}  # 0 = padding


def word_collate(samples):
    ids = [[WORDS[w] for w in s.text.split() if w in WORDS] for s in samples]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


def _images(n: int = 6, size: int = 32) -> list[Sample]:
    data = SyntheticCaptions(n, image_size=size)
    return [data[i] for i in range(n)]


def _features(adapter: ModuleAdapter, samples, how: str = "mean", stop_early: bool = True):
    batch = adapter.collate(samples)
    with (
        record(adapter.model, adapter.layers(), how, stop_early=stop_early) as rec,
        torch.no_grad(),
    ):
        feats = rec.run(lambda: adapter.forward(batch), masks=adapter.token_masks(batch))
    return batch, feats


def _manual_outputs(model: nn.Module, paths, *args, **kwargs) -> dict[str, torch.Tensor]:
    """A forward pass with plain hooks keeping each module's raw output."""
    out: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(p).register_forward_hook(
            lambda _m, _a, o, p=p: out.__setitem__(p, o[0] if isinstance(o, tuple) else o)
        )
        for p in paths
    ]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return out


def test_cnn_features_equal_a_manual_forward_with_global_average_pooling():
    model = TinyCNN().eval()
    adapter = ModuleAdapter(model, ["stem", "stages.*", "head"], stream="vision", image_size=32)
    infos = adapter.layers()
    assert [i.name for i in infos] == [
        "vision.stem", "vision.stages.0", "vision.stages.1", "vision.head",
    ]  # fmt: skip
    assert [i.depth for i in infos] == [1, 2, 3, 4]
    assert [i.relative_depth for i in infos] == [0.25, 0.5, 0.75, 1.0]
    assert all(i.cls_index is None and i.layout == "auto" for i in infos)

    batch, feats = _features(adapter, _images())
    x = batch["args"][0]
    assert x.shape == (6, 3, 32, 32)
    raw = _manual_outputs(model, [i.module_path for i in infos], x)
    for info in infos:
        ref = raw[info.module_path]
        expected = ref.mean(dim=(2, 3)) if ref.ndim == 4 else ref
        torch.testing.assert_close(feats[info.name], expected)
    assert feats["vision.stages.1"].shape == (6, 8)


def test_conv_maps_as_tokens_and_cls_refused():
    model = TinyCNN().eval()
    adapter = ModuleAdapter(model, ["stages.1"], stream="vision", image_size=32)
    batch, feats = _features(adapter, _images(), "tokens")
    raw = _manual_outputs(model, ["stages.1"], batch["args"][0])["stages.1"]  # (6, 8, 8, 8)
    tokens = feats["vision.stages.1"]
    assert tokens.shape == (6, 64, 8)
    torch.testing.assert_close(tokens, raw.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="no class token; use pool='mean'"):
        _features(adapter, _images(), "cls")


def test_channels_last_layout_is_declared_per_layer():
    class NHWC(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cnn = TinyCNN()
            self.to_nhwc = nn.Identity()

        def forward(self, x):
            return self.to_nhwc(self.cnn.stem(x).permute(0, 2, 3, 1))

    model = NHWC().eval()
    adapter = ModuleAdapter(
        model, ["cnn.stem", "to_nhwc"], stream="vision", image_size=32,
        layout={"to_nhwc": "channels_last"},
    )  # fmt: skip
    assert [i.layout for i in adapter.layers()] == ["auto", "channels_last"]
    _, feats = _features(adapter, _images())
    torch.testing.assert_close(feats["vision.to_nhwc"], feats["vision.cnn.stem"])
    with pytest.raises(ValueError, match="not among the layers"):
        ModuleAdapter(model, ["cnn.stem"], stream="vision", layout={"stem": "channels_last"})


def test_text_encoder_with_collate_pools_over_real_tokens_only():
    model = TinyEncoder(len(WORDS) + 1).eval()
    adapter = ModuleAdapter(model, ["blocks.*"], stream="text", collate=word_collate)
    samples = [Sample("a", "a red circle"), Sample("b", "a blue square left of a green circle")]
    batch, feats = _features(adapter, samples)
    mask = batch["kwargs"]["attention_mask"]
    assert bool((mask == 0).any()), "the test needs padding"
    raw = _manual_outputs(model, ["blocks.0", "blocks.1"], **batch["kwargs"])
    m = mask.unsqueeze(-1).float()
    for i in range(2):
        expected = (raw[f"blocks.{i}"] * m).sum(1) / m.sum(1)
        torch.testing.assert_close(feats[f"text.blocks.{i}"], expected)
    # counter-test: a plain mean over padding differs
    assert not torch.allclose(feats["text.blocks.1"], raw["blocks.1"].mean(1))


def test_tokenizer_default_matches_the_hf_text_adapter(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    bert = tiny_bert(len(tok), layers=2)
    names = {"text.embeddings": "embeddings", "text.layer.0": "encoder.layer.0",
             "text.layer.1": "encoder.layer.1"}  # fmt: skip
    mine = ModuleAdapter(bert, names, stream="text", tokenizer=tok, cls_index=0)
    theirs = HFTextAdapter(bert, tok)
    samples = [Sample("a", "a red circle left of a blue square"), Sample("b", "a cat")]
    for how in ("mean", "cls"):
        _, a = _features(mine, samples, how)
        _, b = _features(theirs, samples, how)
        assert list(a) == list(names)
        for name in names:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_glob_and_regex_patterns_over_module_paths():
    model = TinyCNN()
    assert module_paths(model) == [
        "stem", "stem.0", "stem.1", "stages", "stages.0", "stages.0.0", "stages.0.1",
        "stages.1", "stages.1.0", "stages.1.1", "head",
    ]  # fmt: skip
    assert resolve_module_paths(model, ["stages.*"]) == ["stages.0", "stages.1"]
    assert resolve_module_paths(model, ["stages.*.0"]) == ["stages.0.0", "stages.1.0"]
    assert resolve_module_paths(model, ["stages.**"]) == [
        "stages.0", "stages.0.0", "stages.0.1", "stages.1", "stages.1.0", "stages.1.1",
    ]  # fmt: skip
    assert resolve_module_paths(model, [r"re:stages\.\d"]) == ["stages.0", "stages.1"]
    assert resolve_module_paths(model, ["stages.[!0]"]) == ["stages.1"]
    # pattern order gives depth order; a path matched twice counts once
    assert resolve_module_paths(model, ["head", "stem", "s*"]) == ["head", "stem", "stages"]


def test_bad_paths_say_did_you_mean():
    model = TinyCNN()
    with pytest.raises(ValueError, match=r"matches no submodule of TinyCNN\. Did you mean 'stem'"):
        ModuleAdapter(model, ["stme"], stream="vision")
    with pytest.raises(ValueError, match="top-level modules: stem, stages, head"):
        ModuleAdapter(model, ["layer*"], stream="vision")
    with pytest.raises(ValueError, match="not a valid regex"):
        ModuleAdapter(model, ["re:stages.("], stream="vision")
    with pytest.raises(ValueError, match="has no submodule 'stages.2'"):
        ModuleAdapter(model, {"vision.s2": "stages.2"}, stream="vision")
    with pytest.raises(ValueError, match="several names to one module path"):
        ModuleAdapter(model, {"a": "stem", "b": "stem"}, stream="vision")
    with pytest.raises(ValueError, match="at least one layer"):
        ModuleAdapter(model, [], stream="vision")


def test_missing_preprocessing_and_bad_collate_outputs_are_explained():
    with pytest.raises(ValueError, match="stream='text' needs tokenizer="):
        ModuleAdapter(TinyEncoder(5), ["blocks.0"], stream="text")
    with pytest.raises(ValueError, match="no default preprocessing; give collate="):
        ModuleAdapter(TinyEncoder(5), ["blocks.0"], stream="fused", tokens="text")
    adapter = ModuleAdapter(TinyCNN(), ["stem"], stream="vision", collate=lambda s: "pixels")
    with pytest.raises(TypeError, match="collate must return a tensor"):
        adapter.collate(_images(1))
    with pytest.raises(ValueError, match="needs an image for every sample"):
        ModuleAdapter(TinyCNN(), ["stem"], stream="vision").collate([Sample("t", "a cat")])
    with pytest.raises(ValueError, match="must look like package.module:callable"):
        ModuleAdapter.load(vision_model="resnet18")  # a name, not a factory


def test_a_module_run_twice_per_forward_is_refused():
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.act = nn.ReLU()

        def forward(self, x):
            return self.act(self.conv(self.act(x)))

    adapter = ModuleAdapter(Reuse().eval(), ["act"], stream="vision", image_size=32)
    # with early stop the extractor would end the pass after the first call: still caught
    with pytest.raises(ValueError, match="'act' runs 2 times in one forward pass"):
        _features(adapter, _images(2), stop_early=True)
    ok = ModuleAdapter(Reuse().eval(), ["conv"], stream="vision", image_size=32)
    _features(ok, _images(2))
    assert not ok.model.conv._forward_hooks  # the check left no hook behind


def test_call_and_positional_inputs():
    model = TinyCNN().eval()
    adapter = ModuleAdapter(
        model, ["stages.0"], stream="vision",
        collate=lambda samples: (torch.ones(len(samples), 3, 8, 8),),
        call=lambda m, x: m.stages(m.stem(x)),
    )  # fmt: skip
    _, feats = _features(adapter, _images(3))
    with torch.no_grad():
        expected = model.stages[0](model.stem(torch.ones(3, 3, 8, 8))).mean(dim=(2, 3))
    torch.testing.assert_close(feats["vision.stages.0"], expected)


def test_default_image_transform():
    image = _images(1, size=48)[0].image
    x = image_transform(32, resize=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_provenance_records_the_model_and_a_weights_fingerprint():
    model = TinyCNN()
    adapter = ModuleAdapter(model, ["stem", "stages.1"], stream="vision", checkpoint="mine.pt")
    prov = adapter.provenance()
    assert prov["checkpoint"] == "mine.pt"
    assert '"class": "tests.models.test_module_adapter.TinyCNN"' in prov["config_json"]
    assert f'"parameters": {sum(p.numel() for p in model.parameters())}' in prov["config_json"]
    assert prov["checkpoint_sha256"] == state_sha256(TinyCNN())  # same seed, same weights
    with torch.no_grad():
        model.head.bias[0] += 1
    assert adapter.provenance()["checkpoint_sha256"] != prov["checkpoint_sha256"]
    quiet = ModuleAdapter(model, ["stem"], stream="vision", fingerprint=False)
    assert quiet.provenance()["checkpoint_sha256"] == ""


def test_extract_to_netcdf_and_compare(tmp_path):
    model = TinyCNN().eval()
    adapter = ModuleAdapter(model, ["stem", "stages.*"], stream="vision", image_size=32,
                            name="tiny-cnn")  # fmt: skip
    data = SyntheticCaptions(12, image_size=32)
    out = tmp_path / "cnn.nc"
    result = extract(adapter, data, out, pool="mean", batch_size=5, progress=False)
    assert result.complete and result.n_written == 12
    ds = open_features(out, require_complete=True)
    assert ds.attrs["model"] == "tiny-cnn"
    assert ds["vision.stages.1"].attrs["module_path"] == "stages.1"
    assert int(ds["vision.stages.1"].attrs["depth"]) == 3

    batch = adapter.collate([data[i] for i in range(12)])
    raw = _manual_outputs(model, ["stages.1"], batch["args"][0])["stages.1"]
    np.testing.assert_allclose(
        ds["vision.stages.1"].values, raw.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6
    )
    ds.close()

    scores = compare([out], ["cka"], progress=False)
    grid = scores["score"].sel(metric="cka").values
    assert grid.shape == (3, 3)
    np.testing.assert_allclose(np.diag(grid), 1.0, rtol=1e-6)

    tokens = extract(
        adapter, data, tmp_path / "tok.nc", pool="tokens", batch_size=6, progress=False
    )
    assert tokens.complete
    with open_features(tmp_path / "tok.nc") as tds:
        assert tds["vision.stages.1"].shape == (12, 64, 8)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="needs torchvision")
def test_torchvision_resnet18():
    from torchvision.models import resnet18

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    adapter = ModuleAdapter(model, ["layer1", "layer2", "layer3", "layer4"], stream="vision",
                            image_size=64)  # fmt: skip
    batch, feats = _features(adapter, _images(4, size=64))
    assert [f.shape[1] for f in feats.values()] == [64, 128, 256, 512]
    raw = _manual_outputs(model, ["layer4"], batch["args"][0])["layer4"]
    assert raw.shape == (4, 512, 2, 2)  # a real map, so the mean is not a no-op
    pooled = _manual_outputs(model, ["avgpool"], batch["args"][0])["avgpool"].flatten(1)
    torch.testing.assert_close(feats["vision.layer4"], pooled)  # = torchvision's own GAP
    with pytest.raises(ValueError, match="'layer1.0.relu' runs 2 times"):
        _features(ModuleAdapter(model, ["layer1.0.relu"], stream="vision", image_size=32),
                  _images(2))  # fmt: skip
    assert time.perf_counter() - t0 < 5.0


def test_timm_swin_stages_are_channels_last():
    """A timm model without `blocks` whose stages return (B, H, W, C): declared, not guessed."""
    import timm

    torch.manual_seed(0)
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
        embed_dim=8, depths=(1, 1), num_heads=(1, 1), num_classes=0,
    ).eval()  # fmt: skip
    adapter = ModuleAdapter(
        swin, ["layers.*"], stream="vision", image_size=32, layout="channels_last"
    )
    batch, feats = _features(adapter, _images(3))
    raw = _manual_outputs(swin, ["layers.0", "layers.1"], batch["args"][0])
    assert raw["layers.1"].shape == (3, 4, 4, 16)  # (B, H, W, C)
    for path, out in raw.items():
        torch.testing.assert_close(feats[f"vision.{path}"], out.mean(dim=(1, 2)))


def test_how_a_4d_output_is_read_is_logged(caplog):
    adapter = ModuleAdapter(TinyCNN().eval(), ["stages.1", "head"], stream="vision", image_size=32)
    with caplog.at_level("INFO", logger="repalign.models.module"):
        _features(adapter, _images(2))
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "vision.stages.1: output (2, 8, 8, 8) read as (batch, channels, *spatial): 8 channels "
        "(layout auto); pass layout='channels_last' if it is (batch, *spatial, channels)"
    ]


def test_resume_refuses_a_file_written_with_other_weights(tmp_path):
    model = TinyCNN().eval()
    adapter = ModuleAdapter(model, ["stages.*"], stream="vision", image_size=32)
    data = SyntheticCaptions(4, image_size=32)
    out = tmp_path / "f.nc"
    extract(adapter, data, out, batch_size=4, progress=False)
    again = extract(adapter, data, out, batch_size=4, progress=False, resume=True)
    assert again.already_complete
    with torch.no_grad():
        model.stem[0].weight.mul_(2)
    with pytest.raises(ValueError, match="cannot resume .*checkpoint_sha256: file has"):
        extract(adapter, data, out, batch_size=4, progress=False, resume=True)
