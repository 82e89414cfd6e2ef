"""Images and captions to ViLBERT inputs (shared by the collators and the adapter)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class ImageTransform:
    """Resize to ``size`` x ``size``, optionally augment, scale to [0, 1] and normalise.

    Augmentation is caption-safe: a mild random resized crop (scale 0.9-1, aspect
    0.9-1.1, no flip, which would swap "left of" and "right of") and brightness/
    contrast jitter of +-10% (no hue change, which could change a colour word).
    """

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    augment: bool = False

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = image.convert("RGB")
        if self.augment:
            if rng is None:
                raise ValueError("augment=True needs a random generator")
            image = self._crop(image, rng)
        image = image.resize((self.size, self.size), Image.BILINEAR)
        x = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
        if self.augment:
            mean = x.mean()
            x = (x - mean) * rng.uniform(0.9, 1.1) + mean  # contrast
            x = np.clip(x * rng.uniform(0.9, 1.1), 0.0, 1.0)  # brightness
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))  # (3, S, S)

    @staticmethod
    def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        area = w * h * rng.uniform(0.9, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(0.9), np.log(1.1))))
        cw = min(w, round(np.sqrt(area * aspect)))
        ch = min(h, round(np.sqrt(area / aspect)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x0, y0, x0 + cw, y0 + ch))


def stack_images(
    images: Sequence[Image.Image | None], transform: ImageTransform, rng: np.random.Generator | None
) -> torch.Tensor:
    """(B, 3, S, S) float32 pixels; a missing image is an error naming its position."""
    tensors = []
    for i, image in enumerate(images):
        if image is None:
            raise ValueError(
                f"sample {i} of the batch has no image; ViLBERT needs image-text pairs"
            )
        tensors.append(transform(image, rng))
    return torch.stack(tensors)


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
