"""bert-vit: both towers' layers plus concat.layer.K = [text, vision] pooled features."""

from __future__ import annotations

import torch

from repalign.data.synthetic import SyntheticCaptions
from repalign.extract.hooks import record, select_layers
from repalign.models.bert_vit import BertViTAdapter
from repalign.models.hf import HFTextAdapter
from repalign.models.timm_vision import TimmVisionAdapter
from tests.extract._tiny import save_tiny_bert_dir, tiny_bert, tiny_tokenizer, tiny_vit


def _adapter(tmp_path, text_layers=2, vision_depth=2):
    tok = tiny_tokenizer(tmp_path)
    return BertViTAdapter(
        HFTextAdapter(tiny_bert(len(tok), text_layers), tok),
        TimmVisionAdapter(tiny_vit(vision_depth)),
    )


def test_layers_and_concat_pairing(tmp_path):
    adapter = _adapter(tmp_path, text_layers=2, vision_depth=4)
    names = [i.name for i in adapter.layers()]
    assert names[:3] == ["text.embeddings", "text.layer.0", "text.layer.1"]
    assert "vision.block.3" in names
    concat = [i for i in adapter.layers() if i.name.startswith("concat.")]
    # 2 text blocks vs 4 vision blocks: paired at equal relative depth
    assert [c.sources for c in concat] == [
        ("text.layer.0", "vision.block.1"),
        ("text.layer.1", "vision.block.3"),
    ]
    assert [c.relative_depth for c in concat] == [0.5, 1.0]
    assert adapter.layer("text.layer.1").module_path == "text.encoder.layer.1"


def test_concat_is_the_concatenation_of_pooled_features(tmp_path):
    adapter = _adapter(tmp_path)
    samples = list(SyntheticCaptions(3))
    batch = adapter.collate(samples)
    wanted = select_layers(adapter.layers(), ["concat.layer.1", "text.layer.1", "vision.block.1"])
    with record(adapter.model, wanted, "mean", available=adapter.layers()) as rec, torch.no_grad():
        feats = rec.run(lambda: adapter.forward(batch), masks=adapter.token_masks(batch))
    assert feats["concat.layer.1"].shape == (3, 64)
    expected = torch.cat([feats["text.layer.1"], feats["vision.block.1"]], dim=-1)
    torch.testing.assert_close(feats["concat.layer.1"], expected)
    # only a concat layer selected: its sources are hooked without being returned
    only = select_layers(adapter.layers(), ["concat.layer.0"])
    with record(adapter.model, only, "cls", available=adapter.layers()) as rec, torch.no_grad():
        feats = rec.run(lambda: adapter.forward(batch), masks=adapter.token_masks(batch))
    assert list(feats) == ["concat.layer.0"]


def test_load_from_paths(tmp_path):
    text_dir = save_tiny_bert_dir(tmp_path)
    adapter = BertViTAdapter.load(
        text_model=str(text_dir), vision_model="vit_tiny_patch16_224",
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0,
    )  # fmt: skip
    assert "concat.layer.1" in [i.name for i in adapter.layers()]
    assert adapter.provenance()["checkpoint"].startswith("text=")
