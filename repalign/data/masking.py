"""Masking for pretraining: BERT's masked tokens and random image-patch masks.

Both take a numpy ``Generator`` so a collator's masks are a pure function of its seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    special_tokens_mask: torch.Tensor,
    *,
    mask_token_id: int,
    random_token_ids: torch.Tensor,
    rng: np.random.Generator,
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``probability`` of the non-special tokens; of those 80% become
    ``[MASK]``, 10% a random token from ``random_token_ids``, 10% stay unchanged.

    Returns ``(masked_ids, labels)``: labels hold the original id at picked positions
    and ``-100`` everywhere else (special tokens and padding are never picked).
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"mlm probability must be in (0, 1), got {probability}")
    if random_token_ids.numel() == 0:
        raise ValueError("random_token_ids is empty: the vocabulary has no non-special token")
    shape = tuple(input_ids.shape)
    maskable = ~special_tokens_mask.bool().numpy()
    picked = (rng.random(shape) < probability) & maskable
    action = rng.random(shape)  # < 0.8 -> [MASK], < 0.9 -> random, else keep
    random_ids = random_token_ids.numpy()[rng.integers(0, random_token_ids.numel(), size=shape)]
    ids = input_ids.numpy().copy()
    ids[picked & (action < 0.8)] = mask_token_id
    to_random = picked & (action >= 0.8) & (action < 0.9)
    ids[to_random] = random_ids[to_random]
    labels = np.where(picked, input_ids.numpy(), IGNORE_INDEX)
    return torch.from_numpy(ids).to(input_ids.dtype), torch.from_numpy(labels).to(torch.long)


def max_predictions(probability: float, length: int) -> int:
    """Slots for MLM predictions per caption: ``ceil(3 * probability * length) + 1``, at
    most ``length``. With 15% of 32 tokens that is 16 (3.3 times the expected count); a
    rarer row with more masked tokens is scored on its first 16."""
    return min(length, math.ceil(3 * probability * length) + 1)


def prediction_positions(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) positions of each row's first ``k`` labelled tokens, ``-1`` in unused slots.

    BERT's ``masked_lm_positions``: the MLM head then runs on k slots per caption
    rather than on every token, with a shape known in advance (no host sync).
    """
    picked = labels != IGNORE_INDEX
    k = min(k, labels.size(1))
    order = torch.argsort((~picked).to(torch.int8), dim=1, stable=True)[:, :k]
    return torch.where(picked.gather(1, order), order, -1)


def random_patch_mask(
    batch_size: int, num_patches: int, *, probability: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask exactly ``k = max(1, round(probability * num_patches))`` patches per image.

    A fixed count keeps every tensor's shape known without reading the mask back
    (no host sync in the loss). Returns ``(mask, index)``: ``mask`` (B, P) bool and
    ``index`` (B, k) long, the masked patch positions in increasing order.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"mim probability must be in (0, 1), got {probability}")
    k = max(1, round(probability * num_patches))
    index = np.sort(np.argsort(rng.random((batch_size, num_patches)), axis=1)[:, :k], axis=1)
    mask = np.zeros((batch_size, num_patches), dtype=bool)
    np.put_along_axis(mask, index, True, axis=1)
    return torch.from_numpy(mask), torch.from_numpy(index).long()
