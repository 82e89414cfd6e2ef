"""Pooling: mask-aware mean, cls, tokens with NaN padding, and the errors."""

from __future__ import annotations

import pytest
import torch

from repalign.extract.pooling import pool


def _data():
    torch.manual_seed(0)
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    return h, mask


def test_mean_ignores_padding():
    h, mask = _data()
    out = pool(h, "mean", mask=mask)
    torch.testing.assert_close(out[0], h[0].mean(0))
    torch.testing.assert_close(out[1], h[1, :2].mean(0))
    # changing padded positions changes nothing
    h2 = h.clone()
    h2[1, 2:] = 1e6
    torch.testing.assert_close(pool(h2, "mean", mask=mask), out)


def test_mean_skips_prefix_tokens_and_cls_picks_index():
    h, _ = _data()
    torch.testing.assert_close(pool(h, "mean", num_prefix_tokens=1), h[:, 1:].mean(1))
    torch.testing.assert_close(pool(h, "cls"), h[:, 0])
    torch.testing.assert_close(pool(h, "cls", cls_index=2), h[:, 2])


def test_tokens_marks_padding_nan_and_pools_in_float32():
    h, mask = _data()
    out = pool(h.to(torch.bfloat16), "tokens", mask=mask)
    assert out.dtype == torch.float32 and out.shape == (2, 4, 3)
    assert torch.isnan(out[1, 2:]).all() and not torch.isnan(out[0]).any()


def test_errors():
    h, mask = _data()
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(h, "max")
    with pytest.raises(ValueError, match="no class token"):
        pool(h, "cls", cls_index=None, layer="vision.patch_embed")
    with pytest.raises(ValueError, match="does not match"):
        pool(h, "mean", mask=mask[:, :3])
    assert torch.isnan(pool(h, "mean", mask=torch.zeros_like(mask))).all()  # visible, not silent
    with pytest.raises(ValueError, match="batch, tokens, width"):
        pool(h[..., None], "mean")


def test_cls_does_not_keep_the_token_sequence_alive():
    h, _ = _data()
    out = pool(h, "cls")
    assert out.untyped_storage().nbytes() == out.numel() * 4  # its own storage, not a view of h
