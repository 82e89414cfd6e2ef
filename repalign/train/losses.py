"""Loss functions and pooling helpers of the pretraining objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(
    logits: torch.Tensor, groups: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE on (B, B) text-image logits; pairs with the same caption group
    are all positives. Returns (loss, accuracy of the top match in both directions)."""
    b = logits.size(0)
    if groups is None:
        positive = torch.eye(b, dtype=torch.bool, device=logits.device)
    else:
        positive = groups[:, None] == groups[None, :]
    target = positive.float() / positive.sum(1, keepdim=True)
    loss = 0.5 * (
        -(target * logits.log_softmax(1)).sum(1).mean()
        - (target * logits.T.log_softmax(1)).sum(1).mean()
    )
    rows = positive.gather(1, logits.argmax(1, keepdim=True)).float().mean()
    cols = positive.gather(1, logits.T.argmax(1, keepdim=True)).float().mean()
    return loss, 0.5 * (rows + cols)


def info_nce(
    pred: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) predictions vs (N, D) targets, row i's positive is target i."""
    logits = F.normalize(pred, dim=-1) @ F.normalize(target, dim=-1).T / temperature
    labels = torch.arange(logits.size(0), device=logits.device)
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean()


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens: states (B, T, H), mask (B, T) -> (B, H)."""
    m = mask.to(states.dtype)[..., None]
    return (states * m).sum(1) / m.sum(1).clamp(min=1)


def caption_keys(input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64 hash of each row's real tokens: equal captions get equal keys, whatever
    the padding (used as caption groups across the ranks of a DDP run)."""
    gen = torch.Generator().manual_seed(0x5EED)
    weights = torch.randint(1, 2**62, (input_ids.size(1),), generator=gen) | 1
    ids = (input_ids.long() + 1) * mask.long()
    return (ids * weights.to(ids.device)).sum(1) + mask.long().sum(1)


def gather_tokens(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states (B, L, H), index (B, k) -> (B, k, H)."""
    return states.gather(1, index[..., None].expand(-1, -1, states.size(-1)))
