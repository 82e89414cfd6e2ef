"""Soft-matching distance: oracles, metric axioms, invariances, normalisation and options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repalign.metrics import get_metric, pairwise
from repalign.metrics.wasserstein import _wd_prepare, unit_cost_matrix, wasserstein_distance
from tests.metrics import oracles_knn as oracles
from tests.metrics._data import related_pair


def _pair(n: int, d1: int, d2: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return related_pair(n, d1, d2, latent=min(3, d1, d2), seed=seed)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", [(40, 6, 6), (60, 12, 12), (9, 20, 20), (30, 1, 1)])
def test_equal_width_matches_hungarian(shape, center):
    x, y = _pair(*shape)
    expected = oracles.soft_matching_equal_width(x.numpy(), y.numpy(), center=center)
    assert float(wasserstein_distance(x, y, center=center)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", [(30, 12, 9), (25, 3, 7), (50, 10, 4), (20, 1, 5)])
def test_unequal_width_matches_transport_lp(shape, center):
    x, y = _pair(*shape)
    expected = oracles.soft_matching_lp(x.numpy(), y.numpy(), center=center)
    assert float(wasserstein_distance(x, y, center=center)) == pytest.approx(expected, rel=1e-8)


def test_single_units_reduce_to_euclidean_distance():
    x, y = _pair(25, 1, 1)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert float(wasserstein_distance(x, y)) == pytest.approx(float((xc - yc).norm()), rel=1e-12)


def test_cost_matrix_is_the_squared_distance_between_units():
    x, y = _pair(30, 7, 5)
    cost = unit_cost_matrix(_wd_prepare(x), _wd_prepare(y))
    expected = oracles._unit_costs(x.numpy(), y.numpy(), center=True)
    np.testing.assert_allclose(cost.numpy(), expected, rtol=1e-11, atol=1e-11)


def test_identity_and_unit_permutation_give_exactly_zero():
    x, y = _pair(60, 12, 9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3))
    assert float(wasserstein_distance(x, x)) == 0.0
    assert float(wasserstein_distance(y[:, perm], y)) == 0.0
    assert float(wasserstein_distance(x, y[:, perm])) == pytest.approx(
        float(wasserstein_distance(x, y)), rel=1e-12
    )


def test_near_identical_units_are_resolved_beyond_gemm_rounding():
    """A perturbation of 1e-9 is far below the GEMM form's cancellation noise (~1e-7 here)."""
    x, _ = _pair(60, 12, 12)
    x = x * 100.0
    g = torch.Generator().manual_seed(4)
    y = x[:, torch.randperm(12, generator=g)] + 1e-9 * torch.randn(
        60, 12, generator=g, dtype=torch.float64
    )
    expected = oracles.soft_matching_equal_width(x.numpy(), y.numpy())
    assert 1e-9 < expected < 1e-7
    assert float(wasserstein_distance(x, y)) == pytest.approx(expected, rel=1e-6)


def test_duplicated_units_are_at_distance_zero_for_different_widths():
    x, _ = _pair(40, 6, 6)
    assert float(wasserstein_distance(x, torch.cat([x, x], dim=1))) < 1e-12
    assert float(wasserstein_distance(x, torch.cat([x, x[:, :3]], dim=1))) > 1e-3


def test_metric_axioms():
    x, y = _pair(40, 8, 5, seed=0)
    z, _ = _pair(40, 11, 2, seed=1)
    dxy, dyx = wasserstein_distance(x, y), wasserstein_distance(y, x)
    assert float(dxy) == pytest.approx(float(dyx), rel=1e-12)
    assert float(dxy) > 0
    dxz, dzy = wasserstein_distance(x, z), wasserstein_distance(z, y)
    assert float(dxy) <= float(dxz + dzy) + 1e-12


def test_translation_invariance_only_with_centering():
    x, y = _pair(40, 8, 5)
    shift = 4.0 * torch.randn(1, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert float(wasserstein_distance(x, y + shift)) == pytest.approx(
        float(wasserstein_distance(x, y)), rel=1e-12
    )
    moved = float(wasserstein_distance(x, y + shift, center=False))
    assert abs(moved - float(wasserstein_distance(x, y, center=False))) > 1e-3


def test_not_normalised_by_the_number_of_stimuli():
    """Each unit is a point in R^n: repeating every stimulus scales the distance by sqrt(2)."""
    x, y = _pair(30, 6, 4)
    doubled = wasserstein_distance(torch.cat([x, x]), torch.cat([y, y]))
    assert float(doubled) == pytest.approx(
        np.sqrt(2) * float(wasserstein_distance(x, y)), rel=1e-10
    )


def test_scaling_changes_the_distance():
    x, y = _pair(30, 6, 4)
    assert float(wasserstein_distance(2 * x, 2 * y)) == pytest.approx(
        2 * float(wasserstein_distance(x, y)), rel=1e-10
    )


def test_float32_option():
    x, y = _pair(60, 12, 9)
    ref = float(wasserstein_distance(x, y))
    out = wasserstein_distance(x.float(), y.float(), dtype=torch.float32)
    assert out.dtype == torch.float32 and out.ndim == 0
    assert float(out) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("center", [True, False])
def test_constant_input_is_rejected(center):
    _, y = _pair(30, 6, 4)
    with pytest.raises(ValueError, match="constant"):
        wasserstein_distance(torch.full((30, 3), 2.0, dtype=torch.float64), y, center=center)


def test_registered_as_a_distance():
    spec = get_metric("wasserstein_distance")
    assert spec.kind == "distance" and spec.bounds == (0.0, float("inf"))
    assert spec.invariances == frozenset({"permutation", "translation"})
    assert spec.options == ("center",)


@pytest.mark.parametrize("center", [True, False])
def test_pairwise_matches_direct_calls(center):
    layers = [_pair(30, d, 4, seed=s)[0] for s, d in enumerate((5, 8, 3))]
    grid = pairwise(layers, metric="wasserstein_distance", center=center)
    expected = torch.tensor(
        [[float(wasserstein_distance(a, b, center=center)) for b in layers] for a in layers],
        dtype=torch.float64,
    )
    torch.testing.assert_close(grid, expected, rtol=1e-12, atol=1e-14)


def test_runs_on_device(device):
    x, y = _pair(50, 10, 7)
    ref = float(wasserstein_distance(x, y))
    out = wasserstein_distance(x.to(device), y.to(device))
    assert out.device.type == device.type and out.ndim == 0
    assert float(out) == pytest.approx(ref, rel=1e-10)
