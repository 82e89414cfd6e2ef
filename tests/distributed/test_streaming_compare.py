"""Streaming linear CKA / CCA from feature files equals the in-memory compare."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.compare import compare
from repalign.compare.streaming import GridMoments, streaming_compare
from repalign.metrics import StreamingCCA, StreamingCKA
from repalign.store.features import open_features
from tests.store._feature_files import write_features

N = 103  # not a multiple of any chunk size below


@pytest.fixture
def files(tmp_path):
    a = write_features(tmp_path / "a.nc", n=N, depth=3, width=5, seed=0)
    b = write_features(tmp_path / "b.nc", n=N, streams=("vision",), depth=2, width=7, seed=1)
    return a, b


def _scores(ds: xr.Dataset) -> np.ndarray:
    return ds["score"].values


@pytest.mark.parametrize("chunk", [2, 10, 1000])
def test_two_files_equal_in_memory(files, chunk):
    a, b = files
    kw = dict(metrics=["cka", "cca", ("cka", {"unbiased": True})], progress=False)
    ref = compare([a, b], **kw)
    got = streaming_compare([a, b], chunk_size=chunk, **kw)
    np.testing.assert_allclose(_scores(got), _scores(ref), rtol=1e-9, atol=1e-12)
    assert list(got.metric.values) == ["cka", "cca", "cka[unbiased=true]"]
    for coord in ("layer_a", "layer_b", "stream_a", "depth_b"):
        np.testing.assert_array_equal(got[coord].values, ref[coord].values)
    for key in ("n_samples", "sample_ids_sha256", "feature_files_sha256", "model_a"):
        assert got.attrs[key] == ref.attrs[key], key


def test_one_file_selections_equal_in_memory(files):
    a, _ = files
    kw = dict(metrics=["cka", "cca", ("cka", {"unbiased": True})], progress=False)
    whole_ref, whole = compare([a], **kw), streaming_compare([a], chunk_size=16, **kw)
    np.testing.assert_allclose(_scores(whole), _scores(whole_ref), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.diagonal(_scores(whole), axis1=1, axis2=2), 1.0, rtol=1e-12)
    sel = dict(layers_a=["text.*"], layers_b=["vision.*"])
    got, ref = streaming_compare([a], chunk_size=7, **sel, **kw), compare([a], **sel, **kw)
    np.testing.assert_allclose(_scores(got), _scores(ref), rtol=1e-9, atol=1e-12)


def test_float32_and_large_offsets_stay_accurate(tmp_path):
    """Moments are shifted by the first chunk's mean: a large common offset does not cancel badly."""
    a = write_features(tmp_path / "a.nc", n=N, depth=2, width=4)
    with open_features(a) as ds:
        shifted = ds.load() + 1e4
    shifted.attrs = ds.attrs
    shifted.to_netcdf(tmp_path / "s.nc")
    ref = compare([a], ["cka"], progress=False)
    # the offset file rounds to float32 on disk, so compare it with its own in-memory score
    shifted_ref = compare([tmp_path / "s.nc"], ["cka"], progress=False)
    got = streaming_compare([tmp_path / "s.nc"], ["cka"], chunk_size=9, progress=False)
    np.testing.assert_allclose(_scores(got), _scores(shifted_ref), rtol=1e-9)
    f32 = streaming_compare([a], ["cka"], chunk_size=9, dtype=torch.float32, progress=False)
    np.testing.assert_allclose(_scores(f32), _scores(ref), rtol=1e-4)


def test_reordered_ids_refused_or_aligned(tmp_path, files):
    a, _ = files
    perm = np.random.default_rng(0).permutation(N)
    with open_features(a) as ds:
        reordered = ds.load().isel(sample=perm)
    reordered.to_netcdf(tmp_path / "r.nc")
    with pytest.raises(ValueError, match="different order"):
        streaming_compare([a, tmp_path / "r.nc"], progress=False)
    got = streaming_compare(
        [a, tmp_path / "r.nc"], chunk_size=11, align_on_ids=True, progress=False
    )
    ref = compare([a, tmp_path / "r.nc"], ["cka"], align_on_ids=True, progress=False)
    np.testing.assert_allclose(_scores(got), _scores(ref), rtol=1e-9)
    np.testing.assert_allclose(np.diagonal(_scores(got)[0]), 1.0, rtol=1e-12)


@pytest.mark.parametrize("metric,acc_cls", [("cka", StreamingCKA), ("cca", StreamingCCA)])
def test_grid_scores_equal_a_directly_fed_accumulator(metric, acc_cls):
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(50, 3, generator=gen, dtype=torch.float64),
        torch.randn(50, 4, generator=gen, dtype=torch.float64),
    )
    grid, direct = GridMoments(["x"], ["y"], dtype=torch.float64), acc_cls()
    for lo in range(0, 50, 13):
        grid.update({"x": x[lo : lo + 13]}, {"y": y[lo : lo + 13]})
        direct.update(x[lo : lo + 13], y[lo : lo + 13])
    assert grid.scores(metric)[0, 0] == pytest.approx(float(direct.compute()), rel=1e-12)


@pytest.mark.parametrize("metric,unbiased", [("cca", False), ("cka", False), ("cka", True)])
def test_grid_scores_each_layer_once(monkeypatch, metric, unbiased):
    """Per-layer terms (one eigh each for CCA) are shared by every pair the layer is in."""
    calls = []
    real = GridMoments._layer_term
    monkeypatch.setattr(
        GridMoments, "_layer_term", lambda self, *a: calls.append(a[2]) or real(self, *a)
    )
    gen = torch.Generator().manual_seed(1)
    names = ["l0", "l1", "l2"]
    grid = GridMoments(names, None, dtype=torch.float64)
    grid.update({k: torch.randn(40, 4, generator=gen, dtype=torch.float64) for k in names})
    scores = grid.scores(metric, unbiased=unbiased)
    assert sorted(calls) == names
    np.testing.assert_allclose(np.diagonal(scores), 1.0, rtol=1e-12)
    np.testing.assert_allclose(scores, scores.T, rtol=1e-12)


def test_unsupported_metrics_and_options_are_refused(files):
    a, b = files
    with pytest.raises(ValueError, match="mutual_knn.*without --streaming"):
        streaming_compare([a, b], ["mutual_knn"], progress=False)
    with pytest.raises(ValueError, match="kernel='rbf'"):
        streaming_compare([a, b], [("cka", {"kernel": "rbf"})], progress=False)


def test_cli_streaming_flag(files, tmp_path):
    a, b = files
    args = ["compare", str(a), str(b), "-m", "cka", "-m", "cca"]
    out_mem, out_str = tmp_path / "mem.nc", tmp_path / "str.nc"
    res = CliRunner().invoke(app, [*args, "--out", str(out_mem)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        app, [*args, "--streaming", "--chunk-size", "8", "--out", str(out_str)]
    )
    assert res.exit_code == 0, res.output
    with xr.open_dataset(out_mem) as mem, xr.open_dataset(out_str) as st:
        np.testing.assert_allclose(st["score"].values, mem["score"].values, rtol=1e-9)
    res = CliRunner().invoke(
        app, [*args, "--streaming", "--permutations", "5", "--out", str(out_str)]
    )
    assert res.exit_code == 2 and "--streaming" in res.output


def test_grid_cca_warns_about_a_layer_with_unresolvable_directions(caplog):
    gen = torch.Generator().manual_seed(2)
    scales = torch.cat([torch.ones(6), torch.full((4,), 1e-10)]).double()
    low = torch.randn(200, 10, generator=gen, dtype=torch.float64) * scales
    grid = GridMoments(["low", "full"], None, dtype=torch.float64)
    grid.update({"low": low, "full": torch.randn(200, 5, generator=gen, dtype=torch.float64)})
    with caplog.at_level("WARNING", logger="repalign.compare.streaming"):
        scores = grid.scores("cca")
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-12)
    (record,) = caplog.records
    assert "'low' has 4 of 10 directions" in record.getMessage()


@pytest.mark.parametrize(
    "metrics,gathered",
    [
        (["cka", "cca"], False),
        ([("cka", {"unbiased": True})], True),
        (["cca", ("cka", {"unbiased": True})], True),
    ],
)
def test_row_norm_moments_only_for_unbiased_cka(monkeypatch, files, metrics, gathered):
    import repalign.compare.streaming as sc

    grids = []

    class Spy(GridMoments):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            grids.append(self)

    monkeypatch.setattr(sc, "GridMoments", Spy)
    a, b = files
    got = streaming_compare([a, b], metrics, chunk_size=10, progress=False)
    np.testing.assert_allclose(
        _scores(got), _scores(compare([a, b], metrics, progress=False)), rtol=1e-9
    )
    (grid,) = grids
    assert grid.row_norm_moments is gathered
    assert all((m.xa is not None) is gathered for m in grid.layers.values())
