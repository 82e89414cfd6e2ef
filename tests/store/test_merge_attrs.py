"""merged_attrs: the global attrs of a merge of shard files (no extraction needed)."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from repalign.store import schema
from repalign.store.merge import merged_attrs


def _shard(k: int, n_rows: int, skipped: list[list[str]]) -> xr.Dataset:
    ds = xr.Dataset({"x": ((schema.SAMPLE_DIM, "d"), np.zeros((n_rows, 2), dtype=np.float32))})
    ds.attrs.update({
        schema.SHARD: f"{k}/3", "model": "m", "complete": 1,
        schema.N_WRITTEN: n_rows, schema.N_TOTAL: n_rows + len(skipped),
        schema.NEXT_INDEX: 10 * (k + 1), schema.SKIPPED_JSON: json.dumps(skipped),
    })  # fmt: skip
    return ds


def test_skipped_lists_are_merged_in_first_seen_order_without_duplicates():
    shards = [
        _shard(0, 3, [["s3", "missing image"], ["s1", "unreadable"], ["s3", "missing image"]]),
        _shard(1, 2, [["s1", "unreadable"], ["s7", "missing image"]]),
        _shard(2, 4, [["s7", "missing image"], ["s3", "missing image"], ["s9", "no image"]]),
    ]
    attrs = merged_attrs(shards)
    assert json.loads(attrs[schema.SKIPPED_JSON]) == [
        ["s3", "missing image"],
        ["s1", "unreadable"],
        ["s7", "missing image"],
        ["s9", "no image"],
    ]
    # the same id skipped for another reason is another entry, kept
    other = merged_attrs([_shard(0, 1, [["s1", "a"]]), _shard(1, 1, [["s1", "b"]])])
    assert json.loads(other[schema.SKIPPED_JSON]) == [["s1", "a"], ["s1", "b"]]


def test_progress_attrs_cover_the_whole_run():
    attrs = merged_attrs([_shard(0, 3, []), _shard(1, 2, [["s1", "x"]])])
    assert attrs[schema.N_WRITTEN] == 5 and attrs[schema.N_TOTAL] == 6
    assert attrs[schema.NEXT_INDEX] == 20 and attrs[schema.SHARD] == ""
    assert attrs["complete"] == 1 and attrs["model"] == "m"
    assert json.loads(attrs[schema.SKIPPED_JSON]) == [["s1", "x"]]
