"""Pooling feature maps: (B, C, H, W) and (B, H, W, C) by the layer's declared layout."""

from __future__ import annotations

import pytest
import torch

from repalign.extract.pooling import pool
from repalign.models.base import LayerInfo


def _map(shape=(2, 3, 4, 5)) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(*shape)


def test_channels_first_mean_is_global_average_pooling():
    x = _map()  # (B, C, H, W)
    out = pool(x, "mean", layout="channels_first")
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def test_channels_first_tokens_are_row_major_positions():
    x = _map()
    out = pool(x, "tokens", layout="channels_first")
    assert out.shape == (2, 20, 3) and out.is_contiguous() and out.dtype == torch.float32
    # position p = h * W + w
    torch.testing.assert_close(out[:, 1 * 5 + 2], x[:, :, 1, 2])
    torch.testing.assert_close(out.mean(dim=1), pool(x, "mean", layout="channels_first"))


def test_channels_last_equals_channels_first_of_the_permuted_map():
    x = _map()
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    for how in ("mean", "tokens"):
        torch.testing.assert_close(
            pool(nhwc, how, layout="channels_last"), pool(x, how, layout="channels_first")
        )


def test_auto_reads_rank_4_as_channels_first_and_rank_3_as_tokens():
    x = _map()
    torch.testing.assert_close(
        pool(x, "mean", layout="auto"), pool(x, "mean", layout="channels_first")
    )
    seq = _map((2, 4, 3))  # (B, T, D)
    for how in ("mean", "tokens"):
        torch.testing.assert_close(pool(seq, how, layout="auto"), pool(seq, how))
    torch.testing.assert_close(pool(seq, "cls", layout="auto"), seq[:, 0])
    # a channels_last map is NOT what auto assumes: the result differs (so it must be declared)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    assert pool(nhwc, "mean", layout="auto").shape == (2, 4)


def test_conv1d_map_as_channels_first_with_a_padding_mask():
    x = _map((2, 3, 4))  # (B, C, L)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = pool(x, "mean", layout="channels_first", mask=mask)
    torch.testing.assert_close(out[0], x[0].mean(-1))
    torch.testing.assert_close(out[1], x[1, :, :2].mean(-1))
    toks = pool(x, "tokens", layout="channels_first", mask=mask)
    assert torch.isnan(toks[1, 2:]).all() and not torch.isnan(toks[0]).any()


def test_feature_maps_refuse_cls_and_wrong_ranks():
    x = _map()
    for layout in ("channels_first", "channels_last", "auto"):
        with pytest.raises(ValueError, match="no class token; use pool='mean'"):
            pool(x, "cls", layout=layout, layer="layer4")
    with pytest.raises(ValueError, match="feature map, got shape"):
        pool(x[:, :, 0, 0], "mean", layout="channels_first")
    with pytest.raises(ValueError, match="unknown layout"):
        pool(x, "mean", layout="nchw")  # type: ignore[arg-type]
    # the default layout still refuses a map instead of guessing
    with pytest.raises(ValueError, match="batch, tokens, width"):
        pool(x, "mean")


def test_low_precision_maps_pool_in_float32():
    x = _map().to(torch.bfloat16)
    out = pool(x, "mean", layout="channels_first")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x.float().mean(dim=(2, 3)))


def test_layer_info_checks_its_layout():
    assert LayerInfo("v.a", "a", "vision", 1, 1.0).layout == "tokens"
    with pytest.raises(ValueError, match="layout must be one of"):
        LayerInfo("v.a", "a", "vision", 1, 1.0, layout="nhwc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no prefix tokens"):
        LayerInfo("v.a", "a", "vision", 1, 1.0, num_prefix_tokens=1, layout="channels_first")
