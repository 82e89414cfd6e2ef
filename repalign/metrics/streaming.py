"""Linear CKA and CCA over batches of rows, for ``n`` that does not fit in memory.

Both accumulate the second moments ``XᵀX``, ``YᵀY``, ``XᵀY`` and the column
sums of the rows seen so far (memory O((d1 + d2)²), independent of n). To
avoid catastrophic cancellation when the means are large, rows are shifted by
the mean of the first batch before accumulating; centering is exact under any
shift.
"""

from __future__ import annotations

from typing import Any

import torch

from repalign._numerics import check_compute_dtype, check_pair, check_rows, scalar_like
from repalign.metrics._kernels import unbiased_hsic_from_parts


class _MomentAccumulator:
    def __init__(self, dtype: torch.dtype, *, row_norm_moments: bool = False) -> None:
        self.dtype = check_compute_dtype(dtype)
        self.n = 0
        self._shift_x: torch.Tensor | None = None
        # Σ x_i‖y_i‖², Σ y_i‖x_i‖², Σ‖x_i‖²‖y_i‖² and the same of each side with itself:
        # what unbiased HSIC needs beyond the second moments
        self.row_norm_moments = row_norm_moments
        self.norm_moments: dict[str, torch.Tensor] = {}

    def update(self, x_batch: Any, y_batch: Any) -> _MomentAccumulator:
        """Add a batch of rows (the same stimuli in the same order in both)."""
        x, y = check_pair(x_batch, y_batch, dtype=self.dtype, min_rows=1, nonconstant=False)
        if self._shift_x is None:
            self._shift_x, self._shift_y = x.mean(0), y.mean(0)
            d1, d2 = x.shape[1], y.shape[1]
            self.sx, self.sy = x.new_zeros(d1), y.new_zeros(d2)
            self.xx, self.yy, self.xy = (
                x.new_zeros(d1, d1),
                y.new_zeros(d2, d2),
                x.new_zeros(d1, d2),
            )
        elif x.shape[1] != self.sx.shape[0] or y.shape[1] != self.sy.shape[0]:
            raise ValueError(
                f"batch widths ({x.shape[1]}, {y.shape[1]}) differ from the first batch's "
                f"({self.sx.shape[0]}, {self.sy.shape[0]})"
            )
        elif x.device != self.sx.device:
            raise ValueError(f"batch is on {x.device}, earlier batches on {self.sx.device}")
        x, y = x - self._shift_x, y - self._shift_y
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.yy += y.T @ y
        self.xy += x.T @ y
        if self.row_norm_moments:
            a, b = (x * x).sum(1), (y * y).sum(1)
            terms = {"xb": x.T @ b, "ya": y.T @ a, "ab": a.dot(b), "xa": x.T @ a,
                     "aa": a.dot(a), "yb": y.T @ b, "bb": b.dot(b)}  # fmt: skip
            for key, value in terms.items():
                old = self.norm_moments.get(key)
                self.norm_moments[key] = value if old is None else old + value
        return self

    def centered_moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """XcᵀXc, YcᵀYc, XcᵀYc of all rows seen, centered on their overall mean."""
        if self.n < 2:
            raise ValueError(f"need at least 2 rows before compute(), got {self.n}")
        return (
            centered_gram(self.n, self.sx, self.xx, name="x"),
            centered_gram(self.n, self.sy, self.yy, name="y"),
            centered_cross(self.n, self.sx, self.sy, self.xy),
        )


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
        if not self.unbiased:
            cxx, cyy, cxy = self.centered_moments()
            return linear_cka_from_moments(cxy, torch.linalg.norm(cxx), torch.linalg.norm(cyy))
        check_rows(self.n, 4, "the unbiased HSIC estimator of Song et al. 2012 divides by n(n-3)")
        m, n = self.norm_moments, self.n
        traces = (torch.trace(self.xx), torch.trace(self.yy))
        hsic_xx = linear_unbiased_hsic_from_moments(
            n, self.xx, (self.sx, self.sx), (traces[0],) * 2, m["xa"], m["xa"], m["aa"]
        )
        hsic_yy = linear_unbiased_hsic_from_moments(
            n, self.yy, (self.sy, self.sy), (traces[1],) * 2, m["yb"], m["yb"], m["bb"]
        )
        hsic_xy = linear_unbiased_hsic_from_moments(
            n, self.xy, (self.sx, self.sy), traces, m["xb"], m["ya"], m["ab"]
        )
        return hsic_xy / torch.sqrt(positive_self_hsic(hsic_xx) * positive_self_hsic(hsic_yy))


def positive_self_hsic(h: torch.Tensor) -> torch.Tensor:
    """``h`` if positive; the unbiased HSIC of a layer with itself can be <= 0 for tiny n."""
    if not bool(h > 0):
        raise ValueError(
            "HSIC of an input with itself is not positive (the unbiased estimator can be <= 0 "
            "for very small n or nearly constant inputs); use more samples or unbiased=False"
        )
    return h


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
        cxx, cyy, cxy = self.centered_moments()
        return mean_cca_from_moments(cxy, whitening_map(cxx), whitening_map(cyy))
