"""Image preprocessing: the lookup-table transform equals the direct float32 maths."""

import numpy as np
import pytest
import torch
from PIL import Image

from repalign.data.synthetic import SyntheticCaptions
from repalign.models.vilbert.preprocess import ImageTransform, stack_images

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
