"""Linear CKA's permuted and resampled layers: Gram route and feature route agree, and the
n x n Gram is only made where it is the cheaper route (it costs n² memory per layer)."""

from __future__ import annotations

import importlib

import pytest
import torch

from repalign.metrics import cka, get_metric

cka_module = importlib.import_module("repalign.metrics.cka")
SPEC = get_metric("cka")
ROUTES = {"gram": 0, "features": 10**12}  # _PASS_COST forcing each route


def _pair(n: int, d1: int, d2: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 4, generator=g, dtype=torch.float64)
    x = base @ torch.randn(4, d1, generator=g, dtype=torch.float64)
    y = base @ torch.randn(4, d2, generator=g, dtype=torch.float64)
    x = x + 0.5 * torch.randn(n, d1, generator=g, dtype=torch.float64)
    y = y + 0.5 * torch.randn(n, d2, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("unbiased", [False, True])
def test_permuted_layer_scores_as_the_permuted_rows_on_each_route(route, unbiased, monkeypatch):
    monkeypatch.setattr(cka_module, "_PASS_COST", ROUTES[route])
    x, y = _pair(40, 50, 30)  # wide layers: the Gram route is cheaper when gathers are free
    sx, sy = SPEC.prepare(x, unbiased=unbiased), SPEC.prepare(y, unbiased=unbiased)
    for seed in range(3):
        perm = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
        permuted = SPEC.permute(sy, perm)
        got = SPEC.combine(sx, permuted)
        assert float(got) == pytest.approx(float(cka(x, y[perm], unbiased=unbiased)), rel=1e-10)
        assert (permuted.gram is not None) == (route == "gram")


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("unbiased", [False, True])
def test_resampled_layer_scores_as_the_resampled_rows_on_each_route(route, unbiased, monkeypatch):
    monkeypatch.setattr(cka_module, "_PASS_COST", ROUTES[route])
    x, y = _pair(40, 50, 30, seed=1)
    sx, sy = SPEC.prepare(x, unbiased=unbiased), SPEC.prepare(y, unbiased=unbiased)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        idx = torch.randint(40, (40,), generator=gen)  # with repeats, as the bootstrap draws
        rx, ry = SPEC.resample(sx, x, idx), SPEC.resample(sy, y, idx)
        got = SPEC.combine(rx, ry)
        want = cka(x[idx], y[idx], unbiased=unbiased)
        assert float(got) == pytest.approx(float(want), rel=1e-10)
        assert (rx.gram is not None) == (route == "gram")


def test_mixed_routes_in_one_pair_score_alike(monkeypatch):
    """A wide layer on the Gram route paired with a narrow one on the feature route."""
    x, y = _pair(60, 200, 3, seed=3)
    sx, sy = SPEC.prepare(x), SPEC.prepare(y)
    monkeypatch.setattr(cka_module, "_PASS_COST", 1)
    idx = torch.randint(60, (60,), generator=torch.Generator().manual_seed(4))
    rx, ry = SPEC.resample(sx, x, idx), SPEC.resample(sy, y, idx)
    assert rx.gram is not None and ry.gram is None  # each chose its own self-HSIC route
    assert float(SPEC.combine(rx, ry)) == pytest.approx(float(cka(x[idx], y[idx])), rel=1e-10)


def test_narrow_layers_never_build_an_n_by_n_gram():
    """n = 3000 rows of 16 features: permuting or resampling stays O(n·d) in memory."""
    x, y = _pair(3000, 16, 12, seed=5)
    sx, sy = SPEC.prepare(x), SPEC.prepare(y)
    gen = torch.Generator().manual_seed(6)
    perm = torch.randperm(3000, generator=gen)
    assert float(SPEC.combine(sx, SPEC.permute(sy, perm))) == pytest.approx(
        float(cka(x, y[perm])), rel=1e-10
    )
    idx = torch.randint(3000, (3000,), generator=gen)
    rx, ry = SPEC.resample(sx, x, idx), SPEC.resample(sy, y, idx)
    assert float(SPEC.combine(rx, ry)) == pytest.approx(float(cka(x[idx], y[idx])), rel=1e-10)
    assert all(s.gram is None for s in (sx, sy, rx, ry))


def test_wide_layers_use_the_gram_route_by_default():
    """Where the cross products cost more than cutting the Gram, the Gram is cut."""
    x, y = _pair(200, 400, 300, seed=7)
    sx, sy = SPEC.prepare(x), SPEC.prepare(y)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(8))
    permuted = SPEC.permute(sy, perm)
    assert float(SPEC.combine(sx, permuted)) == pytest.approx(float(cka(x, y[perm])), rel=1e-10)
    assert permuted.gram is not None and sx.gram is not None
