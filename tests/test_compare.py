"""Library-level compare: id checks, layer selection, metrics, statistics, provenance."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from repalign.compare import (
    MetricRequest,
    align_sample_ids,
    compare,
    matched_pairs,
    select_layers,
)
from repalign.metrics import cka
from repalign.store.features import open_features
from repalign.store.scores import LayerAxis
from tests.store._feature_files import write_features


@pytest.fixture
def feats(tmp_path):
    return write_features(tmp_path / "a.nc")


def test_one_file_every_layer_against_every_other(feats):
    ds = compare([feats], ["cka"], progress=False)
    assert ds.score.shape == (1, 6, 6)
    diag = np.diag(ds.score.sel(metric="cka").values)
    np.testing.assert_allclose(diag, 1.0, atol=1e-10)
    np.testing.assert_allclose(ds.score.values[0], ds.score.values[0].T)


def test_one_file_text_against_vision_matches_direct_metric(feats):
    ds = compare([feats], ["cka"], layers_a=["text.*"], layers_b=["vision.*"], progress=False)
    assert ds.layer_a.values.tolist() == ["text.layer.0", "text.layer.1", "text.layer.2"]
    assert ds.layer_b.values.tolist() == ["vision.layer.0", "vision.layer.1", "vision.layer.2"]
    assert set(ds.stream_a.values.tolist()) == {"text"}
    f = open_features(feats)
    expect = float(cka(f["text.layer.1"].values, f["vision.layer.2"].values))
    got = float(ds.score.sel(metric="cka", layer_a="text.layer.1", layer_b="vision.layer.2"))
    assert got == pytest.approx(expect, rel=1e-6)


def test_two_files_and_provenance(tmp_path, feats):
    other = write_features(tmp_path / "b.nc", streams=("vision",), seed=3, model="other")
    ds = compare([feats, other], ["cka", ("cka", {"unbiased": True})], seed=7, progress=False)
    assert ds.metric.values.tolist() == ["cka", "cka[unbiased=true]"]
    assert ds.score.shape == (2, 6, 3)
    a = ds.attrs
    assert a["n_samples"] == 40 and a["seed"] == 7
    assert a["model_a"] == "toy" and a["model_b"] == "other"
    ids = "\n".join(f"s{i:04d}" for i in range(40))
    assert a["sample_ids_sha256"] == hashlib.sha256(ids.encode()).hexdigest()
    files = json.loads(a["feature_files"])
    hashes = json.loads(a["feature_files_sha256"])
    assert [p.split("/")[-1] for p in files] == ["a.nc", "b.nc"]
    assert hashes[1] == hashlib.sha256(other.read_bytes()).hexdigest()
    config = json.loads(a["config_json"])
    assert config["metrics"][1] == {
        "name": "cka",
        "options": {"unbiased": True},
        "label": "cka[unbiased=true]",
    }
    assert json.loads(str(ds.metric_params.sel(metric="cka[unbiased=true]").item())) == {
        "unbiased": True
    }
    assert "torch" in json.loads(a["versions_json"])


def test_reordered_ids_are_refused_then_aligned(tmp_path, feats):
    ids = [f"s{i:04d}" for i in range(40)]
    perm = np.random.default_rng(0).permutation(40)
    shuffled = write_features(tmp_path / "b.nc", ids=[ids[i] for i in perm])
    with pytest.raises(ValueError, match="different order.*--align-on-ids"):
        compare([feats, shuffled], ["cka"], progress=False)
    ds = compare([feats, shuffled], ["cka"], align_on_ids=True, progress=False)
    # B's rows were the same features stored under permuted ids; aligning undoes the permutation
    f_b = open_features(shuffled)
    where = {s: i for i, s in enumerate(f_b.sample_id.values.tolist())}
    rows = [where[s] for s in ids]
    expect = float(
        cka(open_features(feats)["text.layer.0"].values, f_b["text.layer.0"].values[rows])
    )
    got = float(ds.score.sel(metric="cka", layer_a="text.layer.0", layer_b="text.layer.0"))
    assert got == pytest.approx(expect, rel=1e-6)


def test_different_ids_refused_or_intersected(tmp_path, feats):
    other = write_features(tmp_path / "b.nc", n=40, ids=[f"s{i:04d}" for i in range(10, 50)])
    with pytest.raises(ValueError, match="different samples.*10 only in"):
        compare([feats, other], ["cka"], progress=False)
    ds = compare([feats, other], ["cka"], align_on_ids=True, progress=False)
    assert ds.attrs["n_samples"] == 30


def test_duplicate_ids_refused():
    with pytest.raises(ValueError, match="more than once"):
        align_sample_ids(["a", "b", "a"], ["a", "b", "a"], align_on_ids=False)


def test_unknown_metric_and_bad_option(feats):
    with pytest.raises(ValueError, match="unknown metric 'ckaa'.*Available: .*cka"):
        compare([feats], ["ckaa"], progress=False)
    with pytest.raises(TypeError, match="takes no option.*'k'"):
        compare([feats], [MetricRequest("cka", {"k": 3})], progress=False)


def test_layer_selection():
    names = ["text.layer.0", "text.layer.1", "vision.block.0"]
    assert select_layers(names, ["vision.*", "text.layer.1"], where="f") == [
        "text.layer.1",
        "vision.block.0",
    ]
    assert select_layers(names, [r"re:text\.layer\.\d"], where="f") == names[:2]
    with pytest.raises(ValueError, match="matches no layer.*text.layer.0"):
        select_layers(names, ["fused.*"], where="f")


def test_incomplete_file_refused(tmp_path):
    path = write_features(tmp_path / "part.nc", complete=0)
    with pytest.raises(ValueError, match="incomplete"):
        compare([path], ["cka"], progress=False)
    assert compare([path], ["cka"], allow_incomplete=True, progress=False).score.size == 36


def test_permutation_and_bootstrap_statistics(feats):
    ds = compare(
        [feats],
        ["cka"],
        layers_a=["text.*"],
        layers_b=["vision.*"],
        permutations=19,
        bootstrap=20,
        seed=1,
        progress=False,
    )
    s = ds.sel(metric="cka")
    assert np.isfinite(s.pvalue).all() and np.isfinite(s.ci_low).all()
    # the layers share a latent signal: far above a shuffled-rows null
    assert (s.score > s.null_mean + 3 * s.null_std).all()
    assert float(s.pvalue.min()) == pytest.approx(1 / 20)
    assert (s.ci_low <= s.ci_high).all()


def test_stats_on_matched_pairs_only(feats):
    ds = compare(
        [feats],
        ["cka"],
        layers_a=["text.*"],
        layers_b=["vision.*"],
        permutations=5,
        stats_pairs="matched",
        progress=False,
    )
    p = ds.pvalue.sel(metric="cka").values
    assert np.isfinite(np.diag(p)).all()
    assert np.isnan(p[~np.eye(3, dtype=bool)]).all()


def test_matched_pairs_nearest_depth_per_stream():
    a = LayerAxis(("t0", "t1"), ("text", "text"), (0.5, 1.0))
    b = LayerAxis(
        ("v0", "v1", "v2", "v3", "f0"), ("vision",) * 4 + ("fused",), (0.25, 0.5, 0.75, 1.0, 1.0)
    )
    assert matched_pairs(a, b) == [(0, 1), (0, 4), (1, 3), (1, 4)]
    same = LayerAxis(("x0", "x1"), ("text", "text"), (0.5, 1.0))
    assert matched_pairs(same, same, same=True) == [(0, 1), (1, 0)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(feats):
    kwargs = dict(layers_a=["text.*"], layers_b=["vision.*"], permutations=5, progress=False)
    metrics = ["cka", ("cka", {"unbiased": True}), "svcca"]
    cpu = compare([feats], metrics, **kwargs)
    gpu = compare([feats], metrics, device="cuda", **kwargs)
    np.testing.assert_allclose(gpu.score.values, cpu.score.values, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(gpu.pvalue.values, cpu.pvalue.values)
    assert json.loads(gpu.attrs["config_json"])["device"] == "cuda"


def test_cuda_refused_without_a_gpu(feats, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device"):
        compare([feats], ["cka"], device="cuda", progress=False)


def test_two_files_with_the_same_layer_names_match_counterparts(tmp_path, feats):
    from repalign.store.plot import profile

    other = write_features(tmp_path / "b.nc", seed=5)  # same layer names, another "model"
    ds = compare([feats, other], ["cka"], permutations=3, stats_pairs="matched", progress=False)
    p = ds.pvalue.sel(metric="cka").values
    # text.layer.k of A is matched with text.layer.k (and vision.layer.k) of B, itself included
    assert np.isfinite(p[0, 0]) and np.isfinite(p[3, 3])
    line = profile(ds, ["cka"]).axes[0].get_lines()[0]
    assert line.get_ydata()[0] == pytest.approx(float(ds.score.values[0, 0, 0]))


def test_unpooled_token_features_are_refused(tmp_path):
    import xarray as xr

    ds = xr.Dataset(
        {
            "text.layer.0": (
                ("sample", "text.layer.0.token", "text.layer.0.dim"),
                np.ones((6, 3, 4)),
            )
        },
        coords={"sample_id": ("sample", [f"s{i}" for i in range(6)])},
        attrs={"complete": 1, "n_written": 6},
    )
    ds.to_netcdf(tmp_path / "tok.nc")
    with pytest.raises(ValueError, match="unpooled tokens.*--pool mean or cls"):
        compare([tmp_path / "tok.nc"], ["cka"], progress=False)


def test_grid_statistics_equal_each_pair_computed_alone():
    from repalign.compare import MetricRequest, score_layers
    from repalign.metrics import bootstrap_ci, permutation_test

    g = torch.Generator().manual_seed(3)
    base = torch.randn(50, 3, generator=g, dtype=torch.float64)

    def layer(width):
        w = torch.randn(3, width, generator=g, dtype=torch.float64)
        return base @ w + 0.7 * torch.randn(50, width, generator=g, dtype=torch.float64)

    xs = {"a": layer(4), "b": layer(5)}
    ys = {"a": layer(6), "c": layer(3)}  # "a" names another layer on this side
    for same in (True, False):
        req = MetricRequest.parse("pwcca")  # not symmetric: (i, j) and (j, i) differ
        ((_, _, stats),) = score_layers(
            xs, None if same else ys, [req], permutations=6, bootstrap=7, seed=2, progress=False
        )
        other = xs if same else ys
        for i, a in enumerate(xs):
            for j, b in enumerate(other):
                perm = permutation_test("pwcca", xs[a], other[b], n_permutations=6, seed=2)
                boot = bootstrap_ci("pwcca", xs[a], other[b], n_boot=7, seed=2)
                assert stats["pvalue"][i, j] == pytest.approx(float(perm["pvalue"]))
                assert stats["null_mean"][i, j] == pytest.approx(float(perm["null_mean"]))
                assert stats["ci_low"][i, j] == pytest.approx(float(boot["ci_low"]))
