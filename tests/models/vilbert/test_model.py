"""The model's wiring: co-attention residuals, padding masks, BERT equivalence, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from repalign.models.vilbert import ViLBERT
from repalign.models.vilbert.model import FusionLayer
from repalign.train.collate import PretrainCollator
from repalign.train.objectives import PretrainModel
from repalign.train.tasks import TASKS

from .conftest import micro_config


def _reference_attention(block, query, context, key_mask=None):
    """Post-LN attention block written out by hand (softmax, no SDPA), for comparison."""
    att = block.attention
    heads = att.num_heads

    def split(x):
        b, n, h = x.shape
        return x.view(b, n, heads, h // heads).transpose(1, 2)

    q, k, v = split(att.query(query)), split(att.key(context)), split(att.value(context))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return block.norm(query + block.output(out))


def test_co_attention_residual_goes_to_each_streams_own_input():
    config = micro_config()
    layer = FusionLayer(config, co_attention=True).eval()
    text, vision = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        out_text, out_vision = layer(text, vision, mask)
        # text queries attend to vision; the residual is the text input (and vice versa)
        expected_text = layer.text_ffn(_reference_attention(layer.text_attention, text, vision))
        expected_vision = layer.vision_ffn(
            _reference_attention(layer.vision_attention, vision, text, mask)
        )
        # the crossed wiring (residual from the other stream) must not match
        crossed_text = layer.text_ffn(
            layer.text_attention.norm(
                vision[:, :5] + layer.text_attention.output(torch.zeros(2, 5, 32))
            )
        )
    torch.testing.assert_close(out_text, expected_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_vision, expected_vision, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_text, crossed_text, atol=1e-3)


def test_with_zero_attention_output_each_stream_keeps_only_its_own_input():
    layer = FusionLayer(micro_config(), co_attention=True).eval()
    for block in (layer.text_attention, layer.vision_attention):
        torch.nn.init.zeros_(block.output.weight)
        torch.nn.init.zeros_(block.output.bias)
    text = torch.randn(2, 5, 32)
    with torch.no_grad():
        a, _ = layer(text, torch.randn(2, 9, 32), None)
        b, _ = layer(text, torch.randn(2, 9, 32), None)
    torch.testing.assert_close(a, b)  # text output independent of the vision stream


def test_self_attention_layers_keep_streams_apart_and_co_attention_joins_them():
    for cross, joined in (([], False), ([1], True)):
        model = ViLBERT(micro_config(depth=2, cross_attention_layers=cross)).eval()
        ids = torch.randint(5, 20, (2, 6))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            a = model(ids, mask, torch.randn(2, 3, 32, 32)).text
            b = model(ids, mask, torch.randn(2, 3, 32, 32)).text
        assert (not torch.allclose(a, b, atol=1e-5)) == joined


def test_padding_does_not_change_outputs():
    """A flipped mask sign (attending to padding only) changes every output."""
    model = ViLBERT(micro_config(depth=2, cross_attention_layers=[0, 1])).eval()
    ids = torch.randint(5, 20, (2, 6))
    pixels = torch.randn(2, 3, 32, 32)
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], dim=1).long()
    with torch.no_grad():
        plain = model(ids, torch.ones_like(ids), pixels)
        pad = model(padded, padded_mask, pixels)
        flipped = model(padded, 1 - padded_mask, pixels)
    torch.testing.assert_close(pad.text[:, :6], plain.text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pad.vision, plain.vision, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pad.text_pooled, plain.text_pooled, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(flipped.vision, plain.vision, atol=1e-3)


def test_text_stream_without_fusion_layers_equals_transformers_bert():
    config = micro_config(depth=0, cross_attention_layers=[])
    model = ViLBERT(config).eval()
    bert_config = BertConfig(**config.text)
    bert_config._attn_implementation = "eager"  # an independent attention path
    bert = BertModel(bert_config, add_pooling_layer=False).eval()
    bert.load_state_dict(model.text.state_dict())
    ids = torch.randint(5, 20, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        ours = model(ids, mask, torch.randn(3, 3, 32, 32)).text
        reference = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], reference[real], atol=1e-5, rtol=1e-4)


def test_every_parameter_gets_a_nonzero_gradient_with_all_tasks(tokenizer, samples32):
    config = micro_config(depth=2, cross_attention_layers=[0])
    model = PretrainModel(config, tasks=TASKS)
    assert not model._touch_all  # no zero-weighted touch: real gradients only
    collate = PretrainCollator(
        tokenizer, tasks=TASKS, image_size=32, patch_size=config.vision_patch_size, seed=0
    )
    model(collate(samples32[:16]))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_swapping_a_pairs_image_changes_the_alignment_logit(tokenizer, samples32):
    config = micro_config()
    model = PretrainModel(config, tasks=["ap"]).eval()
    collate = PretrainCollator(tokenizer, tasks=["ap"], image_size=32, seed=0)
    batch = collate(samples32[:4])
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    with torch.no_grad():
        out = model.vilbert(ids, mask, pixels)
        swapped = model.vilbert(ids, mask, pixels.roll(1, dims=0))
        logit = model.heads["ap"](out.text_pooled, out.vision_pooled)
        logit_swapped = model.heads["ap"](swapped.text_pooled, swapped.vision_pooled)
    assert (logit - logit_swapped).abs().min() > 1e-6


def test_frozen_towers_get_no_gradient(tokenizer, samples32):
    config = micro_config(freeze_text=True, freeze_vision=True)
    model = PretrainModel(config, tasks=["ap", "itc"])
    collate = PretrainCollator(tokenizer, tasks=["ap", "itc"], image_size=32, seed=0)
    model(collate(samples32[:8]))["loss"].backward()
    assert all(p.grad is None for p in model.vilbert.text.parameters())
    assert all(p.grad is None for p in model.vilbert.vision.parameters())
    assert model.vilbert.fusion[0].text_attention.output.weight.grad is not None


@pytest.mark.parametrize(
    ("tasks", "steps", "lr"), [(("ap", "itc"), 200, 1e-3), (("mlm",), 80, 3e-3)]
)
def test_overfits_32_pairs(tasks, steps, lr, tokenizer, samples32):
    torch.manual_seed(0)
    config = micro_config(dropout=0.0, attention_dropout=0.0)
    # swap_negative_ratio=1: training sees exactly the hard negatives evaluation uses
    model = PretrainModel(config, tasks=tasks, swap_negative_ratio=1.0)
    collate = PretrainCollator(tokenizer, tasks=tasks, image_size=32, seed=0)
    batch = collate(samples32)  # one fixed batch: masks and hard negatives stay the same
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    with torch.no_grad():
        first = model.eval()(batch)
    model.train()
    for _ in range(steps):
        out = model(batch)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
    with torch.no_grad():
        final = model.eval()(batch)  # eval: every image against its hard negative
    assert final["loss"] < 0.1 * first["loss"]
    if "ap" in tasks:
        assert final["ap_accuracy"] >= 0.95 and final["itc_accuracy"] >= 0.95
    if "mlm" in tasks:
        assert final["mlm_accuracy"] > 0.95


def test_attention_mask_helper_rejects_patch_mask_without_token():
    model = ViLBERT(micro_config())
    with pytest.raises(ValueError, match="mask_token=True"):
        model.encode_image(torch.randn(1, 3, 32, 32), torch.zeros(1, 4, dtype=torch.bool))


def test_sdpa_bool_mask_convention():
    """F.scaled_dot_product_attention: True means *attend* (our masks rely on it)."""
    q = torch.randn(1, 1, 1, 4)
    k = torch.randn(1, 1, 2, 4)
    v = torch.tensor([[[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]]])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.tensor([[True, False]]))
    torch.testing.assert_close(out, v[:, :, :1])
