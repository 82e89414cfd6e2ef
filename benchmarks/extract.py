"""Extraction overhead: repalign's runner vs a bare forward pass, in the same run.

    python benchmarks/extract.py                          # CPU, ViT-B/16-sized, 224 px
    python benchmarks/extract.py --device cuda            # GPU (add --dtype bfloat16 to try it)
    python benchmarks/extract.py --quick                  # small sizes, a smoke run

The model is a ViT-B/16-sized timm ``VisionTransformer`` with random weights
(12 blocks, width 768; override with --depth/--width/--img-size). "bare" runs
``forward_features`` on the same pre-made batches (moved to the device each step,
as any pipeline must); "extract" runs :func:`repalign.extract.run.extract` on them
(hooks on all 12 blocks, pooling on the device, pinned-buffer copies, background
netCDF writer, prefetch thread), once with ``cls`` and once with ``mean`` pooling.
Image decoding/preprocessing is excluded from both (the collate returns the
pre-made batch) so the ratio measures extraction overhead only. The writer row
times ``FeatureFile.append`` alone for batches of the same shape.
Ratio = extraction throughput / bare throughput (target: >= 0.90 CPU, >= 0.95 GPU).
"CPU-time ratio" compares process CPU time (all threads) instead of wall time: on a
shared, busy CPU machine wall times swing with other jobs, CPU time much less.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import sync  # noqa: E402

from repalign.data.base import Sample  # noqa: E402
from repalign.extract.run import DTYPES, extract  # noqa: E402
from repalign.models.timm_vision import TimmVisionAdapter  # noqa: E402
from repalign.store.features import FeatureFile  # noqa: E402


class PremadeBatches(TimmVisionAdapter):
    """timm-vision whose collate returns a pre-made pixel batch (no image decoding)."""

    def __init__(self, model: torch.nn.Module, pixels: torch.Tensor) -> None:
        super().__init__(model)
        self.pixels = pixels

    def collate(self, samples):
        return {"pixel_values": self.pixels[: len(samples)]}


def bare(adapter, n_batches: int, device, dtype) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``n_batches`` plain forward passes."""
    model = adapter.model
    with torch.no_grad():
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n_batches):
            x = adapter.pixels.to(device=device, dtype=dtype, non_blocking=True)
            model.forward_features(x)
        sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def extraction(
    adapter, n_batches: int, batch: int, pool: str, device, dtype_name: str, tmp: Path
) -> float:
    samples = [Sample(f"s{i:07d}") for i in range(n_batches * batch)]
    out = tmp / f"bench-{pool}.nc"
    start, cpu = time.perf_counter(), time.process_time()
    extract(adapter, samples, out, batch_size=batch, pool=pool, device=str(device), dtype=dtype_name,
            layers=["vision.block.*"], progress=False, overwrite=True, stop_early=False)  # fmt: skip
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def writer(n_batches: int, batch: int, adapter, tmp: Path) -> tuple[float, float]:
    layers = [i for i in adapter.layers() if i.name.startswith("vision.block.")]
    width = adapter.model.embed_dim
    rng = np.random.default_rng(0)
    feats = {i.name: rng.normal(size=(batch, width)).astype(np.float32) for i in layers}
    ids = [f"s{i:07d}" for i in range(batch)]
    start = time.perf_counter()
    with FeatureFile.create(tmp / "writer.nc", layers, feats, pooling="cls", attrs={}) as f:
        for _ in range(n_batches):
            f.append(ids, feats)
    seconds = time.perf_counter() - start
    mbytes = n_batches * sum(a.nbytes for a in feats.values()) / 1e6
    return seconds, mbytes


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 128 on GPU")
    p.add_argument(
        "--batches", type=int, default=None, help="timed batches per mode (default: 6 CPU, 30 GPU)"
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="alternating repeats; the median is reported"
    )
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (128 if gpu else 16)
    n_batches = args.batches or (30 if gpu else 6)
    if args.quick:
        args.depth, args.width, args.heads, args.img_size, batch, n_batches = 4, 192, 3, 64, 8, 4
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=args.depth,
                              embed_dim=args.width, num_heads=args.heads, img_size=args.img_size)  # fmt: skip
    pixels = torch.randn(batch, 3, args.img_size, args.img_size)
    if gpu:
        pixels = pixels.pin_memory()
    adapter = PremadeBatches(model, pixels)
    dtype = DTYPES[args.dtype]
    adapter.to(device, dtype)
    model.eval()
    bare(adapter, 2, device, dtype)  # warm-up (allocator, kernels)
    times: dict[str, list[tuple[float, float]]] = {
        "bare": [],
        "extract cls": [],
        "extract mean": [],
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        extraction(adapter, 2, batch, "cls", device, args.dtype, tmp)  # warm-up
        for _ in range(args.repeat):  # alternate so drifts (clocks, caches) hit every mode alike
            times["bare"].append(bare(adapter, n_batches, device, dtype))
            times["extract cls"].append(
                extraction(adapter, n_batches, batch, "cls", device, args.dtype, tmp)
            )
            times["extract mean"].append(
                extraction(adapter, n_batches, batch, "mean", device, args.dtype, tmp)
            )
        w_seconds, w_mb = writer(max(n_batches, 20), batch, adapter, tmp)

    from rich.console import Console
    from rich.table import Table

    n_images = n_batches * batch
    base = statistics.median(t for t, _ in times["bare"])
    base_cpu = statistics.median(c for _, c in times["bare"])
    name = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()
    table = Table(title=(f"extraction vs bare forward: ViT depth {args.depth} width {args.width} "
                         f"{args.img_size}px, batch {batch} x {n_batches}, {args.dtype}, {device} ({name}), "
                         f"torch threads {torch.get_num_threads()}"))  # fmt: skip
    cols = ("mode", "median s", "min-max s", "images/s", "ratio to bare", "CPU s", "CPU-time ratio")
    for col in cols:
        table.add_column(col, justify="right")
    for mode, runs in times.items():
        walls, cpus = [t for t, _ in runs], [c for _, c in runs]
        s, c = statistics.median(walls), statistics.median(cpus)
        table.add_row(mode, f"{s:.3f}", f"{min(walls):.3f}-{max(walls):.3f}", f"{n_images / s:.1f}",
                      f"{base / s:.3f}", f"{c:.2f}", f"{base_cpu / c:.3f}")  # fmt: skip
    w_rows = max(n_batches, 20) * batch
    table.add_row("writer only", f"{w_seconds:.3f}", "", f"{w_rows / w_seconds:.0f} rows/s",
                  f"{w_mb / w_seconds:.1f} MB/s", "", "")  # fmt: skip
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
