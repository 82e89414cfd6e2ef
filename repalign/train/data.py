"""Datasets and held-out evaluation shared by pretraining and fine-tuning."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from repalign.data.base import Sample
from repalign.train.batches import BatchStream
from repalign.train.config import DataConfig

log = logging.getLogger(__name__)

# Held-out synthetic data uses seeds this far from the training seed: other scenes and images.
EVAL_SEED_OFFSET = 100_003
TEST_SEED_OFFSET = 200_003


def _synthetic(n: int, seed: int, size: int) -> Sequence[Sample]:
    from repalign.data.synthetic import SyntheticCaptions

    return SyntheticCaptions(n, seed=seed, image_size=size)


def _from_path(path: str, images: str | None) -> Sequence[Sample]:
    from repalign.data.loading import load_dataset

    return load_dataset(path, images=images)


def pretraining_data(data: DataConfig) -> tuple[Sequence[Sample], Sequence[Sample]]:
    """``(train, held_out)`` image-caption pairs for pretraining."""
    if data.cache is not None:
        from repalign.data.cache import CachedImages

        train: Sequence[Sample] = CachedImages(data.cache)
    elif data.name == "synthetic":
        train = _synthetic(data.n_train, data.seed, data.image_size)
    else:
        train = _from_path(data.name, data.images)
    if data.name == "synthetic":
        held_out = _synthetic(data.n_eval, data.seed + EVAL_SEED_OFFSET, data.image_size)
    elif data.eval_path is not None:
        held_out = _from_path(data.eval_path, data.images)
    else:
        # No held-out file: keep the last n_eval pairs out of training.
        n_eval = min(data.n_eval, len(train) // 5)
        if n_eval < 1:
            raise ValueError(f"{data.name} has too few pairs ({len(train)}) to hold some out")
        log.info("holding out the last %d of %d pairs for evaluation", n_eval, len(train))
        held_out = _Slice(train, len(train) - n_eval, len(train))
        train = _Slice(train, 0, len(train) - n_eval)
    return train, held_out


class _Slice(Sequence[Sample]):
    def __init__(self, data: Sequence[Sample], start: int, stop: int) -> None:
        self.data, self.start, self.stop = data, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i):  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.data[self.start + i]


def eval_batches(
    data: Sequence[Sample], batch_size: int, collate: Callable[[list[Any]], Any], seed: int
) -> list[Any]:
    """Every held-out sample once, in order, collated under a fixed seed (built once)."""
    n = len(data)
    stream = BatchStream(data, min(batch_size, n), collate, seed=seed, shuffle=False)
    batches = [stream[k] for k in range(stream.batches_per_epoch)]
    tail = n - stream.batches_per_epoch * stream.batch_size
    if tail:
        from repalign.train.batches import seeded

        with seeded(seed, 104729, stream.batches_per_epoch):
            batches.append(collate([data[i] for i in range(n - tail, n)]))
    return batches


def _size(batch: Mapping[str, torch.Tensor]) -> int:
    return int(batch["input_ids"].shape[0])


def average_outputs(
    model: nn.Module, batches: Sequence[Mapping[str, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Sample-weighted mean of every scalar the model returns over ``batches``."""
    sums: dict[str, torch.Tensor] = {}
    total = 0
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        n = _size(batch)
        for k, v in model(batch).items():
            if isinstance(v, torch.Tensor) and v.ndim == 0:
                sums[k] = sums.get(k, 0) + v.detach().float() * n
        total += n
    if not sums:
        return {}
    names = list(sums)
    values = (torch.stack([sums[k] for k in names]) / total).tolist()
    return dict(zip(names, values, strict=True))


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
