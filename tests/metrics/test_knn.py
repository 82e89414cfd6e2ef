"""Mutual k-NN and CKNNA: oracles, chunking, ties, options and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repalign.metrics import get_metric, pairwise
from repalign.metrics.knn import cknna, knn_graph, mutual_knn
from tests.metrics import oracles_knn as oracles
from tests.metrics._data import related_pair

SHAPES = [
    (40, 6, 5, 5),
    (30, 12, 9, 3),
    (25, 3, 4, 2),
    (60, 12, 9, 10),
    (16, 1, 2, 4),
    (30, 5, 4, 26),
]


@pytest.fixture(params=SHAPES, ids=lambda s: "n{}-d{}-d{}-k{}".format(*s))
def case(request):
    n, d1, d2, k = request.param
    x, y = related_pair(n, d1, d2, latent=min(3, d1, d2))
    return x, y, k


def _ties(n: int = 48, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """±1 features (unit-norm rows are ±1/4: every inner product is exact) with duplicate rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, d), generator=g).to(torch.float64) * 2 - 1
    x[n // 2 :] = x[: n - n // 2][torch.randperm(n - n // 2, generator=g)]  # every row twice
    y = torch.randint(0, 2, (n, d), generator=g).to(torch.float64) * 2 - 1
    y[:, : d // 2] = x[:, : d // 2]
    return x, y


def test_mutual_knn_matches_oracle(case):
    x, y, k = case
    expected = oracles.mutual_knn(x.numpy(), y.numpy(), k)
    assert float(mutual_knn(x, y, k=k)) == pytest.approx(expected, abs=1e-15)


def test_cknna_matches_oracle(case):
    x, y, k = case
    expected = oracles.cknna(x.numpy(), y.numpy(), k)
    assert float(cknna(x, y, k=k)) == pytest.approx(expected, rel=1e-10, abs=1e-13)


def test_cknna_trace_term_needs_the_transpose():
    """Counter-test: Σ (M∘K)_ij (M∘L)_ij (no transpose) gives another value on this data."""
    x, y = (a.numpy() for a in related_pair(40, 6, 5, latent=3))
    kx, ky = oracles.cosine_kernel(x), oracles.cosine_kernel(y)
    shared = oracles.knn_mask(kx, 5) * oracles.knn_mask(ky, 5)
    a, b = shared * kx, shared * ky
    assert abs(np.trace(a @ b) - (a * b).sum()) > 1e-3
    assert float(cknna(x, y, k=5)) == pytest.approx(oracles.cknna(x, y, 5), rel=1e-10)


def test_cknna_is_not_symmetric_in_general():
    """Masks are not symmetric, so the cross HSIC's Σ(AB) term depends on the order."""
    x, y = related_pair(40, 6, 5, latent=3)
    assert abs(float(cknna(x, y, k=5)) - float(cknna(y, x, k=5))) > 1e-6
    assert not get_metric("cknna").symmetric
    assert float(mutual_knn(x, y, k=5)) == float(mutual_knn(y, x, k=5))


def test_cknna_range_is_not_a_hard_bound():
    """The documented caveat, reproduced: 1-D features, CKNNA slightly above 1 by its definition."""
    rng = np.random.default_rng(587)
    n, k = int(rng.integers(12, 41)), int(rng.integers(2, 20))
    rng.integers(1, 11, size=2)  # two draws the recorded case spent on feature widths
    x = rng.standard_normal((n, 1))
    y = -x * rng.standard_normal((1, 1)) ** 2 + 0.1 * rng.standard_normal((n, 1))
    value = float(cknna(x, y, k=k))
    assert value == pytest.approx(oracles.cknna(x, y, k), rel=1e-10)
    assert 1.0 < value < 1.01


@pytest.mark.parametrize("metric", [mutual_knn, cknna])
def test_identity_is_one(metric):
    x, _ = related_pair(50, 8, 3)
    assert float(metric(x, x, k=6)) == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 49, 50, 64])
@pytest.mark.parametrize("metric", [mutual_knn, cknna])
def test_chunked_equals_unchunked(metric, chunk_size):
    x, y = related_pair(50, 8, 6, latent=4)
    full = metric(x, y, k=6, chunk_size=50)
    chunked = metric(x, y, k=6, chunk_size=chunk_size)
    assert float(chunked) == pytest.approx(float(full), rel=1e-12, abs=1e-15)


def test_knn_graph_chunks_give_identical_neighbours():
    x, _ = related_pair(37, 5, 3)
    xn = x / x.norm(dim=1, keepdim=True)
    ref_idx, ref_sim = knn_graph(xn, 4, 37)
    for chunk in (1, 5, 10, 36):
        idx, sim = knn_graph(xn, 4, chunk)
        assert torch.equal(idx.sort(dim=1).values, ref_idx.sort(dim=1).values)
        torch.testing.assert_close(
            sim.sort(dim=1).values, ref_sim.sort(dim=1).values, rtol=0, atol=1e-14
        )


def test_ties_go_to_the_lowest_index_and_self_is_excluded_by_index():
    x, _ = _ties()
    n, k = x.shape[0], 7
    xn = x / x.norm(dim=1, keepdim=True)
    expected = oracles.knn_mask(oracles.cosine_kernel(x.numpy()), k)
    for chunk in (1, 5, n):
        idx, _ = knn_graph(xn, k, chunk)
        got = np.zeros((n, n))
        got[np.arange(n)[:, None], idx.numpy()] = 1.0
        np.testing.assert_array_equal(got, expected)
        assert not bool((idx == torch.arange(n)[:, None]).any())  # never its own neighbour
    # each row's duplicate (similarity exactly 1, a tie with itself) is a neighbour
    dup = {i: j for i in range(n) for j in range(n) if i != j and torch.equal(x[i], x[j])}
    assert all(dup[i] in idx[i].tolist() for i in dup)


@pytest.mark.parametrize(
    "metric,oracle", [(mutual_knn, oracles.mutual_knn), (cknna, oracles.cknna)]
)
def test_tied_inputs_are_deterministic_and_match_oracle(metric, oracle):
    x, y = _ties()
    values = {float(metric(x, y, k=5, chunk_size=c)) for c in (1, 6, 11, 48)}
    assert len(values) == 1
    assert values.pop() == pytest.approx(oracle(x.numpy(), y.numpy(), 5), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("metric", [mutual_knn, cknna])
def test_k_must_be_smaller_than_n(metric):
    x, y = related_pair(12, 4, 3)
    with pytest.raises(ValueError, match=r"k=12 must be smaller than the number of samples n=12"):
        metric(x, y, k=12)
    with pytest.raises(ValueError, match="k=20"):
        metric(x, y, k=20)
    with pytest.raises(ValueError, match="at least"):
        metric(x, y, k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        metric(x, y, k=2.5)
    assert torch.isfinite(metric(x, y, k=11))


def test_cknna_needs_k_at_least_two():
    x, y = related_pair(12, 4, 3)
    with pytest.raises(ValueError, match="k must be at least 2"):
        cknna(x, y, k=1)
    assert 0.0 <= float(mutual_knn(x, y, k=1)) <= 1.0


def test_bad_chunk_size_and_zero_rows():
    x, y = related_pair(12, 4, 3)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            mutual_knn(x, y, k=3, chunk_size=bad)
    x[4] = 0.0
    with pytest.raises(ValueError, match="all-zero feature vector"):
        mutual_knn(x, y, k=3)
    with pytest.raises(ValueError, match="all-zero"):
        cknna(y, x, k=3)


@pytest.mark.parametrize("metric", [mutual_knn, cknna])
def test_float32_option(metric):
    x, y = related_pair(60, 12, 9)
    ref = metric(x, y, k=8)
    out = metric(x.float(), y.float(), k=8, dtype=torch.float32)
    assert out.dtype == torch.float32 and out.ndim == 0
    assert float(out) == pytest.approx(float(ref), abs=1e-5)
    assert metric(x, y, k=8).dtype == torch.float64


def test_independent_inputs_score_near_chance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 32, generator=g, dtype=torch.float64)
    y = torch.randn(400, 32, generator=g, dtype=torch.float64)
    chance = 10 / 399
    assert abs(float(mutual_knn(x, y, k=10)) - chance) < 0.01
    assert abs(float(cknna(x, y, k=10))) < 0.1
    assert (
        float(mutual_knn(x, x @ torch.randn(32, 32, generator=g, dtype=torch.float64), k=10)) > 0.3
    )


@pytest.mark.parametrize("metric", ["mutual_knn", "cknna"])
def test_pairwise_reuses_states_and_matches_direct_calls(metric):
    layers = [related_pair(40, d, 4, seed=s)[0] for s, d in enumerate((5, 7, 3))]
    fn = get_metric(metric).fn
    grid = pairwise(layers, metric=metric, k=4)
    expected = torch.tensor(
        [[float(fn(a, b, k=4)) for b in layers] for a in layers], dtype=torch.float64
    )
    torch.testing.assert_close(grid, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("metric", [mutual_knn, cknna])
def test_runs_on_device_without_host_copies(metric, device):
    x, y = related_pair(80, 10, 7)
    ref = float(metric(x, y, k=6))
    out = metric(x.to(device), y.to(device), k=6, chunk_size=9)
    assert out.device.type == device.type and out.ndim == 0
    assert float(out) == pytest.approx(ref, abs=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hundred_thousand_rows_on_gpu_without_an_n_by_n_matrix():
    n, d = 100_000, 64
    g = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(n, 8, device="cuda", generator=g)
    x = z @ torch.randn(8, d, device="cuda", generator=g) + 0.3 * torch.randn(
        n, d, device="cuda", generator=g
    )
    y = torch.tanh(z @ torch.randn(8, d, device="cuda", generator=g))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    knn = mutual_knn(x, y, k=10, dtype=torch.float32)
    ck = cknna(x, y, k=10, dtype=torch.float32)
    peak = torch.cuda.max_memory_allocated() - base
    assert 0.0 < float(knn) <= 1.0 and -1.0 <= float(ck) <= 1.0
    assert peak < n * n * 4 / 20  # an n x n float32 matrix would be 40 GB
