"""Lazy merge of shard files (open_merged, open_features on a list/glob, write_merged, CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.data.synthetic import SyntheticCaptions
from repalign.extract.run import extract
from repalign.models.hf import HFTextAdapter
from repalign.store.features import open_features
from repalign.store.merge import open_merged, write_merged
from tests.extract._tiny import tiny_bert, tiny_tokenizer

N = 22


@pytest.fixture(scope="module", params=["mean", "tokens"])
def extraction(request, tmp_path_factory):
    """One unsharded file and its 3 shards (7, 7, 8 samples) from the same tiny model."""
    tmp = tmp_path_factory.mktemp(f"shards-{request.param}")
    tok = tiny_tokenizer(tmp)
    adapter = HFTextAdapter(tiny_bert(len(tok)), tok)
    opts = dict(batch_size=4, progress=False, dataset_name=f"synthetic:{N}", pool=request.param)
    data = SyntheticCaptions(N)
    extract(adapter, data, tmp / "full.nc", **opts)
    shards = [tmp / f"f.shard{k}of3.nc" for k in range(3)]
    for k, path in enumerate(shards):
        extract(adapter, data, path, shard=f"{k}/3", **opts)
    return tmp, shards


def _load(ds: xr.Dataset) -> xr.Dataset:
    with ds:
        return ds.load()


def _assert_same_features(full: xr.Dataset, merged: xr.Dataset) -> None:
    xr.testing.assert_identical(full.drop_attrs(deep=False), merged.drop_attrs(deep=False))
    for key in ("model", "pooling", "dataset", "complete", "n_written", "n_total", "next_index"):
        assert str(full.attrs[key]) == str(merged.attrs[key]), key
    assert merged.attrs["shard"] == ""


def test_open_merged_equals_unsharded(extraction):
    tmp, shards = extraction
    full = _load(open_features(tmp / "full.nc"))
    _assert_same_features(full, _load(open_merged(shards[::-1])))  # any order
    _assert_same_features(full, _load(open_features(str(tmp / "f.shard*of3.nc"))))  # glob
    _assert_same_features(full, _load(open_features(shards)))  # list


def test_open_merged_is_lazy_and_slices_across_shards(extraction):
    tmp, shards = extraction
    full = _load(open_features(tmp / "full.nc"))
    with open_merged(shards) as merged:
        name = next(iter(merged.data_vars))
        assert not merged[name].variable._in_memory
        for sel in (slice(5, 16), slice(0, 1), [20, 3, 8, 7], 14, slice(None, None, 3)):
            np.testing.assert_array_equal(
                merged[name].isel(sample=sel).values, full[name].isel(sample=sel).values
            )
        last = (Ellipsis, -1)
        np.testing.assert_array_equal(merged[name][last].values, full[name][last].values)


def test_write_merged_file_equals_unsharded(extraction):
    tmp, shards = extraction
    out = write_merged(shards, tmp / "merged.nc", chunk_size=5, overwrite=True)
    full, merged = _load(open_features(tmp / "full.nc")), _load(open_features(out))
    _assert_same_features(full, merged)
    assert not (tmp / ".merged.nc.partial").exists()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_merged(shards, out)


def test_refuses_what_is_not_one_extraction(extraction, tmp_path):
    tmp, shards = extraction
    with pytest.raises(ValueError, match=r"every shard 0..N-1.*\[0, 2\]"):
        open_merged([shards[0], shards[2]])
    with pytest.raises(ValueError, match="given twice"):
        open_merged([shards[0], shards[0], shards[1], shards[2]])
    with pytest.raises(ValueError, match="not a shard file"):
        open_merged([tmp / "full.nc"])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_merged(str(tmp_path / "nothing*.nc"))
    with pytest.raises(ValueError, match="one of the shards"):
        write_merged(shards, shards[0], overwrite=True)


def test_cli_merge(extraction):
    tmp, shards = extraction
    out = tmp / "cli.nc"
    res = CliRunner().invoke(app, ["merge", *map(str, shards), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "merged 3 shards" in res.output
    _assert_same_features(_load(open_features(tmp / "full.nc")), _load(open_features(out)))
    res = CliRunner().invoke(app, ["merge", str(shards[0]), "--out", str(tmp / "x.nc")])
    assert res.exit_code == 2 and "every shard" in " ".join(res.output.split())


def test_streaming_compare_reads_shards_directly(extraction):
    from repalign.compare.streaming import streaming_compare

    tmp, shards = extraction
    with open_features(tmp / "full.nc") as ds:
        if any(v.ndim != 2 for v in ds.data_vars.values()):
            pytest.skip("compare needs pooled features")
    kw = dict(metrics=["cka", "cca"], chunk_size=5, progress=False)
    full = streaming_compare([tmp / "full.nc"], **kw)
    merged = streaming_compare([str(tmp / "f.shard*of3.nc")], **kw)
    np.testing.assert_allclose(merged["score"].values, full["score"].values, rtol=1e-12)
    assert len(json.loads(merged.attrs["feature_files_sha256"])) == 3


def test_compare_warns_that_one_shard_is_part_of_the_samples(extraction, caplog):
    from repalign.compare import compare

    tmp, shards = extraction
    with open_features(tmp / "full.nc") as ds:
        if any(v.ndim != 2 for v in ds.data_vars.values()):
            pytest.skip("compare needs pooled features")
    with caplog.at_level("WARNING", logger="repalign.compare"):
        compare([str(tmp / "f.shard*of3.nc")], ["cka"], progress=False)
        assert not [r for r in caplog.records if "is shard" in r.getMessage()]
        compare([shards[1]], ["cka"], progress=False)
    (warned,) = [r.getMessage() for r in caplog.records if "is shard" in r.getMessage()]
    assert "shard 1/3" in warned and "repalign merge" in warned
