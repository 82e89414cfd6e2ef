"""How time and peak memory of the metrics grow with the number of samples n.

    python benchmarks/scale.py                        # CPU, n = 1e3 ... 1e5 (k-NN metrics up to --knn-max)
    python benchmarks/scale.py --device cuda          # GPU
    python benchmarks/scale.py --plot benchmarks/scale.png

Each (metric, n) runs in a fresh subprocess so the peak memory is its own:
resident set size on the CPU (``ru_maxrss``, including the inputs and the
interpreter), ``torch.cuda.max_memory_allocated`` on a GPU. Features are
float32 ``(n, d)`` with d = 256, computed in float64 as the metrics default.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, resource, sys, time, torch
from repalign.metrics import get_metric
name, n, d, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), torch.device(sys.argv[4])
g = torch.Generator().manual_seed(0)
z = torch.randn(n, 32, generator=g)
x = (z @ torch.randn(32, d, generator=g) + torch.randn(n, d, generator=g)).to(device)
y = (torch.tanh(z @ torch.randn(32, d, generator=g)) + torch.randn(n, d, generator=g)).to(device)
opts = {"k": 10} if "k" in get_metric(name).options else {}
fn = get_metric(name).fn
if device.type == "cuda":
    fn(x[:1000], y[:1000], **opts); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
t = time.perf_counter(); v = float(fn(x, y, **opts))
if device.type == "cuda": torch.cuda.synchronize()
dt = time.perf_counter() - t
mem = (torch.cuda.max_memory_allocated() - base) if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"metric": name, "n": n, "seconds": dt, "peak_bytes": mem, "value": v}))
"""

DEFAULT_METRICS = ("cka", "cca", "mutual_knn", "cknna")


def run_one(name: str, n: int, d: int, device: str, timeout: float) -> dict | None:
    try:
        out = subprocess.run(
            [sys.executable, "-c", WORKER, name, str(n), str(d), device],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
    except subprocess.TimeoutExpired:
        return {
            "metric": name,
            "n": n,
            "seconds": None,
            "peak_bytes": None,
            "note": f"> {timeout:.0f} s",
        }
    except subprocess.CalledProcessError as err:
        return {
            "metric": name,
            "n": n,
            "seconds": None,
            "peak_bytes": None,
            "note": err.stderr.strip().splitlines()[-1],
        }
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r["metric"] for r in rows}):
        pts = [r for r in rows if r["metric"] == name and r["seconds"] is not None]
        ax_t.loglog([r["n"] for r in pts], [r["seconds"] for r in pts], "o-", label=name)
        ax_m.loglog([r["n"] for r in pts], [r["peak_bytes"] / 2**20 for r in pts], "o-", label=name)
    ax_t.set(xlabel="samples n", ylabel="seconds", title=f"time ({device}, d=256)")
    ax_m.set(xlabel="samples n", ylabel="peak MiB", title="peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1000,3000,10000,30000,100000")
    parser.add_argument(
        "--knn-max", type=int, default=100_000, help="largest n for mutual_knn / cknna"
    )
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per (metric, n)")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for name in args.metrics.split(","):
        for n in map(int, args.sizes.split(",")):
            if name in ("mutual_knn", "cknna") and n > args.knn_max:
                continue
            row = run_one(name, n, args.dim, args.device, args.timeout)
            rows.append(row)
            secs = f"{row['seconds']:.3f}" if row["seconds"] is not None else row.get("note", "-")
            mem = f"{row['peak_bytes'] / 2**20:.0f}" if row["peak_bytes"] is not None else "-"
            print(f"| {name} | {n} | {secs} | {mem} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot, args.device)


if __name__ == "__main__":
    main()
