"""Linear CKA and CCA over batches of rows, for ``n`` that does not fit in memory.

Only moments of the rows are kept: per layer its column sum and ``XᵀX``, per layer
pair ``XᵀY``, and for unbiased CKA a few moments of the squared row norms
(memory O(Σd² + Σ_pairs d_a·d_b), independent of n). :class:`GridMoments` holds
them for every layer and layer pair of a grid (what ``repalign compare
--streaming`` feeds); :class:`StreamingCKA` and :class:`StreamingCCA` are its
one-pair case. To avoid catastrophic cancellation when the means are large, each
layer's rows are shifted by the mean of its first batch before accumulating;
centering is exact under any shift.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from repalign._numerics import (
    check_compute_dtype,
    check_matrix,
    check_pair,
    check_rows,
    scalar_like,
)
from repalign.metrics._kernels import positive_self_hsic, unbiased_hsic_from_parts

log = logging.getLogger(__name__)

#: what :meth:`GridMoments.scores` computes: linear CKA (biased or unbiased) and mean CCA
GRID_METRICS = ("cka", "cca")

_Key = tuple[str, str]  # (side "a" or "b", layer name)


class LayerMoments:
    """One layer's rows, shifted by its first batch's mean: column sum ``s``, ``XᵀX`` ``g``
    and, when gathering row-norm moments (for unbiased CKA), ``xa = Σ x_i‖x_i‖²`` and
    ``aa = Σ‖x_i‖⁴`` (else ``None``)."""

    def __init__(self, first: torch.Tensor, *, row_norm_moments: bool) -> None:
        d = first.shape[1]
        self.shift = first.mean(0)
        self.s, self.g = first.new_zeros(d), first.new_zeros(d, d)
        self.xa = first.new_zeros(d) if row_norm_moments else None
        self.aa = first.new_zeros(()) if row_norm_moments else None

    def check(self, x: torch.Tensor, label: str) -> None:
        """Refuse a batch that cannot join the earlier ones (other width or device)."""
        if x.shape[1] != self.s.shape[0]:
            raise ValueError(
                f"batch widths differ: {label} has {x.shape[1]} columns in this batch and "
                f"{self.s.shape[0]} in the first; every batch must hold the same features"
            )
        if x.device != self.s.device:
            raise ValueError(
                f"{label}: batch is on {x.device}, earlier batches on {self.s.device}; "
                "move every batch to one device"
            )

    def add(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add a batch; return its shifted rows and, if gathered, their squared norms."""
        xc = x - self.shift
        self.s += xc.sum(0)
        self.g += xc.T @ xc
        if self.xa is None:
            return xc, None
        a = (xc * xc).sum(1)
        self.xa += xc.T @ a
        self.aa += a.dot(a)
        return xc, a

    def centered(self, n: int, label: str) -> torch.Tensor:
        """``XcᵀXc`` of the ``n`` rows seen (raises if the layer is constant)."""
        return centered_gram(n, self.s, self.g, name=label)


@dataclass
class PairMoments:
    """Cross moments of layers A and B: ``XᵀY`` and, for unbiased CKA, ``Σ x_i‖y_i‖²``,
    ``Σ y_i‖x_i‖²`` and ``Σ‖x_i‖²‖y_i‖²`` (``None`` when row norms are not gathered)."""

    xy: torch.Tensor
    xb: torch.Tensor | None = None
    ya: torch.Tensor | None = None
    ab: torch.Tensor | None = None

    @classmethod
    def of(
        cls, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor | None, b: torch.Tensor | None
    ) -> PairMoments:
        """The moments of one batch of shifted rows ``x``, ``y`` with squared norms ``a``, ``b``."""
        if a is None or b is None:
            return cls(x.T @ y)
        return cls(x.T @ y, x.T @ b, y.T @ a, a.dot(b))

    def __iadd__(self, other: PairMoments) -> PairMoments:
        self.xy += other.xy
        if self.xb is not None:
            self.xb += other.xb
            self.ya += other.ya
            self.ab += other.ab
        return self

    @property
    def T(self) -> PairMoments:  # noqa: N802 - the moments of (B, A)
        return PairMoments(self.xy.T, self.ya, self.xb, self.ab)


class GridMoments:
    """Moments of every selected layer and every layer pair, accumulated batch by batch.

    ``names_b=None`` compares the layers ``names_a`` with each other (each pair once);
    otherwise every layer of side A with every layer of side B. Each layer's own moments
    are computed once per batch, not once per pair. ``row_norm_moments`` gathers what
    unbiased CKA needs beyond the second moments (about ``2/d`` more work); pass
    ``False`` when only biased CKA and CCA will be scored.
    """

    def __init__(
        self,
        names_a: Sequence[str],
        names_b: Sequence[str] | None,
        *,
        dtype: torch.dtype,
        row_norm_moments: bool = True,
    ) -> None:
        self.dtype = check_compute_dtype(dtype)
        self.names_a = list(names_a)
        self.same = names_b is None
        self.names_b = self.names_a if names_b is None else list(names_b)
        self.row_norm_moments = row_norm_moments
        self.n = 0
        self.layers: dict[_Key, LayerMoments] = {}
        self.cross: dict[tuple[str, str], PairMoments] = {}

    @property
    def _side_b(self) -> str:
        return "a" if self.same else "b"

    def update(self, xs: Mapping[str, Any], ys: Mapping[str, Any] | None = None) -> GridMoments:
        """Add the same rows of every layer (``xs`` for side A, ``ys`` for side B)."""
        if self.same and ys is not None:
            raise ValueError("this grid compares names_a with each other: pass ys=None")
        chunk = {("a", k): v for k, v in xs.items()}
        chunk |= {("b", k): v for k, v in (ys or {}).items()}
        self._add(
            {
                key: check_matrix(v, f"layer {key[1]!r}", dtype=self.dtype)
                for key, v in chunk.items()
            }
        )
        return self

    def _add(self, chunk: dict[_Key, torch.Tensor]) -> None:
        """Add validated rows keyed by (side, name); refuses the whole chunk, changing
        nothing, if a layer is missing or its width, device or row count is off."""
        wanted = {("a", k) for k in self.names_a} | {(self._side_b, k) for k in self.names_b}
        if set(chunk) != wanted:
            missing = sorted(k for _, k in wanted - set(chunk))
            extra = sorted(k for _, k in set(chunk) - wanted)
            raise ValueError(
                f"a chunk must hold every layer of the grid and no other: missing {missing}, "
                f"unexpected {extra}"
            )
        counts = {int(t.shape[0]) for t in chunk.values()}
        if len(counts) != 1:
            raise ValueError(f"layers of one chunk have different row counts {sorted(counts)}")
        devices = {str(t.device) for t in chunk.values()}
        if len(devices) != 1:
            raise ValueError(
                f"layers of one chunk are on different devices {sorted(devices)}; move them to one"
            )
        for key, x in chunk.items():
            if key in self.layers:
                self.layers[key].check(x, f"layer {key[1]!r}")
        shifted: dict[_Key, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for key, x in chunk.items():
            if key not in self.layers:
                self.layers[key] = LayerMoments(x, row_norm_moments=self.row_norm_moments)
            shifted[key] = self.layers[key].add(x)  # rows and ‖x_i‖², once per layer
        for i, a in enumerate(self.names_a):
            for j, b in enumerate(self.names_b):
                if self.same and j <= i:
                    continue  # (b, a) is the transpose of (a, b); (a, a) is the layer's own
                (x, norms_x), (y, norms_y) = shifted[("a", a)], shifted[(self._side_b, b)]
                part = PairMoments.of(x, y, norms_x, norms_y)
                if (a, b) in self.cross:
                    self.cross[(a, b)] += part
                else:
                    self.cross[(a, b)] = part
        self.n += counts.pop()

    def _pair(self, a: str, b: str) -> PairMoments:
        ma = self.layers[("a", a)]
        if self.same and a == b:
            return PairMoments(ma.g, ma.xa, ma.xa, ma.aa)
        return self.cross[(a, b)] if (a, b) in self.cross else self.cross[(b, a)].T

    def _kind(self, metric: str, unbiased: bool) -> str:
        """Validate a scoring request; ``"cka"``, ``"cka_unbiased"`` or ``"cca"``."""
        if metric not in GRID_METRICS:
            raise ValueError(f"no streaming estimator for {metric!r}; have {list(GRID_METRICS)}")
        if self.n < 2:
            raise ValueError(f"need at least 2 rows before scoring, got {self.n}")
        if metric != "cka" or not unbiased:
            return metric
        if not self.row_norm_moments:
            raise ValueError(
                "unbiased CKA needs the row-norm moments, which were not gathered: accumulate "
                "with row_norm_moments=True (StreamingCKA(unbiased=True))"
            )
        check_rows(self.n, 4, "the unbiased HSIC of Song et al. 2012 divides by n(n-3)")
        return "cka_unbiased"

    def score(self, metric: str, a: str, b: str, *, unbiased: bool = False) -> torch.Tensor:
        """``metric`` of layer ``a`` (side A) with layer ``b`` (side B), a 0-d tensor."""
        kind = self._kind(metric, unbiased)
        for name, names, side in ((a, self.names_a, "A"), (b, self.names_b, "B")):
            if name not in names:
                raise ValueError(f"no layer {name!r} on side {side} of this grid; have {names}")
        ta = self._layer_term(kind, self.layers[("a", a)], a)
        tb = self._layer_term(kind, self.layers[(self._side_b, b)], b)
        return self._pair_score(kind, a, b, ta, tb)

    def scores(self, metric: str, *, unbiased: bool = False) -> np.ndarray:
        """The ``(len(names_a), len(names_b))`` grid of ``metric``: ``"cka"`` (linear,
        biased, or ``unbiased``) or ``"cca"``.

        Each layer's own term (the Frobenius norm of its centered ``XᵀX``, its unbiased
        self-HSIC, or its CCA whitening map: one eigendecomposition) is computed once and
        shared by every pair the layer is in, so scoring costs ``La + Lb``
        decompositions, not ``2 · La · Lb``.
        """
        kind = self._kind(metric, unbiased)
        cache: dict[_Key, Any] = {}

        def term(side: str, name: str) -> Any:
            if (side, name) not in cache:
                cache[(side, name)] = self._layer_term(kind, self.layers[(side, name)], name)
            return cache[(side, name)]

        out = np.empty((len(self.names_a), len(self.names_b)))
        for i, a in enumerate(self.names_a):
            for j, b in enumerate(self.names_b):
                if self.same and j < i:  # both metrics are symmetric: the mirror cell
                    out[i, j] = out[j, i]
                    continue
                ta, tb = term("a", a), term(self._side_b, b)
                out[i, j] = float(self._pair_score(kind, a, b, ta, tb))
        return out

    def _pair_score(self, kind: str, a: str, b: str, ta: Any, tb: Any) -> torch.Tensor:
        ma, mb, pair = self.layers[("a", a)], self.layers[(self._side_b, b)], self._pair(a, b)
        if kind == "cka_unbiased":
            hsic = linear_unbiased_hsic_from_moments(
                self.n, pair.xy, (ma.s, mb.s), (ma.g.trace(), mb.g.trace()),
                pair.xb, pair.ya, pair.ab,
            )  # fmt: skip
            return hsic / torch.sqrt(ta * tb)
        cxy = centered_cross(self.n, ma.s, mb.s, pair.xy)
        score = linear_cka_from_moments if kind == "cka" else mean_cca_from_moments
        return score(cxy, ta, tb)

    def _layer_term(self, kind: str, mom: LayerMoments, name: str) -> Any:
        """What every pair of this layer shares: see :meth:`scores`."""
        if kind == "cka_unbiased":
            trace = mom.g.trace()
            return positive_self_hsic(
                linear_unbiased_hsic_from_moments(
                    self.n, mom.g, (mom.s, mom.s), (trace, trace), mom.xa, mom.xa, mom.aa
                )
            )
        cxx = mom.centered(self.n, f"layer {name!r}")
        if kind == "cka":
            return torch.linalg.norm(cxx)
        w = whitening_map(cxx)
        if w.shape[1] < cxx.shape[0]:
            log.warning(
                "streaming cca: layer %r has %d of %d directions below what second moments "
                "resolve (singular values under ~%.0e of the largest); they are left out. If "
                "they are signal and not rounding noise, score this layer with the in-memory "
                "cca (repalign compare without --streaming)",
                name,
                cxx.shape[0] - w.shape[1],
                cxx.shape[0],
                (max(cxx.shape[0], 2) * torch.finfo(cxx.dtype).eps) ** 0.5,
            )
        return w


class _MomentAccumulator:
    """The one-pair grid behind :class:`StreamingCKA` and :class:`StreamingCCA`: layer
    ``x`` against layer ``y``, fed two matrices per batch."""

    def __init__(self, dtype: torch.dtype, *, row_norm_moments: bool = False) -> None:
        self._grid = GridMoments(["x"], ["y"], dtype=dtype, row_norm_moments=row_norm_moments)
        self.dtype = self._grid.dtype

    @property
    def n(self) -> int:
        """Rows seen so far."""
        return self._grid.n

    def update(self, x_batch: Any, y_batch: Any) -> _MomentAccumulator:
        """Add a batch of rows (the same stimuli in the same order in both)."""
        x, y = check_pair(x_batch, y_batch, dtype=self.dtype, min_rows=1, nonconstant=False)
        self._grid._add({("a", "x"): x, ("b", "y"): y})
        return self


def centered_gram(n: int, s: torch.Tensor, g: torch.Tensor, *, name: str = "x") -> torch.Tensor:
    """``XcᵀXc`` from the column sum ``s`` and ``XᵀX`` of ``n`` (shifted) rows.

    Raises if every column is constant: no metric is defined on such a layer.
    """
    m = s / n
    c = g - n * torch.outer(m, m)
    if float(torch.diagonal(c).max()) <= 0:
        raise ValueError(f"{name} is constant across all rows seen (zero variance)")
    return c


def centered_cross(n: int, sx: torch.Tensor, sy: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """``XcᵀYc`` from the column sums and ``XᵀY`` of ``n`` (shifted) rows."""
    return xy - torch.outer(sx, sy) / n


def linear_cka_from_moments(
    cxy: torch.Tensor, norm_xx: torch.Tensor, norm_yy: torch.Tensor
) -> torch.Tensor:
    """Biased linear CKA ‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F), given the two Frobenius norms."""
    return (cxy * cxy).sum() / (norm_xx * norm_yy)


def linear_unbiased_hsic_from_moments(
    n: int,
    xy: torch.Tensor,
    sums: tuple[torch.Tensor, torch.Tensor],
    square_sums: tuple[torch.Tensor, torch.Tensor],
    xb: torch.Tensor,
    ya: torch.Tensor,
    ab: torch.Tensor,
) -> torch.Tensor:
    """Unbiased linear HSIC (Song et al. 2012, eq. 5) from moments of the rows.

    With ``a_i = ‖x_i‖²``, ``b_i = ‖y_i‖²``, ``s_x = Σ x_i``: ``xy = Σ x_i y_iᵀ``,
    ``square_sums = (Σ a_i, Σ b_i)``, ``xb = Σ x_i b_i``, ``ya = Σ y_i a_i``,
    ``ab = Σ a_i b_i``. Then ``tr(K̃L̃) = ‖xy‖² − ab``, ``1ᵀK̃1 = ‖s_x‖² − Σa`` and
    ``1ᵀK̃L̃1 = s_xᵀ xy s_y − s_x·xb − s_y·ya + ab``. The estimator is invariant to
    shifting the rows, so moments of shifted rows give the same value.
    """
    sx, sy = sums
    trace = (xy * xy).sum() - ab
    rows_dot = sx @ xy @ sy - sx.dot(xb) - sy.dot(ya) + ab
    return unbiased_hsic_from_parts(
        trace, sx.dot(sx) - square_sums[0], sy.dot(sy) - square_sums[1], rows_dot, n
    )


def whitening_map(c: torch.Tensor) -> torch.Tensor:
    """``W`` (d, r) with ``Wᵀ C W = I_r``: ``C^{-1/2}`` on the directions ``C`` resolves.

    An eigenvalue of a computed second-moment matrix is only known to about
    ``λ_max · d · eps``, so the directions kept are those above it: singular values
    of the centered rows above ``s_max · sqrt(d · eps)`` (about ``3e-7 · s_max`` for
    d = 384 in float64). Whitening the ones below would amplify rounding noise into
    spurious canonical correlations. A rank-deficient layer, exactly or up to float32
    rounding, gives the same correlations as :func:`repalign.metrics.cca`; a layer
    with real directions below that level loses them here, where the in-memory
    ``cca``, working on the rows, keeps them.
    """
    evals, evecs = torch.linalg.eigh(c)
    keep = evals > evals.max() * max(c.shape[0], 2) * torch.finfo(c.dtype).eps
    return evecs[:, keep] / evals[keep].sqrt()


def mean_cca_from_moments(cxy: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor) -> torch.Tensor:
    """Mean canonical correlation: the singular values of ``Wxᵀ Cxy Wy`` averaged."""
    rho = torch.linalg.svdvals(wx.T @ cxy @ wy).clamp(max=1.0)
    r = min(wx.shape[1], wy.shape[1])
    return rho[:r].mean() if r else scalar_like(0.0, cxy)


class StreamingCKA(_MomentAccumulator):
    """Linear CKA accumulated batch by batch: biased, ‖XcᵀYc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)
    (Kornblith et al. 2019), or with ``unbiased=True`` from the unbiased HSIC of Song et
    al. 2012 (eq. 5), which needs three more moments of the row norms
    (:func:`linear_unbiased_hsic_from_moments`).

    >>> acc = StreamingCKA()
    >>> for xb, yb in batches: acc.update(xb, yb)
    >>> acc.compute()  # equals cka(x, y) on the concatenated rows
    """

    def __init__(self, *, unbiased: bool = False, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(dtype, row_norm_moments=unbiased)
        self.unbiased = unbiased

    def compute(self) -> torch.Tensor:
        """CKA of all rows seen so far, a 0-d tensor on their device."""
        return self._grid.score("cka", "x", "y", unbiased=self.unbiased)


class StreamingCCA(_MomentAccumulator):
    """Mean canonical correlation from accumulated covariances.

    ρ_i are the singular values of Cxx^{-1/2} Cxy Cyy^{-1/2}, with the inverse
    square roots taken on the directions the moments resolve (see
    :func:`whitening_map`), so exactly rank-deficient inputs give the same result as
    :func:`repalign.metrics.cca`; a layer whose singular values span more than about
    ``1 / sqrt(d · eps)`` (3e6 for d = 384 in float64) is scored on its resolved
    directions only.
    """

    def __init__(self, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__(dtype)

    def compute(self) -> torch.Tensor:
        """Mean CCA of all rows seen so far, a 0-d tensor on their device; logs a warning
        naming ``x`` or ``y`` if directions were left out."""
        return self._grid.score("cca", "x", "y")
