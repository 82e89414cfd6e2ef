"""``repalign compare --streaming`` time: biased CKA and CCA against unbiased CKA.

    OMP_NUM_THREADS=1 python benchmarks/streaming.py              # 4 layers x 384, 20,000 rows
    python benchmarks/streaming.py --layers 13 --width 768 --rows 50000 --threads 2

Writes one feature file of random float32 layers, then times
:func:`repalign.compare.streaming.streaming_compare` of the file's layers against each
other (every layer pair) for each metric set, alternating the sets so drifts hit them
alike, and then the moment accumulation alone on the same sizes in memory. Wall and
process CPU time are both printed (CPU time is what a busy shared machine perturbs
least). Only unbiased CKA needs the row-norm moments (``Σ x_i‖x_i‖²`` per layer,
``Σ x_i‖y_i‖²`` per pair ...), so the biased rows show what skipping them saves.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repalign.compare.streaming import streaming_compare  # noqa: E402
from repalign.metrics.streaming import GridMoments  # noqa: E402
from repalign.models.base import LayerInfo  # noqa: E402
from repalign.store.features import FeatureFile  # noqa: E402

METRIC_SETS = {
    "cka": ["cka"],
    "cka + cca": ["cka", "cca"],
    "cka unbiased": [("cka", {"unbiased": True})],
}


def write_file(path: Path, layers: int, width: int, rows: int, seed: int = 0) -> None:
    """``layers`` float32 layers of ``width`` columns sharing a 32-d latent signal."""
    rng = np.random.default_rng(seed)
    infos = [LayerInfo(f"text.layer.{k}", f"enc.{k}", "text", k, k / layers) for k in range(layers)]
    z = rng.normal(size=(rows, 32))
    feats = {
        i.name: (z @ rng.normal(size=(32, width)) + rng.normal(size=(rows, width))).astype(
            np.float32
        )
        for i in infos
    }
    with FeatureFile.create(path, infos, feats, pooling="mean", attrs={"model": "bench"}) as f:
        f.append([f"s{i:07d}" for i in range(rows)], feats)
        f.mark_complete()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument(
        "--repeat", type=int, default=5, help="alternating repeats; the median is reported"
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in METRIC_SETS}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "features.nc"
        write_file(path, args.layers, args.width, args.rows)

        def run(metrics: list) -> None:
            streaming_compare([path], metrics, chunk_size=args.chunk_size, progress=False)

        run(["cka"])  # warm-up: file cache, allocator
        for _ in range(args.repeat):
            for name, metrics in METRIC_SETS.items():
                times[name].append(seconds(lambda m=metrics: run(m)))
    report(f"streaming_compare, one file: {args.layers} layers x {args.width}, {args.rows} rows, "
           f"chunk {args.chunk_size}, float64, torch threads {torch.get_num_threads()}", times)  # fmt: skip

    # the accumulation alone, rows already in memory: no file reads, no scoring
    gen = torch.Generator().manual_seed(0)
    names = [f"l{k}" for k in range(args.layers)]
    chunks = [
        {k: torch.randn(min(args.chunk_size, args.rows - lo), args.width, generator=gen,
                        dtype=torch.float64) for k in names}
        for lo in range(0, args.rows, args.chunk_size)
    ]  # fmt: skip

    def accumulate(row_norm_moments: bool) -> None:
        grid = GridMoments(names, None, dtype=torch.float64, row_norm_moments=row_norm_moments)
        for chunk in chunks:
            grid.update(chunk)

    acc: dict[str, list[tuple[float, float]]] = {"biased only": [], "row norms too": []}
    accumulate(False)
    for _ in range(args.repeat):
        acc["biased only"].append(seconds(lambda: accumulate(False)))
        acc["row norms too"].append(seconds(lambda: accumulate(True)))
    report("GridMoments.update alone (rows in memory), same sizes", acc)


def seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``fn()``; with one thread the CPU time is what a
    busy shared machine perturbs least."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def report(title: str, times: dict[str, list[tuple[float, float]]]) -> None:
    """Median (min-max) wall and CPU time of each row, and its CPU-time ratio to the first row."""
    print(f"{title}; median of {len(next(iter(times.values())))} runs (min-max)")
    base = statistics.median(c for _, c in next(iter(times.values())))
    for name, runs in times.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"  {name:<14} wall {wall:6.3f} s ({min(walls):.3f}-{max(walls):.3f})  "
              f"CPU {cpu:6.3f} s ({min(cpus):.3f}-{max(cpus):.3f})  CPU x{cpu / base:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
