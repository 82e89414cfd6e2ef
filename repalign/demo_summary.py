"""The demo's ``summary.md``: what was measured, with the null, the interval and the counts.

Every score is reported with its permutation null (mean ± sd), its bootstrap
interval and the number of samples and layer pairs it rests on; a maximum over
a grid of layer pairs is only ever given together with the grid's size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from repalign.store.score_summary import MatchedRow, matched_rows

#: the metric the summary's headline sentences are about
HEADLINE = "cka[unbiased=true]"


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3f}"


def _ci(r: MatchedRow) -> str:
    return "" if not np.isfinite(r.ci_low) else f" [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"


def _settings(ds: xr.Dataset) -> dict[str, Any]:
    return json.loads(ds.attrs["config_json"])


def _p_floor(ds: xr.Dataset) -> float:
    return 1.0 / (1 + int(_settings(ds)["permutations"]))


def _cell(r: MatchedRow, floor: float) -> str:
    # p-values are float32-rounded in the metrics: compare with a relative tolerance
    p = "" if r.pvalue <= floor * (1 + 1e-6) else f", p={r.pvalue:.3g}"
    return f"**{_fmt(r.score)}**{_ci(r)} (null {_fmt(r.null_mean)} ± {_fmt(r.null_std)}{p})"


def table(ds: xr.Dataset, metrics: Sequence[str]) -> list[str]:
    """Markdown rows: each depth-matched pair, each metric's score, interval and null."""
    floor = _p_floor(ds)
    per_metric = {m: matched_rows(ds, m) for m in metrics}
    lines = [
        "| text layer | vision layer | depth | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for k, row in enumerate(per_metric[metrics[0]]):
        cells = " | ".join(_cell(per_metric[m][k], floor) for m in metrics)
        lines.append(f"| {row.layer_a} | {row.layer_b} | {row.depth:.2f} | {cells} |")
    return lines


def trend(rows: Sequence[MatchedRow], higher_is_more_similar: bool) -> str:
    """One sentence: from the first to the last pair, and how many steps go up."""
    scores = [r.score for r in rows]
    better = [(b > a) == higher_is_more_similar for a, b in zip(scores, scores[1:], strict=False)]
    first, last = rows[0], rows[-1]
    rises = (last.score > first.score) == higher_is_more_similar
    if not rises:
        verb = "does not rise with depth"
    elif all(better):
        verb = "rises steadily with depth"
    else:
        verb = "rises with depth overall, but not monotonically"
    pick = max if higher_is_more_similar else min
    best = pick(rows, key=lambda r: r.score)
    return (
        f"{verb}: {_fmt(first.score)}{_ci(first)} "
        f"at {first.layer_a} vs {first.layer_b} (depth {first.depth:.2f}) to "
        f"{_fmt(last.score)}{_ci(last)} at {last.layer_a} vs {last.layer_b} "
        f"(depth {last.depth:.2f}); it grows in {sum(better)} of the {len(better)} steps "
        f"between consecutive depth-matched pairs, and the most aligned of these {len(rows)} "
        f"pairs is {best.layer_a} vs {best.layer_b} ({_fmt(best.score)}{_ci(best)})"
    )


def fusion_change(rows: Sequence[MatchedRow]) -> str:
    """How the score moves across the fusion layers alone, against its bootstrap interval."""
    fusion = [r for r in rows if ".fusion." in r.layer_a]
    if len(fusion) < 2:
        return ""
    first, last = fusion[0], fusion[-1]
    delta = last.score - first.score
    overlap = np.isfinite(first.ci_high) and not (
        last.ci_low > first.ci_high or last.ci_high < first.ci_low
    )
    verdict = (
        "the bootstrap intervals overlap, so this change is within sampling noise"
        if overlap
        else "the bootstrap intervals do not overlap"
    )
    return (
        f"Across the {len(fusion)} fusion layers alone it goes from {_fmt(first.score)}"
        f"{_ci(first)} ({first.layer_a}) to {_fmt(last.score)}{_ci(last)} ({last.layer_a}), "
        f"a change of {delta:+.3f}; {verdict}."
    )


def ci_misses(ds: xr.Dataset) -> list[str]:
    """Metrics whose bootstrap interval misses the score itself on some matched pair.

    The k-NN metrics and SVCCA get a subsampling interval (half-size subsamples,
    rescaled), since duplicated samples would bias them; it assumes the usual sqrt(n)
    rate and can still miss. Such intervals are reported, with this caveat, not hidden.
    """
    out = []
    for metric in (str(m) for m in ds.metric.values):
        rows = [r for r in matched_rows(ds, metric) if np.isfinite(r.ci_low)]
        if any(not r.ci_low <= r.score <= r.ci_high for r in rows):
            out.append(metric)
    return out


def ci_caveat(ds: xr.Dataset, model: str) -> list[str]:
    """The caveat lines (with a blank line after) for ``model``'s :func:`ci_misses`, if any."""
    misses = ci_misses(ds)
    if not misses:
        return []
    return [
        f"Caveat ({model}): for "
        + ", ".join(f"`{m}`" for m in misses)
        + " the resampling interval misses the score itself on some pairs (k-NN "
        "metrics and SVCCA use a subsampling interval, since duplicated samples bias "
        "them; it assumes the usual sqrt(n) rate); read those intervals as a spread, "
        "not a calibrated 95% interval.",
        "",
    ]


def _grid_max(ds: xr.Dataset, metric: str) -> tuple[float, str, str, int]:
    grid = ds.score.sel(metric=metric).values
    i, j = np.unravel_index(np.nanargmax(grid), grid.shape)
    return float(grid[i, j]), str(ds.layer_a.values[i]), str(ds.layer_b.values[j]), grid.size


def _accuracies(path: Path) -> str:
    values = json.loads(path.read_text())
    return ", ".join(f"{k} = {v:.3f}" for k, v in sorted(values.items()) if "accuracy" in k)


@dataclass
class SummaryInputs:
    """What :func:`write_summary` reports on."""

    out: Path
    scores: Mapping[str, xr.Dataset]  # scores, scores-untrained, scores-baseline, scores-within
    trained: Path
    untrained: Path
    baseline: str
    shuffled: tuple[str, float, float]  # pair, matched CKA, shuffled CKA
    figures: Sequence[Path]
    seconds: float
    reused: bool
    quick: bool
    tasks: Sequence[str]
    steps: int
    batch_size: int
    probe_seed: int
    train_seed: int
    device: str


def write_summary(s: SummaryInputs) -> Path:
    """Write ``summary.md`` into ``s.out`` and return its path."""
    main, ctrl, base, within = (
        s.scores[k] for k in ("scores", "scores-untrained", "scores-baseline", "scores-within")
    )
    labels = [str(m) for m in main.metric.values]
    n = int(main.attrs["n_samples"])
    settings = _settings(main)
    n_perm, n_boot = int(settings["permutations"]), int(settings["bootstrap"])
    rows, rows_ctrl = matched_rows(main, HEADLINE), matched_rows(ctrl, HEADLINE)
    last, last_ctrl = rows[-1], rows_ctrl[-1]
    hims = bool(int(main.higher_is_more_similar.sel(metric=HEADLINE)))
    diag = np.diag(within.score.sel(metric="cka").values)
    top, top_a, top_b, top_n = _grid_max(main, HEADLINE)
    btop, btop_a, btop_b, btop_n = _grid_max(base, HEADLINE)
    base_rows = matched_rows(base, HEADLINE)
    pair, matched_cka, shuffled_cka = s.shuffled

    def rel(p: Path) -> str:
        return str(Path(p).relative_to(s.out)) if Path(p).is_relative_to(s.out) else str(p)

    lines = [
        "# repalign demo: does a tiny ViLBERT align its text and vision streams?",
        "",
        f"Setting: {'`--quick` (the CI size)' if s.quick else 'the full demo'}; it took "
        f"{s.seconds / 60:.1f} minutes on {s.device}. Every number below rests on "
        f"**n = {n} held-out synthetic image-caption pairs** (seed {s.probe_seed}; training "
        f"drew from seed {s.train_seed}), each layer mean-pooled per sample (text over its "
        "non-padding tokens, vision over its patches). Each score comes with its 95% bootstrap "
        f"interval over samples ({n_boot} resamples, in brackets) and the mean ± sd of its "
        f"permutation null ({n_perm} shuffles of the sample order: what the metric gives when "
        "the image-caption correspondence is broken).",
        "",
        "## What was trained",
        "",
        f"The `tiny` ViLBERT preset on synthetic captioned shapes, tasks {', '.join(s.tasks)}, "
        f"{s.steps} steps of {s.batch_size} pairs"
        f"{' (reused from the cache: same settings)' if s.reused else ''}. Held-out evaluation: "
        f"{_accuracies(s.trained / 'eval.json')}; the same architecture untrained: "
        f"{_accuracies(s.untrained / 'eval.json')}. Curves: `training.png`.",
        "",
        "## Does cross-modal alignment rise with fusion depth?",
        "",
        "Each text-stream layer is paired with the vision-stream layer at the nearest relative "
        f"depth ({len(rows)} depth-matched pairs, one per row of the table below). Under "
        f"`{HEADLINE}` the trained model's alignment {trend(rows, hims)}. " + fusion_change(rows),
        "",
        f"At the last layer ({last.layer_a} vs {last.layer_b}) the trained model scores "
        f"**{_fmt(last.score)}**{_ci(last)}, {_fmt(last.z)} null standard deviations above its "
        f"permutation null {_fmt(last.null_mean)} ± {_fmt(last.null_std)} (p = {last.pvalue:.3g}, "
        f"the smallest p-value {n_perm} shuffles can give being {1 / (n_perm + 1):.3g}); the "
        f"untrained model scores **{_fmt(last_ctrl.score)}**{_ci(last_ctrl)} (null "
        f"{_fmt(last_ctrl.null_mean)} ± {_fmt(last_ctrl.null_std)}).",
        "",
        f"Matched against shuffled pairs, linear CKA of {pair}: {matched_cka:.3f} for the real "
        f"image-caption pairs, {shuffled_cka:.3f} after one shuffle of the captions.",
        "",
        f"Every metric on the depth-matched pairs of the trained model (each cell: one layer "
        f"pair, n = {n}; p-values are shown only above their floor {1 / (n_perm + 1):.3g}; "
        "for `wasserstein_distance` lower means more similar):",
        "",
        *table(main, labels),
        "",
        *ci_caveat(main, "trained model"),
        "The untrained model, the control (what architecture and data alone give):",
        "",
        *table(ctrl, labels),
        "",
        *ci_caveat(ctrl, "untrained model"),
        "## Baseline: separate text and vision models",
        "",
        f"{s.baseline}, run side by side on the same pairs. Under `{HEADLINE}` its "
        f"{len(base_rows)} depth-matched text/vision pairs score between "
        f"{_fmt(min(r.score for r in base_rows))} and {_fmt(max(r.score for r in base_rows))} "
        f"(nulls {_fmt(float(np.nanmean([r.null_mean for r in base_rows])))} on average). "
        "Figures: `heatmap-baseline.png`, `profile-baseline.png`.",
        "",
        "## Maxima over layer grids",
        "",
        "A maximum over many layer pairs is chosen after looking and is biased upward; it is "
        "given here only with the number of pairs it was taken over. The depth-matched pairs "
        "above are the fair comparison.",
        "",
        f"- trained ViLBERT, `{HEADLINE}`: max {_fmt(top)} over {top_n} text x vision pairs "
        f"({top_a} vs {top_b})",
        f"- baseline, `{HEADLINE}`: max {_fmt(btop)} over {btop_n} pairs ({btop_a} vs {btop_b})",
        "",
        "## Sanity check",
        "",
        f"Linear CKA of each of the trained model's {diag.size} layers with itself: "
        f"min {diag.min():.6f}, max {diag.max():.6f} (must be 1; `heatmap-within.png`).",
        "",
        "## Files",
        "",
        "- feature files: `features/` (`repalign info features/vilbert.nc`)",
        "- score files: " + ", ".join(f"`{k}.nc`" for k in s.scores),
        "- figures: " + ", ".join(f"`{rel(p)}`" for p in s.figures),
        "",
        "Redo one comparison by hand: `repalign compare features/vilbert.nc --layers-a 'text.*' "
        "--layers-b 'vision.*' --metric cka --unbiased --permutations 200 --bootstrap 200 "
        "--out scores.nc`, then `repalign plot scores.nc --kind profile --out profile.png`.",
        "",
    ]
    path = s.out / "summary.md"
    path.write_text("\n".join(lines))
    return path
