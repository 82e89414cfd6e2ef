"""Centered kernel alignment (Kornblith et al. 2019), linear and RBF, biased and unbiased."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from repalign._numerics import center, check_pair, check_rows
from repalign.metrics._kernels import (
    LinearUnbiasedParts,
    UnbiasedState,
    biased_hsic,
    double_center,
    linear_unbiased_hsic,
    positive_self_hsic,
    rbf_kernel,
    unbiased_hsic,
    unbiased_hsic_from_parts,
)
from repalign.metrics._registry import register_metric

Kernel = Literal["linear", "rbf"]
_KERNELS = ("linear", "rbf")


@dataclass
class CKAState:
    """One layer reduced to what every CKA pair needs.

    Linear kernel: the centered features ``xc`` and, computed lazily when it is
    the cheaper route, the Gram matrix ``xc xcᵀ``. RBF: the centered kernel
    (biased) or its zero-diagonal parts (unbiased). ``self_hsic`` is HSIC(K, K)
    in the same (unnormalised) units as the cross term.
    """

    kernel: str
    unbiased: bool
    n: int
    xc: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    centered_kernel: torch.Tensor | None = None
    ub_kernel: UnbiasedState | None = None
    ub_linear: LinearUnbiasedParts | None = None
    self_hsic: torch.Tensor | None = None
    # a derived (permuted or resampled) layer can cut its Gram from the prepared layer's:
    # (prepared state, row indices, re-center the cut); done only if a pair asks for it
    gram_source: tuple[CKAState, torch.Tensor, bool] | None = None

    @property
    def width(self) -> int:
        return int(self.xc.shape[1]) if self.xc is not None else 0

    def linear_gram(self) -> torch.Tensor:
        if self.gram is None:
            if self.gram_source is not None:
                source, rows, recenter = self.gram_source
                gram = _permute_square(source.linear_gram(), rows)
                self.gram = double_center(gram) if recenter else gram
            else:
                self.gram = self.xc @ self.xc.T
        return self.gram


def _check_kernel_options(kernel: str, unbiased: bool, n: int) -> None:
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    if unbiased:
        check_rows(n, 4, "the unbiased HSIC estimator of Song et al. 2012 divides by n(n-3)")


# Route costs in multiply-adds. One element of a gather or of an elementwise pass over an
# n x n matrix costs about this many GEMM multiply-adds (CPU, float64, one thread; see the
# gather, double-centering and GEMM timings at the top of benchmarks/results/
# cpu_cka_routes.txt; the chosen route was the fastest, or within 20% of it, in every
# shape measured there).
_PASS_COST = 64


def _gram_cost(s: CKAState, partner: CKAState) -> float:
    """Multiply-adds to have ``s``'s Gram matrix ready for a pair with ``partner``."""
    n = s.n
    if s.gram is not None:
        return 0.0
    if s.gram_source is not None:  # two gathers, and a re-centering (three passes)
        return _PASS_COST * n * n * (5 if s.gram_source[2] else 2)
    if partner.gram_source is not None and n * n * s.xc.element_size() <= _PERMUTE_GRAM_BYTES:
        # a prepared layer met by a derived one: its Gram, once made, serves every draw
        return 0.0
    return float(n * n * s.width)


def _linear_cross_sq(a: CKAState, b: CKAState) -> torch.Tensor:
    """‖XcᵀYc‖²_F = <XXᵀ, YYᵀ>, by whichever route costs fewer multiply-adds."""
    n = a.n
    if a is b:
        gram_cost = _gram_cost(a, a) + n * n
        feature_cost = n * a.width * a.width * (0.75 if a.width >= 64 else 1.0)
    else:
        gram_cost = _gram_cost(a, b) + _gram_cost(b, a) + n * n
        feature_cost = n * a.width * b.width
    if gram_cost < feature_cost:
        return torch.vdot(a.linear_gram().reshape(-1), b.linear_gram().reshape(-1))
    if a is b:
        return _self_fro_sq(a.xc)
    cross = a.xc.T @ b.xc
    return torch.vdot(cross.reshape(-1), cross.reshape(-1))


def _self_fro_sq(xc: torch.Tensor) -> torch.Tensor:
    """‖XᵀX‖²_F from the upper block triangle only: [A B]ᵀ[A B] repeats AᵀB below the diagonal.

    With two column blocks this is 3/4 of the multiply-adds of the full product.
    """
    if xc.shape[1] < 64:
        g = xc.T @ xc
        return torch.vdot(g.reshape(-1), g.reshape(-1))
    a, b = xc.split((xc.shape[1] + 1) // 2, dim=1)
    total = xc.new_zeros(())
    for weight, left, right in ((1.0, a, a), (2.0, a, b), (1.0, b, b)):
        g = left.T @ right
        total = total + weight * torch.vdot(g.reshape(-1), g.reshape(-1))
    return total


def _cka_prepare(
    x: torch.Tensor,
    *,
    kernel: Kernel = "linear",
    sigma: float | None = None,
    sigma_frac: float = 1.0,
    unbiased: bool = False,
) -> CKAState:
    n = x.shape[0]
    _check_kernel_options(kernel, unbiased, n)
    xc = center(x)
    state = CKAState(kernel=kernel, unbiased=unbiased, n=n)
    if kernel == "linear":
        state.xc = xc
        self_sq = _linear_cross_sq(state, state)
        if unbiased:
            state.ub_linear = LinearUnbiasedParts.from_features(xc)
            state.self_hsic = linear_unbiased_hsic(self_sq, state.ub_linear, state.ub_linear, n)
        else:
            state.self_hsic = self_sq
    else:
        k = rbf_kernel(xc, sigma=sigma, sigma_frac=sigma_frac)
        if unbiased:
            state.ub_kernel = UnbiasedState.from_kernel(k)
            state.self_hsic = unbiased_hsic(state.ub_kernel, state.ub_kernel)
        else:
            state.centered_kernel = double_center(k)
            state.self_hsic = biased_hsic(state.centered_kernel, state.centered_kernel)
    positive_self_hsic(state.self_hsic)  # checked once per layer: pairs divide without a sync
    return state


# a derived layer may cut its Gram from its prepared layer's while one n x n matrix takes
# at most this
_PERMUTE_GRAM_BYTES = 256 * 1024**2


def _permute_square(m: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``m[perm][:, perm]`` in two contiguous gathers (about half the time of the indexing);
    ``perm`` may also repeat rows (a resample)."""
    return m.index_select(0, perm).index_select(1, perm)


def _gram_source(
    state: CKAState, rows: torch.Tensor, recenter: bool
) -> tuple[CKAState, torch.Tensor, bool] | None:
    if state.n * state.n * state.xc.element_size() <= _PERMUTE_GRAM_BYTES:
        return (state, rows, recenter)
    return None


def _cka_permute(state: CKAState, perm: torch.Tensor) -> CKAState:
    """The state of ``x[perm]``: every per-layer part reordered, HSIC(K, K) unchanged.

    A linear layer keeps its permuted features, and may cut its permuted Gram from the
    prepared layer's (n² within 256 MiB): each pair takes the cheaper route (a permuted
    cross product, O(n·d1·d2), or an inner product of Grams, O(n²) after the cut).
    """
    out = CKAState(state.kernel, state.unbiased, state.n, self_hsic=state.self_hsic)
    if state.kernel == "linear":
        out.xc = state.xc[perm]
        out.gram_source = _gram_source(state, perm, False)
        if state.unbiased:
            out.ub_linear = state.ub_linear.permuted(perm)
    elif state.unbiased:
        out.ub_kernel = state.ub_kernel.permuted(perm)
    else:
        out.centered_kernel = _permute_square(state.centered_kernel, perm)
    return out


def _cka_resample(state: CKAState, x: torch.Tensor, idx: torch.Tensor) -> CKAState | None:
    """The state of rows ``idx`` (a bootstrap resample) for linear CKA, from the layer's
    centered features ``Xc``: biased, the rows ``Xc[idx]`` re-centered, whose Gram is
    ``H K[idx, idx] H``; unbiased, HSIC is the same for any translation of the rows, so
    ``Xc[idx]`` serves as it is (Gram ``K[idx, idx]``). The Gram is cut from the layer's
    only where a pair's cheaper route needs it (n² within 256 MiB). ``None`` for RBF
    kernels (the bandwidth depends on the resample)."""
    if state.kernel != "linear":
        return None
    rows = state.xc[idx]
    if bool((rows == rows[:1]).all()):
        raise ValueError("a resample with every row equal has no variance")
    recenter = not state.unbiased
    out = CKAState("linear", state.unbiased, len(idx))
    out.xc = center(rows) if recenter else rows
    out.gram_source = _gram_source(state, idx, recenter)
    self_sq = _linear_cross_sq(out, out)
    if state.unbiased:
        out.ub_linear = LinearUnbiasedParts.from_features(out.xc)
        out.self_hsic = linear_unbiased_hsic(self_sq, out.ub_linear, out.ub_linear, out.n)
    else:
        out.self_hsic = self_sq
    if not bool(out.self_hsic > 0):
        raise ValueError("a resample with every row equal has no variance")
    return out


def _cka_cross_hsic(a: CKAState, b: CKAState) -> torch.Tensor:
    if a.kernel == "linear":
        cross_sq = _linear_cross_sq(a, b)
        if a.unbiased:
            return linear_unbiased_hsic(cross_sq, a.ub_linear, b.ub_linear, a.n)
        return cross_sq
    if a.unbiased:
        return unbiased_hsic(a.ub_kernel, b.ub_kernel)
    return biased_hsic(a.centered_kernel, b.centered_kernel)


def _cka_combine(a: CKAState, b: CKAState, **_: object) -> torch.Tensor:
    return _cka_cross_hsic(a, b) / torch.sqrt(a.self_hsic * b.self_hsic)


# Grid: the cross terms of all pairs in a few large matrix products.

_GRAM_BUDGET_BYTES = 4 * 1024**3  # caching every layer's n x n Gram must fit in this
_FLAT_CHUNK = 1 << 22  # elements of a flattened n x n kernel multiplied per step


def _stack_dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """``[<a, b>]`` for all a in xs, b in ys (flattened, same size), chunked to bound memory."""
    flat_x = [a.reshape(-1) for a in xs]
    flat_y = [b.reshape(-1) for b in ys]
    size = flat_x[0].numel()
    out = flat_x[0].new_zeros(len(xs), len(ys))
    for start in range(0, size, _FLAT_CHUNK):
        stop = min(start + _FLAT_CHUNK, size)
        a = torch.stack([f[start:stop] for f in flat_x])
        b = a if ys is xs else torch.stack([f[start:stop] for f in flat_y])
        out += a @ b.T
    return out


def _linear_cross_grid(sx: list[CKAState], sy: list[CKAState], same: bool) -> torch.Tensor:
    n = sx[0].n
    dx, dy = sum(s.width for s in sx), sum(s.width for s in sy)
    feature_cost = n * dx * dy
    gram_cost = n * n * (dx + (0 if same else dy) + len(sx) * len(sy))
    gram_bytes = n * n * sx[0].xc.element_size() * (len(sx) + (0 if same else len(sy)))
    if gram_cost < feature_cost and gram_bytes <= _GRAM_BUDGET_BYTES:
        grams_x = [s.linear_gram() for s in sx]
        grams_y = grams_x if same else [s.linear_gram() for s in sy]
        return _stack_dot(grams_x, grams_y)
    y_all = torch.cat([s.xc for s in sy], dim=1)  # (n, Σd_y)
    splits = [s.width for s in sy]
    rows = []
    for s in sx:
        cross = s.xc.T @ y_all  # (d_i, Σd_y): one GEMM per x layer
        rows.append(torch.stack([(c * c).sum() for c in cross.split(splits, dim=1)]))
    return torch.stack(rows)


def _cka_grid(sx: list[CKAState], sy: list[CKAState], *, same: bool, **_: object) -> torch.Tensor:
    first = sx[0]
    n = first.n
    if first.kernel == "linear":
        cross = _linear_cross_grid(sx, sy, same)
        if first.unbiased:
            diag = (
                torch.stack([s.ub_linear.diag for s in sx])
                @ torch.stack([s.ub_linear.diag for s in sy]).T
            )
            rows = (
                torch.stack([s.ub_linear.rows for s in sx])
                @ torch.stack([s.ub_linear.rows for s in sy]).T
            )
            tx = torch.stack([s.ub_linear.total for s in sx])[:, None]
            ty = torch.stack([s.ub_linear.total for s in sy])[None, :]
            cross = unbiased_hsic_from_parts(cross - diag, tx, ty, rows, n)
    elif first.unbiased:
        kx = [s.ub_kernel.k_tilde for s in sx]
        trace = _stack_dot(kx, kx if same else [s.ub_kernel.k_tilde for s in sy])
        rows = (
            torch.stack([s.ub_kernel.row_sums for s in sx])
            @ torch.stack([s.ub_kernel.row_sums for s in sy]).T
        )
        tx = torch.stack([s.ub_kernel.total for s in sx])[:, None]
        ty = torch.stack([s.ub_kernel.total for s in sy])[None, :]
        cross = unbiased_hsic_from_parts(trace, tx, ty, rows, n)
    else:
        kx = [s.centered_kernel for s in sx]
        cross = _stack_dot(kx, kx if same else [s.centered_kernel for s in sy]) / (n - 1) ** 2
    self_x = torch.stack([s.self_hsic for s in sx])
    self_y = torch.stack([s.self_hsic for s in sy])
    return cross / torch.sqrt(self_x[:, None] * self_y[None, :])


@register_metric(
    bounds=(0.0, 1.0),
    invariances=("orthogonal", "isotropic_scaling", "translation"),
    reference="Kornblith et al. 2019, Similarity of Neural Network Representations Revisited, ICML",
    min_rows=2,
    prepare=_cka_prepare,
    permute=_cka_permute,
    resample=_cka_resample,
    combine=_cka_combine,
    grid=_cka_grid,
)
def cka(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    kernel: Kernel = "linear",
    sigma: float | None = None,
    sigma_frac: float = 1.0,
    unbiased: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    r"""Centered kernel alignment between ``x (n, d1)`` and ``y (n, d2)``.

    .. math:: \mathrm{CKA}(K, L) = \frac{\mathrm{HSIC}(K, L)}{\sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}}

    - ``kernel="linear"``: K = XXᵀ on centered X; biased CKA equals
      ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F), computed in feature space or Gram space,
      whichever needs fewer multiply-adds (never an n×n matrix when n > d).
    - ``kernel="rbf"``: K_ij = exp(-‖x_i - x_j‖² / 2σ²); σ as given, else
      σ² = sigma_frac² · median of all n² squared distances (diagonal included,
      NumPy's median), Kornblith et al.'s rule.
    - ``unbiased=False``: HSIC = tr(KHLH)/(n-1)² (Gretton et al. 2005).
      ``unbiased=True``: the U-statistic of Song et al. 2012, eq. 5 (needs
      n >= 4); then the score lies in [-1, 1] and is near 0 for independent
      inputs at any n.

    Invariant to orthogonal transforms, isotropic scaling and translation of
    either input (linear kernel; the RBF kernel with the median rule also).

    Returns a 0-d tensor of ``dtype`` on the inputs' device.

    Reference: Kornblith, Norouzi, Lee, Hinton (2019), "Similarity of Neural
    Network Representations Revisited", ICML; Song et al. (2012), "Feature
    Selection via Dependence Maximization", JMLR.
    """
    x, y = check_pair(x, y, dtype=dtype, min_rows=2)
    opts = dict(kernel=kernel, sigma=sigma, sigma_frac=sigma_frac, unbiased=unbiased)
    return _cka_combine(_cka_prepare(x, **opts), _cka_prepare(y, **opts))
