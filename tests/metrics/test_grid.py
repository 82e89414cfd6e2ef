"""``pairwise`` equals the pair metric on every pair, and prepares each layer once."""

from __future__ import annotations

import pytest
import torch

from repalign.metrics import get_metric, list_metrics, pairwise
from tests.metrics._data import related_pair

METRICS = list_metrics()


def _layers(n, widths, seed):
    return {f"l{i}": related_pair(n, w, 3, seed=seed + i)[0] for i, w in enumerate(widths)}


CASES = [
    ("cka", {}),
    ("cka", {"unbiased": True}),
    ("cka", {"kernel": "rbf"}),
    ("cka", {"kernel": "rbf", "unbiased": True}),
    ("cka", {"kernel": "rbf", "sigma": 2.0}),
    ("svcca", {"keep": 3}),
] + [(m, {}) for m in METRICS if m != "cka"]


@pytest.mark.parametrize("name,options", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("n,widths", [(40, (5, 8, 3)), (12, (30, 20))])
def test_grid_equals_pair_metric(name, options, n, widths):
    if name in ("mutual_knn", "cknna"):
        options = {"k": 3}
    xs = _layers(n, widths, 0)
    ys = _layers(n, (4, 7), 10)
    fn = get_metric(name).fn
    expected = torch.tensor(
        [[float(fn(a, b, **options)) for b in ys.values()] for a in xs.values()],
        dtype=torch.float64,
    )
    got = pairwise(xs, ys, metric=name, **options)
    assert got.shape == (len(xs), len(ys))
    torch.testing.assert_close(got, expected.to(got.dtype), atol=1e-9, rtol=0)
    expected_self = torch.tensor(
        [[float(fn(a, b, **options)) for b in xs.values()] for a in xs.values()],
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        pairwise(xs, metric=name, **options), expected_self.to(got.dtype), atol=1e-9, rtol=0
    )


@pytest.mark.parametrize("route_n", [20, 200], ids=["gram-route", "feature-route"])
def test_linear_cka_grid_routes_agree(route_n):
    xs = [related_pair(route_n, w, 3, seed=w)[0] for w in (30, 40)]
    got = pairwise(xs, metric="cka")
    expected = torch.tensor(
        [[float(get_metric("cka").fn(a, b)) for b in xs] for a in xs], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected.to(got.dtype), atol=1e-10, rtol=0)


def test_each_layer_prepared_once(monkeypatch):
    spec = get_metric("cca")
    calls = []
    original = spec.prepare

    def counting(x, **kw):
        calls.append(x.shape)
        return original(x, **kw)

    import repalign.metrics.grid as grid

    class Counting:
        def __getattr__(self, item):
            return getattr(spec, item)

        prepare = staticmethod(counting)

    monkeypatch.setattr(grid, "get_metric", lambda name: Counting())
    xs = [related_pair(30, 4, 3, seed=s)[0] for s in range(4)]
    ys = [related_pair(30, 5, 3, seed=s)[0] for s in range(3)]
    pairwise(xs, ys, metric="cca")
    assert len(calls) == len(xs) + len(ys)
    calls.clear()
    pairwise(xs, metric="cca")
    assert len(calls) == len(xs)


def test_grid_float32_and_numpy():
    xs = [related_pair(30, 4, 3, seed=s)[0] for s in range(2)]
    got = pairwise([x.numpy() for x in xs], metric="cka", dtype=torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), pairwise(xs, metric="cka"), atol=1e-4, rtol=0)


def test_grid_on_device(device):
    xs = [related_pair(30, 4, 3, seed=s)[0] for s in range(3)]
    got = pairwise([x.to(device) for x in xs], metric="cka")
    assert got.device.type == device.type
    torch.testing.assert_close(got.cpu(), pairwise(xs, metric="cka"))
