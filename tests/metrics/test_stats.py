from __future__ import annotations

import pytest
import torch

from repalign.metrics import bootstrap_ci, cka, permutation_test
from tests.metrics._data import related_pair


def test_permutation_null_near_chance_and_pvalue_small_for_related():
    x, y = related_pair(80, 6, 5, noise=0.3)
    out = permutation_test("cka", x, y, n_permutations=200, seed=1)
    assert float(out["observed"]) == pytest.approx(float(cka(x, y)))
    assert out["null"].shape == (200,)
    assert float(out["null_mean"]) < float(out["observed"]) - 0.2
    assert float(out["pvalue"]) == pytest.approx(1 / 201)


def test_permutation_pvalue_large_for_independent():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g, dtype=torch.float64)
    y = torch.randn(60, 4, generator=g, dtype=torch.float64)
    out = permutation_test("cka", x, y, n_permutations=200, seed=0)
    assert float(out["pvalue"]) > 0.05


def test_permutation_is_seeded_and_respects_direction():
    x, y = related_pair(40, 5, 4)
    a = permutation_test("cca", x, y, n_permutations=50, seed=3)
    b = permutation_test("cca", x, y, n_permutations=50, seed=3)
    torch.testing.assert_close(a["null"], b["null"])
    c = permutation_test("cca", x, y, n_permutations=50, seed=4)
    assert not torch.equal(a["null"], c["null"])


def test_bootstrap_interval_contains_observed_and_narrows_with_n():
    small = bootstrap_ci("cka", *related_pair(40, 6, 5), n_boot=200, seed=0)
    large = bootstrap_ci("cka", *related_pair(400, 6, 5), n_boot=200, seed=0)
    for out in (small, large):
        assert float(out["ci_low"]) <= float(out["observed"]) <= float(out["ci_high"])
    assert float(large["ci_high"] - large["ci_low"]) < float(small["ci_high"] - small["ci_low"])


def test_stats_options_and_errors():
    x, y = related_pair(40, 5, 4)
    out = permutation_test("cka", x, y, n_permutations=10, kernel="rbf")
    assert float(out["observed"]) == pytest.approx(float(cka(x, y, kernel="rbf")))
    with pytest.raises(TypeError, match="accepts"):
        permutation_test("cca", x, y, n_permutations=10, kernel="rbf")
    with pytest.raises(ValueError, match="n_permutations"):
        permutation_test("cka", x, y, n_permutations=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci("cka", x, y, level=1.5)


def test_knn_interval_is_not_inflated_by_duplicates():
    # independent inputs: a with-replacement bootstrap puts mutual k-NN's whole interval above
    # the observed score (duplicates are their own neighbours); subsampling must not
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)
    y = torch.randn(200, 8, generator=g, dtype=torch.float64)
    out = bootstrap_ci("mutual_knn", x, y, n_boot=100, seed=0, k=5)
    assert int(out["subsample"]) == 1
    assert float(out["ci_low"]) <= float(out["observed"]) <= float(out["ci_high"])
    plain = bootstrap_ci("cka", x, y, n_boot=20, seed=0)
    assert int(plain["subsample"]) == 0
