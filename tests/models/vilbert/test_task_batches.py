"""Per-task batch sizes, negatives drawn only where needed, and vision rows shared
before the first co-attention layer: the compute-saving paths of PretrainModel."""

from __future__ import annotations

import pytest
import torch

from repalign.models.vilbert import ViLBERT
from repalign.train.collate import PretrainCollator
from repalign.train.objectives import PretrainModel
from repalign.train.tasks import TASKS

from .conftest import micro_config


def _collate(tokenizer, config, tasks=TASKS):
    return PretrainCollator(
        tokenizer, tasks=tasks, image_size=32, patch_size=config.vision_patch_size, seed=0
    )


def _batch_sizes(module: torch.nn.Module, calls: list[int], arg: int = 0):
    """Record the leading size of ``module``'s input on every call."""

    def hook(mod, args, kwargs):
        x = args[arg] if len(args) > arg else next(iter(kwargs.values()))
        calls.append(int(x.shape[0]))

    return module.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("cross", [[1], [1, 2], []])
def test_shared_vision_rows_equal_fusing_repeated_images(cross):
    torch.manual_seed(0)
    config = micro_config(depth=3, cross_attention_layers=cross, dropout=0.0)
    model = ViLBERT(config).eval()
    text = torch.randn(5, 6, 32)
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[1, 4:] = 0
    vision = torch.randn(3, 5, 32)
    rows = torch.tensor([0, 1, 2, 2, 0])
    with torch.no_grad():
        shared = model.fuse(text, mask, vision, vision_rows=rows, return_fusion_states=True)
        repeated = model.fuse(text, mask, vision[rows], return_fusion_states=True)
    for a, b in zip(shared.fusion_states, repeated.fusion_states, strict=True):
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])
    torch.testing.assert_close(shared.vision_pooled, repeated.vision_pooled)
    torch.testing.assert_close(shared.text_pooled, repeated.text_pooled)


def test_shared_vision_rows_skip_the_repeated_rows_before_co_attention():
    config = micro_config(depth=2, cross_attention_layers=[1])
    model = ViLBERT(config).eval()
    calls: list[int] = []
    handles = [_batch_sizes(layer.vision_attention, calls) for layer in model.fusion]
    with torch.no_grad():
        model.fuse(
            torch.randn(6, 4, 32),
            torch.ones(6, 4),
            torch.randn(3, 5, 32),
            vision_rows=torch.tensor([0, 1, 2, 0, 1, 2]),
        )
    for h in handles:
        h.remove()
    assert calls == [3, 6]  # self-attention layer on 3 images, co-attention on 6 pairs


def test_task_batch_sizes_limit_the_rows_each_task_runs_on(tokenizer, samples32):
    config = micro_config(depth=2, cross_attention_layers=[0])
    sizes = {"mlm": 4, "mim": 3, "ap": 6}
    model = PretrainModel(config, tasks=TASKS, swap_negative_ratio=0.5, task_batch_sizes=sizes)
    batch = _collate(tokenizer, config)(samples32[:16])
    patch_calls: list[int] = []
    text_ids: list[torch.Tensor] = []
    fused: list[int] = []
    hooks = [
        _batch_sizes(model.vilbert.vision.patch_embed, patch_calls),
        model.vilbert.text.embeddings.register_forward_pre_hook(
            lambda m, a, k: text_ids.append(k["input_ids"]), with_kwargs=True
        ),
        _batch_sizes(model.vilbert.fusion[0].text_attention, fused),
    ]
    out = model(batch)
    for h in hooks:
        h.remove()
    assert torch.isfinite(out["loss"])
    # vision tower: 16 images (3 masked) once, then the clean MIM target of those 3
    assert patch_calls == [16, 3]
    # text tower: 16 captions (the first 4 MLM-masked), then round(0.5 * 6) = 3 swaps
    assert [t.shape[0] for t in text_ids] == [16, 3]
    assert torch.equal(text_ids[0][:4], batch["mlm_input_ids"][:4])
    assert torch.equal(text_ids[0][4:], batch["input_ids"][4:])
    assert fused == [16 + 6]  # B positives and 6 negatives through the fusion layers


def test_evaluation_uses_every_row(tokenizer, samples32):
    config = micro_config(depth=2, cross_attention_layers=[0])
    sizes = {"mlm": 4, "mim": 3, "ap": 6}
    model = PretrainModel(config, tasks=TASKS, task_batch_sizes=sizes).eval()
    batch = _collate(tokenizer, config)(samples32[:16])
    patch_calls: list[int] = []
    fused: list[int] = []
    hooks = [
        _batch_sizes(model.vilbert.vision.patch_embed, patch_calls),
        _batch_sizes(model.vilbert.fusion[0].text_attention, fused),
    ]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    assert patch_calls == [16, 16] and fused == [32]


def test_every_parameter_gets_a_gradient_with_task_batch_sizes(tokenizer, samples32):
    config = micro_config(depth=2, cross_attention_layers=[1])
    model = PretrainModel(
        config, tasks=TASKS, swap_negative_ratio=0.5, task_batch_sizes={"mim": 2, "ap": 4}
    )
    model(_collate(tokenizer, config)(samples32[:8]))["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_in_batch_negatives_are_masked_like_the_images_own_caption(tokenizer, samples32):
    """An MLM-masked caption paired with a clean image's row (or the reverse) would
    give the negative away by its [MASK] tokens alone."""
    config = micro_config()
    model = PretrainModel(config, tasks=["mlm", "ap", "itc"], swap_negative_ratio=0.0)
    batch = _collate(tokenizer, config, ["mlm", "ap", "itc"])(samples32[:16])
    b, n_mlm = 16, 6
    marker = torch.arange(b, dtype=torch.float)[:, None, None].expand(b, 4, 32)
    for seed in range(5):
        torch.manual_seed(seed)
        images = torch.randperm(b)
        neg_text, _, ok = model._negatives(batch, marker, None, images, n_mlm)
        picked = neg_text[:, 0, 0].long()
        assert ok.all()
        assert torch.equal(picked < n_mlm, images < n_mlm)
        assert (batch["caption_group"][picked] != batch["caption_group"][images]).all()


def test_swap_negatives_take_the_first_share_of_the_chosen_images(tokenizer, samples32):
    config = micro_config()
    model = PretrainModel(config, tasks=["ap"], swap_negative_ratio=0.25)
    batch = _collate(tokenizer, config, ["ap"])(samples32[:16])
    text = model.vilbert.encode_text(batch["input_ids"], batch["attention_mask"])
    images = torch.tensor([5, 2, 9, 11, 0, 3, 7, 8])
    torch.manual_seed(5)  # train mode: the same seed gives the same dropout draws below
    neg_text, neg_mask, ok = model._negatives(batch, text, None, images, 0)
    assert neg_text.shape[0] == 8 and ok.all()
    # round(0.25 * 8) = 2 swapped captions, for images 5 and 2, in that order
    torch.testing.assert_close(neg_mask[:2], batch["neg_attention_mask"][[5, 2]])
    torch.manual_seed(5)
    swapped = model.vilbert.encode_text(
        batch["neg_input_ids"][[5, 2]], batch["neg_attention_mask"][[5, 2]]
    )
    torch.testing.assert_close(neg_text[:2], swapped)


def test_alignment_classes_weigh_the_same_whatever_the_number_of_negatives():
    config = micro_config()
    model = PretrainModel(config, tasks=["ap"])

    class Out:  # 8 positives scored right, 2 negatives scored wrong
        text_pooled = torch.zeros(10, 32)
        vision_pooled = torch.zeros(10, 32)

    class Fixed(torch.nn.Module):
        def forward(self, t, v):
            return torch.tensor([3.0] * 8 + [2.0] * 2)

    model.heads["ap"] = Fixed()
    _, metrics = model._alignment(Out(), torch.ones(2, dtype=torch.bool))
    assert metrics["ap_accuracy"].item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ({"itc": 4}, "ITC always uses the whole batch"),
        ({"mim": 4}, "selected"),
        ({"mlm": 0}, ">= 1"),
        ({"ap": 2.5}, "whole numbers"),
        ({"ap": True}, "whole numbers"),
    ],
)
def test_task_batch_sizes_are_validated(sizes, match):
    with pytest.raises(ValueError, match=match):
        PretrainModel(micro_config(), tasks=["mlm", "ap", "itc"], task_batch_sizes=sizes)


def test_swap_negative_ratio_is_validated():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PretrainModel(micro_config(), tasks=["ap"], swap_negative_ratio=1.5)
