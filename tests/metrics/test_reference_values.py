"""Reference values from the independent oracles in ``tests/oracles.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repalign.metrics import cca, cka, pwcca, svcca
from repalign.metrics._kernels import numpy_median
from tests import oracles
from tests.metrics._data import related_pair


@pytest.fixture(
    params=[(60, 12, 9), (30, 40, 50), (9, 3, 4)], ids=lambda s: f"n{s[0]}-d{s[1]}-d{s[2]}"
)
def pair(request):
    n, d1, d2 = request.param
    x, y = related_pair(n, d1, d2, latent=min(5, d1, d2))
    return x.numpy(), y.numpy()


def test_linear_cka_biased(pair):
    x, y = pair
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = oracles.cka_from_grams(oracles.linear_gram(xc), oracles.linear_gram(yc))
    # also the closed form of Kornblith et al. in feature space
    closed = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert float(cka(x, y)) == pytest.approx(expected, rel=1e-10)
    assert expected == pytest.approx(closed, rel=1e-10)


@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_rbf_cka_biased_matches_kornblith(pair, threshold):
    x, y = pair
    expected = oracles.cka_from_grams(
        oracles.rbf_gram_kornblith(x, threshold), oracles.rbf_gram_kornblith(y, threshold)
    )
    assert float(cka(x, y, kernel="rbf", sigma_frac=threshold)) == pytest.approx(expected, rel=1e-9)


def test_rbf_fixed_sigma():
    x, y = (a.numpy() for a in related_pair(20, 4, 5))

    def gram(a, sigma):
        d = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
        return np.exp(-d / (2 * sigma**2))

    expected = oracles.cka_from_grams(gram(x, 1.5), gram(y, 1.5))
    assert float(cka(x, y, kernel="rbf", sigma=1.5)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_unbiased_cka_matches_bruteforce_u_statistic(kernel):
    x, y = (a.numpy() for a in related_pair(8, 3, 4, latent=3))
    if kernel == "linear":
        k, l = oracles.linear_gram(x), oracles.linear_gram(y)  # noqa: E741
    else:
        k, l = oracles.rbf_gram_kornblith(x), oracles.rbf_gram_kornblith(y)  # noqa: E741
    expected = oracles.cka_from_grams(k, l, hsic=oracles.hsic_unbiased_bruteforce)
    assert float(cka(x, y, kernel=kernel, unbiased=True)) == pytest.approx(expected, rel=1e-9)


def test_unbiased_cka_is_near_zero_for_independent_inputs_where_biased_is_not():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 200, generator=g, dtype=torch.float64)
    y = torch.randn(40, 300, generator=g, dtype=torch.float64)
    assert float(cka(x, y)) > 0.5  # the biased estimator's known inflation for d >> n
    assert abs(float(cka(x, y, unbiased=True))) < 0.1


def test_numpy_median_convention():
    v = torch.tensor([4.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    assert float(numpy_median(v)) == pytest.approx(np.median(v.numpy()))
    assert float(numpy_median(v[:3])) == pytest.approx(np.median(v[:3].numpy()))


def test_cca_matches_subspace_angles(pair):
    x, y = pair
    n = x.shape[0]
    expected = oracles.canonical_correlations(x, y).mean()
    if x.shape[1] + y.shape[1] >= n - 1:
        expected = 1.0  # the subspaces span the centered sample space: every correlation is 1
    assert float(cca(x, y)) == pytest.approx(expected, abs=1e-8)


def test_cca_rank_deficient_input_uses_rank():
    x, y = (a.numpy() for a in related_pair(50, 6, 6))
    x_dup = np.concatenate([x, x[:, :2] * 2.0], axis=1)  # rank 6 with 8 columns
    assert float(cca(x_dup, y)) == pytest.approx(float(cca(x, y)), abs=1e-9)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99, 2, 4])
def test_svcca(keep):
    x, y = (a.numpy() for a in related_pair(80, 12, 9))
    assert float(svcca(x, y, keep=keep)) == pytest.approx(oracles.svcca(x, y, keep), abs=1e-9)


def test_svcca_keep_all_equals_cca():
    x, y = related_pair(80, 6, 5, noise=1.0)
    assert float(svcca(x, y, keep=1.0)) == pytest.approx(float(cca(x, y)), abs=1e-10)


@pytest.mark.parametrize("shape", [(100, 8, 8), (100, 6, 10), (100, 10, 6)])
def test_pwcca_matches_whitening_oracle(shape):
    x, y = (a.numpy() for a in related_pair(*shape))
    assert float(pwcca(x, y)) == pytest.approx(oracles.pwcca(x, y), abs=1e-9)


def test_pwcca_weights_differ_from_plain_mean():
    x, y = related_pair(100, 10, 10)
    assert abs(float(pwcca(x, y)) - float(cca(x, y))) > 1e-3


@pytest.mark.parametrize("d1,d2", [(64, 65), (101, 130)])
def test_linear_cka_wide_layers_use_block_triangle(d1, d2):
    # widths >= 64 take the upper-block-triangle route for XᵀX and YᵀY
    x, y = (a.numpy() for a in related_pair(300, d1, d2))
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = oracles.cka_from_grams(oracles.linear_gram(xc), oracles.linear_gram(yc))
    assert float(cka(x, y)) == pytest.approx(expected, rel=1e-10)
    assert float(cka(x, y, unbiased=True)) == pytest.approx(
        oracles.cka_from_grams(
            oracles.linear_gram(xc), oracles.linear_gram(yc), hsic=_unbiased_fast
        ),
        rel=1e-9,
    )


def _unbiased_fast(k, l):  # noqa: E741
    # Song et al. eq. 5 written directly (the brute-force U-statistic is O(n⁴))
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))
