"""Brute-force oracles for mutual k-NN, CKNNA and the soft-matching distance, in NumPy/SciPy.

Written from the papers with dense ``n x n`` matrices and Python loops (tiny n
only), sharing no code path with ``repalign.metrics.knn`` / ``wasserstein``.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

# --- mutual k-NN and CKNNA (Huh et al. 2024) ---------------------------------


def cosine_kernel(x: np.ndarray) -> np.ndarray:
    """``K_ij = <x_i, x_j> / (|x_i| |x_j|)``."""
    xn = x / np.sqrt((x**2).sum(axis=1, keepdims=True))
    return xn @ xn.T


def knn_mask(kernel: np.ndarray, k: int) -> np.ndarray:
    """Dense 0/1 mask: row i has ones at its k most similar *other* rows.

    Candidates are ordered by (similarity descending, index ascending), so ties
    go to the lowest index; ``i`` itself is skipped by index.
    """
    n = kernel.shape[0]
    mask = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        ranked = sorted(others, key=lambda j: (-kernel[i, j], j))
        for j in ranked[:k]:
            mask[i, j] = 1.0
    return mask


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Mean over rows of |N_x(i) ∩ N_y(i)| / k, from sets."""
    mx, my = knn_mask(cosine_kernel(x), k), knn_mask(cosine_kernel(y), k)
    per_row = [
        len(set(np.flatnonzero(mx[i])) & set(np.flatnonzero(my[i]))) / k for i in range(len(x))
    ]
    return float(np.mean(per_row))


def hsic_unbiased_eq5(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. 2012 eq. 5 on zero-diagonal copies, trace term ``tr(K̃ L̃)``.

    ``tr(K̃ L̃) = Σ_ij K̃_ij L̃_ji`` (the transpose matters for non-symmetric
    masked kernels); ``1ᵀK̃L̃1`` as an explicit double loop over (i, j).
    """
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    trace = float(np.trace(kt @ lt))
    ones_k_l_ones = sum(float(kt[i, :] @ lt[:, j]) for i in range(n) for j in range(n))
    value = trace + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2.0 * ones_k_l_ones / (n - 2)
    return value / (n * (n - 3))


def cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_K∘K, M_K∘K) HSIC_u(M_L∘L, M_L∘L)), M = M_K∘M_L."""
    kx, ky = cosine_kernel(x), cosine_kernel(y)
    mx, my = knn_mask(kx, k), knn_mask(ky, k)
    shared = mx * my
    cross = hsic_unbiased_eq5(shared * kx, shared * ky)
    self_x = hsic_unbiased_eq5(mx * kx, mx * kx)
    self_y = hsic_unbiased_eq5(my * ky, my * ky)
    return cross / np.sqrt(self_x * self_y)


# --- soft-matching distance (Khosla & Williams 2024) -------------------------


def _unit_costs(x: np.ndarray, y: np.ndarray, center: bool) -> np.ndarray:
    if center:
        x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    d1, d2 = x.shape[1], y.shape[1]
    cost = np.empty((d1, d2))
    for i in range(d1):
        for j in range(d2):
            cost[i, j] = float(((x[:, i] - y[:, j]) ** 2).sum())
    return cost


def soft_matching_equal_width(x: np.ndarray, y: np.ndarray, center: bool = True) -> float:
    """Equal widths: the optimal plan is a permutation / d; Hungarian algorithm."""
    cost = _unit_costs(x, y, center)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].sum() / cost.shape[0]))


def soft_matching_lp(x: np.ndarray, y: np.ndarray, center: bool = True) -> float:
    """Any widths: the transportation LP with marginals 1/d1, 1/d2, solved by HiGHS."""
    cost = _unit_costs(x, y, center)
    d1, d2 = cost.shape
    rows = np.kron(np.eye(d1), np.ones((1, d2)))  # Σ_j P_ij = 1/d1
    cols = np.kron(np.ones((1, d1)), np.eye(d2))  # Σ_i P_ij = 1/d2
    a_eq = np.vstack([rows, cols])
    b_eq = np.concatenate([np.full(d1, 1.0 / d1), np.full(d2, 1.0 / d2)])
    result = scipy.optimize.linprog(
        cost.reshape(-1), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs"
    )
    assert result.success, result.message
    return float(np.sqrt(max(result.fun, 0.0)))
