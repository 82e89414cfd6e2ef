"""Every registered metric meets every bad input with a clear ValueError or TypeError."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repalign.metrics import get_metric, list_metrics, pairwise
from tests.metrics._data import related_pair

METRICS = list_metrics()


def _good():
    return related_pair(30, 5, 4)


def _nan_in_x():
    x, y = _good()
    x[3, 2] = float("nan")
    return x, y


def _inf_in_y():
    x, y = _good()
    y[0, 0] = float("inf")
    return x, y


BAD = {
    "different_n": (lambda: (_good()[0], _good()[1][:-1]), ValueError, "rows"),
    "three_d": (lambda: (_good()[0].reshape(30, 5, 1), _good()[1]), ValueError, "Pool or flatten"),
    "one_d": (lambda: (_good()[0][:, 0], _good()[1]), ValueError, "2-D"),
    "nan": (_nan_in_x, ValueError, "x contains"),
    "inf": (_inf_in_y, ValueError, "y contains"),
    "constant": (
        lambda: (torch.ones(30, 5, dtype=torch.float64), _good()[1]),
        ValueError,
        "constant",
    ),
    "integer": (lambda: (torch.arange(150).reshape(30, 5), _good()[1]), TypeError, "dtype"),
    "complex": (lambda: (_good()[0].to(torch.complex128), _good()[1]), TypeError, "complex"),
    "devices": (lambda: (_good()[0], _good()[1].to("meta")), ValueError, "device"),
    "list": (lambda: (_good()[0].tolist(), _good()[1]), TypeError, "numpy"),
    "too_few_rows": (lambda: (_good()[0][:1], _good()[1][:1]), ValueError, "at least"),
    "empty_features": (
        lambda: (torch.empty(30, 0, dtype=torch.float64), _good()[1]),
        ValueError,
        "empty",
    ),
}


@pytest.mark.parametrize("name", METRICS)
@pytest.mark.parametrize("case", list(BAD))
def test_every_metric_rejects_every_bad_input(name, case):
    make, error, fragment = BAD[case]
    x, y = make()
    with pytest.raises(error, match=fragment):
        get_metric(name).fn(x, y)


def test_object_array_is_rejected():
    x = np.array([[1.0, "a"]] * 5, dtype=object)
    with pytest.raises(TypeError, match="objects"):
        get_metric("cka").fn(x, x)


def test_unbiased_needs_four_rows():
    x, y = related_pair(3, 2, 2)
    with pytest.raises(ValueError, match="at least 4 samples"):
        get_metric("cka").fn(x, y, unbiased=True)


@pytest.mark.parametrize("keep", [0.0, 1.5, -0.1, 0, -3, True, "all", 99])
def test_svcca_keep_out_of_range(keep):
    x, y = related_pair(30, 5, 4)
    with pytest.raises((ValueError, TypeError), match="keep"):
        get_metric("svcca").fn(x, y, keep=keep)


def test_bad_kernel_and_sigma():
    x, y = related_pair(30, 5, 4)
    with pytest.raises(ValueError, match="kernel"):
        get_metric("cka").fn(x, y, kernel="poly")
    with pytest.raises(ValueError, match="sigma"):
        get_metric("cka").fn(x, y, kernel="rbf", sigma=-1.0)


def test_float16_compute_dtype_rejected():
    x, y = related_pair(30, 5, 4)
    with pytest.raises(ValueError, match="dtype"):
        get_metric("cka").fn(x, y, dtype=torch.float16)


def test_unknown_metric_suggests():
    with pytest.raises(ValueError, match="Did you mean 'cka'"):
        get_metric("ckaa")


def test_pairwise_rejects_unknown_option_and_mixed_rows():
    x, y = related_pair(30, 5, 4)
    with pytest.raises(TypeError, match="accepts"):
        pairwise([x], [y], metric="cca", kernel="rbf")
    with pytest.raises(ValueError, match="same number of rows"):
        pairwise([x, y[:-1]], metric="cka")
    with pytest.raises(TypeError, match="sequence or a dict"):
        pairwise(x, [y], metric="cka")
    with pytest.raises(ValueError, match="'bad'"):
        pairwise({"good": x, "bad": torch.zeros(30, 3, dtype=torch.float64)}, metric="cka")
