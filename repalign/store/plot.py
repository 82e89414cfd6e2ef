"""Figures from a score Dataset: layer-by-layer heatmaps and depth profiles.

Both build a plain :class:`matplotlib.figure.Figure` without pyplot: no display
is needed, the user's backend (a notebook's inline one) is left alone, and no
figure piles up in pyplot's registry. A notebook shows the returned Figure;
:func:`save` writes it (format from the suffix: ``.png``, ``.svg``, ``.pdf``).

Colour scales are fixed by the metric's declared bounds (``bound_low`` /
``bound_high`` in the score file), so two heatmaps of the same metric can be
compared by eye. Distances (unbounded above) use the larger of the data
maximum and the permutation null mean, and a reversed colour map, so that
brighter always means "more similar".
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from repalign._suggest import did_you_mean
from repalign.store.paths import atomic_path
from repalign.store.schema import METRIC_DIM
from repalign.store.scores import from_one_file, layer_axis, matched_pairs

#: cells per side up to which each heatmap cell is annotated with its value
ANNOTATE_MAX = 14
SIGNIFICANCE = 0.05
#: fill of heatmap cells without a score (no run computed them); not in viridis
NOT_COMPUTED_COLOR = "0.85"
#: font size of a heatmap's note under the panels (points)
NOTE_FONTSIZE = 8
#: profile panels: default width, the widest a panel grows to fit layer-name ticks (inches)
PANEL_WIDTH, MAX_PANEL_WIDTH = 5.2, 14.0
#: layer-name ticks of a profile: font size (points) and rotation (degrees)
TICK_FONTSIZE, TICK_ROTATION = 7, 60
#: x range of a profile in relative depth
XLIM = (-0.03, 1.03)


def _with_metric_dim(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a ``metric`` dimension, also after ``ds.sel(metric="cka")`` dropped it."""
    return ds if METRIC_DIM in ds.dims else ds.expand_dims(METRIC_DIM)


def _metrics(ds: xr.Dataset, metrics: Sequence[str] | None) -> list[str]:
    available = [str(m) for m in ds.metric.values]
    if not metrics:
        return available
    missing = [m for m in metrics if m not in available]
    if missing:
        hint = did_you_mean(missing[0], available)
        raise ValueError(
            f"metric(s) {missing} are not in this score file.{hint} It has: {available}"
        )
    return list(metrics)


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _color_range(m: xr.Dataset) -> tuple[float, float, str, bool]:
    """vmin, vmax, colour map, and whether higher means more similar."""
    low, high = float(m.bound_low), float(m.bound_high)
    similar = bool(int(m.higher_is_more_similar))
    if not math.isfinite(high):
        values = [float(np.nanmax(m.score.values))]
        if "null_mean" in m and np.isfinite(m.null_mean.values).any():
            values.append(float(np.nanmax(m.null_mean.values)))
        high = max(values) if max(values) > low else low + 1.0
    if not math.isfinite(low):
        low = float(np.nanmin(m.score.values))
    return low, high, "viridis" if similar else "viridis_r", similar


def _subtitle(ds: xr.Dataset) -> str:
    parts = []
    if "n_samples" in ds.attrs:
        parts.append(f"n = {int(ds.attrs['n_samples'])} samples")
    a, b = ds.attrs.get("model_a"), ds.attrs.get("model_b")
    if a and b:
        parts.append(f"{a} vs {b}" if a != b else str(a))
    return "; ".join(parts)


def _title(first: str, ds: xr.Dataset) -> str:
    """``first`` over the subtitle line, or ``first`` alone when the file has nothing for it."""
    return "\n".join(line for line in (first, _subtitle(ds)) if line)


def _mark_significance(ax: Axes, p: np.ndarray, computed: np.ndarray) -> tuple[int, bool]:
    """Hatch the cells of ``ax`` with p >= :data:`SIGNIFICANCE`; when only some computed
    cells have a p-value, outline those. Returns (cells tested, whether outlined)."""
    has_p = np.isfinite(p) & computed
    for i, j in zip(*np.nonzero(has_p & (p >= SIGNIFICANCE)), strict=True):
        ax.add_patch(
            Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.5", lw=0)
        )
    outline = bool(has_p.any() and (has_p != computed).any())
    if outline:
        for i, j in zip(*np.nonzero(has_p), strict=True):
            ax.add_patch(
                Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, edgecolor="black", lw=1.0)
            )
    return int(has_p.sum()), outline


def heatmap(ds: xr.Dataset, metrics: Sequence[str] | None = None) -> Figure:
    """One panel per metric: score of every ``layer_a`` (rows) against ``layer_b`` (columns).

    Cells are annotated with their value when the grid is small; with a
    permutation p-value present, cells not significant at 0.05 are hatched, and a
    note says how many cells were tested. Cells without a score (no run computed
    them, e.g. after merging runs over different layers) are grey and cross-hatched,
    and the note counts them.
    """
    ds = _with_metric_dim(ds)
    names = _metrics(ds, metrics)
    rows, cols = _grid(len(names))
    na, nb = ds.sizes["layer_a"], ds.sizes["layer_b"]
    cell = 0.42 if max(na, nb) <= ANNOTATE_MAX else 0.22
    w = max(4.8, 2.4 + cell * nb)
    h = max(4.0, 2.0 + cell * na)
    fig = Figure(figsize=(w * cols, h * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    tested, outlined_tested, outlined_cells, missing = 0, 0, 0, 0
    untested: list[str] = []  # panels without any p-value
    for ax, name in zip(axes.flat, names, strict=False):
        m = ds.sel(metric=name)
        vmin, vmax, cmap, similar = _color_range(m)
        values = m.score.values
        computed = np.isfinite(values)
        im = ax.imshow(
            values,
            # NaN would show the white axes background, which reads as a (low) score
            cmap=matplotlib.colormaps[cmap].with_extremes(bad=NOT_COMPUTED_COLOR),
            vmin=vmin,
            vmax=vmax,
            aspect="auto",
            interpolation="nearest",
        )
        missing += int((~computed).sum())
        for i, j in zip(*np.nonzero(~computed), strict=True):
            ax.add_patch(
                Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", edgecolor="0.55", lw=0)
            )
        ax.set_xticks(range(nb), [str(v) for v in ds.layer_b.values], rotation=60, ha="right")
        ax.set_yticks(range(na), [str(v) for v in ds.layer_a.values])
        ax.set_xlabel(f"layer B ({ds.attrs.get('model_b', 'B')})")
        ax.set_ylabel(f"layer A ({ds.attrs.get('model_a', 'A')})")
        ax.set_title(_title(name, ds), fontsize=10)
        bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label(f"score ({'higher' if similar else 'lower'} = more similar)")
        n_tested, outlined = 0, False
        if "pvalue" in m:
            n_tested, outlined = _mark_significance(ax, m.pvalue.values, computed)
        tested += n_tested
        if outlined:
            outlined_tested += n_tested
            outlined_cells += int(computed.sum())
        if not n_tested:
            untested.append(name)
        if max(na, nb) <= ANNOTATE_MAX:
            mid = (vmin + vmax) / 2
            for i in range(na):
                for j in range(nb):
                    v = values[i, j]
                    if not np.isfinite(v):
                        continue
                    dark = (v < mid) if cmap == "viridis" else (v > mid)
                    ax.text(
                        j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black",
                    )  # fmt: skip
    notes = []
    if tested:
        note = f"hatched: permutation p >= {SIGNIFICANCE}"
        if outlined_cells:  # an unhatched cell without a p-value is untested, not significant
            note += (
                f"; outlined: the {outlined_tested} of {outlined_cells} cells tested "
                "(the others have no p-value)"
            )
        if untested:
            note += f"; no p-values: {', '.join(untested)}"
        notes.append(note)
    if missing:
        total = na * nb * len(names)
        notes.append(
            f"grey, cross-hatched: not computed ({missing} of {total} cells; no run scored "
            "these layer pairs)"
        )
    # keep the note's lines clear of the x labels: lay the panels out above them
    note_height = (len(notes) * NOTE_FONTSIZE * 1.4 + 4) / 72 / fig.get_figheight()
    fig.tight_layout(rect=(0, note_height if notes else 0, 1, 1))
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=NOTE_FONTSIZE, color="0.3", va="bottom")
    return fig


def _pick(m: xr.Dataset, var: str, cells: tuple[np.ndarray, np.ndarray]) -> np.ndarray | None:
    """Values of ``var`` at the ``(rows, cols)`` cells, or ``None`` if the file lacks it."""
    return m[var].values[cells] if var in m else None


def _named_ticks_width(depths: Sequence[float]) -> float | None:
    """Panel width (inches) at which layer names ticked at ``depths`` do not collide,
    or ``None`` when even :data:`MAX_PANEL_WIDTH` is too narrow (layers at near-equal depths).

    Rotated labels collide when neighbours are closer, across the text, than a line:
    ``gap * sin(rotation) < font size``.
    """
    xs = sorted(depths)
    gap = min((b - a for a, b in zip(xs, xs[1:], strict=False)), default=1.0)
    if gap <= 0:
        return None
    line = 1.15 * TICK_FONTSIZE / 72  # inches
    axis = line * (XLIM[1] - XLIM[0]) / (gap * math.sin(math.radians(TICK_ROTATION)))
    width = max(PANEL_WIDTH, axis + 1.4)  # + y label, tick values and margins
    return width if width <= MAX_PANEL_WIDTH else None


def profile(ds: xr.Dataset, metrics: Sequence[str] | None = None) -> Figure:
    """One panel per metric: score of depth-matched layer pairs against relative depth.

    Each layer of A is paired with the layer of B at the nearest relative depth
    (per stream of B; never with itself), one line per (stream A, stream B).
    Shaded: the bootstrap interval when present; dashed grey: the permutation
    null mean with a band of two null standard deviations.
    """
    ds = _with_metric_dim(ds)
    names = _metrics(ds, metrics)
    axis_a, axis_b = layer_axis(ds, "a"), layer_axis(ds, "b")
    pairs = matched_pairs(axis_a, axis_b, same=from_one_file(ds))
    if not pairs:
        raise ValueError("no layer pairs to profile: layer_b is empty or only repeats layer_a")
    groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, j in pairs:
        groups.setdefault((axis_a.streams[i], axis_b.streams[j]), []).append((i, j))
    # one line: tick it at its layers, so the profile reads without the score file,
    # when the names fit side by side (the panel widens for them up to a limit)
    tick_cells = None
    width = PANEL_WIDTH
    if len(groups) == 1:
        cells = sorted(next(iter(groups.values())), key=lambda c: axis_a.depths[c[0]])
        fits = _named_ticks_width([axis_a.depths[i] for i, _ in cells])
        if fits is not None:
            tick_cells, width = cells, fits
    rows, cols = _grid(len(names))
    fig = Figure(figsize=(width * cols, 4.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    colors = matplotlib.colormaps["tab10"]
    for ax, name in zip(axes.flat, names, strict=False):
        m = ds.sel(metric=name)
        for g, ((sa, sb), cells) in enumerate(groups.items()):
            cells = sorted(cells, key=lambda c: axis_a.depths[c[0]])
            x = np.array([axis_a.depths[i] for i, _ in cells])
            pick = (np.array([i for i, _ in cells]), np.array([j for _, j in cells]))

            color = colors(g % 10)
            label = f"{sa} vs {sb}" if len(groups) > 1 or sa != sb else sa
            ax.plot(x, _pick(m, "score", pick), marker="o", color=color, label=label)
            lo, hi = _pick(m, "ci_low", pick), _pick(m, "ci_high", pick)
            if lo is not None and hi is not None and np.isfinite(lo).any():
                ax.fill_between(
                    x, lo, hi, color=color, alpha=0.25, lw=0, label=f"{label}: bootstrap CI"
                )
            null, sd = _pick(m, "null_mean", pick), _pick(m, "null_std", pick)
            if null is not None and np.isfinite(null).any():
                ax.plot(
                    x,
                    null,
                    ls="--",
                    color="0.4",
                    lw=1,
                    label="permutation null (mean ± 2 sd)" if g == 0 else None,
                )
                if sd is not None:
                    ax.fill_between(x, null - 2 * sd, null + 2 * sd, color="0.6", alpha=0.2, lw=0)
        vmin, vmax, _, similar = _color_range(m)
        if math.isfinite(float(m.bound_high)):
            pad = 0.03 * (vmax - vmin)
            ax.set_ylim(vmin - pad, vmax + pad)
        ax.set_xlim(*XLIM)
        xlabel = "relative depth of layer A"
        if tick_cells is not None:
            ax.set_xticks(
                [axis_a.depths[i] for i, _ in tick_cells],
                [axis_a.names[i] for i, _ in tick_cells],
                rotation=TICK_ROTATION,
                ha="right",
                rotation_mode="anchor",
                fontsize=TICK_FONTSIZE,
            )
            xlabel = "layer A at its relative depth (paired with the nearest-depth layer of B)"
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"score ({'higher' if similar else 'lower'} = more similar)")
        ax.set_title(_title(f"{name}: depth-matched layer pairs", ds), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) through a temporary file,
    so an interrupted save never leaves a truncated figure in place of the old one."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise ValueError(f"cannot write {path}: use a .png, .svg or .pdf file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, dpi=dpi, bbox_inches="tight")
    return path


def plot_scores(
    ds: xr.Dataset,
    out: str | os.PathLike[str],
    *,
    kind: str = "heatmap",
    metrics: Sequence[str] | None = None,
) -> Path:
    """Draw ``kind`` (``heatmap`` or ``profile``) for ``metrics`` (all if empty) to ``out``."""
    makers = {"heatmap": heatmap, "profile": profile}
    if kind not in makers:
        raise ValueError(
            f"unknown plot kind {kind!r}.{did_you_mean(kind, makers)} Use one of {sorted(makers)}"
        )
    return save(makers[kind](ds, metrics), out)
