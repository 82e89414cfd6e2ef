"""Linear CKA permutation nulls and bootstrap intervals: Gram route against feature route.

    OMP_NUM_THREADS=1 python benchmarks/cka_routes.py
    OMP_NUM_THREADS=1 python benchmarks/cka_routes.py --shapes 1000x384x192,4000x384x192

A permuted or resampled layer can be scored from its rows (a cross product, O(n·d1·d2)
multiply-adds per pair) or from an n x n Gram cut out of the prepared layer's (two
gathers, a re-centering for biased resamples, then an O(n²) inner product per pair).
``repalign.metrics.cka`` picks per pair by a cost model in which one element of an n x n
gather or pass costs ``_PASS_COST`` GEMM multiply-adds. This script prints

1. the calibration: nanoseconds per element of an n x n gather and of a double centering,
   and per multiply-add of a GEMM, on this machine;
2. for each shape ``n x d1 x d2``: the time of ``permutation_test`` and ``bootstrap_ci``
   with the route forced to the Gram (``_PASS_COST = 0``: how every linear layer within
   256 MiB was scored before the cost model), forced to the rows, and as chosen, all in
   one run, with the largest score difference between the routes.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repalign.metrics import bootstrap_ci, permutation_test  # noqa: E402
from repalign.metrics._kernels import double_center  # noqa: E402

cka_module = importlib.import_module("repalign.metrics.cka")
ROUTES = {"gram (before)": 0, "rows": 10**15, "chosen": cka_module._PASS_COST}


def _best(fn, repeat: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _cut(gram: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return gram.index_select(0, idx).index_select(1, idx)


def _cross(x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.T @ y[idx]


def calibrate(sizes: list[int]) -> None:
    print("| n | gather ns/element | double-centering ns/element | GEMM ns/multiply-add |")
    print("|---|---|---|---|")
    for n in sizes:
        x = torch.randn(n, 384, dtype=torch.float64)
        gram = x @ x.T
        idx = torch.randint(n, (n,))
        y = torch.randn(n, 192, dtype=torch.float64)
        gather = _best(partial(_cut, gram, idx)) / (2 * n * n)
        center = _best(partial(double_center, gram)) / (n * n)
        gemm = _best(partial(_cross, x, y, idx)) / (n * 384 * 192)
        print(f"| {n} | {gather * 1e9:.2f} | {center * 1e9:.2f} | {gemm * 1e9:.3f} |", flush=True)


def routes(shapes: list[tuple[int, int, int]], draws: int) -> None:
    print(f"\n{draws} permutations and {draws} bootstrap resamples of linear CKA, seconds")
    print("| n x d1 x d2 | statistic | " + " | ".join(ROUTES) + " | max score diff |")
    print("|---|---|" + "---|" * (len(ROUTES) + 1))
    for n, d1, d2 in shapes:
        g = torch.Generator().manual_seed(0)
        z = torch.randn(n, 16, generator=g, dtype=torch.float64)
        x = z @ torch.randn(16, d1, generator=g, dtype=torch.float64)
        x += torch.randn(n, d1, generator=g, dtype=torch.float64)
        y = z @ torch.randn(16, d2, generator=g, dtype=torch.float64)
        y += torch.randn(n, d2, generator=g, dtype=torch.float64)
        for stat, run, key in (
            ("permutation", partial(permutation_test, "cka", x, y, n_permutations=draws), "null"),
            ("bootstrap", partial(bootstrap_ci, "cka", x, y, n_boot=draws), "boot"),
        ):
            cells, outs = [], []
            for cost in ROUTES.values():
                cka_module._PASS_COST = cost
                start = time.perf_counter()
                outs.append(run()[key])
                cells.append(f"{time.perf_counter() - start:.2f}")
            cka_module._PASS_COST = ROUTES["chosen"]
            diff = max(float((o - outs[0]).abs().max()) for o in outs)
            print(f"| {n} x {d1} x {d2} | {stat} | " + " | ".join(cells) + f" | {diff:.1e} |",
                  flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shapes", default="1000x384x192,1000x768x1024,4000x384x192", help="n x d1 x d2, ..."
    )
    parser.add_argument("--draws", type=int, default=20, help="permutations and resamples")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, one thread, float64; _PASS_COST = {ROUTES['chosen']}\n")
    calibrate(sorted({n for n, _, _ in shapes}))
    routes(shapes, args.draws)


if __name__ == "__main__":
    main()
