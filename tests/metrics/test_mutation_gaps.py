"""Tests added after a hand-made mutation audit of repalign.metrics: each one kills a
mutant (a small plausible bug) that the rest of the suite let through. The mutant it
guards against is named in its docstring."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from repalign.metrics import (
    bootstrap_ci,
    cca,
    cka,
    get_metric,
    pairwise,
    permutation_test,
    pwcca,
    svcca,
)
from repalign.metrics import wasserstein as wd
from repalign.metrics._kernels import (
    UnbiasedState,
    biased_hsic,
    double_center,
    rbf_kernel,
    squared_distances,
    unbiased_hsic,
)
from tests import oracles
from tests.metrics._data import related_pair


def _kernels(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = related_pair(n, 4, 3, latent=2, seed=seed)
    return x @ x.T, rbf_kernel(y, sigma=None, sigma_frac=1.0)


def test_hsic_estimators_equal_the_oracles_not_only_their_ratios():
    """The HSIC values themselves, not just CKA (where a constant factor cancels):
    a wrong normaliser n(n-2) instead of n(n-3), or n² instead of (n-1)², survived."""
    k, l = _kernels(7)  # noqa: E741
    ub = unbiased_hsic(UnbiasedState.from_kernel(k), UnbiasedState.from_kernel(l))
    assert float(ub) == pytest.approx(oracles.hsic_unbiased_bruteforce(k.numpy(), l.numpy()))
    b = biased_hsic(double_center(k), double_center(l))
    assert float(b) == pytest.approx(oracles.hsic_biased(k.numpy(), l.numpy()), rel=1e-12)


def test_squared_distances_have_an_exact_zero_diagonal():
    """The GEMM form leaves rounding noise on the diagonal; the function promises zeros."""
    x = torch.randn(50, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = squared_distances(x * 1e3 + 7.0)
    assert torch.equal(torch.diagonal(d), torch.zeros(50, dtype=torch.float64))


def test_unbiased_cka_refuses_a_layer_whose_self_hsic_is_not_positive():
    """One outlier among equal rows: the unbiased self-HSIC is <= 0 and CKA undefined.
    Without the check the score was NaN (a skipped `self_hsic > 0` test survived)."""
    x = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [2.0], [4.0], [3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="not positive"):
        cka(x, y, unbiased=True)
    assert np.isfinite(float(cka(x, y)))  # biased is defined


@pytest.mark.parametrize("metric", [cca, svcca, pwcca])
def test_canonical_correlations_of_a_layer_with_itself_do_not_exceed_one(metric):
    """The SVD of QᵀQ returns 1 + a few ulp; unclamped, the score left its bound [0, 1]."""
    g = torch.Generator().manual_seed(0)
    for d in (1, 2, 3, 5):
        x = torch.randn(21, d, generator=g, dtype=torch.float64)
        assert float(metric(x, x)) <= 1.0


def test_svcca_int_keep_one_above_the_rank_is_refused():
    """keep=rank+1 was silently cut to rank by an off-by-one in the check."""
    x, y = related_pair(30, 3, 3)
    assert float(svcca(x, y, keep=3)) == pytest.approx(float(cca(x, y)), rel=1e-10)
    with pytest.raises(ValueError, match="rank 3"):
        svcca(x, y, keep=4)


def test_permutation_pvalue_counts_ties_with_the_observed_score():
    """Phipson & Smyth: a null draw equal to the observed score is 'at least as extreme'.
    With `>` instead of `>=`, a metric that ignores the shuffle got p = 1/(N+1), not 1."""
    constant = dataclasses.replace(
        get_metric("cka"), combine=lambda a, b, **_: torch.tensor(0.5, dtype=torch.float64)
    )
    x, y = related_pair(20, 3, 3)
    out = permutation_test(constant, x, y, n_permutations=9)
    assert float(out["pvalue"]) == 1.0
    assert float(out["null_std"]) == 0.0


def test_permutation_null_std_is_the_sample_standard_deviation():
    """null_std uses Bessel's correction (N - 1), as torch.std and numpy's ddof=1."""
    x, y = related_pair(30, 4, 3)
    out = permutation_test("cka", x, y, n_permutations=5)
    assert float(out["null_std"]) == pytest.approx(float(np.std(out["null"].numpy(), ddof=1)))


@pytest.mark.filterwarnings("ignore:numItermax reached")
def test_wasserstein_reports_a_transport_solve_that_did_not_converge(monkeypatch):
    """POT returns a plan and only a warning when it runs out of iterations; the metric
    must raise instead of returning a distance from an unfinished plan."""
    monkeypatch.setattr(wd, "_MAX_ITER", 1)
    x, y = related_pair(20, 12, 9)
    with pytest.raises(RuntimeError, match="did not converge"):
        wd.wasserstein_distance(x, y)


def test_permutation_pvalue_of_a_distance_counts_lower_null_draws():
    """For a distance 'extreme' means lower: related layers have a small distance and a
    small p-value (the comparison flipped to `>=` gave p = 1)."""
    x, y = related_pair(40, 6, 6, noise=0.1)
    out = permutation_test("wasserstein_distance", x, x + 0.1 * y, n_permutations=19)
    assert float(out["observed"]) < float(out["null"].min())
    assert float(out["pvalue"]) == pytest.approx(1 / 20)


@pytest.mark.parametrize("level", [0.9, 0.5])
def test_bootstrap_interval_is_the_central_percentile_interval(level):
    """ci_low, ci_high are the (1-level)/2 and (1+level)/2 quantiles of the resampled
    scores (not (1-level) and level)."""
    x, y = related_pair(30, 4, 3)
    out = bootstrap_ci("cka", x, y, n_boot=40, level=level, seed=2)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(out["boot"], q)
    assert float(out["ci_low"]) == pytest.approx(float(low), rel=1e-12)
    assert float(out["ci_high"]) == pytest.approx(float(high), rel=1e-12)


def _row_count_metric(*, duplicates_ok: bool):
    """A metric whose score is the number of distinct rows it is given: it shows which
    rows a resample hands to the metric."""

    def combine(a, b, **_):
        return torch.tensor(float(torch.unique(a, dim=0).shape[0]), dtype=torch.float64)

    return dataclasses.replace(
        get_metric("cka"),
        prepare=lambda x, **_: x,
        combine=combine,
        permute=None,
        resample=None,
        duplicates_ok=duplicates_ok,
    )


def test_subsampling_draws_half_the_rows_without_replacement_and_bootstrap_n_with():
    """Subsampling (duplicates_ok=False) scores m = n // 2 distinct rows; the bootstrap n
    rows with replacement (a subsample of all n rows gave a zero-width interval)."""
    x = torch.randn(21, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sub = bootstrap_ci(_row_count_metric(duplicates_ok=False), x, x, n_boot=10)
    assert sub["boot"].tolist() == [10.0] * 10 and int(sub["subsample"]) == 1
    boot = bootstrap_ci(_row_count_metric(duplicates_ok=True), x, x, n_boot=10)
    assert float(boot["boot"].max()) < 21 and int(boot["subsample"]) == 0


def test_subsampling_interval_is_rescaled_by_the_square_root_of_m_over_n():
    """θ̂ + sqrt(m/n) · q(θ_m − mean θ_m) (Politis & Romano): the half-size spread shrunk
    to n, not widened by sqrt(n/m)."""
    x, y = related_pair(60, 6, 5)
    out = bootstrap_ci("mutual_knn", x, y, n_boot=30, level=0.8, k=5)
    boot, observed = out["boot"], out["observed"]
    assert float(boot.std()) > 0 and float(out["ci_low"]) < float(out["ci_high"])
    q = torch.tensor([0.1, 0.9], dtype=torch.float64)
    low, high = observed + torch.quantile(boot - boot.mean(), q) * (30 / 60) ** 0.5
    assert float(out["ci_low"]) == pytest.approx(float(low), rel=1e-12)
    assert float(out["ci_high"]) == pytest.approx(float(high), rel=1e-12)


@pytest.mark.parametrize("level", [0.0, 1.0])
def test_bootstrap_level_must_be_strictly_between_zero_and_one(level):
    x, y = related_pair(20, 3, 3)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci("cka", x, y, n_boot=5, level=level)


def test_pair_statistics_needs_three_rows_even_for_two_row_metrics():
    """CKA is defined on 2 rows, but 2 rows have a single non-trivial permutation."""
    from repalign.metrics import pair_statistics

    x = torch.tensor([[0.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 3"):
        pair_statistics("cka", {"a": x, "b": x.flip(0)}, [("a", "b")], permutations=5)


def test_a_constant_resample_is_drawn_again_for_a_metric_without_a_resample_hook():
    """CCA has no resample hook: a resample whose rows are all equal must be redrawn,
    not scored (it gave NaN when the variance check was skipped)."""
    x = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=torch.float64).repeat(1, 3)
    x = x + 1e-3 * torch.arange(12, dtype=torch.float64).reshape(4, 3) ** 2
    out = bootstrap_ci("cca", x, x.flip(0), n_boot=20, seed=0)
    assert out["boot"].isfinite().all()


def test_permutation_null_mean_is_the_mean_of_the_null():
    x, y = related_pair(30, 4, 3)
    out = permutation_test("cka", x, y, n_permutations=6)
    assert float(out["null_mean"]) == pytest.approx(float(out["null"].mean()), rel=1e-12)


def test_knn_states_prepared_with_different_k_are_not_combined():
    """combine is public through the registry (get_metric(...).combine)."""
    spec = get_metric("mutual_knn")
    x, y = related_pair(30, 4, 3)
    with pytest.raises(ValueError, match="same n and k"):
        spec.combine(spec.prepare(x, k=3), spec.prepare(y, k=5))


def test_cca_rank_tolerance_scales_with_the_larger_dimension_as_numpy():
    """A direction 7e-15 of the largest is rounding noise for n = 100 rows (NumPy's
    s_max · max(n, d) · eps); with min(n, d) it was kept and scored as a real direction."""
    z = torch.randn(100, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.stack([z[:, 0], z[:, 0] + 1e-14 * z[:, 1]], 1)
    y = torch.stack([z[:, 0], z[:, 2]], 1)
    assert float(cca(x, y)) == pytest.approx(1.0, abs=1e-12)


def test_streaming_needs_two_rows_and_says_so():
    from repalign.metrics.streaming import StreamingCKA

    acc = StreamingCKA().update(torch.ones(1, 3), torch.ones(1, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        acc.compute()


def test_pairwise_refuses_too_few_rows_for_the_metric():
    """mutual k-NN needs 3 rows; with k=1 two rows would otherwise score a trivial 1."""
    x, y = related_pair(2, 3, 3)
    with pytest.raises(ValueError, match="needs at least 3 samples"):
        pairwise([x, y], metric="mutual_knn", k=1)


def test_pairwise_refuses_a_constant_layer_even_where_the_metric_would_score_it():
    """Constant nonzero rows are all cosine-tied: mutual k-NN alone would return a number."""
    x = related_pair(20, 3, 3)[0]
    constant = torch.ones(20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="layer 'flat' is constant"):
        pairwise({"flat": constant, "x": x}, metric="mutual_knn", k=3)


def test_pairwise_names_the_layer_a_metric_cannot_prepare():
    bad = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=torch.float64)
    good = torch.tensor([[1.0], [2.0], [4.0], [3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="layer 'outlier': HSIC of an input with itself"):
        pairwise({"ok": good, "outlier": bad}, metric="cka", unbiased=True)


def test_pair_statistics_refuses_negative_draw_counts():
    from repalign.metrics import pair_statistics

    x, y = related_pair(20, 3, 3)
    with pytest.raises(ValueError, match="must be >= 0"):
        pair_statistics("cka", {"a": x, "b": y}, [("a", "b")], permutations=-1, bootstrap=5)
