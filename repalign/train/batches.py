"""A stream of training batches where batch ``k`` is a pure function of ``(seed, k)``.

That makes ``--resume`` exact without saving data-loader internals: a resumed
run just starts the stream at the next batch index. Sample order is a fresh
permutation per epoch drawn from ``(seed, epoch)``, and the collator (masking,
negatives, augmentation) runs under global RNGs seeded from ``(seed, k)``, so
results do not depend on the number of DataLoader workers either.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from repalign.train.interrupt import ignore_stop_signals


@contextmanager
def seeded(*key: int) -> Iterator[None]:
    """Seed python, numpy and torch (CPU) global RNGs from ``key``; restore them on exit."""
    seed = int(np.random.SeedSequence([abs(int(k)) for k in key]).generate_state(1)[0])
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002 (global RNG on purpose)
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 (global RNG on purpose)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002 (global RNG on purpose)


def collate_seeded(
    collate: Callable[[list[Any]], Any], samples: list[Any], seed: int, k: int, *salt: int
) -> Any:
    """``collate(samples)`` for batch ``k`` under global RNGs seeded from ``(seed, k, *salt)``.

    A collator with a ``reseed(seed: int)`` method (one that keeps its own generator)
    gets the batch's torch seed first. The key, and so the random draws, must not
    change: a resumed run replays batch ``k`` exactly only if this stays a pure
    function of its arguments. :class:`~repalign.distributed.ShardedBatchStream`
    passes the rank in ``salt``.
    """
    with seeded(seed, 104729, k, *salt):
        reseed = getattr(collate, "reseed", None)
        if callable(reseed):
            reseed(int(torch.initial_seed() % 2**63))
        return collate(samples)


class BatchStream(Dataset):
    """Indexable batches: ``stream[k]`` is collated batch ``k`` (epochs wrap around).

    ``collate`` may use the global RNGs (seeded per batch here); if it has a
    ``reseed(seed: int)`` method that is called with the batch's seed too, for
    collators that keep their own generator.
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        *,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) < batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} samples, fewer than one batch of {batch_size}; "
                "lower batch_size or add data"
            )
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.seed, self.shuffle = seed, shuffle
        self.batches_per_epoch = len(dataset) // batch_size  # the ragged tail is dropped

    def __len__(self) -> int:  # a nominal length; any k >= 0 is valid
        return self.batches_per_epoch

    @lru_cache(maxsize=2)  # noqa: B019 - a handful of epochs, freed with the stream
    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, 7919, epoch]).permutation(n)

    def indices(self, k: int) -> np.ndarray:
        epoch, j = divmod(k, self.batches_per_epoch)
        return self._order(epoch)[j * self.batch_size : (j + 1) * self.batch_size]

    def __getitem__(self, k: int) -> Any:
        samples = [self.dataset[int(i)] for i in self.indices(k)]
        return collate_seeded(self.collate, samples, self.seed, k)


class _RangeSampler(Sampler[int]):
    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def batch_loader(
    stream: BatchStream, start: int, stop: int, *, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches ``start .. stop-1`` of ``stream``, prefetched by ``num_workers`` processes."""
    return DataLoader(
        stream,
        batch_size=None,
        sampler=_RangeSampler(start, stop),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        # Its own generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run would be one draw off the uninterrupted one.
        generator=torch.Generator().manual_seed(stream.seed),
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=ignore_stop_signals,  # a Ctrl-C or SIGTERM is the main process's to handle
    )
