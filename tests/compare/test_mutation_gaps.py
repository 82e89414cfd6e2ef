"""Tests added after a hand-made mutation audit of repalign.compare.layers: each one
kills a mutant (a small plausible bug) that the rest of the suite let through."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from repalign.compare.layers import align_sample_ids, describe_layers


def test_aligning_files_that_share_no_id_is_an_error_not_an_empty_comparison():
    with pytest.raises(ValueError, match="share no sample id"):
        align_sample_ids(["a", "b"], ["c", "d"], align_on_ids=True)


def test_aligning_on_ids_reorders_b_and_keeps_the_shared_ids_in_a_order():
    idx_a, idx_b = align_sample_ids(["a", "b", "c"], ["c", "x", "a"], align_on_ids=True)
    assert idx_a.tolist() == [0, 2] and idx_b.tolist() == [2, 0]


def test_layers_without_a_relative_depth_attr_are_spread_over_zero_to_one():
    """Files from before the relative_depth attr: the selected layers at 0, 1/2, 1
    (index / (count - 1)), so the first and last layers sit at the ends of the axis."""
    rows = np.zeros((4, 2), dtype=np.float32)
    ds = xr.Dataset(
        {name: (("sample", f"{name}_dim"), rows) for name in ("l0", "l1", "l2")},
        coords={"sample_id": ("sample", ["a", "b", "c", "d"])},
    )
    axis = describe_layers(ds, ["l*"], where="test.nc")
    assert axis.names == ("l0", "l1", "l2")
    assert axis.depths == (0.0, 0.5, 1.0)


def test_selected_layers_keep_the_file_order_not_the_alphabetical_one():
    from repalign.compare.layers import select_layers

    names = ["text.layer.2", "text.layer.10", "text.layer.1"]
    assert select_layers(names, ["text.*"], where="f.nc") == names
