"""The score store: building, netCDF round trip, merging runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from repalign.store.scores import (
    LayerAxis,
    MetricScores,
    merge_scores,
    metric_label,
    open_scores,
    scores_dataset,
    write_scores,
)

A = LayerAxis(("t.0", "t.1", "t.2"), ("text",) * 3, (0.0, 0.5, 1.0))
B = LayerAxis(("v.0", "v.1"), ("vision",) * 2, (0.0, 1.0))


def _metric(label: str = "cka", seed: int = 0, stats: bool = True, **params) -> MetricScores:
    rng = np.random.default_rng(seed)
    score = rng.uniform(size=(3, 2))
    extra = {}
    if stats:
        extra = {
            "pvalue": rng.uniform(size=(3, 2)),
            "null_mean": score / 10,
            "ci_low": score - 0.1,
            "ci_high": score + 0.1,
        }
    return MetricScores(
        label=label,
        name=label.split("[")[0],
        params=params,
        bounds=(0.0, 1.0),
        higher_is_more_similar=True,
        score=score,
        stats=extra,
    )


def _attrs(**extra) -> dict:
    return {"repalign_version": "0.1.0", "seed": 0, "n_samples": 64, **extra}


def test_dataset_layout():
    ds = scores_dataset(A, B, [_metric(), _metric("mutual_knn", 1, stats=False)], _attrs())
    assert ds.score.dims == ("metric", "layer_a", "layer_b")
    assert list(ds.metric.values) == ["cka", "mutual_knn"]
    assert list(ds.stream_a.values) == ["text"] * 3
    assert ds.depth_b.values.tolist() == [0.0, 1.0]
    # a metric without statistics is NaN there, never zero
    assert np.isnan(ds.pvalue.sel(metric="mutual_knn")).all()
    assert np.isfinite(ds.pvalue.sel(metric="cka")).all()
    assert json.loads(str(ds.metric_params.sel(metric="cka").item())) == {}


def test_metric_label_distinguishes_options():
    assert metric_label("cka", {}) == "cka"
    assert metric_label("cka", {"unbiased": True}) == "cka[unbiased=true]"
    assert metric_label("mutual_knn", {"k": 10}) == "mutual_knn[k=10]"


def test_netcdf_round_trip_is_identical(tmp_path):
    ds = scores_dataset(
        A,
        B,
        [_metric(), _metric("cka[unbiased=true]", 2, unbiased=True)],
        _attrs(config_json=json.dumps({"metrics": ["cka"]})),
    )
    path = write_scores(ds, tmp_path / "scores.nc")
    back = open_scores(path)
    xr.testing.assert_identical(back, ds)
    assert not list(tmp_path.glob(".*partial"))


def test_sel_by_metric_plots_in_a_notebook(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ds = scores_dataset(A, B, [_metric()], _attrs())
    back = open_scores(write_scores(ds, tmp_path / "s.nc"))
    back.sel(metric="cka").score.plot()


def test_shape_mismatch_is_refused():
    bad = _metric()
    bad.score = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"expected \(3, 2\)"):
        scores_dataset(A, B, [bad])


def test_non_netcdf_attrs_are_refused():
    with pytest.raises(TypeError, match="JSON"):
        scores_dataset(A, B, [_metric()], {"files": ["a.nc"]})


def test_duplicate_layers_refused():
    with pytest.raises(ValueError, match="unique"):
        LayerAxis(("a", "a"), ("text", "text"), (0.0, 1.0))


def test_merge_two_runs(tmp_path):
    one = scores_dataset(A, B, [_metric("cka")], _attrs(seed=1))
    two = scores_dataset(A, B, [_metric("mutual_knn", 3, stats=False)], _attrs(seed=2))
    write_scores(one, tmp_path / "run1.nc")
    write_scores(two, tmp_path / "run2.nc")
    merged = open_scores(tmp_path / "run*.nc")
    assert sorted(merged.metric.values.tolist()) == ["cka", "mutual_knn"]
    np.testing.assert_allclose(merged.score.sel(metric="cka"), one.score.sel(metric="cka"))
    np.testing.assert_allclose(
        merged.score.sel(metric="mutual_knn"), two.score.sel(metric="mutual_knn")
    )
    assert str(merged.metric_name.sel(metric="mutual_knn").item()) == "mutual_knn"
    runs = json.loads(merged.attrs["runs_json"])
    assert [r["seed"] for r in runs] == [1, 2]
    # plain xarray works too
    assert xr.merge(
        [one, two], join="outer", compat="no_conflicts", combine_attrs="drop"
    ).score.shape == (2, 3, 2)


def test_a_written_merge_keeps_labels_longer_than_the_first_files(tmp_path):
    write_scores(scores_dataset(A, B, [_metric("cka")], _attrs()), tmp_path / "run1.nc")
    two = scores_dataset(A, B, [_metric("mutual_knn", 3), _metric("svcca", 4)], _attrs())
    write_scores(two, tmp_path / "run2.nc")
    merged = open_scores(tmp_path / "run*.nc")  # run1.nc stores its labels as 3 characters
    write_scores(merged, tmp_path / "merged.nc")
    labels = open_scores(tmp_path / "merged.nc").metric.values.tolist()
    assert sorted(labels) == ["cka", "mutual_knn", "svcca"]


def test_merge_conflicting_values_raises():
    one = scores_dataset(A, B, [_metric("cka", 0)])
    two = scores_dataset(A, B, [_metric("cka", 5)])
    with pytest.raises(xr.MergeError):
        merge_scores([one, two])


def test_open_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="repalign compare"):
        open_scores(tmp_path / "nope.nc")
    xr.Dataset({"x": ("sample", np.arange(3.0))}).to_netcdf(tmp_path / "feat.nc")
    with pytest.raises(ValueError, match="not a repalign score file"):
        open_scores(tmp_path / "feat.nc")


def test_existing_score_file_is_kept_unless_overwrite(tmp_path):
    path = write_scores(scores_dataset(A, B, [_metric("cka", 0)]), tmp_path / "s.nc")
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_scores(scores_dataset(A, B, [_metric("cka", 5)]), path)
    assert path.read_bytes() == before
    write_scores(scores_dataset(A, B, [_metric("cka", 5)]), path, overwrite=True)
    assert path.read_bytes() != before


def test_score_path_must_be_a_netcdf_file_in_an_existing_folder(tmp_path):
    ds = scores_dataset(A, B, [_metric()])
    with pytest.raises(ValueError, match=r"\.nc.*figures come from `repalign plot`"):
        write_scores(ds, tmp_path / "cka.png")
    with pytest.raises(IsADirectoryError, match="directory"):
        write_scores(ds, tmp_path, overwrite=True)
    with pytest.raises(FileNotFoundError, match="create it first"):
        write_scores(ds, tmp_path / "new" / "s.nc")  # was created: a typo made a new folder
    assert not (tmp_path / "new").exists()


def test_open_a_file_that_is_not_netcdf(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n not netCDF")
    with pytest.raises(ValueError, match="not a readable netCDF score file.*repalign compare"):
        open_scores(tmp_path / "fig.png")


def test_merge_conflict_names_the_variable_and_what_to_do():
    one = scores_dataset(A, B, [_metric("cka", 0)])
    two = scores_dataset(A, B, [_metric("cka", 5)])
    with pytest.raises(xr.MergeError, match="'score'.*separately") as info:
        merge_scores([one, two])
    assert "compat=" not in str(info.value)  # xarray's hint means nothing to a CLI user


def test_merge_refuses_runs_over_other_samples():
    one = scores_dataset(A, B, [_metric("cka")], _attrs(sample_ids_sha256="aa", n_samples=64))
    two = scores_dataset(A, B, [_metric("svcca", 1)], _attrs(sample_ids_sha256="bb", n_samples=512))
    with pytest.raises(ValueError, match="different samples"):
        merge_scores([one, two])


def test_one_sharded_input_is_one_file():
    """``compare 'f.shard*of2.nc'`` lists both shards in feature_files but is one input:
    its layers must not be paired with themselves by plots and summaries."""
    from repalign.store.scores import from_one_file

    same = LayerAxis(("t.0", "t.1"), ("text",) * 2, (0.5, 1.0))
    metric = MetricScores("cka", "cka", {}, (0.0, 1.0), True, np.eye(2))

    def ds(inputs, files):
        attrs = _attrs(config_json=json.dumps({"files": inputs}), feature_files=json.dumps(files))
        return scores_dataset(same, same, [metric], attrs)

    assert from_one_file(ds(["f.shard*of2.nc"], ["f.shard0of2.nc", "f.shard1of2.nc"]))
    assert not from_one_file(ds(["a.nc", "b.nc"], ["a.nc", "b.nc"]))
    assert not from_one_file(ds(["a*.nc", "b*.nc"], ["a0.nc", "a1.nc", "b0.nc", "b1.nc"]))
