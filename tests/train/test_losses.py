"""repalign.train.losses against explicit reference computations (written after a
mutation audit found that nothing checked these functions directly: a one-directional
InfoNCE, unnormalised soft targets or a temperature that multiplies all passed the
suite)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from repalign.train.losses import (
    caption_keys,
    contrastive_loss,
    gather_tokens,
    info_nce,
    masked_mean,
)


def _soft_cross_entropy(logits: torch.Tensor, positive: torch.Tensor) -> float:
    """Mean over rows of −Σ_j t_ij log softmax(logits_i)_j, t_i uniform over row i's positives."""
    total = 0.0
    for i in range(logits.shape[0]):
        log_p = logits[i] - torch.logsumexp(logits[i], 0)
        pos = positive[i].nonzero().flatten()
        total += -float(log_p[pos].mean())
    return total / logits.shape[0]


@pytest.mark.parametrize("groups", [None, [0, 1, 0, 2]])
def test_contrastive_loss_is_the_mean_of_both_directions(groups):
    logits = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = None if groups is None else torch.tensor(groups)
    positive = torch.eye(4, dtype=torch.bool) if g is None else g[:, None] == g[None, :]
    loss, _ = contrastive_loss(logits, g)
    expected = 0.5 * (
        _soft_cross_entropy(logits, positive) + _soft_cross_entropy(logits.T, positive)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-12)


def test_contrastive_accuracy_scores_text_to_image_and_image_to_text():
    """Rows (text -> image) all right, columns (image -> text) half right: accuracy 0.75."""
    logits = torch.tensor(
        [[5.0, 0.0, 0.0, 0.0], [6.0, 7.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 6.0, 7.0]]
    )  # each row's maximum on the diagonal; columns 0 and 2 peak off it
    _, accuracy = contrastive_loss(logits, None)
    assert float(accuracy) == pytest.approx(0.75)


def test_info_nce_divides_cosine_similarities_by_the_temperature():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    loss, accuracy = info_nce(pred, target, temperature=0.1)
    cos = F.cosine_similarity(pred[:, None], target[None, :], dim=-1)
    expected = F.cross_entropy(cos / 0.1, torch.arange(5))
    torch.testing.assert_close(loss, expected)
    assert float(accuracy) == pytest.approx(
        float((cos.argmax(1) == torch.arange(5)).float().mean())
    )


def test_perfect_predictions_give_the_lowest_info_nce():
    target = torch.eye(4)
    loss, accuracy = info_nce(3 * target, target, temperature=0.5)
    assert float(accuracy) == 1.0
    assert float(loss) == pytest.approx(math.log(1 + 3 * math.exp(-1 / 0.5)), rel=1e-6)


def test_masked_mean_ignores_padding_and_survives_an_empty_row():
    states = torch.tensor(
        [[[1.0], [3.0], [100.0]], [[7.0], [100.0], [100.0]], [[5.0], [5.0], [5.0]]]
    )
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(masked_mean(states, mask), torch.tensor([[2.0], [7.0], [0.0]]))


def test_caption_keys_equal_for_equal_captions_and_differ_otherwise():
    ids = torch.tensor([[101, 7, 102, 0, 0], [101, 7, 102, 0, 0], [101, 8, 102, 0, 0]])
    keys = caption_keys(ids, (ids != 0).long())
    assert keys[0] == keys[1] and keys[0] != keys[2]
    # a real token with id 0 is not padding: the caption [0] differs from the empty one
    zeros = torch.zeros(2, 3, dtype=torch.long)
    assert caption_keys(zeros, torch.tensor([[1, 0, 0], [0, 0, 0]])).unique().numel() == 2


def test_gather_tokens_takes_the_indexed_positions_per_row():
    states = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    index = torch.tensor([[3, 0], [1, 2]])
    out = gather_tokens(states, index)
    torch.testing.assert_close(out, torch.stack([states[0, [3, 0]], states[1, [1, 2]]]))
