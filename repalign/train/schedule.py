"""AdamW parameter groups and the learning-rate schedule of the training loop."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from repalign.train.config import OptimConfig


def lr_factor(step: int, optim: OptimConfig, total: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine/linear decay to ``min_lr_ratio``."""
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, total - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    if optim.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * decay


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: (pretrained or not) x (decayed or not).

    Biases, norms and 1-D parameters get no weight decay. Parameters whose name
    starts with a pretrained prefix (``optim.pretrained_prefixes``, else the
    model's ``pretrained_prefixes`` attribute) train at ``pretrained_lr_scale`` x lr.
    """
    own = getattr(model, "pretrained_prefixes", ())
    prefixes = tuple(optim.pretrained_prefixes or (own() if callable(own) else own) or ())
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        pretrained = bool(prefixes) and name.startswith(prefixes)
        decay = p.ndim >= 2 and "norm" not in name.lower() and "embedding" not in name.lower()
        groups.setdefault((pretrained, decay), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters (all frozen?)")
    return [
        {
            "params": params,
            "weight_decay": optim.weight_decay if decay else 0.0,
            "lr_scale": optim.pretrained_lr_scale if pretrained else 1.0,
            "lr": optim.lr * (optim.pretrained_lr_scale if pretrained else 1.0),
        }
        for (pretrained, decay), params in sorted(groups.items())
    ]
