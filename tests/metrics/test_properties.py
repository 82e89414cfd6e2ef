"""Properties every registered metric must have, checked by enumerating the registry.

Each declared invariance is checked by building the transform and asserting
the score; counter-tests check transforms that must change the score.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repalign.metrics import get_metric, list_metrics
from tests.metrics._data import random_orthogonal, related_pair

METRICS = list_metrics()
# invariances implied by others (a permutation matrix is orthogonal, and so on)
IMPLIED = {
    "invertible_linear": {"orthogonal", "isotropic_scaling", "permutation"},
    "orthogonal": {"permutation"},
}


def _invariances(name: str) -> set[str]:
    declared = set(get_metric(name).invariances)
    for inv in list(declared):
        declared |= IMPLIED.get(inv, set())
    return declared


def _score(name: str, x, y) -> float:
    return float(get_metric(name).fn(x, y))


def _transform(kind: str, y: torch.Tensor, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = y.shape[1]
    if kind == "orthogonal":
        return y @ random_orthogonal(d, seed)
    if kind == "isotropic_scaling":
        return 3.7 * y
    if kind == "translation":
        return y + 5.0 * torch.randn(1, d, generator=g, dtype=y.dtype)
    if kind == "invertible_linear":
        a = torch.randn(d, d, generator=g, dtype=y.dtype) + 3 * torch.eye(d, dtype=y.dtype)
        return y @ a
    if kind == "permutation":
        return y[:, torch.randperm(d, generator=g)]
    raise AssertionError(kind)


@pytest.mark.parametrize("name", METRICS)
def test_identity(name):
    x, _ = related_pair()
    spec = get_metric(name)
    expected = spec.bounds[1] if spec.higher_is_more_similar else spec.bounds[0]
    assert _score(name, x, x) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", METRICS)
def test_symmetry_where_declared(name):
    x, y = related_pair()
    if not get_metric(name).symmetric:
        pytest.skip(f"{name} is not symmetric by definition")
    assert _score(name, x, y) == pytest.approx(_score(name, y, x), abs=1e-10)


@pytest.mark.parametrize("name", METRICS)
def test_joint_row_permutation(name):
    x, y = related_pair()
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(5))
    assert _score(name, x[perm], y[perm]) == pytest.approx(_score(name, x, y), abs=1e-10)


@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize(
    "kind", ["orthogonal", "isotropic_scaling", "translation", "invertible_linear", "permutation"]
)
def test_declared_invariance(name, kind):
    if kind not in _invariances(name):
        pytest.skip(f"{name} does not declare invariance to {kind}")
    x, y = related_pair()
    assert _score(name, x, _transform(kind, y)) == pytest.approx(_score(name, x, y), abs=1e-9)


# Transforms that must change the score: the counter-tests of the invariances above.
COUNTER = [
    ("cka", "non_isotropic_scaling"),
    ("cka", "invertible_linear"),
    ("pwcca", "orthogonal"),
    ("mutual_knn", "translation"),
    ("cknna", "translation"),
    ("wasserstein_distance", "orthogonal"),
    ("wasserstein_distance", "isotropic_scaling"),
]


@pytest.mark.parametrize("name,kind", COUNTER)
def test_counter_invariance(name, kind):
    if name not in METRICS:
        pytest.fail(f"{name} is not registered")
    assert kind not in _invariances(name)
    x, y = related_pair()
    if kind == "non_isotropic_scaling":
        y2 = y * torch.linspace(0.1, 10.0, y.shape[1], dtype=y.dtype)
    else:
        y2 = _transform(kind, y)
    assert abs(_score(name, x, y2) - _score(name, x, y)) > 1e-4


@pytest.mark.parametrize("name", METRICS)
def test_numpy_and_float32_inputs(name):
    x, y = related_pair()
    ref = _score(name, x, y)
    spec = get_metric(name)
    out = spec.fn(x.numpy(), y.numpy())
    assert isinstance(out, torch.Tensor) and out.ndim == 0 and out.dtype == torch.float64
    assert float(out) == pytest.approx(ref, abs=1e-12)
    out32 = spec.fn(x.float(), y.float(), dtype=torch.float32)
    assert out32.dtype == torch.float32
    assert float(out32) == pytest.approx(ref, abs=2e-3 * max(1.0, abs(ref)))


@pytest.mark.parametrize("name", METRICS)
@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(min_value=12, max_value=40),
    d1=st.integers(min_value=1, max_value=10),
    d2=st.integers(min_value=1, max_value=10),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_bounds_on_random_shapes(name, n, d1, d2, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d1))
    y = x[:, :1] * rng.standard_normal((1, d2)) + rng.standard_normal((n, d2))
    spec = get_metric(name)
    options = {"k": 5} if "k" in spec.options else {}
    value = float(spec.fn(x, y, **options))
    low, high = spec.bounds
    assert math.isfinite(value)
    assert low - 1e-9 <= value <= high + 1e-9


@pytest.mark.parametrize("name", METRICS)
def test_runs_on_device(name, device):
    x, y = related_pair()
    ref = _score(name, x, y)
    out = get_metric(name).fn(x.to(device), y.to(device))
    assert out.device.type == device.type and out.ndim == 0
    assert float(out) == pytest.approx(ref, abs=1e-8)
