"""DevicePrefetcher: every batch, in order, on the device, nothing extra."""

from __future__ import annotations

import pytest
import torch

from repalign._tensors import to_device
from repalign.train.prefetch import DevicePrefetcher


def _batches(n: int):
    return [
        {"x": torch.full((4, 3), float(i)), "pair": (torch.tensor([i]), [torch.tensor(i)])}
        for i in range(n)
    ]


def test_cpu_batches_pass_through_in_order():
    source = _batches(5)
    seen = list(DevicePrefetcher(iter(source), torch.device("cpu")))
    assert len(seen) == 5
    assert all(a is b for a, b in zip(seen, source, strict=True))  # not copied on the CPU


def test_an_empty_stream_stops_at_once_and_the_source_is_read_one_ahead():
    assert list(DevicePrefetcher(iter([]), torch.device("cpu"))) == []
    pulled = []

    def source():
        for b in _batches(3):
            pulled.append(int(b["x"][0, 0]))
            yield b

    prefetcher = DevicePrefetcher(source(), torch.device("cpu"))
    assert pulled == [0]  # the first batch is fetched ahead
    next(prefetcher)
    assert pulled == [0, 1]


def test_to_device_keeps_the_structure():
    moved = to_device(_batches(1)[0], torch.device("cpu"))
    assert set(moved) == {"x", "pair"}
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_arrive_on_the_device_intact():
    device = torch.device("cuda")
    source = [{"x": torch.randn(64, 3, 32, 32).pin_memory()} for _ in range(5)]
    expected = [b["x"].clone() for b in source]
    seen = []
    for batch in DevicePrefetcher(iter(source), device):
        assert batch["x"].device.type == "cuda"
        seen.append((batch["x"] * 2).cpu())  # used on the compute stream
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want * 2)
