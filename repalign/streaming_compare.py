"""Linear CKA (biased or unbiased) and CCA between feature files larger than memory.

The library behind ``repalign compare --streaming``::

    from repalign.streaming_compare import streaming_compare
    scores = streaming_compare(["a.nc", "b.nc"], ["cka", "cca"], chunk_size=8192)

Rows are read from the netCDF files ``chunk_size`` samples at a time (the
files are opened lazily, shard files through :func:`repalign.store.merge.open_merged`
included) and only moments are kept: per selected layer its column sum, ``XᵀX``,
``Σ x_i‖x_i‖²`` and ``Σ‖x_i‖⁴``; per layer pair ``XᵀY``, ``Σ x_i‖y_i‖²``,
``Σ y_i‖x_i‖²`` and ``Σ‖x_i‖²‖y_i‖²`` (the last three for unbiased CKA). Memory is
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

from repalign._numerics import check_compute_dtype, check_matrix, check_rows, resolve_device
from repalign._progress import progress_bar
from repalign.compare import (
    MetricRequest,
    align_sample_ids,
    describe_layers,
    metric_scores,
    parse_requests,
    provenance_attrs,
    run_config,
)
from repalign.metrics.streaming import (
    centered_cross,
    centered_gram,
    linear_cka_from_moments,
    linear_unbiased_hsic_from_moments,
    mean_cca_from_moments,
    positive_self_hsic,
    whitening_map,
)
from repalign.store import schema
from repalign.store.scores import LayerAxis, scores_dataset

log = logging.getLogger(__name__)


#: metrics with a streaming estimator, and the values each option may take
STREAMING_METRICS: dict[str, dict[str, tuple[Any, ...]]] = {
    "cka": {"kernel": ("linear",), "unbiased": (False, True)},
    "cca": {},
}


@dataclass
class _LayerMoments:
    """One layer's rows, shifted by its first chunk's mean: column sum ``s``, ``XᵀX``,
    and for unbiased CKA ``Σ x_i‖x_i‖²`` and ``Σ‖x_i‖⁴``."""

    shift: torch.Tensor
    s: torch.Tensor
    g: torch.Tensor
    xa: torch.Tensor
    aa: torch.Tensor


@dataclass
class _PairMoments:
    """Cross moments of layers A and B: ``XᵀY``, ``Σ x_i‖y_i‖²``, ``Σ y_i‖x_i‖²``,
    ``Σ‖x_i‖²‖y_i‖²``."""

    xy: torch.Tensor
    xb: torch.Tensor
    ya: torch.Tensor
    ab: torch.Tensor

    def __iadd__(self, other: _PairMoments) -> _PairMoments:
        self.xy += other.xy
        self.xb += other.xb
        self.ya += other.ya
        self.ab += other.ab
        return self

    @property
    def T(self) -> _PairMoments:  # noqa: N802 - the moments of (B, A)
        return _PairMoments(self.xy.T, self.ya, self.xb, self.ab)


class GridMoments:
    """Second moments of every selected layer and every layer pair, accumulated by chunks."""

    def __init__(
        self, names_a: Sequence[str], names_b: Sequence[str] | None, *, dtype: torch.dtype
    ) -> None:
        self.dtype = check_compute_dtype(dtype)
        self.names_a = list(names_a)
        self.same = names_b is None
        self.names_b = self.names_a if names_b is None else list(names_b)
        self.n = 0
        self.layers: dict[tuple[str, str], _LayerMoments] = {}
        self.cross: dict[tuple[str, str], _PairMoments] = {}

    def update(self, xs: Mapping[str, Any], ys: Mapping[str, Any] | None = None) -> None:
        """Add the same rows of every layer (``xs`` for side A, ``ys`` for side B)."""
        shifted = {("a", k): self._shifted(("a", k), v) for k, v in xs.items()}
        if not self.same:
            shifted |= {("b", k): self._shifted(("b", k), v) for k, v in (ys or {}).items()}
        side_b = "a" if self.same else "b"
        rows = {key: xc for key, (xc, _) in shifted.items()}
        norms = {key: a for key, (_, a) in shifted.items()}  # ‖x_i‖², once per layer
        counts = {int(t.shape[0]) for t in rows.values()}
        if len(counts) != 1:
            raise ValueError(f"layers of one chunk have different row counts {sorted(counts)}")
        for i, a in enumerate(self.names_a):
            for j, b in enumerate(self.names_b):
                if self.same and j <= i:
                    continue  # (b, a) is the transpose of (a, b); (a, a) is the layer's own
                ka, kb = ("a", a), (side_b, b)
                x, y = rows[ka], rows[kb]
                part = _PairMoments(
                    x.T @ y, x.T @ norms[kb], y.T @ norms[ka], norms[ka].dot(norms[kb])
                )
                if (a, b) in self.cross:
                    self.cross[(a, b)] += part
                else:
                    self.cross[(a, b)] = part
        self.n += counts.pop()

    def _shifted(self, key: tuple[str, str], value: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's rows shifted by the layer's first-chunk mean, and their squared norms;
        adds the layer's own moments."""
        x = check_matrix(value, f"layer {key[1]!r}", dtype=self.dtype)
        mom = self.layers.get(key)
        if mom is None:
            shift = x.mean(0)
            xc = x - shift
            mom = self.layers[key] = _LayerMoments(
                shift, xc.new_zeros(x.shape[1]), xc.new_zeros(x.shape[1], x.shape[1]),
                xc.new_zeros(x.shape[1]), xc.new_zeros(()),
            )  # fmt: skip
        else:
            xc = x - mom.shift
        a = (xc * xc).sum(1)
        mom.s += xc.sum(0)
        mom.g += xc.T @ xc
        mom.xa += xc.T @ a
        mom.aa += a.dot(a)
        return xc, a

    def _pair(self, a: str, b: str) -> _PairMoments:
        ma = self.layers[("a", a)]
        if self.same and a == b:
            return _PairMoments(ma.g, ma.xa, ma.xa, ma.aa)
        return self.cross[(a, b)] if (a, b) in self.cross else self.cross[(b, a)].T

    def scores(self, metric: str, *, unbiased: bool = False) -> np.ndarray:
        """The ``(len(names_a), len(names_b))`` grid of ``metric``: ``"cka"`` (linear,
        biased, or ``unbiased``) or ``"cca"``.

        Each layer's own term (the Frobenius norm of its centered ``XᵀX``, its unbiased
        self-HSIC, or its CCA whitening map: one eigendecomposition) is computed once and
        shared by every pair the layer is in, so scoring costs ``La + Lb``
        decompositions, not ``2 · La · Lb``.
        """
        if metric not in STREAMING_METRICS:
            raise ValueError(
                f"no streaming estimator for {metric!r}; have {list(STREAMING_METRICS)}"
            )
        if self.n < 2:
            raise ValueError(f"need at least 2 rows before scoring, got {self.n}")
        kind = "cka_unbiased" if metric == "cka" and unbiased else metric
        if kind == "cka_unbiased":
            check_rows(self.n, 4, "the unbiased HSIC of Song et al. 2012 divides by n(n-3)")
        side_b = "a" if self.same else "b"
        cache: dict[tuple[str, str], Any] = {}

        def term(side: str, name: str) -> Any:
            if (side, name) not in cache:
                cache[(side, name)] = self._layer_term(kind, self.layers[(side, name)], name)
            return cache[(side, name)]

        out = np.empty((len(self.names_a), len(self.names_b)))
        for i, a in enumerate(self.names_a):
            for j, b in enumerate(self.names_b):
                ma, mb, pair = self.layers[("a", a)], self.layers[(side_b, b)], self._pair(a, b)
                ta, tb = term("a", a), term(side_b, b)
                if kind == "cka_unbiased":
                    hsic = linear_unbiased_hsic_from_moments(
                        self.n, pair.xy, (ma.s, mb.s), (ma.g.trace(), mb.g.trace()),
                        pair.xb, pair.ya, pair.ab,
                    )  # fmt: skip
                    out[i, j] = float(hsic / torch.sqrt(ta * tb))
                    continue
                cxy = centered_cross(self.n, ma.s, mb.s, pair.xy)
                score = linear_cka_from_moments if kind == "cka" else mean_cca_from_moments
                out[i, j] = float(score(cxy, ta, tb))
        return out

    def _layer_term(self, kind: str, mom: _LayerMoments, name: str) -> Any:
        """What every pair of this layer shares: see :meth:`scores`."""
        if kind == "cka_unbiased":
            trace = mom.g.trace()
            return positive_self_hsic(
                linear_unbiased_hsic_from_moments(
                    self.n, mom.g, (mom.s, mom.s), (trace, trace), mom.xa, mom.xa, mom.aa
                )
            )
        cxx = centered_gram(self.n, mom.s, mom.g, name=f"layer {name!r}")
        if kind == "cka":
            return torch.linalg.norm(cxx)
        w = whitening_map(cxx)
        if w.shape[1] < cxx.shape[0]:
            log.warning(
                "streaming cca: layer %r has %d of %d directions below what second moments "
                "resolve (singular values under ~%.0e of the largest); they are left out. If "
                "they are signal and not rounding noise, compare this layer without --streaming",
                name,
                cxx.shape[0] - w.shape[1],
                cxx.shape[0],
                (max(cxx.shape[0], 2) * torch.finfo(cxx.dtype).eps) ** 0.5,
            )
        return w


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
                side_a, side_b, same, chunk_size, dev, dtype, align_on_ids, progress
            )
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


def _accumulate(
    side_a: _Side,
    side_b: _Side,
    same: bool,
    chunk_size: int,
    dev: torch.device,
    dtype: torch.dtype,
    align_on_ids: bool,
    progress: bool,
) -> tuple[GridMoments, list[str]]:
    idx_a, idx_b = align_sample_ids(
        side_a.ids, side_b.ids, align_on_ids=align_on_ids, names=(side_a.path, side_b.path)
    )
    grid = GridMoments(side_a.axis.names, None if same else side_b.axis.names, dtype=dtype)
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
