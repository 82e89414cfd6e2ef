"""``plot-training RUN_DIR``: loss and accuracy per task, and alignment probes, vs step.

Reads ``RUN/log.jsonl`` and draws one row of panels: losses (train lines, held-out
evaluations as markers), accuracies, and, when the run logged probes, each probe
metric between the text and vision streams per layer.

Like :mod:`repalign.store.plot` it builds a plain :class:`matplotlib.figure.Figure`
without pyplot, so the process's backend (a notebook's inline one) is left alone;
:func:`training_figure` returns it, :func:`plot_training` writes it atomically.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repalign.train.runlog import RunLog

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_LABELS = {"mlm_attribute": "mlm (colour/shape words)", "mlm": "mlm (all masked words)"}
_SKIP = {"step", "split", "lr", "pairs_per_s", "grad_norm", "loss"}
DPI = 120
log = logging.getLogger(__name__)


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a training run directory?")
    records = RunLog(path).records()
    if not records:
        raise ValueError(f"{path} is empty: the run has not logged a step yet")
    return records


def _series(records: list[dict[str, Any]], split: str) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for r in records:
        if r.get("split") != split:
            continue
        for k, v in r.items():
            if k in ("step", "split", "elapsed_s") or not isinstance(v, int | float) or v != v:
                continue
            out[k][0].append(r["step"])
            out[k][1].append(float(v))
    return dict(out)


def _probe_key(name: str) -> tuple[str, str]:
    """``mutual_knn_fusion2`` -> ``("mutual_knn", "fusion2")`` (metric names hold underscores)."""
    match = re.fullmatch(r"(.+)_(tower|fusion\d+)", name)
    return (match.group(1), match.group(2)) if match else (name, name)


def _task(name: str) -> str:
    """``noise_mlm_attribute_accuracy`` -> ``mlm_attribute``: the colour key of a series."""
    name = name.removeprefix("noise_")
    for suffix in ("_loss", "_accuracy"):
        name = name.removesuffix(suffix)
    return name


def plot_training(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves to ``out`` (default ``RUN/training.png``); return the path.

    The file is written through a temporary file and renamed, so an interrupted
    plot never leaves a truncated figure in place of the previous one.
    """
    from repalign.store.plot import save

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "training.png"
    return save(training_figure(run_dir), out, dpi=DPI)


def training_figure(run_dir: str | Path) -> Figure:
    """The run's curves as a :class:`~matplotlib.figure.Figure` (a notebook displays it)."""
    import matplotlib
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    records = read_log(run_dir)
    train, evals, probes = (_series(records, s) for s in ("train", "eval", "probe"))

    def keys(pattern: str) -> list[str]:
        names = {k for k in (*train, *evals) if re.search(pattern, k) and k not in _SKIP}
        return sorted(n for n in names if not n.startswith("noise_")) + sorted(
            n for n in names if n.startswith("noise_")
        )

    losses, accuracies = keys(r"_loss$"), keys(r"_accuracy$|^accuracy$|^auroc$")
    if not losses and "loss" in train:
        losses = ["loss"]
    probe_metrics = sorted({_probe_key(k)[0] for k in probes})
    panels = [("loss", losses, "log"), ("accuracy", accuracies, "linear")]
    panels += [
        (f"{m} (text vs vision)", [k for k in probes if _probe_key(k)[0] == m], "linear")
        for m in probe_metrics
    ]
    panels = [p for p in panels if p[1]]
    if not panels:
        raise ValueError(f"{run_dir / 'log.jsonl'} holds no loss, accuracy or probe values to plot")

    cols = len(panels) if len(panels) <= 3 else 2
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(6 * cols, 4.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    palette = matplotlib.colormaps["tab10"]
    tasks = sorted({_task(n) for _, names, _ in panels[:2] for n in names})
    colour_of = {t: palette(i % 10) for i, t in enumerate(tasks)}
    for ax, (title, names, scale) in zip(axes.flat, panels, strict=False):
        if title.endswith("(text vs vision)"):
            for i, name in enumerate(names):
                steps, values = probes[name]
                ax.plot(steps, values, "o-", color=palette(i % 10), ms=3, label=_probe_key(name)[1])
        for name in names if not title.endswith("(text vs vision)") else []:
            task = _task(name)
            noise = name.startswith("noise_")
            style = "--" if noise else "-"
            pretty = _LABELS.get(task, task)
            label = f"{pretty}, image = noise" if noise else pretty
            if name in train:
                ax.plot(*train[name], style, color=colour_of[task], alpha=0.5, lw=1.2)
            if name in evals:
                ax.plot(*evals[name], "o" + style, color=colour_of[task], ms=4, lw=1.8, label=label)
            elif name in train:
                ax.lines[-1].set_label(label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale(scale)
        if scale == "log":
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        if title == "accuracy":
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(
        f"training run {run_dir.name}   (thin lines: training batches; dots: held-out evaluation)",
        fontsize=11,
    )
    fig.tight_layout()
    return fig
