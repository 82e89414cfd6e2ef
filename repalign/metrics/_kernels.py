"""Centering, Gram matrices and HSIC estimators shared by the CKA family.

Notation: ``K``, ``L`` are ``(n, n)`` kernel matrices of the same ``n`` stimuli,
``H = I - 11ᵀ/n`` the centering matrix.

- biased HSIC (Gretton et al. 2005):     tr(K H L H) / (n - 1)²
- unbiased HSIC (Song et al. 2012, eq. 5), with K̃, L̃ the kernels with zeroed diagonal:
      [ tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃L̃1 ] / (n (n-3))

Both are bilinear in (K, L), so each layer's kernel is reduced once to a small
"state" and every pair only needs inner products between states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def double_center(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` in O(n²) by subtracting row, column and grand means (K symmetric)."""
    row = k.mean(dim=0, keepdim=True)
    return k - row - row.T + row.mean()


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ‖x_i - x_j‖², exact zeros on the diagonal."""
    sq = (x * x).sum(dim=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    d.clamp_(min=0.0)
    d.fill_diagonal_(0.0)
    return d


def numpy_median(values: torch.Tensor) -> torch.Tensor:
    """Median with NumPy's convention: the mean of the two middle values for an even count.

    ``torch.median`` returns the lower middle value, which shifts the RBF bandwidth.
    """
    flat = values.reshape(-1)
    m = flat.numel()
    lo = torch.kthvalue(flat, (m + 1) // 2).values
    if m % 2:
        return lo
    hi = torch.kthvalue(flat, m // 2 + 1).values
    return (lo + hi) / 2


def rbf_kernel(x: torch.Tensor, *, sigma: float | None, sigma_frac: float) -> torch.Tensor:
    """exp(-‖a - b‖² / (2σ²)); σ² = sigma_frac² · median of all n² squared distances if σ is None.

    The median includes the zero diagonal, as in Kornblith et al.'s reference code.
    """
    d = squared_distances(x)
    if sigma is None:
        if sigma_frac <= 0:
            raise ValueError(f"sigma_frac must be > 0, got {sigma_frac}")
        sigma2 = sigma_frac**2 * numpy_median(d)
        if float(sigma2) == 0.0:
            raise ValueError(
                "the median squared distance between samples is 0 (more than half the rows are "
                "identical); pass an explicit sigma"
            )
    else:
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        sigma2 = torch.as_tensor(float(sigma) ** 2, dtype=x.dtype, device=x.device)
    return torch.exp(d / (-2.0 * sigma2))


@dataclass
class UnbiasedState:
    """Everything unbiased HSIC needs from one kernel: K̃ (zero diagonal), K̃1 and 1ᵀK̃1."""

    k_tilde: torch.Tensor
    row_sums: torch.Tensor
    total: torch.Tensor

    @classmethod
    def from_kernel(cls, k: torch.Tensor) -> UnbiasedState:
        kt = k.clone()
        kt.fill_diagonal_(0.0)
        rows = kt.sum(dim=1)
        return cls(kt, rows, rows.sum())

    def permuted(self, perm: torch.Tensor) -> UnbiasedState:
        """The state of the kernel of the rows reordered by ``perm``."""
        k = self.k_tilde.index_select(0, perm).index_select(1, perm)
        return UnbiasedState(k, self.row_sums[perm], self.total)


def unbiased_hsic_from_parts(
    trace_kl: torch.Tensor,
    sum_k: torch.Tensor,
    sum_l: torch.Tensor,
    rows_dot: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """Song et al. 2012 eq. 5 from tr(K̃L̃), 1ᵀK̃1, 1ᵀL̃1 and 1ᵀK̃L̃1 = (K̃1)·(L̃1)."""
    return (trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * rows_dot / (n - 2)) / (
        n * (n - 3)
    )


def unbiased_hsic(a: UnbiasedState, b: UnbiasedState) -> torch.Tensor:
    n = a.k_tilde.shape[0]
    trace = torch.vdot(a.k_tilde.reshape(-1), b.k_tilde.reshape(-1))  # both symmetric
    return unbiased_hsic_from_parts(trace, a.total, b.total, torch.dot(a.row_sums, b.row_sums), n)


def biased_hsic(kc: torch.Tensor, lc: torch.Tensor) -> torch.Tensor:
    """tr(HKH · HLH) / (n-1)² given both kernels already double-centered."""
    n = kc.shape[0]
    return torch.vdot(kc.reshape(-1), lc.reshape(-1)) / (n - 1) ** 2


@dataclass
class LinearUnbiasedParts:
    """Feature-space pieces of unbiased linear HSIC for one centered X (n, d).

    With K = XXᵀ: diag(K)_i = ‖x_i‖², K̃1 = X(Xᵀ1) - diag(K), 1ᵀK̃1 = ‖Xᵀ1‖² - Σ‖x_i‖².
    tr(K̃L̃) = ‖XᵀY‖²_F - Σ_i K_ii L_ii. Nothing of size n×n is ever formed.
    """

    diag: torch.Tensor  # (n,)
    rows: torch.Tensor  # (n,) K̃1
    total: torch.Tensor  # 1ᵀK̃1

    @classmethod
    def from_features(cls, xc: torch.Tensor) -> LinearUnbiasedParts:
        diag = (xc * xc).sum(dim=1)
        colsum = xc.sum(dim=0)
        rows = xc @ colsum - diag
        return cls(diag, rows, colsum.dot(colsum) - diag.sum())

    def permuted(self, perm: torch.Tensor) -> LinearUnbiasedParts:
        """The parts of the rows reordered by ``perm``."""
        return LinearUnbiasedParts(self.diag[perm], self.rows[perm], self.total)


def linear_unbiased_hsic(
    cross_sq: torch.Tensor, a: LinearUnbiasedParts, b: LinearUnbiasedParts, n: int
) -> torch.Tensor:
    """Unbiased linear HSIC from ‖XᵀY‖²_F and the per-layer parts."""
    trace = cross_sq - torch.dot(a.diag, b.diag)
    return unbiased_hsic_from_parts(trace, a.total, b.total, torch.dot(a.rows, b.rows), n)


def positive_self_hsic(h: torch.Tensor) -> torch.Tensor:
    """``h`` if positive; the unbiased HSIC of a layer with itself can be <= 0 for tiny n."""
    if not bool(h > 0):
        raise ValueError(
            "HSIC of an input with itself is not positive (the unbiased estimator can be <= 0 "
            "for very small n or nearly constant inputs); use more samples or unbiased=False"
        )
    return h
