"""Image preprocessing: the lookup-table transform equals the direct float32 maths."""

import numpy as np
import pytest
import torch
from PIL import Image

from repalign.data.synthetic import SyntheticCaptions
from repalign.models.vilbert.preprocess import ImageTransform, batch_buffer, stack_images

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _direct(image: Image.Image, t: ImageTransform, rng: np.random.Generator | None) -> torch.Tensor:
    """The transform written out pixel by pixel, as the docstring describes it."""
    image = image.convert("RGB")
    if t.augment:
        image = ImageTransform._crop(image, rng)
    image = image.resize((t.size, t.size), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32) / 255.0
    if t.augment:
        mean = x.mean()
        x = (x - mean) * rng.uniform(0.9, 1.1) + mean
        x = np.clip(x * rng.uniform(0.9, 1.1), 0.0, 1.0)
    x = (x - np.asarray(t.mean, np.float32)) / np.asarray(t.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("size", [32, 48])
def test_lookup_table_equals_direct_maths_bit_for_bit(augment, size):
    images = [SyntheticCaptions(6, seed=1, image_size=40)[i].image for i in range(6)]
    t = ImageTransform(size, MEAN, STD, augment)
    got = stack_images(images, t, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    want = torch.stack([_direct(im, t, rng) for im in images])
    assert got.shape == (6, 3, size, size) and got.dtype == torch.float32
    assert torch.equal(got, want)
    assert torch.equal(t(images[0], np.random.default_rng(0)), got[0])


def test_augmentation_needs_a_generator_and_a_missing_image_is_named():
    image = SyntheticCaptions(1, image_size=32)[0].image
    with pytest.raises(ValueError, match="random generator"):
        ImageTransform(32, augment=True)(image)
    with pytest.raises(ValueError, match="sample 1 of the batch has no image"):
        stack_images([image, None], ImageTransform(32), None)


class _BufferProbe(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> torch.Tensor:
        buf = batch_buffer(2, 3)
        buf.fill_(1.0)
        return torch.tensor([buf.is_shared(), buf.shape == (2, 3), float(buf.sum())])


def test_batch_buffer_is_in_shared_memory_only_inside_a_loader_worker():
    """A worker's batch is then handed over without a copy into shared memory."""
    assert not batch_buffer(2, 3).is_shared()
    (in_worker,) = torch.utils.data.DataLoader(_BufferProbe(), batch_size=None, num_workers=1)
    assert in_worker.tolist() == [1.0, 1.0, 6.0]
