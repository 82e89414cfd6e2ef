"""Linear CKA (biased or unbiased) and CCA between feature files larger than memory.

The library behind ``repalign compare --streaming``::

    from repalign.compare.streaming import streaming_compare
    scores = streaming_compare(["a.nc", "b.nc"], ["cka", "cca"], chunk_size=8192)

Rows are read from the netCDF files ``chunk_size`` samples at a time (the
files are opened lazily, shard files through :func:`repalign.store.merge.open_merged`
included) and only moments are kept, in a :class:`repalign.metrics.streaming.GridMoments`:
per selected layer its column sum and ``XᵀX``, per layer pair ``XᵀY``, and only when
unbiased CKA is requested the row-norm moments it needs (``Σ x_i‖x_i‖²``, ``Σ‖x_i‖⁴``
per layer; ``Σ x_i‖y_i‖²``, ``Σ y_i‖x_i‖²``, ``Σ‖x_i‖²‖y_i‖²`` per pair). Memory is
therefore ``O(chunk_size · Σd + Σd² + Σ_pairs d_a·d_b)`` whatever n is; each layer's
own moments are computed once per chunk, not once per pair. They are scored with the
estimators of :mod:`repalign.metrics.streaming`, so results equal the in-memory
``cka`` (linear) and ``cca`` up to float rounding. The result is the same score
Dataset that :func:`repalign.compare.compare` returns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from repalign._numerics import resolve_device
from repalign._progress import progress_bar
from repalign.compare.layers import align_sample_ids, describe_layers
from repalign.compare.pipeline import provenance_attrs, run_config
from repalign.compare.scoring import MetricRequest, metric_scores, parse_requests
from repalign.metrics.streaming import GridMoments
from repalign.store import schema
from repalign.store.scores import LayerAxis, scores_dataset

log = logging.getLogger(__name__)


#: metrics with a streaming estimator, and the values each option may take
STREAMING_METRICS: dict[str, dict[str, tuple[Any, ...]]] = {
    "cka": {"kernel": ("linear",), "unbiased": (False, True)},
    "cca": {},
}


def check_streamable(requests: Sequence[MetricRequest]) -> None:
    """Refuse metrics (or options) that have no streaming estimator, saying what to do."""
    for req in requests:
        if req.name not in STREAMING_METRICS:
            raise ValueError(
                f"--streaming computes {' and '.join(STREAMING_METRICS)} only (linear CKA and "
                f"mean CCA from accumulated covariances); {req.name!r} needs all rows in memory: "
                "run it without --streaming (mutual_knn and cknna are already chunked)"
            )
        allowed = STREAMING_METRICS[req.name]
        for key, value in req.options.items():
            if key not in allowed or value not in allowed[key]:
                accepted = ", ".join(f"{k} in {v}" for k, v in allowed.items()) or "none"
                raise ValueError(
                    f"--streaming supports {req.name} with these options only ({accepted}); "
                    f"got {key}={value!r}: drop it or run without --streaming"
                )


@dataclass
class _Side:
    ds: xr.Dataset
    path: str
    axis: LayerAxis
    ids: list[str]


def _open_side(path: Any, patterns: Sequence[str], *, allow_incomplete: bool) -> _Side:
    from repalign.store.features import open_features

    ds = open_features(path, require_complete=not allow_incomplete)
    try:
        axis = describe_layers(ds, patterns, where=str(path))
        ids = [str(s) for s in ds[schema.SAMPLE_ID].values]
    except BaseException:
        ds.close()
        raise
    return _Side(ds, str(path), axis, ids)


def _read_rows(ds: xr.Dataset, name: str, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of layer ``name``: one contiguous read when they are, sorted reads otherwise."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
        return ds[name][int(idx[0]) : int(idx[-1]) + 1].values
    order = np.argsort(idx)
    rows = np.empty((len(idx), ds[name].shape[1]), dtype=np.float32)
    rows[order] = ds[name][idx[order]].values
    return rows


def streaming_compare(
    files: Sequence[str | os.PathLike[str] | Sequence[str | os.PathLike[str]]],
    metrics: Sequence[str | tuple[str, Mapping[str, Any]] | MetricRequest] = ("cka",),
    *,
    layers_a: Sequence[str] = ("*",),
    layers_b: Sequence[str] | None = None,
    chunk_size: int = 4096,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    align_on_ids: bool = False,
    allow_incomplete: bool = False,
    progress: bool = True,
) -> xr.Dataset:
    """Linear CKA / CCA of layers of feature files, reading ``chunk_size`` samples at a time.

    Arguments mean what they mean in :func:`repalign.compare.compare` (one file:
    its layers against each other; two: A against B); a file may also be a list
    or glob of shard files. Permutation and bootstrap statistics are not
    available here (they need the rows in memory).
    """
    if not 1 <= len(files) <= 2:
        raise ValueError(f"compare takes one or two feature files, got {len(files)}")
    if chunk_size < 2:
        raise ValueError(f"chunk_size must be >= 2, got {chunk_size}")
    requests = parse_requests(metrics)
    check_streamable(requests)
    dev = resolve_device(device)

    side_a = _open_side(files[0], layers_a, allow_incomplete=allow_incomplete)
    try:
        same = len(files) == 1 and layers_b is None
        if same:
            side_b = side_a
        else:
            src = files[0] if len(files) == 1 else files[1]
            side_b = _open_side(src, layers_b or ("*",), allow_incomplete=allow_incomplete)
        try:
            grid, n = _accumulate(
                side_a, side_b, same, _needs_row_norms(requests), chunk_size, dev, dtype,
                align_on_ids, progress,
            )  # fmt: skip
        finally:
            if side_b is not side_a:
                side_b.ds.close()
    finally:
        side_a.ds.close()

    scored = [
        metric_scores(req, grid.scores(req.name, unbiased=bool(req.options.get("unbiased"))))
        for req in requests
    ]
    attrs = _provenance(files, requests, side_a, side_b, n, layers_a, layers_b, chunk_size, dev)
    return scores_dataset(side_a.axis, side_b.axis, scored, attrs)


def _needs_row_norms(requests: Sequence[MetricRequest]) -> bool:
    """Only unbiased CKA needs the row-norm moments; the rest is spared their cost."""
    return any(req.name == "cka" and req.options.get("unbiased") for req in requests)


def _accumulate(
    side_a: _Side,
    side_b: _Side,
    same: bool,
    row_norm_moments: bool,
    chunk_size: int,
    dev: torch.device,
    dtype: torch.dtype,
    align_on_ids: bool,
    progress: bool,
) -> tuple[GridMoments, list[str]]:
    idx_a, idx_b = align_sample_ids(
        side_a.ids, side_b.ids, align_on_ids=align_on_ids, names=(side_a.path, side_b.path)
    )
    grid = GridMoments(
        side_a.axis.names,
        None if same else side_b.axis.names,
        dtype=dtype,
        row_norm_moments=row_norm_moments,
    )
    n = len(idx_a)
    log.info(
        "streaming %d x %d layers over %d samples, %d per chunk",
        len(side_a.axis.names),
        len(side_b.axis.names),
        n,
        chunk_size,
    )

    def load(side: _Side, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(_read_rows(side.ds, k, idx)).to(dev) for k in side.axis.names}

    with progress_bar("streaming moments", n, enabled=progress) as update:
        for lo in range(0, n, chunk_size):
            # a last chunk of one row still counts: the accumulators only need n >= 2 overall
            sl = slice(lo, min(lo + chunk_size, n))
            grid.update(load(side_a, idx_a[sl]), None if same else load(side_b, idx_b[sl]))
            update(sl.stop)
    return grid, [side_a.ids[i] for i in idx_a]


def _provenance(
    files: Sequence[Any],
    requests: Sequence[MetricRequest],
    side_a: _Side,
    side_b: _Side,
    ids: list[str],
    layers_a: Sequence[str],
    layers_b: Sequence[str] | None,
    chunk_size: int,
    dev: torch.device,
) -> dict[str, str | int | float]:
    """The score file's global attrs, as :func:`repalign.compare.compare` writes them."""
    config = run_config(
        files,
        requests,
        side_a.axis,
        side_b.axis,
        layers_a,
        layers_b,
        streaming=True,
        chunk_size=chunk_size,
        device=str(dev),
    )
    return provenance_attrs(
        files,
        str(side_a.ds.attrs.get("model", Path(side_a.path).stem)),
        str(side_b.ds.attrs.get("model", Path(side_b.path).stem)),
        ids,
        seed=0,
        config=config,
    )
