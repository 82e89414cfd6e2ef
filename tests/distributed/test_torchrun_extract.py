"""`torchrun --nproc-per-node 2 -m repalign extract` on CPU: shard files, per-shard resume, merge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import xarray as xr
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.store import schema
from repalign.store.features import FeatureFile, open_features
from tests.extract._tiny import save_tiny_bert_dir

REPO = Path(__file__).resolve().parents[2]
N = 21  # shards of 10 and 11 samples: neither a multiple of the batch size


def torchrun(nproc: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m repalign ARGS`` in a subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "repalign", *args]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _load(path) -> xr.Dataset:
    with open_features(path) as ds:
        return ds.load()


def test_torchrun_extract_shards_resume_and_merge(tmp_path):
    bert = str(save_tiny_bert_dir(tmp_path))
    args = ["extract", "--model", "hf-text", "--text-model", bert, "--data", f"synthetic:{N}",
            "--pool", "mean", "--batch-size", "4", "--workers", "1", "--no-progress"]  # fmt: skip
    single = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "single.nc")])
    assert single.exit_code == 0, single.output

    # shard 1 was interrupted after its first batch in an earlier run: --resume finishes it
    CliRunner().invoke(app, [*args, "--shard", "1/2", "--out", str(tmp_path / "f.shard1of2.nc")])
    with FeatureFile.append_to(tmp_path / "f.shard1of2.nc") as f:
        f.set_attrs({"complete": 0, schema.N_WRITTEN: 4, schema.NEXT_INDEX: N // 2 + 4})
    torchrun(2, *args, "--resume", "--out", str(tmp_path / "f.nc"))

    shards = sorted(tmp_path.glob("f.shard*of2.nc"))
    assert [p.name for p in shards] == ["f.shard0of2.nc", "f.shard1of2.nc"]
    sizes = [_load(p).sizes["sample"] for p in shards]
    assert sizes == [N // 2, N - N // 2]
    assert [_load(p).attrs["shard"] for p in shards] == ["0/2", "1/2"]

    res = CliRunner().invoke(app, ["merge", str(tmp_path / "f.shard*of2.nc"), "--out",
                                   str(tmp_path / "merged.nc"), "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    full = _load(tmp_path / "single.nc")
    merged_file, merged_lazy = _load(tmp_path / "merged.nc"), _load(shards)
    xr.testing.assert_identical(merged_file, merged_lazy)
    for merged in (merged_file, merged_lazy):
        # same ids, layers and attrs; features equal up to float rounding (batches are padded
        # to different lengths and the ranks run with another thread count)
        assert list(merged.sample_id.values) == list(full.sample_id.values)
        xr.testing.assert_allclose(
            full.drop_attrs(deep=False), merged.drop_attrs(deep=False), rtol=1e-5, atol=1e-6
        )
        for name in full.data_vars:
            assert full[name].attrs == merged[name].attrs
        for key in ("model", "dataset", "pooling", "n_written", "n_total", "complete"):
            assert str(full.attrs[key]) == str(merged.attrs[key]), key
