"""All layer pairs at once, reusing each layer's work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from repalign._numerics import (
    ArrayLike,
    as_tensor,
    check_compute_dtype,
    check_matrix,
    check_same_rows,
    require_variance,
)
from repalign._progress import task_progress
from repalign.metrics._registry import MetricSpec, get_metric

Layers = Sequence[ArrayLike] | Mapping[str, ArrayLike]


def _as_layer_list(layers: Layers, side: str) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(layers, Mapping):
        names, arrays = list(layers.keys()), list(layers.values())
    elif isinstance(layers, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"{side} must be a sequence or a dict of (n, d) arrays, one per layer, "
            f"not a single array; wrap it: [{side}]"
        )
    else:
        arrays = list(layers)
        names = [f"{side}[{i}]" for i in range(len(arrays))]
    if not arrays:
        raise ValueError(f"{side} holds no layers")
    return names, [as_tensor(a, n) for n, a in zip(names, arrays, strict=True)]


def _validate(
    names: list[str], arrays: list[torch.Tensor], dtype: torch.dtype
) -> list[torch.Tensor]:
    devices = {a.device for a in arrays}
    if len(devices) > 1:
        raise ValueError(
            f"layers are on several devices {sorted(map(str, devices))}; move them to one"
        )
    checked = [check_matrix(a, n, dtype=dtype) for n, a in zip(names, arrays, strict=True)]
    for name, a in zip(names, checked, strict=True):
        require_variance(a, f"layer {name!r}")
    return checked


def _prepare_all(spec: MetricSpec, names, arrays, options) -> list[Any]:
    states = []
    for name, x in zip(names, arrays, strict=True):
        try:
            states.append(spec.prepare(x, **options))
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from None
    return states


def pairwise(
    xs: Layers,
    ys: Layers | None = None,
    *,
    metric: str = "cka",
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Score every layer of ``xs`` against every layer of ``ys`` (``xs`` itself if ``None``).

    ``xs`` and ``ys`` are sequences, or dicts name -> array, of ``(n, d_i)``
    representations of the same ``n`` stimuli. Returns a ``(len(xs), len(ys))``
    tensor. Each layer is prepared once (centered Gram or covariance, an
    orthonormal basis, its k-NN sets ...), then pairs combine prepared states;
    metrics that can score the whole grid in one matrix product do so. For a
    symmetric metric and ``ys=None`` only the upper triangle is computed.
    """
    return pairwise_prepared(xs, ys, metric=metric, dtype=dtype, progress=progress, **options)[0]


def pairwise_prepared(
    xs: Layers,
    ys: Layers | None = None,
    *,
    metric: str = "cka",
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    **options: Any,
) -> tuple[torch.Tensor, list[Any], list[Any]]:
    """:func:`pairwise`, also returning the prepared states of ``xs`` and ``ys`` (in order;
    the same list twice when ``ys`` is ``None``), so that statistics on the same layers
    (:func:`repalign.metrics.stats.pair_statistics` with ``prepared``) need not prepare
    them again."""
    spec = get_metric(metric)
    spec.check_options(options)
    check_compute_dtype(dtype)
    names_x, raw_x = _as_layer_list(xs, "xs")
    same = ys is None
    names_y, raw_y = (names_x, raw_x) if same else _as_layer_list(ys, "ys")
    all_x = _validate(names_x, raw_x, dtype)
    all_y = all_x if same else _validate(names_y, raw_y, dtype)
    if not same and all_x[0].device != all_y[0].device:
        raise ValueError(
            f"xs are on {all_x[0].device} and ys on {all_y[0].device}; move them to one device"
        )
    n = check_same_rows(all_x + ([] if same else all_y), names_x + ([] if same else names_y))
    if n < spec.min_rows:
        raise ValueError(f"metric {metric!r} needs at least {spec.min_rows} samples, got n={n}")

    states_x = _prepare_all(spec, names_x, all_x, options)
    states_y = states_x if same else _prepare_all(spec, names_y, all_y, options)
    if spec.grid is not None:
        return spec.grid(states_x, states_y, same=same, **options), states_x, states_y

    out = torch.empty(len(states_x), len(states_y), dtype=dtype, device=all_x[0].device)
    pairs = [
        (i, j)
        for i in range(len(states_x))
        for j in range(len(states_y))
        if not (same and spec.symmetric and j < i)
    ]
    with task_progress(enabled=progress) as bar:
        task = bar.add_task(f"{metric} over {len(pairs)} layer pairs", total=len(pairs))
        for i, j in pairs:
            out[i, j] = spec.combine(states_x[i], states_y[j], **options)
            if same and spec.symmetric:
                out[j, i] = out[i, j]
            bar.advance(task)
    return out, states_x, states_y
