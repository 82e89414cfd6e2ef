"""Pooling a layer's token sequence to one vector per sample, on the layer's device.

Shapes: ``hidden`` is ``(B, T, D)``; ``mask`` is ``(B, T)`` with nonzero for real
tokens (``None`` = no padding). Results are float32: ``(B, D)`` for ``cls`` and
``mean``, ``(B, T, D)`` for ``tokens`` with padded positions set to NaN (so a
padded position can never be mistaken for a feature).

Feature maps (a CNN layer's ``(B, C, H, W)``) are pooled too, when the layer's
``layout`` says how to read them (never guessed from the sizes):

* ``"tokens"`` (the default): ``(B, T, D)``; any other rank but an already pooled
  ``(B, D)`` is refused.
* ``"channels_first"``: ``(B, C, *spatial)``, PyTorch's convention (``nn.Conv2d``,
  torchvision CNNs); ``mean`` is global average pooling to ``(B, C)``, ``tokens``
  is ``(B, H*W, C)`` with positions in row-major order.
* ``"channels_last"``: ``(B, *spatial, C)`` (e.g. timm's Swin stages, NHWC).
* ``"auto"``: by rank alone: ``(B, D)`` as is, ``(B, T, D)`` tokens,
  ``(B, C, H, W)`` (4-D or more) ``channels_first``. A channels-last 4-D output
  needs ``"channels_last"`` said explicitly.

``cls`` is refused for feature maps: they have no class token.
"""

from __future__ import annotations

from typing import Literal

import torch

from repalign.models.base import LAYOUTS, Layout

Pooling = Literal["cls", "mean", "tokens"]
POOLINGS: tuple[str, ...] = ("cls", "mean", "tokens")


def check_pooling(how: str) -> Pooling:
    if how not in POOLINGS:
        raise ValueError(f"unknown pooling {how!r}; choose one of {', '.join(POOLINGS)}")
    return how  # type: ignore[return-value]


def check_layout(layout: str, *, layer: str = "layer") -> Layout:
    if layout not in LAYOUTS:
        raise ValueError(
            f"{layer}: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)} "
            "(channels_first = (batch, channels, height, width) as nn.Conv2d returns)"
        )
    return layout  # type: ignore[return-value]


def _map_as_tokens(hidden: torch.Tensor, how: Pooling, layout: Layout, layer: str) -> torch.Tensor:
    """A ``channels_first``/``channels_last`` feature map as a ``(B, positions, C)`` token
    sequence, positions in row-major order (``cls`` refused: a map has no class token)."""
    if hidden.ndim < 3:
        raise ValueError(
            f"{layer}: layout {layout!r} expects a (batch, channels, *spatial) or (batch, "
            f"*spatial, channels) feature map, got shape {tuple(hidden.shape)}; use layout "
            "'tokens' or 'auto' for this layer"
        )
    if how == "cls":
        raise ValueError(
            f"{layer} is a feature map of shape {tuple(hidden.shape)} (layout {layout!r}) and "
            "has no class token; use pool='mean' (global average pooling) or 'tokens'"
        )
    if layout == "channels_last":
        return hidden.flatten(1, -2)
    return hidden.flatten(2).transpose(1, 2)


def pool(
    hidden: torch.Tensor,
    how: Pooling,
    *,
    mask: torch.Tensor | None = None,
    cls_index: int | None = 0,
    num_prefix_tokens: int = 0,
    layer: str = "layer",
    layout: Layout = "tokens",
) -> torch.Tensor:
    """Pool ``hidden`` (B, T, D) by ``how``; see the module docstring.

    ``mean`` averages over non-padding tokens after the first ``num_prefix_tokens``
    (class/register tokens of a ViT). An already pooled ``(B, D)`` output is
    returned as is for ``cls``/``mean``. ``layout`` says how to read a feature map.
    """
    check_pooling(how)
    if layout != "tokens":
        check_layout(layout, layer=layer)
        if layout != "auto" or hidden.ndim >= 4:
            layout = "channels_first" if layout == "auto" else layout
            tokens = _map_as_tokens(hidden, how, layout, layer)  # a view
            if how == "mean" and mask is None:  # global average pooling, over contiguous dims
                last = layout == "channels_last"
                spatial = range(1, hidden.ndim - 1) if last else range(2, hidden.ndim)
                return hidden.float().mean(dim=tuple(spatial))
            # masked mean and tokens take the token path; tokens are written row-major
            hidden = tokens if how == "mean" else tokens.contiguous()
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
