"""Resume cases added after a hand-made mutation audit of repalign.extract.run: each test
kills a mutant that the rest of the suite let through (a resume that restarts at
``n_written`` instead of the next dataset position, forgets the skipped samples, or
accepts a file with other layers)."""

from __future__ import annotations

import pytest

from repalign.data.captions import read_captions_tsv
from repalign.data.synthetic import SyntheticCaptions
from repalign.extract.run import extract
from repalign.models.timm_vision import TimmVisionAdapter
from tests.extract._tiny import tiny_vit
from tests.extract.test_run import _same_file, _text_adapter, pairs_with_broken_images


def _interrupt_on_call(adapter, call: int) -> None:
    real, calls = adapter.forward, {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(batch)

    adapter.forward = flaky


def test_resume_after_a_batch_with_skipped_images_gives_the_uninterrupted_file(tmp_path):
    """Batch 1 holds samples 0 and 3; 3 fails to decode, so 1 row is written but the next
    dataset position is 2. Resuming must start at 2, keep the skipped list of the file
    (1, 2 found when listing, 3 when decoding) and expect only the written ids."""
    pairs_with_broken_images(tmp_path)
    dataset = read_captions_tsv(tmp_path / "pairs.tsv")
    opts = dict(batch_size=2, progress=False, pool="cls")
    extract(TimmVisionAdapter(tiny_vit()), dataset, tmp_path / "full.nc", **opts)

    adapter = TimmVisionAdapter(tiny_vit())
    _interrupt_on_call(adapter, 2)
    with pytest.raises(KeyboardInterrupt):
        extract(adapter, dataset, tmp_path / "part.nc", **opts)
    res = extract(TimmVisionAdapter(tiny_vit()), dataset, tmp_path / "part.nc", resume=True, **opts)
    assert res.complete and res.n_written == 3 and len(res.skipped) == 3
    _same_file(tmp_path / "full.nc", tmp_path / "part.nc")


def test_resume_with_other_layers_is_refused(tmp_path):
    adapter = _text_adapter(tmp_path)
    data = SyntheticCaptions(12)
    opts = dict(batch_size=4, progress=False, dataset_name="synthetic:12")
    _interrupt_on_call(adapter, 2)
    with pytest.raises(KeyboardInterrupt):
        extract(adapter, data, tmp_path / "part.nc", layers=["text.layer.0"], **opts)
    with pytest.raises(ValueError, match="different run.*layers: file has"):
        extract(_text_adapter(tmp_path), data, tmp_path / "part.nc", resume=True,
                layers=["text.layer.1"], **opts)  # fmt: skip
