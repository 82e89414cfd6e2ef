"""BatchLoader: worker threads, dataset order, skips reported with their batch."""

from __future__ import annotations

import threading
import time

import pytest

from repalign.data.base import Sample
from repalign.data.captions import UnreadableImage
from repalign.extract.loader import BatchLoader


class Recorder:
    """A stand-in adapter whose collate notes which thread ran it."""

    collate_thread_safe = True

    def __init__(self) -> None:
        self.threads: set[str] = set()
        self.running = 0
        self.max_running = 0

    def collate(self, samples):
        self.threads.add(threading.current_thread().name)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        time.sleep(0.01)
        self.running -= 1
        return {"ids": [s.sample_id for s in samples]}


class Unsafe(Recorder):
    collate_thread_safe = False


class Data(list):
    def __getitem__(self, i):
        if i % 7 == 3:
            raise UnreadableImage(f"id{i}", "broken")
        time.sleep(0.002 * (i % 3))  # uneven load times must not reorder batches
        return Sample(f"id{i}", "x")


@pytest.mark.parametrize("workers", [1, 3])
def test_batches_come_in_order_with_skips(workers):
    adapter = Recorder()
    batches = list(BatchLoader(adapter, Data(range(23)), 2, 20, 5, workers=workers))  # type: ignore[arg-type]
    assert [b.next_index for b in batches] == [7, 12, 17, 20]
    ids = [i for b in batches for i in b.sample_ids]
    assert ids == [f"id{i}" for i in range(2, 20) if i % 7 != 3]
    assert [s for b in batches for s, _ in b.skipped] == ["id3", "id10", "id17"]
    assert batches[0].inputs["ids"] == batches[0].sample_ids
    assert len(adapter.threads) <= workers and all(
        t.startswith("repalign-loader") for t in adapter.threads
    )


def test_stopping_early_does_not_hang():
    it = iter(BatchLoader(Recorder(), Data(range(1000)), 0, 1000, 4, workers=2))  # type: ignore[arg-type]
    next(it)
    t0 = time.perf_counter()
    it.close()  # type: ignore[attr-defined]
    assert time.perf_counter() - t0 < 2


def test_collate_serialised_unless_declared_thread_safe():
    unsafe = Unsafe()
    list(BatchLoader(unsafe, Data(range(40)), 0, 40, 2, workers=4))  # type: ignore[arg-type]
    assert unsafe.max_running == 1 and len(unsafe.threads) > 1  # loading still in parallel
