from __future__ import annotations

import pytest
import torch

from repalign.metrics import StreamingCCA, StreamingCKA, cca, cka
from tests.metrics._data import related_pair


@pytest.mark.parametrize("batch", [1, 7, 64, 500])
@pytest.mark.parametrize("acc_cls,fn", [(StreamingCKA, cka), (StreamingCCA, cca)])
def test_streaming_equals_in_memory(acc_cls, fn, batch):
    x, y = related_pair(300, 12, 9)
    x = x + 1e4  # large offsets: naive second moments would cancel catastrophically
    acc = acc_cls()
    for start in range(0, x.shape[0], batch):
        acc.update(x[start : start + batch], y[start : start + batch])
    assert float(acc.compute()) == pytest.approx(float(fn(x, y)), abs=1e-9)


def test_streaming_cca_rank_deficient():
    x, y = related_pair(200, 6, 5)
    x = torch.cat([x, x[:, :2]], dim=1)
    acc = StreamingCCA()
    for start in range(0, 200, 50):
        acc.update(x[start : start + 50], y[start : start + 50])
    assert float(acc.compute()) == pytest.approx(float(cca(x, y)), abs=1e-8)


def test_streaming_errors():
    acc = StreamingCKA()
    with pytest.raises(ValueError, match="at least 2 rows"):
        acc.compute()
    x, y = related_pair(20, 4, 3)
    acc.update(x[:10], y[:10])
    with pytest.raises(ValueError, match="widths"):
        acc.update(x[10:, :3], y[10:])
    with pytest.raises(ValueError, match="rows"):
        acc.update(x[10:], y[11:])
    const = StreamingCKA().update(torch.ones(5, 3, dtype=torch.float64), y[:5])
    with pytest.raises(ValueError, match="constant"):
        const.compute()


def test_streaming_on_device(device):
    x, y = related_pair(100, 5, 4)
    acc = StreamingCKA().update(x.to(device), y.to(device))
    out = acc.compute()
    assert out.device.type == device.type
    assert float(out) == pytest.approx(float(cka(x, y)), abs=1e-10)


def test_streaming_cca_leaves_out_directions_the_moments_cannot_resolve():
    """20 directions with singular values down to 1e-3 of the largest, 44 at 1e-10 (below
    what float64 second moments resolve, ~1e-7 here). Whitening those amplified rounding into
    spurious correlations; now the layer is scored on its 20 resolved directions."""
    g = torch.Generator().manual_seed(0)
    scales = torch.cat([torch.logspace(0, -3, 20), torch.full((44,), 1e-10)]).double()
    x = torch.randn(512, 64, generator=g, dtype=torch.float64) * scales
    acc = StreamingCCA()
    for start in range(0, 512, 128):
        acc.update(x[start : start + 128], x[start : start + 128])
    assert float(acc.compute()) == pytest.approx(1.0, abs=1e-9)
    y = x[:, :8] @ torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = y + 0.5 * torch.randn(512, 5, generator=g, dtype=torch.float64)
    acc = StreamingCCA().update(x, y)
    assert float(acc.compute()) == pytest.approx(float(cca(x[:, :20], y)), abs=1e-9)


@pytest.mark.parametrize("batch", [1, 7, 300])
def test_streaming_unbiased_cka_equals_in_memory(batch):
    x, y = related_pair(300, 12, 9)
    x = x + 1e4  # the estimator is shift-invariant: moments of shifted rows must agree
    acc = StreamingCKA(unbiased=True)
    for start in range(0, 300, batch):
        acc.update(x[start : start + batch], y[start : start + batch])
    assert float(acc.compute()) == pytest.approx(float(cka(x, y, unbiased=True)), abs=1e-9)
    with pytest.raises(ValueError, match="n\\(n-3\\)"):
        StreamingCKA(unbiased=True).update(x[:3], y[:3]).compute()
