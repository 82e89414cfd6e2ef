"""Heatmaps and depth profiles from score Datasets."""

from __future__ import annotations

import numpy as np
import pytest

from repalign.store.plot import heatmap, plot_scores, profile
from repalign.store.scores import LayerAxis, MetricScores, scores_dataset

A = LayerAxis(("t.0", "t.1", "t.2"), ("text",) * 3, (1 / 3, 2 / 3, 1.0))
B = LayerAxis(("v.0", "v.1", "v.2", "v.3"), ("vision",) * 4, (0.25, 0.5, 0.75, 1.0))


def _ds(with_stats: bool = True):
    rng = np.random.default_rng(0)
    score = rng.uniform(0.3, 0.9, size=(3, 4))
    stats = {}
    if with_stats:
        stats = {
            "pvalue": np.where(score > 0.5, 0.01, 0.3),
            "null_mean": np.full((3, 4), 0.1),
            "null_std": np.full((3, 4), 0.02),
            "ci_low": score - 0.05,
            "ci_high": score + 0.05,
        }
    sim = MetricScores("cka", "cka", {}, (0.0, 1.0), True, score, stats)
    dist = MetricScores(
        "wasserstein_distance", "wasserstein_distance", {}, (0.0, np.inf), False, 5 * score
    )
    return scores_dataset(A, B, [sim, dist], {"n_samples": 64, "model_a": "m1", "model_b": "m2"})


def _png_ok(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # a real figure, not an empty canvas


def test_heatmap_png_written(tmp_path):
    out = plot_scores(_ds(), tmp_path / "fig" / "heat.png")
    _png_ok(out)


def test_heatmap_svg_one_metric(tmp_path):
    out = plot_scores(_ds(), tmp_path / "heat.svg", metrics=["cka"])
    text = out.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert len(text) > 10_000


def test_heatmap_axes_and_colour_bounds():
    fig = heatmap(_ds(), ["cka", "wasserstein_distance"])
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == ["cka", "wasserstein_distance"]
    cka_ax = panels[0]
    assert [t.get_text() for t in cka_ax.get_yticklabels()] == ["t.0", "t.1", "t.2"]
    assert [t.get_text() for t in cka_ax.get_xticklabels()] == ["v.0", "v.1", "v.2", "v.3"]
    assert "n = 64 samples" in cka_ax.get_title()
    im = cka_ax.get_images()[0]
    assert im.get_clim() == (0.0, 1.0)  # fixed by the metric's bounds, not the data
    dist_im = panels[1].get_images()[0]
    assert dist_im.get_cmap().name == "viridis_r"  # brighter = more similar for distances too
    assert np.isfinite(dist_im.get_clim()).all()
    # cells with p >= 0.05 are hatched
    assert any(p.get_hatch() == "///" for p in cka_ax.patches)


def test_profile_with_bands(tmp_path):
    fig = profile(_ds(), ["cka"])
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [1 / 3, 2 / 3, 1.0])
    ds = _ds()
    # t.0 (1/3) -> v.0 (0.25); t.1 (2/3) -> v.2 (0.75, nearer than 0.5); t.2 -> v.3
    expect = ds.score.sel(metric="cka").values[[0, 1, 2], [0, 2, 3]]
    np.testing.assert_allclose(line.get_ydata(), expect)
    assert len(ax.collections) >= 2  # bootstrap band + null band
    _png_ok(plot_scores(ds, tmp_path / "p.png", kind="profile"))


def test_profile_without_stats(tmp_path):
    _png_ok(plot_scores(_ds(with_stats=False), tmp_path / "p.png", kind="profile"))


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="not in this score file.*cka"):
        plot_scores(_ds(), tmp_path / "x.png", metrics=["mutual_knn"])
    with pytest.raises(ValueError, match="unknown plot kind"):
        plot_scores(_ds(), tmp_path / "x.png", kind="scatter")
    with pytest.raises(ValueError, match=r"\.png, \.svg or \.pdf"):
        plot_scores(_ds(), tmp_path / "x.jpg")


def test_profile_layer_names_do_not_overlap_with_many_layers():
    """Rotated tick labels collide when neighbours are closer (across the text) than a line."""
    import math

    n = 30
    a = LayerAxis(
        tuple(f"text.encoder.layer.{i}.output" for i in range(n)),
        ("text",) * n,
        tuple(np.linspace(0, 1, n)),
    )
    b = LayerAxis(tuple(f"v.{i}" for i in range(n)), ("vision",) * n, tuple(np.linspace(0, 1, n)))
    score = np.random.default_rng(0).uniform(size=(n, n))
    ds = scores_dataset(a, b, [MetricScores("cka", "cka", {}, (0.0, 1.0), True, score)])
    fig = profile(ds)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert len(labels) == n
    to_points = 72 / fig.dpi
    xs = sorted(ax.transData.transform((t, 0))[0] * to_points for t in ax.get_xticks())
    gap = min(x1 - x0 for x0, x1 in zip(xs, xs[1:], strict=False))
    angle = math.radians(labels[0].get_rotation())
    assert gap * math.sin(angle) >= labels[0].get_fontsize(), (gap, labels[0].get_rotation())


def test_profile_falls_back_to_depth_ticks_when_names_cannot_fit():
    a = LayerAxis(("t.x", "t.y", "t.z"), ("text",) * 3, (0.5, 0.5, 1.0))  # two at one depth
    b = LayerAxis(("v.0", "v.1"), ("vision",) * 2, (0.5, 1.0))
    ds = scores_dataset(a, b, [MetricScores("cka", "cka", {}, (0.0, 1.0), True, np.eye(3, 2))])
    ax = profile(ds).axes[0]
    assert ax.get_xlabel() == "relative depth of layer A"
    assert not any(t.get_text().startswith("t.") for t in ax.get_xticklabels())


def test_importing_and_plotting_leave_the_users_backend_and_pyplot_alone():
    """A notebook's backend must survive ``import repalign.store.plot`` and a heatmap."""
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
        "import repalign.store.plot as p\n"
        "from tests.store.test_plot import _ds\n"
        "fig = p.heatmap(_ds()); p.profile(_ds())\n"
        "print(matplotlib.get_backend(), len(plt.get_fignums()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["svg", "0"], out.stdout + out.stderr


def test_misspelt_names_get_a_hint(tmp_path):
    with pytest.raises(ValueError, match=r"Did you mean 'wasserstein_distance'\?"):
        plot_scores(_ds(), tmp_path / "x.png", metrics=["wasserstein"])
    with pytest.raises(ValueError, match=r"Did you mean 'heatmap'\?"):
        plot_scores(_ds(), tmp_path / "x.png", kind="heatmpa")


def test_interrupted_save_keeps_the_old_figure_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    out = plot_scores(_ds(), tmp_path / "heat.png")
    before = out.read_bytes()

    def cut_off(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", cut_off)
    with pytest.raises(KeyboardInterrupt):
        plot_scores(_ds(), out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heat.png"]


def test_one_metric_selected_in_a_notebook_plots():
    """``heatmap(ds.sel(metric="cka"))`` drops the metric dimension; it is one panel."""
    one = _ds().sel(metric="cka")
    assert [ax.get_title().split("\n")[0] for ax in heatmap(one).axes if ax.get_title()] == ["cka"]
    assert profile(one).axes[0].get_title().startswith("cka:")


def test_heatmap_says_which_cells_were_tested():
    """With p-values on some cells only (stats_pairs="matched"), an unhatched cell is not
    'significant' unless it was tested: the note says how many were."""
    ds = _ds()
    p = np.full((3, 4), np.nan)
    p[0, 0], p[1, 2] = 0.01, 0.01  # two tested cells, both significant: nothing hatched
    ds["pvalue"].loc[{"metric": "cka"}] = p
    notes = [t.get_text() for t in heatmap(ds, ["cka"]).texts]
    assert any("2 of 12" in n and "p >= 0.05" in n for n in notes), notes
    outlined = [
        r for r in heatmap(ds, ["cka"]).axes[0].patches if r.get_edgecolor()[:3] == (0, 0, 0)
    ]
    assert len(outlined) == 2
    full = [t.get_text() for t in heatmap(_ds(), ["cka"]).texts]
    assert full == ["hatched: permutation p >= 0.05"]


def _merged_over_layer_subsets():
    """Two compare runs over different layers of B, merged: the cells no run scored are NaN."""
    from repalign.store.scores import merge_scores

    full = _ds()
    return merge_scores(
        [full.isel(layer_b=[0, 1]), full.isel(layer_a=[0, 1], layer_b=[2, 3])]
    )  # layer_a t.2 x layer_b v.2, v.3: not computed


def test_heatmap_marks_cells_no_run_computed():
    ds = _merged_over_layer_subsets()
    assert int(np.isnan(ds.score.sel(metric="cka").values).sum()) == 2
    fig = heatmap(ds, ["cka"])
    ax = fig.axes[0]
    missing = [p for p in ax.patches if p.get_hatch() == "xx"]
    assert sorted(p.get_xy() for p in missing) == [(1.5, 1.5), (2.5, 1.5)]
    bad = ax.get_images()[0].get_cmap().get_bad()
    assert tuple(bad[:3]) != (1.0, 1.0, 1.0) and bad[3] == 1.0  # not the white background
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "not computed" in notes and "2 of 12" in notes, notes
    # the two uncomputed cells have no p-value either: they are not "untested" cells
    assert "outlined" not in notes, notes
    assert not [p for p in heatmap(_ds(), ["cka"]).axes[0].patches if p.get_hatch() == "xx"]
    assert not any("not computed" in t.get_text() for t in heatmap(_ds(), ["cka"]).texts)


def test_heatmap_with_uncomputed_cells_renders(tmp_path):
    _png_ok(plot_scores(_merged_over_layer_subsets(), tmp_path / "merged.png"))


def test_titles_have_no_empty_line_without_sample_count_or_model_names():
    bare = _ds()
    bare.attrs = {}
    assert [ax.get_title() for ax in heatmap(bare).axes if ax.get_title()] == [
        "cka",
        "wasserstein_distance",
    ]
    assert profile(bare, ["cka"]).axes[0].get_title() == "cka: depth-matched layer pairs"
    # with them, the second line says so
    assert heatmap(_ds(), ["cka"]).axes[0].get_title() == "cka\nn = 64 samples; m1 vs m2"


def test_heatmap_note_does_not_claim_outlines_for_a_panel_without_p_values():
    """cka is fully tested, wasserstein_distance has no p-values: nothing is outlined, so
    the note must not say so, and it names the panel without p-values."""
    fig = heatmap(_ds())
    assert not [r for ax in fig.axes for r in ax.patches if r.get_edgecolor()[:3] == (0, 0, 0)]
    notes = " ".join(t.get_text() for t in fig.texts)
    assert "outlined" not in notes, notes
    assert "no p-values: wasserstein_distance" in notes, notes
