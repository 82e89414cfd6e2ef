"""AsyncWriter: writes in order from its thread, and reports a failed write."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from repalign.extract.writer import AsyncWriter
from repalign.models.base import LayerInfo
from repalign.store.features import FeatureFile, open_features

LAYER = [LayerInfo("text.layer.0", "l0", "text", 1, 1.0)]


def test_batches_written_in_order(tmp_path):
    out = tmp_path / "w.nc"
    writer = AsyncWriter(
        lambda ex: FeatureFile.create(out, LAYER, ex, pooling="mean", attrs={}), max_pending=1
    )
    for b in range(5):
        writer.submit(
            [f"s{b}{i}" for i in range(3)], {"text.layer.0": torch.full((3, 2), float(b))}
        )
    writer.close()
    writer.file.close()
    with open_features(out) as ds:
        assert ds.sizes["sample"] == 15 and ds.sample_id.values[4] == "s11"
        np.testing.assert_array_equal(ds["text.layer.0"].values[:, 0], np.repeat(np.arange(5.0), 3))
    assert writer.rows_written == 15


def test_a_failed_write_is_raised_in_the_caller(tmp_path):
    def broken(example):
        raise OSError("disk full")

    writer = AsyncWriter(broken)
    writer.submit(["a"], {"text.layer.0": torch.zeros(1, 2)})
    with pytest.raises(RuntimeError, match="writing features failed: disk full"):
        for _ in range(20):  # the error surfaces at a later submit, or at close
            writer.submit(["b"], {"text.layer.0": torch.zeros(1, 2)})
        writer.close()


def test_pinned_buffer_pool_reuses_by_shape_and_stays_bounded(monkeypatch):
    from repalign.extract import writer as w

    real_empty = torch.empty
    monkeypatch.setattr(w.torch, "empty", lambda *a, pin_memory=False, **k: real_empty(*a, **k))
    pool = w.PinnedBuffers(max_sets=2)
    a = {"l": torch.zeros(2, 3)}
    key, bufs = pool.take(a)
    pool.give_back(key, bufs)
    assert pool.take(a)[1] is bufs  # same shape: reused
    for t in range(2, 6):  # four other shapes
        k, b = pool.take({"l": torch.zeros(2, t, 3)})
        pool.give_back(k, b)
    assert len(pool._free) == 2
