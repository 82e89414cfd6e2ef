"""``repalign compare --stats-pairs``: statistics on every pair, or on the depth-matched ones."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.compare import matched_pairs
from repalign.store.scores import layer_axis, open_scores
from tests.store._feature_files import write_features

runner = CliRunner()


def test_matched_stats_pairs_fill_only_the_depth_matched_cells(tmp_path):
    feats = write_features(tmp_path / "a.nc")
    out = tmp_path / "s.nc"
    res = runner.invoke(app, [
        "compare", str(feats), "-m", "cka", "--layers-a", "text.*", "--layers-b", "vision.*",
        "--permutations", "5", "--bootstrap", "4", "--stats-pairs", "matched", "--out", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    ds = open_scores(out)
    cells = set(matched_pairs(layer_axis(ds, "a"), layer_axis(ds, "b")))
    pvalue = ds.pvalue.sel(metric="cka").values
    assert 0 < len(cells) < pvalue.size
    for i in range(pvalue.shape[0]):
        for j in range(pvalue.shape[1]):
            assert np.isfinite(pvalue[i, j]) == ((i, j) in cells)
    assert np.isfinite(ds.score).all()
    assert '"stats_pairs": "matched"' in ds.attrs["config_json"]


def test_an_unknown_stats_pairs_value_names_the_choices(tmp_path):
    feats = write_features(tmp_path / "a.nc")
    res = runner.invoke(app, [
        "compare", str(feats), "--permutations", "3", "--stats-pairs", "some",
        "--out", str(tmp_path / "s.nc"),
    ])  # fmt: skip
    assert res.exit_code != 0
    assert "--stats-pairs" in res.output and "'matched'" in res.output
    assert not (tmp_path / "s.nc").exists()
