import json

import numpy as np
import pytest
import torch
from PIL import Image

from repalign.data.cache import CachedImages, build_cache, resize_image
from repalign.data.loading import load_dataset
from repalign.data.synthetic import SyntheticCaptions
from repalign.train.batches import BatchStream, batch_loader


def test_round_trip_keeps_pixels_ids_and_scenes(tmp_path):
    data = SyntheticCaptions(10, seed=2, image_size=32)
    build_cache(data, tmp_path / "cache", size=32, source="synthetic:10:2", progress=False)
    cache = CachedImages(tmp_path / "cache")
    assert len(cache) == 10 and cache.size == 32
    for i in (0, 9):
        a, b = data[i], cache[i]
        assert b.sample_id == a.sample_id and b.text == a.text
        assert b.meta["scene"] == a.meta["scene"]
        assert np.array_equal(np.asarray(b.image), np.asarray(a.image))


def test_resize_centre_crops_to_square():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    out = resize_image(image, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 255).all()


def test_existing_cache_is_reused_and_a_different_one_refused(tmp_path):
    data = SyntheticCaptions(4, image_size=16)
    build_cache(data, tmp_path / "c", size=16, source="a", progress=False)
    stamp = (tmp_path / "c" / "images.u8").stat().st_mtime_ns
    build_cache(data, tmp_path / "c", size=16, source="a", progress=False)
    assert (tmp_path / "c" / "images.u8").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="different cache"):
        build_cache(data, tmp_path / "c", size=32, source="a", progress=False)


def test_truncated_cache_is_reported(tmp_path):
    build_cache(SyntheticCaptions(4, image_size=16), tmp_path / "c", size=16, progress=False)
    with (tmp_path / "c" / "images.u8").open("r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="corrupted, rebuild"):
        CachedImages(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="repalign data cache"):
        CachedImages(tmp_path / "nothing")


def _pixels(samples):
    return torch.stack([torch.from_numpy(np.asarray(s.image).copy()) for s in samples])


def test_worker_processes_read_the_cache(tmp_path):
    build_cache(SyntheticCaptions(16, image_size=16), tmp_path / "c", size=16, progress=False)
    stream = BatchStream(CachedImages(tmp_path / "c"), 4, _pixels, seed=0)
    in_workers = list(batch_loader(stream, 0, 4, num_workers=2))
    in_process = [stream[k] for k in range(4)]
    for a, b in zip(in_workers, in_process, strict=True):
        assert torch.equal(a, b)


def _unreadable_captions(tmp_path):
    """A captions TSV none of whose images can be read: missing, not an image, truncated."""
    (tmp_path / "junk.png").write_bytes(b"not a png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "cut.png")
    raw = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) // 3])  # header parses, pixels do not
    (tmp_path / "d.tsv").write_text("a\tjunk.png\nb\tmissing.png\nc\tcut.png\nd\tgone.png\n")
    return load_dataset(str(tmp_path / "d.tsv"))


def test_no_readable_image_is_a_clear_error_and_leaves_nothing(tmp_path):
    data = _unreadable_captions(tmp_path)
    with pytest.raises(ValueError, match="no image of 'd.tsv' could be read") as err:
        build_cache(data, tmp_path / "c", size=16, source="d.tsv", progress=False)
    message = str(err.value)
    assert "all 4 sample(s) were skipped" in message and "and 1 more" in message
    assert "0000000: unreadable image" in message and "0000001: missing image" in message
    assert "--images" in message
    assert not (tmp_path / "c").exists() and not (tmp_path / ".c.building").exists()
    # the images fixed, the same --out builds (no stale empty cache is reused)
    for name in ("junk.png", "missing.png", "cut.png", "gone.png"):
        Image.new("RGB", (8, 8), (0, 128, 255)).save(tmp_path / name)
    build_cache(load_dataset(str(tmp_path / "d.tsv")), tmp_path / "c", size=16, progress=False)
    assert len(CachedImages(tmp_path / "c")) == 4


def test_empty_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="holds no samples"):
        build_cache([], tmp_path / "c", size=16, progress=False)
    assert not (tmp_path / ".c.building").exists()


def test_failed_build_removes_its_temporary_folder(tmp_path):
    class Broken(SyntheticCaptions):
        def __getitem__(self, index):
            if index == 2:
                raise KeyboardInterrupt
            return super().__getitem__(index)

    with pytest.raises(KeyboardInterrupt):
        build_cache(Broken(4, image_size=16), tmp_path / "c", size=16, progress=False)
    assert not (tmp_path / "c").exists() and not (tmp_path / ".c.building").exists()


def test_empty_cache_from_an_older_build_is_a_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "images.u8").write_bytes(b"")
    (tmp_path / "c" / "index.jsonl").write_text("")
    header = {"version": 1, "n": 0, "size": 16, "source": "", "complete": True,
              "skipped": [["0000000", "missing image a.png"]]}  # fmt: skip
    (tmp_path / "c" / "cache.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match="holds no images .1 sample.s. were skipped"):
        CachedImages(tmp_path / "c")
    # building with the same settings must not reuse it as a finished cache
    with pytest.raises(ValueError, match="holds no images"):
        build_cache(SyntheticCaptions(4, image_size=16), tmp_path / "c", size=16, progress=False)


def test_build_cache_leaves_a_file_named_as_out_alone(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me\n")
    with pytest.raises(FileExistsError, match="is a file; the cache is a folder"):
        build_cache(SyntheticCaptions(2), target, size=16, progress=False)
    assert target.read_text() == "keep me\n"
