from __future__ import annotations

import numpy as np
import pytest
import torch

from repalign.metrics import StreamingCCA, StreamingCKA, cca, cka
from repalign.metrics.streaming import GridMoments
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


def _grid_chunks(gen: torch.Generator, widths: dict[str, int], n: int = 60, step: int = 20):
    rows = {k: torch.randn(n, d, generator=gen, dtype=torch.float64) for k, d in widths.items()}
    return rows, [{k: v[lo : lo + step] for k, v in rows.items()} for lo in range(0, n, step)]


@pytest.mark.parametrize("row_norm_moments", [False, True])
def test_grid_without_row_norms_scores_biased_metrics_the_same(row_norm_moments):
    gen = torch.Generator().manual_seed(3)
    rows, chunks = _grid_chunks(gen, {"l0": 4, "l1": 6, "l2": 3})
    grid = GridMoments(list(rows), None, dtype=torch.float64, row_norm_moments=row_norm_moments)
    for chunk in chunks:
        grid.update(chunk)
    for metric, fn in (("cka", cka), ("cca", cca)):
        expected = [[float(fn(rows[a], rows[b])) for b in rows] for a in rows]
        np.testing.assert_allclose(grid.scores(metric), expected, rtol=1e-10)
    gathered = [m.xa is not None for m in grid.layers.values()]
    gathered += [p.xb is not None for p in grid.cross.values()]
    assert gathered == [row_norm_moments] * len(gathered)
    if row_norm_moments:
        ref = float(cka(rows["l0"], rows["l2"], unbiased=True))
        assert grid.scores("cka", unbiased=True)[0, 2] == pytest.approx(ref, rel=1e-9)
    else:
        with pytest.raises(ValueError, match="row_norm_moments=True"):
            grid.scores("cka", unbiased=True)


def test_grid_refuses_a_bad_chunk_whole_and_keeps_its_moments():
    """A chunk with one bad layer is refused before any moment changes, so the caller can
    fix or drop it and go on."""
    gen = torch.Generator().manual_seed(4)
    xs, ys = _grid_chunks(gen, {"x": 5})[0], _grid_chunks(gen, {"y": 4})[0]
    grid = GridMoments(["x"], ["y"], dtype=torch.float64)
    grid.update({"x": xs["x"][:30]}, {"y": ys["y"][:30]})
    bad = [
        ({"x": xs["x"][30:, :3]}, {"y": ys["y"][30:]}, "widths differ: layer 'x' has 3"),
        ({"x": xs["x"][30:]}, {"y": ys["y"][31:]}, "different row counts"),
        ({"x": xs["x"][30:]}, {}, "missing \\['y'\\]"),
        ({"x": xs["x"][30:], "z": xs["x"][30:]}, {"y": ys["y"][30:]}, "unexpected \\['z'\\]"),
    ]
    for x_part, y_part, message in bad:
        with pytest.raises(ValueError, match=message):
            grid.update(x_part, y_part)
    assert grid.n == 30
    grid.update({"x": xs["x"][30:]}, {"y": ys["y"][30:]})
    assert float(grid.score("cka", "x", "y")) == pytest.approx(float(cka(xs["x"], ys["y"])))
    with pytest.raises(ValueError, match="no layer 'y' on side A"):
        grid.score("cka", "y", "y")


def test_streaming_cca_names_the_side_it_leaves_directions_out_of(caplog):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)
    x[:, 6:] *= 1e-10
    with caplog.at_level("WARNING", logger="repalign.metrics.streaming"):
        StreamingCCA().update(x, torch.randn(200, 3, generator=g, dtype=torch.float64)).compute()
    assert ["layer 'x' has 2 of 8 directions" in r.getMessage() for r in caplog.records] == [True]
