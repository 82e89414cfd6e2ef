"""Independent reference implementations written from the papers, in NumPy/SciPy.

Deliberately naive (explicit centering matrices, brute-force U-statistics,
covariance whitening instead of QR/SVD bases) so that they share no code
path with ``repalign.metrics``.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.linalg


def centering_matrix(n: int) -> np.ndarray:
    return np.eye(n) - np.ones((n, n)) / n


def linear_gram(x: np.ndarray) -> np.ndarray:
    return x @ x.T


def rbf_gram_kornblith(x: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """``gram_rbf`` of Kornblith et al.'s notebook: σ² = threshold² · median of squared distances."""
    dot = x @ x.T
    sq_norms = np.diag(dot)
    sq_distances = -2 * dot + sq_norms[:, None] + sq_norms[None, :]
    sq_median = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold**2 * sq_median))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """tr(K H L H) / (n-1)² with an explicit H (Gretton et al. 2005)."""
    h = centering_matrix(k.shape[0])
    return float(np.trace(k @ h @ l @ h)) / (k.shape[0] - 1) ** 2


def hsic_unbiased_bruteforce(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. 2012 as a U-statistic over ordered distinct 4-tuples (i, j, q, r).

    HSIC_u = 1/(n)_4 Σ [k_ij l_ij + k_ij l_qr - 2 k_ij l_iq]   (O(n⁴): tiny n only)
    """
    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
    return total / (n * (n - 1) * (n - 2) * (n - 3))


def cka_from_grams(k: np.ndarray, l: np.ndarray, hsic=hsic_biased) -> float:  # noqa: E741
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the centered column spaces (descending)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    return np.sort(np.cos(scipy.linalg.subspace_angles(xc, yc)))[::-1]


def svcca(x: np.ndarray, y: np.ndarray, keep) -> float:
    def reduce(a: np.ndarray) -> np.ndarray:
        ac = a - a.mean(0)
        u, s, _ = np.linalg.svd(ac, full_matrices=False)
        if isinstance(keep, float):
            frac = np.cumsum(s**2) / np.sum(s**2)
            k = int(np.searchsorted(frac, keep - 1e-12) + 1)
        else:
            k = keep
        return u[:, :k] * s[:k]

    return float(canonical_correlations(reduce(x), reduce(y)).mean())


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return v @ np.diag(w**-0.5) @ v.T


def pwcca(x: np.ndarray, y: np.ndarray) -> float:
    """Morcos et al. 2018 via covariance whitening (full-rank inputs, n > d).

    ρ, U from the SVD of Cxx^-1/2 Cxy Cyy^-1/2; canonical variates
    h = Xc Cxx^-1/2 U normalised to unit norm; α_i = Σ_j |<h_i, xc_j>|.
    """
    swap = y.shape[1] < x.shape[1]
    a, b = (y, x) if swap else (x, y)
    ac, bc = a - a.mean(0), b - b.mean(0)
    caa, cbb, cab = ac.T @ ac, bc.T @ bc, ac.T @ bc
    m = _inv_sqrt(caa) @ cab @ _inv_sqrt(cbb)
    u, rho, _ = np.linalg.svd(m, full_matrices=False)
    h = ac @ _inv_sqrt(caa) @ u
    h = h / np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ ac).sum(axis=1)
    r = min(a.shape[1], b.shape[1])
    return float((alpha[:r] * rho[:r]).sum() / alpha[:r].sum())
