"""Pooling a layer's token sequence to one vector per sample, on the layer's device.

Shapes: ``hidden`` is ``(B, T, D)``; ``mask`` is ``(B, T)`` with nonzero for real
tokens (``None`` = no padding). Results are float32: ``(B, D)`` for ``cls`` and
``mean``, ``(B, T, D)`` for ``tokens`` with padded positions set to NaN (so a
padded position can never be mistaken for a feature).
"""

from __future__ import annotations

from typing import Literal

import torch

Pooling = Literal["cls", "mean", "tokens"]
POOLINGS: tuple[str, ...] = ("cls", "mean", "tokens")


def check_pooling(how: str) -> Pooling:
    if how not in POOLINGS:
        raise ValueError(f"unknown pooling {how!r}; choose one of {', '.join(POOLINGS)}")
    return how  # type: ignore[return-value]


def pool(
    hidden: torch.Tensor,
    how: Pooling,
    *,
    mask: torch.Tensor | None = None,
    cls_index: int | None = 0,
    num_prefix_tokens: int = 0,
    layer: str = "layer",
) -> torch.Tensor:
    """Pool ``hidden`` (B, T, D) by ``how``; see the module docstring.

    ``mean`` averages over non-padding tokens after the first ``num_prefix_tokens``
    (class/register tokens of a ViT). An already pooled ``(B, D)`` output is
    returned as is for ``cls``/``mean``.
    """
    check_pooling(how)
    if hidden.ndim == 2 and how != "tokens":
        return hidden.float()
    if hidden.ndim != 3:
        raise ValueError(
            f"{layer}: expected a (batch, tokens, width) output to pool, got shape "
            f"{tuple(hidden.shape)}; choose a layer that returns a token sequence"
        )
    if mask is not None and mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"{layer}: padding mask of shape {tuple(mask.shape)} does not match the output's "
            f"(batch, tokens) = {tuple(hidden.shape[:2])}; the layer's `tokens` kind is probably wrong"
        )
    if how == "cls":
        if cls_index is None:
            raise ValueError(
                f"{layer} has no class token; use --pool mean (or tokens) for this layer"
            )
        # a copy, not a view: a view would keep the whole (B, T, D) output alive until written
        return hidden[:, cls_index].to(torch.float32, copy=True)
    if how == "mean":
        h = hidden[:, num_prefix_tokens:].float()
        if mask is None:
            return h.mean(dim=1)
        m = mask[:, num_prefix_tokens:].to(h.dtype).unsqueeze(-1)  # (B, T', 1)
        # No check for all-padding rows here: it would force a device sync per layer; such
        # a row (impossible for tokenised text, which keeps [CLS]) comes out NaN.
        return (h * m).sum(dim=1) / m.sum(dim=1)
    out = hidden.float()
    if mask is not None:
        out = out.masked_fill(~mask.bool().unsqueeze(-1), float("nan"))
    return out
