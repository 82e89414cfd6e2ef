"""Training-data throughput: can the DataLoader workers feed the pretraining step?

    python benchmarks/data.py                         # configs/vilbert-base.yaml, 0 1 2 workers
    python benchmarks/data.py --workers 0,4,8,12      # on a GPU host's CPU cores
    python benchmarks/data.py --cache                 # also from an image cache (repalign data cache)

Each row iterates the training batches of a pretraining config (``--config``; the
synthetic scenes of ``configs/vilbert-base.yaml`` by default: 224-pixel images drawn
on the fly, augmentation, MLM/MIM masks, negatives) through the loop's own
:func:`repalign.train.batches.batch_loader` with N worker processes, and reports
pairs/s over whole rounds of batches after the first (worker start-up). The step
consumes 1,500 pairs/s at the base preset's target on an H100, so the workers must
deliver more than that; ``--cache`` shows the same from a memory-mapped image cache,
where no image is drawn or decoded.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repalign.train.batches import BatchStream, batch_loader  # noqa: E402
from repalign.train.config import PretrainConfig, load_config  # noqa: E402
from repalign.train.pretrain import build_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pairs_per_s(stream: BatchStream, workers: int, batches: int) -> float:
    """Pairs/s of ``batches`` training batches of ``stream`` with ``workers`` loader processes."""
    # Workers take batches in turn, so batches arrive in rounds of `workers`: time whole
    # rounds, from the end of the first (worker start-up) to the end of the last.
    warmup = max(workers, 1)
    batches = -(-batches // warmup) * warmup
    loader = iter(batch_loader(stream, 0, warmup + batches, num_workers=workers))
    for _ in range(warmup):
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * stream.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "vilbert-base.yaml")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument(
        "--batches", type=int, default=None, help="timed batches (default 4x workers, >= 4)"
    )
    parser.add_argument("--n-train", type=int, default=4096, help="synthetic pairs (cache size)")
    parser.add_argument("--cache", action="store_true", help="also from an image cache")
    args = parser.parse_args()
    torch.set_num_threads(
        1
    )  # the loop's workers run one thread each; so does the main process here
    overrides = ["loop.device=cpu", f"data.n_train={args.n_train}"]
    config = load_config(PretrainConfig, args.config, overrides)
    sources = [("synthetic, drawn per batch", config)]
    tmp = tempfile.TemporaryDirectory()
    if args.cache:
        from repalign.data.cache import build_cache
        from repalign.data.synthetic import SyntheticCaptions

        size = config.data.image_size
        data = SyntheticCaptions(args.n_train, seed=config.data.seed, image_size=size)
        t = time.perf_counter()
        cache = build_cache(
            data, Path(tmp.name) / "cache", size=size, source="synthetic", progress=False
        )
        print(
            f"built the {args.n_train}-image cache in {time.perf_counter() - t:.1f} s", flush=True
        )
        sources.append(
            (
                "image cache",
                load_config(PretrainConfig, args.config, [*overrides, f"data.cache={cache}"]),
            )
        )

    print(
        f"{args.config.name}: batch {config.batch_size}, {config.data.image_size}-pixel images, "
        f"augment={config.augment}, tasks {','.join(config.tasks)}; "
        f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores visible, torch {torch.__version__}"
    )
    print("| data                        | workers | pairs/s |")
    print("|-----------------------------|---------|---------|")
    for label, cfg in sources:
        parts = build_data(cfg)  # once per source: the rows time the loader, not the set-up
        stream = BatchStream(parts["train"], cfg.batch_size, parts["train_collate"], seed=0)
        for workers in (int(w) for w in args.workers.split(",")):
            batches = args.batches or max(4, 4 * workers)
            rate = pairs_per_s(stream, workers, batches)
            print(f"| {label:<27} | {workers:7d} | {rate:7.0f} |", flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
