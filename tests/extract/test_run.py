"""The runner end to end: files, resume after an interruption or a kill, skipped images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image

from repalign.data.captions import read_captions_tsv
from repalign.data.synthetic import SyntheticCaptions
from repalign.extract.run import extract
from repalign.models.hf import HFTextAdapter
from repalign.models.timm_vision import TimmVisionAdapter
from repalign.store.features import open_features
from tests._signals import default_signals_in_child
from tests.extract._tiny import tiny_bert, tiny_tokenizer, tiny_vit

REPO = Path(__file__).resolve().parents[2]


def _text_adapter(tmp_path):
    tok = tiny_tokenizer(tmp_path)
    return HFTextAdapter(tiny_bert(len(tok)), tok)


def _load(path):
    ds = open_features(path).load()
    ds.close()
    return ds


def _same_file(a, b):
    """Identical up to the creation time."""
    a, b = _load(a), _load(b)
    for ds in (a, b):
        ds.attrs.pop("created")
    xr.testing.assert_identical(a, b)


def test_extract_writes_a_complete_self_describing_file(tmp_path):
    adapter = _text_adapter(tmp_path)
    res = extract(adapter, SyntheticCaptions(20), tmp_path / "f.nc", batch_size=8, progress=False,
                  dataset_name="synthetic:20", layers=["text.layer.*"])  # fmt: skip
    assert res.complete and res.n_written == 20
    ds = _load(tmp_path / "f.nc")
    assert list(ds.data_vars) == ["text.layer.0", "text.layer.1"]
    assert list(ds.sample_id.values) == [f"synthetic-0-{i:06d}" for i in range(20)]
    assert ds.attrs["complete"] == 1 and ds.attrs["model"] == "hf-text"
    assert ds.attrs["pooling"] == "mean" and ds.attrs["compute_dtype"] == "float32"
    assert json.loads(ds.attrs["config_json"])["run"]["batch_size"] == 8
    assert "torch" in json.loads(ds.attrs["versions_json"])
    var = ds["text.layer.1"]
    assert var.dtype == np.float32 and var.attrs["module_path"] == "encoder.layer.1"
    assert var.attrs["depth"] == 2 and var.attrs["stream"] == "text"


def test_existing_output_needs_resume_or_overwrite(tmp_path):
    adapter = _text_adapter(tmp_path)
    out = tmp_path / "f.nc"
    extract(adapter, SyntheticCaptions(4), out, progress=False)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        extract(adapter, SyntheticCaptions(4), out, progress=False)
    assert out.read_bytes() == before
    real_forward = adapter.forward
    adapter.forward = lambda batch: 1 / 0  # type: ignore[method-assign]
    with pytest.raises(ZeroDivisionError):
        extract(adapter, SyntheticCaptions(6), out, progress=False, overwrite=True)
    assert out.read_bytes() == before  # a run that fails before its first batch keeps the old file
    adapter.forward = real_forward  # type: ignore[method-assign]
    res = extract(adapter, SyntheticCaptions(6), out, progress=False, overwrite=True)
    assert res.n_written == 6


def test_resume_after_interrupt_gives_the_uninterrupted_file(tmp_path):
    adapter = _text_adapter(tmp_path)
    data = SyntheticCaptions(30)
    opts = dict(batch_size=4, progress=False, dataset_name="synthetic:30")
    extract(adapter, data, tmp_path / "full.nc", **opts)

    calls = {"n": 0}
    real_forward = adapter.forward

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_forward(batch)

    adapter.forward = flaky  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        extract(adapter, data, tmp_path / "part.nc", **opts)
    part = open_features(tmp_path / "part.nc")
    assert part.sizes["sample"] == 12 and part.attrs["complete"] == 0  # 3 batches kept
    part.close()
    adapter.forward = real_forward  # type: ignore[method-assign]
    res = extract(adapter, data, tmp_path / "part.nc", resume=True, **opts)
    assert res.complete and res.n_written == 30
    _same_file(tmp_path / "full.nc", tmp_path / "part.nc")
    # resuming a complete file is a no-op; a different run is refused
    assert extract(adapter, data, tmp_path / "part.nc", resume=True, **opts).complete
    with pytest.raises(ValueError, match="different run.*pooling"):
        extract(adapter, data, tmp_path / "part.nc", resume=True, **{**opts, "pool": "cls"})


_KILLED_RUN = """
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from repalign.data.synthetic import SyntheticCaptions
from repalign.extract.run import extract
from repalign.models.hf import HFTextAdapter
from repalign.store.features import FeatureFile
from tests.extract._tiny import tiny_bert, tiny_tokenizer

append, commits = FeatureFile.append, []

def append_and_signal(self, *args, **kwargs):
    append(self, *args, **kwargs)
    commits.append(1)
    if len(commits) == 3:  # three batches on disk: the parent may kill us from now on
        Path({marker!r}).touch()

FeatureFile.append = append_and_signal

class Slow(SyntheticCaptions):
    def __getitem__(self, i):
        time.sleep(0.05)
        return super().__getitem__(i)

tok = tiny_tokenizer(Path({tmp!r}))
extract(HFTextAdapter(tiny_bert(len(tok)), tok), Slow(40), {out!r}, batch_size=4, progress=False,
        dataset_name="synthetic:40")
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_resume_after_sigkill_gives_the_uninterrupted_file(tmp_path, sig):
    """SIGKILL loses at most the batches in flight; SIGTERM is handled like Ctrl-C (the
    process does not die of the signal: it writes what it computed and raises)."""
    out, marker = tmp_path / "killed.nc", tmp_path / "marker"
    script = tmp_path / "run.py"
    script.write_text(
        _KILLED_RUN.format(repo=str(REPO), marker=str(marker), tmp=str(tmp_path), out=str(out))
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], cwd=REPO, preexec_fn=default_signals_in_child
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the extraction subprocess died before it was killed"
            assert time.monotonic() < deadline, "the extraction subprocess made no progress"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    if sig == signal.SIGTERM:  # handled: the process did not die of the signal
        assert proc.returncode not in (-signal.SIGTERM, 0), proc.returncode
    partial = open_features(out)
    n = partial.sizes["sample"]
    assert 12 <= n < 40 and n % 4 == 0 and partial.attrs["complete"] == 0
    partial.close()

    adapter = _text_adapter(tmp_path)
    data = SyntheticCaptions(40)
    opts = dict(batch_size=4, progress=False, dataset_name="synthetic:40")
    extract(adapter, data, out, resume=True, **opts)
    extract(adapter, data, tmp_path / "full.nc", **opts)
    _same_file(tmp_path / "full.nc", out)


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def pairs_with_broken_images(tmp_path: Path) -> Path:
    """``pairs.tsv`` of 6 captioned images: 1 missing, 2 not an image, 3 cut short (its
    header reads, its pixels do not), 0, 4 and 5 fine."""
    (tmp_path / "img").mkdir()
    for i in (0, 4, 5):
        _image(tmp_path / "img" / f"{i}.png", i)
    (tmp_path / "img" / "2.png").write_bytes(b"not an image")
    _image(tmp_path / "img" / "3.png", 3)
    data = (tmp_path / "img" / "3.png").read_bytes()
    (tmp_path / "img" / "3.png").write_bytes(data[: len(data) // 2])  # header fine, pixels cut
    rows = ["caption\timage"] + [f"caption {i}\timg/{i}.png" for i in range(6)]
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path / "pairs.tsv"


def test_unreadable_images_are_skipped_without_shifting_ids(tmp_path):
    pairs_with_broken_images(tmp_path)

    dataset = read_captions_tsv(tmp_path / "pairs.tsv")
    assert [s for s, _ in dataset.skipped] == ["0000001", "0000002"]  # found when listing
    adapter = TimmVisionAdapter(tiny_vit())
    res = extract(adapter, dataset, tmp_path / "f.nc", batch_size=2, progress=False, pool="cls")
    ds = _load(tmp_path / "f.nc")
    assert list(ds.sample_id.values) == ["0000000", "0000004", "0000005"]
    skipped = dict(json.loads(ds.attrs["skipped_json"]))
    assert set(skipped) == {"0000001", "0000002", "0000003"}  # 3 fails only when decoded
    assert "missing" in skipped["0000001"] and res.complete and len(res.skipped) == 3
    # features of a kept sample do not depend on the skipped ones
    kept = dataset[2]
    assert kept.sample_id == "0000004"
    alone = extract(adapter, [kept], tmp_path / "one.nc", progress=False, pool="cls")
    assert alone.n_written == 1
    np.testing.assert_allclose(_load(tmp_path / "one.nc")["vision.block.1"].values[0],
                               ds["vision.block.1"].values[1], rtol=1e-5, atol=1e-6)  # fmt: skip


def test_bfloat16_and_tokens_pooling(tmp_path):
    adapter = _text_adapter(tmp_path)
    res = extract(adapter, SyntheticCaptions(6), tmp_path / "t.nc", batch_size=4, progress=False,
                  pool="tokens", dtype="bfloat16", layers=["text.layer.1"])  # fmt: skip
    ds = _load(tmp_path / "t.nc")
    assert res.complete and ds.attrs["compute_dtype"] == "bfloat16"
    var = ds["text.layer.1"]
    assert (
        var.dims == ("sample", "text.layer.1.token", "text.layer.1.dim") and var.dtype == np.float32
    )
    lengths = (~np.isnan(var.values[..., 0])).sum(1)
    tok = adapter.tokenizer([s.text for s in SyntheticCaptions(6)])
    assert list(lengths) == [len(ids) for ids in tok["input_ids"]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pool", ["mean", "cls", "tokens"])
def test_cuda_extraction_matches_cpu(tmp_path, pool):
    """The pinned-buffer / event path on CUDA writes the same features as the CPU path."""
    adapter = _text_adapter(tmp_path)
    data = SyntheticCaptions(24)
    opts = dict(batch_size=8, progress=False, pool=pool)
    extract(adapter, data, tmp_path / "cpu.nc", device="cpu", **opts)
    extract(adapter, data, tmp_path / "gpu.nc", device="cuda", **opts)
    a, b = _load(tmp_path / "cpu.nc"), _load(tmp_path / "gpu.nc")
    assert list(a.sample_id.values) == list(b.sample_id.values)
    for name in a.data_vars:
        np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-4, atol=1e-4)
    vit = TimmVisionAdapter(tiny_vit())
    extract(vit, SyntheticCaptions(10), tmp_path / "v.nc", device="cuda", dtype="bfloat16", batch_size=4,
            progress=False, pool=pool if pool != "tokens" else "cls")  # fmt: skip
    assert _load(tmp_path / "v.nc").attrs["complete"] == 1


def test_resume_refuses_a_changed_data_file(tmp_path):
    from repalign.data.captions import ImageTextRecords, Record

    adapter = _text_adapter(tmp_path)
    rows = [Record(f"r{i}", f"a red circle {i}", None) for i in range(12)]
    calls = {"n": 0}
    real_forward = adapter.forward

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_forward(batch)

    adapter.forward = flaky  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        extract(adapter, ImageTextRecords(rows), tmp_path / "p.nc", batch_size=4, progress=False)
    adapter.forward = real_forward  # type: ignore[method-assign]
    changed = ImageTextRecords([Record("other", "x", None), *rows[1:]])
    with pytest.raises(ValueError, match="not the start of this dataset"):
        extract(adapter, changed, tmp_path / "p.nc", batch_size=4, progress=False, resume=True)
    res = extract(
        adapter,
        ImageTextRecords(rows),
        tmp_path / "p.nc",
        batch_size=4,
        progress=False,
        resume=True,
    )
    assert res.complete and res.n_written == 12


def test_shards_merge_to_the_unsharded_file(tmp_path):
    from repalign.store.merge import write_merged

    adapter = _text_adapter(tmp_path)
    data = SyntheticCaptions(22)
    opts = dict(batch_size=4, progress=False, dataset_name="synthetic:22", pool="tokens")
    extract(adapter, data, tmp_path / "full.nc", **opts)
    parts = [tmp_path / f"s{k}.nc" for k in range(3)]
    for k, path in enumerate(parts):
        res = extract(adapter, data, path, shard=f"{k}/3", **opts)
        assert res.n_total == [7, 7, 8][k]
    with pytest.raises(ValueError, match="every shard"):
        write_merged(parts[:2], tmp_path / "m.nc", progress=False)
    write_merged(parts[::-1], tmp_path / "m.nc", progress=False)
    full, merged = _load(tmp_path / "full.nc"), _load(tmp_path / "m.nc")
    xr.testing.assert_identical(full.drop_attrs(deep=False), merged.drop_attrs(deep=False))
    for key in ("model", "pooling", "dataset", "complete", "n_written", "n_total", "next_index"):
        assert str(full.attrs[key]) == str(merged.attrs[key]), key
    with pytest.raises(ValueError, match="K/N"):
        extract(adapter, data, tmp_path / "x.nc", shard="3", **opts)


def test_bad_outputs_and_options_fail_before_any_work(tmp_path):
    adapter = _text_adapter(tmp_path)
    data = SyntheticCaptions(4)
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        extract(adapter, data, tmp_path / "no" / "f.nc", progress=False)
    (tmp_path / "d.nc").mkdir()
    with pytest.raises(IsADirectoryError):
        extract(adapter, data, tmp_path / "d.nc", progress=False, overwrite=True)
    with pytest.raises(ValueError, match="exclude each other"):
        extract(adapter, data, tmp_path / "f.nc", progress=False, overwrite=True, resume=True)
    with pytest.raises(ValueError, match="compute dtype"):
        extract(adapter, data, tmp_path / "f.nc", progress=False, dtype="float8")
    with pytest.raises(ValueError, match="tokens pooling cannot produce derived"):
        from repalign.models.bert_vit import BertViTAdapter

        both = BertViTAdapter(adapter, TimmVisionAdapter(tiny_vit()))
        extract(both, data, tmp_path / "f.nc", progress=False, pool="tokens", layers=["concat.*"])
    assert not (tmp_path / "f.nc").exists()


def test_resume_of_a_damaged_file_says_what_to_do(tmp_path):
    (tmp_path / "f.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)  # a truncated HDF5 file
    with pytest.raises(ValueError, match="damaged .*--overwrite"):
        extract(
            _text_adapter(tmp_path),
            SyntheticCaptions(4),
            tmp_path / "f.nc",
            progress=False,
            resume=True,
        )
