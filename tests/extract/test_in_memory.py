"""extract_features: the streaming extractor's values, in memory, nothing left on disk."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from repalign.data.synthetic import SyntheticCaptions
from repalign.extract import extract, extract_features
from repalign.store.features import open_features
from tests.extract.test_run import _text_adapter


def test_in_memory_features_equal_the_feature_file(tmp_path):
    adapter = _text_adapter(tmp_path)
    data = SyntheticCaptions(10)
    opts = dict(batch_size=4, progress=False, layers=["text.layer.*"], pool="mean")
    before = set(Path(tempfile.gettempdir()).glob("repalign-*"))
    feats = extract_features(adapter, data, **opts)
    assert set(Path(tempfile.gettempdir()).glob("repalign-*")) == before  # removed
    extract(adapter, data, tmp_path / "f.nc", **opts)
    with open_features(tmp_path / "f.nc") as on_disk:
        assert list(feats.data_vars) == list(on_disk.data_vars)
        for name in on_disk.data_vars:
            np.testing.assert_array_equal(feats[name].values, on_disk[name].values)
        assert feats.sample_id.values.tolist() == on_disk.sample_id.values.tolist()
    assert int(feats.attrs["complete"]) == 1


def test_file_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="resume applies to feature files"):
        extract_features(_text_adapter(tmp_path), SyntheticCaptions(2), resume=True)


def test_device_auto_is_resolved_like_everywhere_else(tmp_path):
    feats = extract_features(
        _text_adapter(tmp_path), SyntheticCaptions(3), device="auto", progress=False
    )
    assert feats.sizes["sample"] == 3
