"""Feature files: netCDF round trip, partial rows, completeness."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from repalign.models.base import LayerInfo
from repalign.store import schema
from repalign.store.features import FeatureFile, open_features

LAYERS = [
    LayerInfo("text.layer.0", "encoder.layer.0", "text", 1, 0.5),
    LayerInfo("vision.block.1", "blocks.1", "vision", 2, 1.0, num_prefix_tokens=1),
]
ATTRS = {"model": "toy", "pooling": "mean", "compute_dtype": "float32", schema.N_TOTAL: 5}


def _batches(rng):
    ids = [f"id{i}" for i in range(5)]
    feats = {"text.layer.0": rng.normal(size=(5, 3)).astype(np.float32),
             "vision.block.1": rng.normal(size=(5, 4)).astype(np.float32)}  # fmt: skip
    return ids, feats


def _expected(ids, feats, attrs):
    data_vars = {}
    for info in LAYERS:
        data_vars[info.name] = xr.Variable(
            (schema.SAMPLE_DIM, schema.feature_dim(info.name)), feats[info.name],
            attrs={"module_path": info.module_path, "stream": info.stream, "depth": info.depth,
                   "relative_depth": info.relative_depth, "pooling": "mean"},
        )  # fmt: skip
    long_name = {"long_name": "stable id of each sample, from the data file"}
    coords = {schema.SAMPLE_ID: (schema.SAMPLE_DIM, np.array(ids), long_name)}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def test_round_trip_is_identical(tmp_path):
    ids, feats = _batches(np.random.default_rng(0))
    path = tmp_path / "f.nc"
    with FeatureFile.create(path, LAYERS, feats, pooling="mean", attrs=ATTRS) as f:
        f.append(ids[:2], {k: v[:2] for k, v in feats.items()}, progress={schema.NEXT_INDEX: 2})
        f.append(ids[2:], {k: v[2:] for k, v in feats.items()}, progress={schema.NEXT_INDEX: 5})
        f.mark_complete()
    ds = open_features(path).load()
    attrs = {
        **ATTRS,
        "complete": 1,
        schema.N_WRITTEN: 5,
        schema.SKIPPED_JSON: "[]",
        schema.NEXT_INDEX: 5,
    }
    xr.testing.assert_identical(ds, _expected(ids, feats, attrs))
    for name in schema.LAYER_ATTRS:
        assert name in ds["text.layer.0"].attrs


def test_rows_past_n_written_are_ignored_and_incomplete_can_be_refused(tmp_path):
    ids, feats = _batches(np.random.default_rng(1))
    path = tmp_path / "f.nc"
    with FeatureFile.create(path, LAYERS, feats, pooling="mean", attrs=ATTRS) as f:
        f.append(ids[:3], {k: v[:3] for k, v in feats.items()})
        # a batch whose layer rows were written but never committed (killed mid-append)
        f._nc.variables["text.layer.0"][3:5, :] = feats["text.layer.0"][3:5]
    ds = open_features(path)
    assert ds.sizes[schema.SAMPLE_DIM] == 3 and list(ds.sample_id.values) == ids[:3]
    np.testing.assert_array_equal(ds["text.layer.0"].values, feats["text.layer.0"][:3])
    ds.close()
    with pytest.raises(ValueError, match="incomplete.*--resume"):
        open_features(path, require_complete=True)
    with FeatureFile.append_to(path) as f:  # a resumed run overwrites the stale rows
        assert f.n_written == 3 and f.sample_ids() == ids[:3]
        f.append(ids[3:], {k: -v[3:] for k, v in feats.items()})
    np.testing.assert_array_equal(
        open_features(path)["text.layer.0"].values[3:], -feats["text.layer.0"][3:]
    )


def test_not_a_feature_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="repalign extract"):
        open_features(tmp_path / "missing.nc")
    (tmp_path / "junk.nc").write_text("junk")
    with pytest.raises(ValueError, match="not a readable netCDF"):
        open_features(tmp_path / "junk.nc")
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(tmp_path / "other.nc", engine="netcdf4")
    with pytest.raises(ValueError, match="not a repalign feature file"):
        open_features(tmp_path / "other.nc")


def test_a_score_file_is_named_and_sent_to_repalign_plot(tmp_path):
    """A score file given where features are read says what it is and where it goes."""
    from typer.testing import CliRunner

    from repalign.cli.main import app
    from repalign.store.scores import LayerAxis, MetricScores, scores_dataset, write_scores

    axis = LayerAxis(("t.0", "t.1"), ("text",) * 2, (0.5, 1.0))
    cka = MetricScores("cka", "cka", {}, (0.0, 1.0), True, np.eye(2))
    path = write_scores(scores_dataset(axis, axis, [cka]), tmp_path / "scores.nc")
    with pytest.raises(ValueError, match=r"score file.*`repalign plot.*`repalign info"):
        open_features(path)
    res = CliRunner().invoke(app, ["compare", str(path), "--out", str(tmp_path / "s2.nc")])
    assert res.exit_code != 0
    said = " ".join(res.output.split())  # the console wraps lines at any space
    assert "is a score file" in said and "`repalign plot" in said, res.output
    assert "sample_id" not in said, res.output
    res = CliRunner().invoke(app, ["info", str(path)])  # info reads score files too
    assert res.exit_code == 0 and "score file: 1 metric(s) x 2 x 2" in res.output, res.output
