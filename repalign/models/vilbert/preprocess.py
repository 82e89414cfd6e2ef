"""Images and captions to ViLBERT inputs (shared by the collators and the adapter)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class ImageTransform:
    """Resize to ``size`` x ``size``, optionally augment, scale to [0, 1] and normalise.

    Augmentation is caption-safe: a mild random resized crop (scale 0.9-1, aspect
    0.9-1.1, no flip, which would swap "left of" and "right of") and brightness/
    contrast jitter of +-10% (no hue change, which could change a colour word).

    After the crop and resize every output value is a function of the pixel's uint8
    value and channel only, so it is computed for the 256 possible values (the same
    float32 operations, in the same order, as on the image itself) and looked up: one
    pass over the pixels instead of six.
    """

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    augment: bool = False

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        out = torch.empty(3, self.size, self.size)
        self.write(image, rng, out.numpy())
        return out

    def write(self, image: Image.Image, rng: np.random.Generator | None, out: np.ndarray) -> None:
        """Transform ``image`` into ``out`` (3, S, S) float32; draws from ``rng`` when augmenting."""
        image = image.convert("RGB")
        if self.augment:
            if rng is None:
                raise ValueError("augment=True needs a random generator")
            image = self._crop(image, rng)
        image = image.resize((self.size, self.size), Image.BILINEAR)
        pixels = np.asarray(image)  # (S, S, 3) uint8
        x = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)  # (256, 1)
        if self.augment:
            mean = (pixels.astype(np.float32) / np.float32(255.0)).mean()
            x = (x - mean) * rng.uniform(0.9, 1.1) + mean  # contrast
            x = np.clip(x * rng.uniform(0.9, 1.1), 0.0, 1.0)  # brightness
        lut = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)  # (256, 3)
        for c in range(3):
            np.take(lut[:, c], pixels[:, :, c], out=out[c])

    @staticmethod
    def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        area = w * h * rng.uniform(0.9, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(0.9), np.log(1.1))))
        cw = min(w, round(np.sqrt(area * aspect)))
        ch = min(h, round(np.sqrt(area / aspect)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x0, y0, x0 + cw, y0 + ch))


def batch_buffer(*shape: int) -> torch.Tensor:
    """An uninitialised float32 tensor; inside a DataLoader worker, in shared memory.

    A worker hands its batch to the main process through shared memory; a tensor
    allocated there already (as ``default_collate`` does) is passed as a handle,
    where an ordinary one is first copied (about 45 ms for a ``base`` batch of 128
    images, 77 MB).
    """
    if get_worker_info() is None:
        return torch.empty(*shape)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * 4)
    return torch.empty(0).set_(storage).view(*shape)


def stack_images(
    images: Sequence[Image.Image | None], transform: ImageTransform, rng: np.random.Generator | None
) -> torch.Tensor:
    """(B, 3, S, S) float32 pixels, written in place; a missing image is an error naming its position."""
    out = batch_buffer(len(images), 3, transform.size, transform.size)
    view = out.numpy()
    for i, image in enumerate(images):
        if image is None:
            raise ValueError(
                f"sample {i} of the batch has no image; ViLBERT needs image-text pairs"
            )
        transform.write(image, rng, view[i])
    return out


def tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | None], *, max_length: int
) -> dict[str, torch.Tensor]:
    """Pad to the longest caption; returns ``input_ids``, ``attention_mask`` and
    ``special_tokens_mask`` as (B, T) long tensors."""
    missing = [i for i, t in enumerate(texts) if t is None]
    if missing:
        raise ValueError(f"samples {missing} of the batch have no text; ViLBERT needs captions")
    enc = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_token_type_ids=False,
        return_tensors="pt",
    )
    return {k: enc[k].long() for k in ("input_ids", "attention_mask", "special_tokens_mask")}
