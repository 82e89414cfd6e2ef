"""Speed of repalign.metrics against peer formulations, measured side by side in one run.

    python benchmarks/metrics.py                 # CPU, the issue's sizes
    python benchmarks/metrics.py --device cuda   # GPU
    python benchmarks/metrics.py --quick         # small sizes, a smoke run

Peers: (1) the Gram-space formulation most CKA code copies (n x n Gram matrices,
centered with an explicit H = I - 11ᵀ/n, one call per layer pair); (2) the PyPI
package ``ckatorch`` (``cka_base``), when installed (``pip install -e '.[bench]'``);
(3) platonic-rep style mutual k-NN, one call per pair with a full n x n
similarity matrix. Where a peer's whole grid would take minutes, a few of its
calls are timed and multiplied by the number of pairs; the table says so.
Every ratio is peer time / repalign time from this run, on this machine.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timeit  # noqa: E402

from repalign.metrics import get_metric, list_metrics, pairwise  # noqa: E402

# Fastest peer per metric on a 2-core CPU at n=2000, 768 x 1024 (seconds), from the metrics issue.
PEER_SECONDS_N2000 = {
    "cka": ("anatome / netrep", 0.049),
    "mutual_knn": ("platonic-rep", 0.25),
    "svcca": ("peers", 0.85),
    "pwcca": ("peers", 0.85),
    "wasserstein_distance": ("netrep soft-matching", 0.15),
}


def layers(n: int, widths: list[int], device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """Representations sharing a latent cause, float32 like real features."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    out = []
    for i, d in enumerate(widths):
        w = torch.randn(64, d, generator=g)
        out.append(
            (torch.tanh(z @ w / 8) + (0.2 + 0.05 * i) * torch.randn(n, d, generator=g)).to(device)
        )
    return out


def gram_h_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The common peer formulation: Grams, explicit centering matrix, Frobenius inner products."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=x.dtype, device=x.device) - 1.0 / n
    kc = h @ (x @ x.T) @ h
    lc = h @ (y @ y.T) @ h
    return (kc * lc).sum() / (torch.linalg.norm(kc) * torch.linalg.norm(lc))


def platonic_mutual_knn(x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """platonic-rep style: normalise, full n x n similarity, mask the diagonal, top-k, overlap."""

    def knn(a):
        a = torch.nn.functional.normalize(a.double(), dim=1)
        sim = a @ a.T
        sim.fill_diagonal_(-1e8)
        return sim.topk(k, dim=1).indices

    kx, ky = knn(x), knn(y)
    n = x.shape[0]
    mx = torch.zeros(n, n, device=x.device).scatter_(1, kx, 1.0)
    my = torch.zeros(n, n, device=x.device).scatter_(1, ky, 1.0)
    return ((mx * my).sum(1) / k).mean()


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, what: str, ours: float, peer_name: str, peer: float | None, target: str) -> None:
        ratio = f"{peer / ours:.1f}x" if peer else "-"
        peer_s = f"{peer:.3f}" if peer else "n/a"
        self.rows.append((what, f"{ours:.3f}", f"{peer_name}: {peer_s}", ratio, target))

    def print(self) -> None:
        head = ("benchmark", "repalign s", "peer s", "peer/repalign", "target")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
        print(line)
        print("-" * len(line))
        for r in self.rows:
            print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (a smoke run, not the targets)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--knn-n", type=int, default=None, help="n for the mutual k-NN scale check")
    parser.add_argument(
        "--sections",
        default="single,grid,knn,each,perm,gridstats",
        help="comma list of: single, grid, knn, each, perm, gridstats",
    )
    args = parser.parse_args()
    dev = torch.device(args.device)
    q = args.quick
    n_single, n_grid, n_metric = (1000, 512, 300) if q else (10_000, 4096, 2000)
    n_layers, width = (4, 128) if q else (13, 768)
    table = Table()
    try:
        import ckatorch
    except ImportError:
        ckatorch = None

    print(
        f"# device: {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )

    sections = set(args.sections.split(","))

    if "single" in sections:
        _single(args, dev, n_single, table, ckatorch)
    if "grid" in sections:
        _grid(args, dev, n_grid, n_layers, width, table, ckatorch)
    if "knn" in sections:
        _knn_grid(dev, q, n_layers, width, table)
    if "each" in sections:
        _each(args, dev, q, n_metric, table)
    if "perm" in sections:
        _permutations(dev, q, table)
    if "gridstats" in sections:
        _grid_statistics(dev, q, table)
    if args.knn_n and "mutual_knn" in list_metrics():
        x, y = layers(args.knn_n, [768, 768], dev, seed=4)
        ours = timeit(lambda: get_metric("mutual_knn").fn(x, y, k=10), dev, repeat=1)
        table.add(f"mutual_knn n={args.knn_n}", ours, "none", None, "no n x n matrix")
    table.print()


def _single(args, dev, n_single, table, ckatorch) -> None:
    x, y = layers(n_single, [768, 1024], dev)
    ours = timeit(lambda: get_metric("cka").fn(x, y), dev, repeat=args.repeat)
    xd, yd = x.double(), y.double()
    floor = timeit(lambda: (xd.T @ yd, xd.T @ xd, yd.T @ yd), dev, repeat=args.repeat)
    table.add(
        f"linear CKA n={n_single} 768x1024",
        ours,
        "Gram+H",
        timeit(lambda: gram_h_cka(x, y), dev, repeat=1, warmup=0),
        ">= 10x",
    )
    if ckatorch is not None:
        table.add(
            "  same",
            ours,
            "ckatorch.cka_base",
            timeit(lambda: ckatorch.cka_base(x, y), dev, repeat=1, warmup=0),
            "-",
        )
    table.add("  same", ours, "its 3 bare GEMMs", floor, "GPU: <= 2x GEMMs")


def _grid(args, dev, n_grid, n_layers, width, table, ckatorch) -> None:
    xs = layers(n_grid, [width] * n_layers, dev, seed=1)
    ours = timeit(lambda: pairwise(xs, metric="cka"), dev, repeat=max(1, args.repeat - 1))
    stacked = torch.cat(xs, dim=1).double()

    def one_gemm():
        c = stacked - stacked.mean(0)
        return c.T @ c

    table.add(
        f"CKA grid {n_layers}x{n_layers} n={n_grid} d={width}",
        ours,
        "stacked GEMM",
        timeit(one_gemm, dev, repeat=1),
        "<= 2x GEMM",
    )
    pairs = n_layers * n_layers
    sample = 3
    if ckatorch is not None:
        t = timeit(
            lambda: [ckatorch.cka_base(xs[i], xs[i + 1]) for i in range(sample)],
            dev,
            repeat=1,
            warmup=0,
        )
        table.add(
            "  same", ours, f"ckatorch loop (x{pairs}/{sample} calls)", t * pairs / sample, ">= 10x"
        )
    t = timeit(
        lambda: [gram_h_cka(xs[i], xs[i + 1]) for i in range(sample)], dev, repeat=1, warmup=0
    )
    table.add("  same", ours, f"Gram+H loop (x{pairs}/{sample} calls)", t * pairs / sample, "-")


def _knn_grid(dev, q, n_layers, width, table) -> None:
    pairs, sample = n_layers * n_layers, 3
    if "mutual_knn" in list_metrics():
        n_knn = 512 if q else 2048
        xs_k = layers(n_knn, [width] * n_layers, dev, seed=2)
        ours = timeit(lambda: pairwise(xs_k, metric="mutual_knn", k=10), dev, repeat=1)
        t = timeit(
            lambda: [platonic_mutual_knn(xs_k[i], xs_k[i + 1], 10) for i in range(sample)],
            dev,
            repeat=1,
        )
        table.add(
            f"mutual k-NN grid {n_layers}x{n_layers} n={n_knn}",
            ours,
            f"per-pair loop (x{pairs}/{sample})",
            t * pairs / sample,
            ">= 5x",
        )


def _each(args, dev, q, n_metric, table) -> None:
    x, y = layers(n_metric, [768, 1024], dev, seed=3)
    for name in list_metrics():
        opts = {"k": 10} if "k" in get_metric(name).options else {}
        ours = timeit(
            lambda name=name, opts=opts: get_metric(name).fn(x, y, **opts), dev, repeat=args.repeat
        )
        peer_name, peer = PEER_SECONDS_N2000.get(name, ("no peer figure", None))
        if q:
            peer = None
        table.add(
            f"{name} n={n_metric} 768x1024",
            ours,
            f"{peer_name} (issue's CPU figure)",
            peer,
            ">= 1x (CPU)",
        )
        ours32 = timeit(
            lambda name=name, opts=opts: get_metric(name).fn(x, y, dtype=torch.float32, **opts),
            dev,
            repeat=args.repeat,
        )
        table.add(
            "  same, dtype=float32 (as the peers compute)", ours32, peer_name, peer, ">= 1x (CPU)"
        )


def _permutations(dev, q, table) -> None:
    """Permutation nulls and bootstrap intervals: cutting them from the prepared state (the
    ``permute`` and ``resample`` hooks) against re-preparing every time, as before."""
    from dataclasses import replace

    from repalign.metrics import bootstrap_ci, permutation_test

    n, perms = (300, 20) if q else (1000, 50)
    x, y = layers(n, [768, 1024], dev, seed=5)
    runs = [(m, "permute", "permutation test", "perms", {}) for m in ("cka", "cca", "mutual_knn")]
    runs += [(m, "resample", "bootstrap interval", "resamples", {}) for m in ("cka", "mutual_knn")]
    runs += [("cka", "resample", "bootstrap interval", "resamples", {"unbiased": True})]
    statistic = {
        "permute": lambda s, o: permutation_test(s, x, y, n_permutations=perms, **o),
        "resample": lambda s, o: bootstrap_ci(s, x, y, n_boot=perms, **o),
    }
    for name, hook, what, unit, opts in runs:
        spec, stat = get_metric(name), statistic[hook]
        hooked = timeit(lambda spec=spec, stat=stat, opts=opts: stat(spec, opts), dev)
        plain = replace(spec, **{hook: None})
        ref = timeit(lambda plain=plain, stat=stat, opts=opts: stat(plain, opts), dev)
        label = name + "".join(f"[{k}={v}]" for k, v in opts.items())
        table.add(
            f"{label} {what}, {perms} {unit}, n={n} 768x1024",
            hooked,
            f"re-prepare each ({hook} off)",
            ref,
            "faster than re-preparing",
        )


def _grid_statistics(dev, q, table) -> None:
    """Statistics of every pair of a layer grid (``compare --permutations --bootstrap``):
    shared per-layer states and per-draw permuted/resampled states against one
    permutation_test + bootstrap_ci call per pair (how compare computed them before)."""
    from repalign.compare import MetricRequest, score_layers
    from repalign.metrics import bootstrap_ci, permutation_test

    n, n_layers, draws = (200, 3, 5) if q else (1000, 8, 20)
    xs = {f"l{i}": x for i, x in enumerate(layers(n, [256] * n_layers, dev, seed=6))}
    pairs = [(a, b) for i, a in enumerate(xs) for b in list(xs)[i:]]  # symmetric: each once
    for name, opts in [("cka", {}), ("mutual_knn", {"k": 10}), ("svcca", {})]:
        req = MetricRequest.parse((name, opts))

        def grid(req=req):
            score_layers(xs, None, [req], permutations=draws, bootstrap=draws, progress=False)

        def each(name=name, opts=opts):
            for a, b in pairs:
                permutation_test(name, xs[a], xs[b], n_permutations=draws, **opts)
                bootstrap_ci(name, xs[a], xs[b], n_boot=draws, **opts)

        table.add(
            f"{name} grid statistics, {n_layers}x{n_layers} layers, {draws} perms + "
            f"{draws} resamples, n={n} d=256",
            timeit(grid, dev, repeat=1),
            "one call per pair",
            timeit(each, dev, repeat=1),
            "faster than per pair",
        )


if __name__ == "__main__":
    main()
