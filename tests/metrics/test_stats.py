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


PERMUTABLE = [
    ("cka", {}),
    ("cka", {"unbiased": True}),
    ("cka", {"kernel": "rbf"}),
    ("cka", {"kernel": "rbf", "unbiased": True}),
    ("cca", {}),
    ("svcca", {"keep": 0.9}),
    ("pwcca", {}),
    ("mutual_knn", {"k": 5}),
    ("cknna", {"k": 5}),
]


def test_every_metric_with_a_permute_hook_is_checked_here():
    from repalign.metrics import get_metric, list_metrics

    hooked = {m for m in list_metrics() if get_metric(m).permute is not None}
    assert hooked == {name for name, _ in PERMUTABLE}


@pytest.mark.parametrize("name,options", PERMUTABLE)
@pytest.mark.parametrize("gram", [True, False])
def test_permuted_state_equals_preparing_the_permuted_rows(name, options, gram, monkeypatch):
    """``permute(prepare(y), π)`` must score as ``prepare(y[π])`` does, on both CKA routes."""
    import importlib

    from repalign.metrics import get_metric

    cka_module = importlib.import_module("repalign.metrics.cka")

    if not gram:  # as for n too large for the permuted-Gram route
        monkeypatch.setattr(cka_module, "_PERMUTE_GRAM_BYTES", 0)
    spec = get_metric(name)
    x, y = related_pair(60, 7, 5)
    sx, sy = spec.prepare(x, **options), spec.prepare(y, **options)
    for seed in range(3):
        perm = torch.randperm(60, generator=torch.Generator().manual_seed(seed))
        got = spec.combine(sx, spec.permute(sy, perm), **options)
        want = spec.combine(sx, spec.prepare(y[perm], **options), **options)
        assert float(got) == pytest.approx(float(want), rel=1e-10, abs=1e-12)


def test_permutation_null_is_unchanged_by_the_permute_hook():
    from dataclasses import replace

    from repalign.metrics import get_metric

    x, y = related_pair(80, 6, 9)
    for name in ("cka", "cca", "mutual_knn"):
        spec = get_metric(name)
        fast = permutation_test(spec, x, y, n_permutations=30, seed=5)
        slow = permutation_test(replace(spec, permute=None), x, y, n_permutations=30, seed=5)
        torch.testing.assert_close(fast["null"], slow["null"], rtol=1e-10, atol=1e-12)
        assert float(fast["pvalue"]) == float(slow["pvalue"])


@pytest.mark.parametrize("unbiased", [False, True])
def test_resampled_cka_state_equals_preparing_the_resampled_rows(unbiased):
    from repalign.metrics import get_metric

    spec = get_metric("cka")
    x, y = related_pair(70, 9, 4)
    sx, sy = spec.prepare(x, unbiased=unbiased), spec.prepare(y, unbiased=unbiased)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx = torch.randint(70, (70,), generator=gen)  # with repeats, as the bootstrap draws
        got = spec.combine(spec.resample(sx, x, idx), spec.resample(sy, y, idx))
        want = cka(x[idx], y[idx], unbiased=unbiased)
        assert float(got) == pytest.approx(float(want), rel=1e-10)
    rbf = spec.prepare(x, kernel="rbf")  # the bandwidth depends on the resample: fn is used
    assert spec.resample(rbf, x, idx) is None


def test_bootstrap_interval_is_unchanged_by_the_resample_hook():
    from dataclasses import replace

    from repalign.metrics import get_metric

    x, y = related_pair(60, 5, 7)
    spec = get_metric("cka")
    fast = bootstrap_ci(spec, x, y, n_boot=40, seed=2)
    slow = bootstrap_ci(replace(spec, resample=None), x, y, n_boot=40, seed=2)
    torch.testing.assert_close(fast["boot"], slow["boot"], rtol=1e-10, atol=1e-12)
    assert float(fast["ci_low"]) == pytest.approx(float(slow["ci_low"]), rel=1e-10)


def test_a_degenerate_resample_is_drawn_again():
    from repalign.metrics import get_metric

    x = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=torch.float64).repeat(1, 3)
    x = x + 1e-3 * torch.arange(12, dtype=torch.float64).reshape(4, 3) ** 2
    spec = get_metric("cka")
    with pytest.raises(ValueError, match="no variance"):
        spec.resample(spec.prepare(x), x, torch.zeros(4, dtype=torch.long))
    out = bootstrap_ci("cka", x, x.flip(0), n_boot=20, seed=0)
    assert out["boot"].isfinite().all()


@pytest.mark.parametrize("name", ["mutual_knn", "cknna"])
@pytest.mark.parametrize("fraction", [0.5, 0.2])  # 0.2: many rows need the exact search
def test_knn_subsample_state_equals_preparing_the_subsample(name, fraction):
    from repalign.metrics import get_metric

    spec = get_metric(name)
    x, y = related_pair(150, 6, 5)
    sx, sy = spec.prepare(x, k=4), spec.prepare(y, k=4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        idx = torch.randperm(150, generator=gen)[: int(150 * fraction)]
        got = spec.combine(spec.resample(sx, x, idx), spec.resample(sy, y, idx), k=4)
        want = spec.fn(x[idx], y[idx], k=4)
        assert float(got) == pytest.approx(float(want), rel=1e-10, abs=1e-12)
    assert spec.resample(sx, x, torch.tensor([0, 0, 1, 2, 3, 4, 5])) is None  # repeats


def test_knn_bootstrap_interval_is_unchanged_by_the_resample_hook():
    from dataclasses import replace

    from repalign.metrics import get_metric

    x, y = related_pair(120, 5, 6)
    spec = get_metric("mutual_knn")
    fast = bootstrap_ci(spec, x, y, n_boot=25, seed=3, k=5)
    slow = bootstrap_ci(replace(spec, resample=None), x, y, n_boot=25, seed=3, k=5)
    torch.testing.assert_close(fast["boot"], slow["boot"], rtol=1e-12, atol=1e-12)


def _grid_layers(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, generator=g, dtype=torch.float64)
    widths = (4, 6, 5)
    return {
        f"l{i}": base @ torch.randn(3, w, generator=g, dtype=torch.float64)
        + 0.5 * torch.randn(n, w, generator=g, dtype=torch.float64)
        for i, w in enumerate(widths)
    }


@pytest.mark.parametrize(
    ("name", "options"),
    [("cka", {}), ("cka", {"kernel": "rbf"}), ("mutual_knn", {"k": 5}), ("svcca", {}),
     ("pwcca", {})],
)  # fmt: skip
def test_pair_statistics_equal_one_pair_at_a_time(name, options):
    from repalign.metrics.stats import pair_statistics

    layers = _grid_layers()
    pairs = [("l0", "l1"), ("l1", "l0"), ("l2", "l1"), ("l0", "l0")]
    draws = []
    out = pair_statistics(
        name, layers, pairs, permutations=12, bootstrap=15, seed=4,
        on_draw=lambda: draws.append(1), **options,
    )  # fmt: skip
    assert len(draws) == 12 + 15
    for a, b in pairs:
        perm = permutation_test(name, layers[a], layers[b], n_permutations=12, seed=4, **options)
        boot = bootstrap_ci(name, layers[a], layers[b], n_boot=15, seed=4, **options)
        got = out[(a, b)]
        torch.testing.assert_close(got["null"], perm["null"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["boot"], boot["boot"], rtol=1e-10, atol=1e-12)
        for key in ("observed", "pvalue", "ci_low", "ci_high"):
            torch.testing.assert_close(got[key], {**perm, **boot}[key], rtol=1e-10, atol=1e-12)


def test_pair_statistics_a_degenerate_draw_is_skipped_by_the_pairs_it_breaks_only():
    from repalign.metrics.stats import pair_statistics

    # l_sparse is constant except in two rows: many resamples miss both and are undefined for
    # pairs with it, while the other pair must still use every draw, as it would alone
    n = 12
    g = torch.Generator().manual_seed(0)
    sparse = torch.zeros(n, 2, dtype=torch.float64)
    sparse[0, 0], sparse[1, 1] = 1.0, 2.0
    layers = {
        "a": torch.randn(n, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(n, 3, generator=g, dtype=torch.float64),
        "sparse": sparse,
    }
    draws = []
    out = pair_statistics(
        "cka", layers, [("a", "b"), ("a", "sparse")], bootstrap=30, seed=1,
        on_draw=lambda: draws.append(1),
    )  # fmt: skip
    assert len(draws) > 30  # some draws were undefined for ("a", "sparse") and drawn again
    for pair in [("a", "b"), ("a", "sparse")]:
        alone = bootstrap_ci("cka", layers[pair[0]], layers[pair[1]], n_boot=30, seed=1)
        torch.testing.assert_close(out[pair]["boot"], alone["boot"], rtol=1e-10, atol=1e-12)


def test_pair_statistics_bad_requests():
    from repalign.metrics.stats import pair_statistics

    layers = _grid_layers()
    with pytest.raises(ValueError, match="nothing to compute"):
        pair_statistics("cka", layers, [("l0", "l1")])
    with pytest.raises(KeyError, match="not given"):
        pair_statistics("cka", layers, [("l0", "l9")], permutations=2)
    short = {**layers, "l9": layers["l0"][:30]}
    with pytest.raises(ValueError, match="different numbers of rows"):
        pair_statistics("cka", short, [("l0", "l9")], permutations=2)
