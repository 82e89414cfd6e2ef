"""Tests added after a hand-made mutation audit of repalign.extract: each one kills a
mutant (a small plausible bug) that the rest of the suite let through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from repalign.extract.hooks import record
from repalign.extract.pooling import pool
from repalign.models.base import LayerInfo


class Outputs(nn.Module):
    """Returns its input three ways, each element different: (x, 2x) and {"a": x, "b": 3x}."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = _Pair()
        self.named = _Named()

    def forward(self, x):
        self.pair(x)
        return self.named(x)


class _Pair(nn.Module):
    def forward(self, x):
        return x, 2 * x


class _Named(nn.Module):
    def forward(self, x):
        return {"a": x, "b": 3 * x}


def test_output_index_picks_the_element_of_tuple_and_mapping_outputs():
    """Reading element 0 whatever output_index says survived: the co-attention toy of
    test_hooks returns two outputs with equal token means."""
    layers = [
        LayerInfo("pair.0", "pair", "text", 1, 0.5, output_index=0),
        LayerInfo("pair.1", "pair", "text", 1, 0.5, output_index=1),
        LayerInfo("named.1", "named", "text", 2, 1.0, output_index=1),
    ]
    x = torch.randn(2, 3, 4)
    m = Outputs()
    with record(m, layers, "mean") as rec, torch.no_grad():
        feats = rec.run(lambda: m(x))
    torch.testing.assert_close(feats["pair.0"], x.mean(1))
    torch.testing.assert_close(feats["pair.1"], 2 * x.mean(1))
    torch.testing.assert_close(feats["named.1"], 3 * x.mean(1))


def test_a_derived_layer_concatenates_its_sources_in_the_declared_order():
    available = [
        LayerInfo("pair.0", "pair", "text", 1, 0.5, output_index=0),
        LayerInfo("pair.1", "pair", "text", 1, 0.5, output_index=1),
    ]
    both = LayerInfo("both", "", "fused", 1, 0.5, sources=("pair.1", "pair.0"))
    x = torch.randn(2, 3, 4)
    m = Outputs()
    with record(m, [both], "mean", available=available) as rec, torch.no_grad():
        feats = rec.run(lambda: m(x))
    torch.testing.assert_close(feats["both"], torch.cat([2 * x.mean(1), x.mean(1)], dim=-1))


def test_recorded_features_hold_no_autograd_graph():
    """Recording with gradients enabled must not keep the forward graph alive through
    the pooled features (the hook detaches)."""
    m = nn.Sequential(nn.Linear(4, 4))
    layers = [LayerInfo("lin", "0", "text", 1, 1.0)]
    with record(m, layers, "mean") as rec:
        feats = rec.run(lambda: m(torch.randn(2, 3, 4)))
    assert not feats["lin"].requires_grad and feats["lin"].grad_fn is None


def test_hooks_stop_recording_and_stopping_once_run_returns():
    """After run() a plain forward inside the block runs to the end (with stop_early a
    hook left active would cut it short with an internal exception)."""
    m = Outputs()
    layers = [LayerInfo("pair.0", "pair", "text", 1, 0.5)]
    x = torch.randn(2, 3, 4)
    with record(m, layers, "mean", stop_early=True) as rec, torch.no_grad():
        rec.run(lambda: m(x))
        out = m(x)  # must not raise
    torch.testing.assert_close(out["b"], 3 * x)


def test_masked_mean_with_prefix_tokens_aligns_the_mask_with_the_tokens():
    """The mask is cut like the tokens (its first num_prefix_tokens columns dropped);
    cutting its last columns instead averaged a padded position."""
    hidden = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1) * 10  # 0, 10, ..., 50
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    out = pool(hidden, "mean", mask=mask, num_prefix_tokens=1)
    torch.testing.assert_close(out, torch.tensor([[20.0]]))  # mean of 10, 20, 30


def test_tokens_pooling_refuses_an_already_pooled_output():
    """A (B, D) output has no token sequence: `tokens` is an error, cls/mean pass it on."""
    pooled = torch.randn(2, 4)
    torch.testing.assert_close(pool(pooled, "mean"), pooled)
    with pytest.raises(ValueError, match="expected a \\(batch, tokens, width\\)"):
        pool(pooled, "tokens")


def test_a_derived_layer_has_no_token_sequence():
    available = [
        LayerInfo("pair.0", "pair", "text", 1, 0.5, output_index=0),
        LayerInfo("pair.1", "pair", "text", 1, 0.5, output_index=1),
    ]
    both = LayerInfo("both", "", "fused", 1, 0.5, sources=("pair.0", "pair.1"))
    m = Outputs()
    with record(m, [both], "tokens", available=available) as rec, torch.no_grad():
        with pytest.raises(ValueError, match="has no token sequence"):
            rec.run(lambda: m(torch.randn(2, 3, 4)))
