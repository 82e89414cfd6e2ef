import numpy as np
import pytest
import torch
from PIL import Image

from repalign.data.cache import CachedImages, build_cache, resize_image
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
