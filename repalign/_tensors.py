"""Walking nested batches (tensors in mappings, lists and tuples)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it; the nesting is kept, anything
    that is not a tensor, mapping, list or tuple is returned as it is."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def to_device(obj: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Every tensor of ``obj`` on ``device`` (copied asynchronously from pinned memory);
    floating-point tensors also cast to ``dtype`` when one is given."""

    def move(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype, non_blocking=True)
        return t.to(device=device, non_blocking=True)

    return map_tensors(obj, move)
