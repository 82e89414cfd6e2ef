"""Soft-matching distance (Khosla & Williams 2024): optimal transport between units.

Each unit (column) of ``x (n, d1)`` is a point in ``R^n`` (its tuning curve over
the ``n`` stimuli), each representation a uniform distribution over its units.
The distance is the 2-Wasserstein distance between these two point clouds:

``d(x, y)² = min_P Σ_ij P_ij ‖x_:i − y_:j‖²``  over ``P ≥ 0`` with row sums ``1/d1``
and column sums ``1/d2`` (a "soft permutation").

Normalisation, as in the paper: the marginals are ``1/d1`` and ``1/d2``, so the
squared distance is an *average over units* of squared Euclidean distances in
``R^n``; there is **no** division by the number of stimuli ``n``. For
``d1 = d2 = d`` the optimal plan is a permutation divided by ``d`` and
``d(x, y)² = min_π (1/d) Σ_i ‖x_:i − y_:π(i)‖²``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repalign._numerics import center as center_columns
from repalign._numerics import check_pair
from repalign.metrics._registry import register_metric

# network simplex pivots: POT's default (1e5) is too few for a few thousand units a side
_MAX_ITER = 50_000_000
# plan entries whose GEMM cost is below this fraction of ‖a_i‖² + ‖b_j‖² are recomputed exactly
_EXACT_BELOW = 1e-2


@dataclass(frozen=True)
class UnitsState:
    """One layer as a cloud of units: the (centered) features and squared unit norms."""

    features: torch.Tensor  # (n, d)
    sq_norms: torch.Tensor  # (d,)


def _wd_prepare(x: torch.Tensor, *, center: bool = True) -> UnitsState:
    feats = center_columns(x) if center else x
    return UnitsState(features=feats, sq_norms=(feats * feats).sum(dim=0))


def unit_cost_matrix(a: UnitsState, b: UnitsState) -> torch.Tensor:
    """``C_ij = ‖a_:i − b_:j‖²`` with one GEMM: ``‖a_i‖² + ‖b_j‖² − 2 a_iᵀ b_j``, clamped at 0."""
    norms = a.sq_norms[:, None] + b.sq_norms[None, :]  # (d1, d2)
    return torch.addmm(norms, a.features.T, b.features, alpha=-2.0).clamp_min_(0.0)


def _plan_cost(
    a: UnitsState, b: UnitsState, plan: torch.Tensor, cost: torch.Tensor
) -> torch.Tensor:
    """``Σ_ij P_ij ‖a_:i − b_:j‖²``, re-evaluating near-cancelling entries from explicit differences.

    The GEMM form of the cost cancels catastrophically for near-identical
    units (an error of order ``eps (‖a_i‖² + ‖b_j‖²)`` that survives the square
    root). The optimal plan has at most ``d1 + d2 − 1`` nonzeros; those whose
    cost is below ``_EXACT_BELOW`` of ``‖a_i‖² + ‖b_j‖²`` are recomputed as
    ``‖a_i − b_j‖²``, so identical units cost exactly 0; the entries kept from
    the GEMM have a relative error below ``n eps / _EXACT_BELOW`` even in the
    worst case (about ``sqrt(n) eps`` typically).
    """
    rows, cols = plan.nonzero(as_tuple=True)
    entry = cost[rows, cols]
    near = (entry < _EXACT_BELOW * (a.sq_norms[rows] + b.sq_norms[cols])).nonzero(as_tuple=True)[0]
    if near.numel():
        diff = a.features[:, rows[near]] - b.features[:, cols[near]]  # (n, n_near)
        entry = entry.index_put((near,), (diff * diff).sum(dim=0))
    return (plan[rows, cols] * entry).sum()


def _wd_combine(a: UnitsState, b: UnitsState, *, center: bool = True) -> torch.Tensor:
    import ot  # imported here: POT pulls in scikit-learn, about 1 s that other metrics never need

    cost = unit_cost_matrix(a, b)
    d1, d2 = cost.shape
    # POT's network simplex runs on the host: its torch backend copies the cost
    # there and returns the plan on the input's device (the one round trip).
    mass_a = cost.new_full((d1,), 1.0 / d1)
    mass_b = cost.new_full((d2,), 1.0 / d2)
    _, log = ot.emd2(mass_a, mass_b, cost, numItermax=_MAX_ITER, log=True, return_matrix=True)
    if log["warning"] is not None:
        raise RuntimeError(
            f"exact optimal transport between {d1} and {d2} units did not converge: {log['warning']}"
        )
    plan = log["G"].to(device=cost.device, dtype=cost.dtype)
    return torch.sqrt(_plan_cost(a, b, plan, cost))


@register_metric(
    bounds=(0.0, float("inf")),
    higher_is_more_similar=False,
    invariances=("permutation", "translation"),
    reference=(
        "Khosla & Williams 2024, Soft Matching Distance: A metric on neural representations "
        "that captures single-neuron tuning, UniReps (PMLR 243)"
    ),
    prepare=_wd_prepare,
    combine=_wd_combine,
    min_rows=2,
)
def wasserstein_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    center: bool = True,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Soft-matching distance between the units of ``x (n, d1)`` and ``y (n, d2)``.

    ``sqrt(min_P Σ_ij P_ij ‖x_:i − y_:j‖²)``, ``P`` a transport plan with uniform
    marginals ``1/d1``, ``1/d2``, solved exactly with POT's ``ot.emd2``. Works
    for ``d1 ≠ d2``; zero iff the units of ``x`` and ``y`` match up to a
    permutation (for ``d1 ≠ d2``: up to duplication, e.g. ``y = [x, x]``).
    A metric: symmetric, triangle inequality. Not normalised by ``n``.

    ``center=True`` (default) subtracts each unit's mean over stimuli first,
    which makes the distance invariant to a per-unit offset (translation).
    Invariant to permuting units; not to rotations or scaling (it measures
    single-unit tuning).

    The cost matrix is computed on the input's device with one GEMM; the
    exact OT solve runs on the host (POT's network simplex), the one host
    round trip of this metric. Plan entries between near-identical units are
    then re-evaluated on the device from explicit differences, so identical
    units give exactly 0 rather than rounding noise.
    Constant inputs are rejected like for every metric (a representation
    with no tuning is almost certainly an upstream bug).
    """
    x, y = check_pair(x, y, dtype=dtype, min_rows=2, why="units are points in R^n")
    return _wd_combine(_wd_prepare(x, center=center), _wd_prepare(y, center=center), center=center)
