"""Turning samples into inputs of any ``nn.Module`` (for ``ModuleAdapter``).

Collated batches have one shape, ``{"args": tuple, "kwargs": dict[, "mask": tensor]}``,
so the adapter calls ``model(*args, **kwargs)`` whatever the model takes; ``mask`` is the
text padding mask when the model itself does not take it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from repalign.data.base import Sample
from repalign.models.timm_vision import collate_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Collate = Callable[[Sequence[Sample]], dict[str, Any]]


def image_transform(
    image_size: int | tuple[int, int] = 224,
    *,
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Any], torch.Tensor]:
    """torchvision-style evaluation preprocessing: PIL image -> normalised ``(3, H, W)`` float.

    The shorter side is resized to ``resize`` (default: ``image_size``; bilinear,
    antialiased), the centre ``image_size`` crop kept, scaled to [0, 1] and normalised with
    ``mean``/``std`` (ImageNet's by default). A ``(H, W)`` ``image_size`` without ``resize``
    resizes to exactly that. torchvision's ImageNet classifiers were evaluated with
    ``image_size=224, resize=256``.
    """
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(resize or image_size, antialias=True),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def as_call(inputs: Any, who: str) -> dict[str, Any]:
    """What a user's collate returned as ``{"args": ..., "kwargs": ...}``."""
    if isinstance(inputs, torch.Tensor):
        return {"args": (inputs,), "kwargs": {}}
    if isinstance(inputs, tuple | list):
        return {"args": tuple(inputs), "kwargs": {}}
    if isinstance(inputs, Mapping):
        return {"args": (), "kwargs": dict(inputs)}
    raise TypeError(
        f"{who}: collate must return a tensor (the model's one input), a tuple of positional "
        f"inputs or a dict of keyword inputs, got {type(inputs).__name__}"
    )


def user_collate(collate: Callable[[Sequence[Sample]], Any], who: str) -> Collate:
    return lambda samples: as_call(collate(samples), who)


def image_collate(transform: Callable[[Any], torch.Tensor], who: str) -> Collate:
    """Each sample's image through ``transform``, stacked: the model's one input."""
    return lambda samples: {"args": (collate_images(samples, transform, who),), "kwargs": {}}


def tokenizer_collate(
    tokenizer: Any, max_length: int, who: str, forward: Callable[..., Any] | None
) -> Collate:
    """Captions tokenised (padded, truncated to ``max_length``) as keyword inputs; those
    ``forward`` does not name are dropped (all kept when it names none but takes ``**kwargs``,
    or is ``None``: :func:`repalign.models.hf.accepted_inputs`), and the attention mask
    always masks the pooling."""
    from repalign.models.hf import accepted_inputs, tokenize_captions

    accepts = None if forward is None else accepted_inputs(forward)
    lock = threading.Lock()

    def collate(samples: Sequence[Sample]) -> dict[str, Any]:
        enc = tokenize_captions(tokenizer, samples, max_length, lock, who)
        kwargs = {k: v for k, v in enc.items() if accepts is None or k in accepts}
        return {"args": (), "kwargs": kwargs, "mask": enc.get("attention_mask")}

    return collate


def default_collate(
    model: nn.Module,
    stream: str,
    who: str,
    *,
    collate: Callable[[Sequence[Sample]], Any] | None,
    transform: Callable[[Any], torch.Tensor] | None,
    tokenizer: Any,
    max_length: int,
    image_size: int | tuple[int, int],
    resize: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    custom_call: bool,
) -> tuple[Collate, dict[str, Any]]:
    """The collate a ``ModuleAdapter`` uses, and a description of it for provenance."""
    if collate is not None:
        return user_collate(collate, who), {
            "collate": getattr(collate, "__qualname__", repr(collate))
        }
    if stream == "vision":
        if tokenizer is not None:
            raise ValueError(
                f"{who}: a tokenizer is for stream='text'; a vision model reads images "
                "(give transform=, image_size=/mean=/std=, or collate=)"
            )
        if transform is not None:
            return image_collate(transform, who), {"transform": repr(transform)}
        described = {
            "image_size": image_size, "resize": resize or image_size,
            "mean": list(mean), "std": list(std),
        }  # fmt: skip
        tf = image_transform(image_size, resize=resize, mean=mean, std=std)
        return image_collate(tf, who), described
    if stream == "text":
        if tokenizer is None:
            raise ValueError(
                f"{who}: stream='text' needs tokenizer= (a transformers tokenizer) or "
                "collate= (samples -> model inputs): samples hold captions as strings"
            )
        described = {
            "tokenizer": type(tokenizer).__name__,
            "tokenizer_source": str(getattr(tokenizer, "name_or_path", "")),
            "max_length": max_length,
        }
        forward = None if custom_call else model.forward
        return tokenizer_collate(tokenizer, max_length, who, forward), described
    raise ValueError(
        f"{who}: stream={stream!r} has no default preprocessing; give collate= "
        "(samples -> model inputs)"
    )
