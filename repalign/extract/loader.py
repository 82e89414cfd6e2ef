"""Load and collate batches ahead of the model, in worker threads, in dataset order.

Decoding and resizing images (PIL) and tokenising (the Rust tokenizers) release the
GIL, so a few threads keep a GPU fed without the pickling and start-up cost of worker
processes. Samples whose image fails to decode are skipped and reported with the batch.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from repalign._tensors import map_tensors
from repalign.data.base import Sample
from repalign.data.captions import UnreadableImage
from repalign.models.base import Adapter


@dataclass
class Batch:
    sample_ids: list[str]
    inputs: dict[str, Any]  # the adapter's collated model inputs (CPU tensors); {} if empty
    next_index: int  # dataset position after this batch
    skipped: list[tuple[str, str]]  # samples of this batch that failed to load


class BatchLoader:
    """Iterate over ``dataset[start:stop]`` in batches of ``batch_size`` positions.

    ``workers`` threads each load and collate whole batches; at most
    ``workers + ahead`` batches are in flight. Iteration order is dataset order.
    Collate calls are serialised unless the adapter sets ``collate_thread_safe``. With
    ``pin_memory`` (CUDA runs) the collated tensors are copied to pinned memory here.
    """

    def __init__(
        self,
        adapter: Adapter,
        dataset: Sequence[Sample],
        start: int,
        stop: int,
        batch_size: int,
        *,
        workers: int = 2,
        ahead: int = 2,
        pin_memory: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.adapter, self.dataset = adapter, dataset
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.workers, self.ahead = workers, ahead
        self.pin_memory = pin_memory
        self._collate_lock = None if adapter.collate_thread_safe else threading.Lock()

    def load(self, index: int) -> Batch:
        """The batch starting at dataset position ``index``."""
        end = min(index + self.batch_size, self.stop)
        samples: list[Sample] = []
        skipped: list[tuple[str, str]] = []
        for i in range(index, end):
            try:
                samples.append(self.dataset[i])
            except UnreadableImage as exc:
                skipped.append((exc.sample_id, exc.reason))
        if not samples:
            inputs: dict[str, Any] = {}
        elif self._collate_lock is None:
            inputs = self.adapter.collate(samples)
        else:
            with self._collate_lock:
                inputs = self.adapter.collate(samples)
        if self.pin_memory:  # in this worker thread, so the host-to-device copy can be async
            inputs = map_tensors(inputs, lambda t: t if t.is_pinned() else t.pin_memory())
        return Batch([s.sample_id for s in samples], inputs, end, skipped)

    def __iter__(self) -> Iterator[Batch]:
        starts = iter(range(self.start, self.stop, self.batch_size))
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="repalign-loader")
        pending: deque[Future[Batch]] = deque()
        try:
            for index in starts:
                pending.append(pool.submit(self.load, index))
                if len(pending) >= self.workers + self.ahead:
                    break
            while pending:
                batch = pending.popleft().result()
                index = next(starts, None)
                if index is not None:
                    pending.append(pool.submit(self.load, index))
                yield batch
        finally:  # also when the consumer stops early (error, Ctrl-C)
            pool.shutdown(wait=False, cancel_futures=True)
