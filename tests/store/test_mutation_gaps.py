"""Tests added after a hand-made mutation audit of repalign.store: each one kills a
mutant (a small plausible bug) that the rest of the suite let through."""

from __future__ import annotations

import numpy as np
import pytest

from repalign.models.base import LayerInfo
from repalign.store.features import FeatureFile, open_features

LAYERS = [LayerInfo("text.layer.0", "encoder.layer.0", "text", 1, 1.0)]


def test_append_refuses_features_whose_rows_do_not_match_the_ids(tmp_path):
    """Three ids with two rows of features: refused before anything is written (without
    the check netCDF broadcast or misaligned the rows)."""
    feats = {"text.layer.0": np.ones((2, 3), dtype=np.float32)}
    path = tmp_path / "f.nc"
    with FeatureFile.create(path, LAYERS, feats, pooling="mean", attrs={}) as f:
        f.append(["a", "b"], feats)
        with pytest.raises(ValueError, match="2 rows for 3 sample ids"):
            f.append(["c", "d", "e"], feats)
        assert f.n_written == 2
        f.mark_complete()
    with open_features(path) as ds:
        assert [str(s) for s in ds["sample_id"].values] == ["a", "b"]
