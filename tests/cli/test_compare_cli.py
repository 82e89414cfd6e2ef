"""``repalign compare`` and ``repalign plot`` through typer's CliRunner on tiny files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.store.scores import open_scores
from tests.store._feature_files import write_features

runner = CliRunner()


@pytest.fixture
def feats(tmp_path):
    return write_features(tmp_path / "a.nc")


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_compare_one_file_text_vs_vision_then_plot(tmp_path, feats):
    out = tmp_path / "scores.nc"
    res = _run(
        "compare", feats, "--metric", "cka", "--metric", "svcca",
        "--layers-a", "text.*", "--layers-b", "vision.*",
        "--permutations", "9", "--bootstrap", "5", "--seed", "3", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    ds = open_scores(out)
    assert ds.metric.values.tolist() == ["cka", "svcca"]
    assert ds.layer_a.values.tolist() == [f"text.layer.{k}" for k in range(3)]
    assert np.isfinite(ds.pvalue).all() and np.isfinite(ds.ci_high).all()
    assert ds.attrs["seed"] == 3

    for kind in ("heatmap", "profile"):
        fig = tmp_path / f"{kind}.png"
        res = _run("plot", out, "--kind", kind, "--metric", "cka", "--out", fig)
        assert res.exit_code == 0, res.output
        assert fig.stat().st_size > 10_000
    res = _run("plot", out)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "scores-heatmap.png").stat().st_size > 10_000


def test_compare_two_files_unbiased(tmp_path, feats):
    other = write_features(tmp_path / "b.nc", streams=("vision",), seed=9)
    out = tmp_path / "s.nc"
    res = _run("compare", feats, other, "-m", "cka", "--unbiased", "--out", out)
    assert res.exit_code == 0, res.output
    ds = open_scores(out)
    assert ds.metric.values.tolist() == ["cka[unbiased=true]"]
    assert ds.score.shape == (1, 6, 3)


def test_reordered_ids_fail_clearly(tmp_path, feats):
    ids = [f"s{i:04d}" for i in range(40)][::-1]
    other = write_features(tmp_path / "b.nc", ids=ids)
    out = tmp_path / "s.nc"
    res = _run("compare", feats, other, "--out", out)
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "different order" in text and "--align-on-ids" in text
    assert not out.exists()
    res = _run("compare", feats, other, "--align-on-ids", "--out", out)
    assert res.exit_code == 0, res.output


def test_unknown_metric_lists_available(tmp_path, feats):
    res = _run("compare", feats, "--metric", "ckka", "--out", tmp_path / "s.nc")
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "unknown metric 'ckka'" in text and "Did you mean 'cka'" in text
    assert "Available:" in text


def test_option_no_metric_takes(tmp_path, feats):
    res = _run("compare", feats, "--metric", "cka", "--k", "5", "--out", tmp_path / "s.nc")
    assert res.exit_code == 2
    assert "--k is an option none of the chosen metrics (cka) takes" in " ".join(res.output.split())


def test_bad_layer_glob_and_too_many_files(tmp_path, feats):
    res = _run("compare", feats, "--layers-a", "fused.*", "--out", tmp_path / "s.nc")
    assert res.exit_code == 2
    assert "matches no layer" in res.output
    res = _run("compare", feats, feats, feats, "--out", tmp_path / "s.nc")
    assert res.exit_code == 2


def test_plot_errors(tmp_path, feats):
    res = _run("plot", tmp_path / "missing.nc", "--out", tmp_path / "x.png")
    assert res.exit_code == 2 and "does not exist" in res.output
    res = _run("plot", feats, "--out", tmp_path / "x.png")
    assert res.exit_code == 2 and "not a repalign score file" in " ".join(res.output.split())


def test_existing_out_is_refused_before_computing(tmp_path, feats, monkeypatch):
    out = tmp_path / "s.nc"
    out.write_bytes(b"an earlier run's scores")
    import repalign.compare

    def boom(*a, **k):
        raise AssertionError("compare ran although --out would be refused")

    monkeypatch.setattr(repalign.compare, "compare", boom)
    res = _run("compare", feats, "--out", out)
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "already exists" in text and "--overwrite" in text
    assert out.read_bytes() == b"an earlier run's scores"
    res = _run("compare", feats, "--out", tmp_path)
    assert res.exit_code == 2 and "directory" in res.output
    res = _run("compare", feats, "--out", tmp_path / "cka.png")
    assert res.exit_code == 2 and ".nc" in res.output
    monkeypatch.undo()
    res = _run("compare", feats, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert open_scores(out).metric.values.tolist() == ["cka"]


def test_plot_a_file_that_is_not_netcdf(tmp_path):
    fig = tmp_path / "fig.png"
    fig.write_bytes(b"\x89PNG\r\n\x1a\n not netCDF")
    res = _run("plot", fig, "--out", tmp_path / "x.png")
    assert res.exit_code == 2, res.output
    assert "not a readable netCDF score file" in " ".join(res.output.split())


@pytest.mark.parametrize("streaming", [[], ["--streaming"]])
def test_negative_resample_counts_are_refused(tmp_path, feats, streaming):
    for opt in ("--permutations", "--bootstrap"):
        out = tmp_path / "s.nc"
        res = _run("compare", feats, opt, "-1", *streaming, "--out", out)
        assert res.exit_code == 2, res.output
        assert opt in res.output and not out.exists()
    # -1 + 1 resamples is not "no statistics"
    res = _run("compare", feats, "--permutations", "-1", "--bootstrap", "1", *streaming,
               "--out", tmp_path / "s.nc")  # fmt: skip
    assert res.exit_code == 2, res.output


def test_plot_default_name_from_a_glob_has_no_wildcards(tmp_path, feats):
    for k in range(2):
        res = _run("compare", feats, "-m", ["cka", "svcca"][k], "--out", tmp_path / f"run{k}.nc")
        assert res.exit_code == 0, res.output
    res = _run("plot", str(tmp_path / "run*.nc"))
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["run-heatmap.png"], written


def test_info_on_a_score_file_prints_each_metrics_depth_matched_pairs(tmp_path, feats):
    out = tmp_path / "scores.nc"
    res = _run(
        "compare", feats, "-m", "cka", "--unbiased", "--layers-a", "text.*",
        "--layers-b", "vision.*", "--permutations", "9", "--bootstrap", "5", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["info", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    text = res.output
    assert "score file: 1 metric(s) x 3 x 3 layer pairs" in text
    assert "cka[unbiased=true]: depth-matched pairs (higher = more similar)" in text
    assert "permutations 9, bootstrap 5" in text
    ds = open_scores(out).sel(metric="cka[unbiased=true]")
    for k in range(3):  # the matched pair of text.layer.k is vision.layer.k (same depth)
        score = float(ds.score.sel(layer_a=f"text.layer.{k}", layer_b=f"vision.layer.{k}"))
        assert f"{score:.3f}" in text
    assert "0.1 " in text  # p = 1/10, the floor of 9 permutations


@pytest.fixture
def interrupting_metric():
    """A metric whose scoring is cut short by Ctrl-C (a KeyboardInterrupt)."""
    import torch

    from repalign.metrics import _registry, register_metric

    state = {"interrupt": True}

    @register_metric(bounds=(0.0, 1.0), reference="test", name="ctrl_c")
    def ctrl_c(x, y, *, dtype=torch.float64):
        """Ctrl-C while ``state["interrupt"]``, else 0.5 (a resumed run)."""
        if state["interrupt"]:
            raise KeyboardInterrupt
        return torch.tensor(0.5, dtype=dtype)

    try:
        yield state
    finally:
        del _registry._METRICS["ctrl_c"]


def test_an_interrupted_compare_keeps_the_finished_metrics(tmp_path, feats, interrupting_metric):
    from repalign.compare import ComparisonInterrupted, compare

    with pytest.raises(ComparisonInterrupted) as stop:
        compare([feats], ["cka", "ctrl_c", "svcca"], progress=False)
    assert stop.value.finished.metric.values.tolist() == ["cka"]
    assert stop.value.remaining == ["ctrl_c", "svcca"]
    out = tmp_path / "scores.nc"
    (tmp_path / "scores.partial.nc").write_text("an earlier partial file: kept")
    res = _run("compare", feats, "-m", "cka", "--unbiased", "-m", "ctrl_c", "--out", out)
    assert res.exit_code == 130
    assert not out.exists()
    partial = tmp_path / "scores.partial2.nc"
    said = " ".join(res.output.split())
    assert f"cka[unbiased=true] are in {partial}" in said and "not done: ctrl_c" in said
    ds = open_scores(partial)
    assert ds.metric.values.tolist() == ["cka[unbiased=true]"]
    assert (tmp_path / "scores.partial.nc").read_text() == "an earlier partial file: kept"


def test_resume_computes_only_the_metrics_an_interrupted_compare_left(
    tmp_path, feats, interrupting_metric
):
    out = tmp_path / "scores.nc"
    args = ["compare", feats, "-m", "cka", "-m", "ctrl_c", "-m", "svcca",
            "--permutations", "3", "--out", out]  # fmt: skip
    assert _run(*args).exit_code == 130
    partial = tmp_path / "scores.partial.nc"
    assert open_scores(partial).metric.values.tolist() == ["cka"]
    res = _run(*args, "--seed", "1", "--resume")
    assert res.exit_code == 2 and "with other seed" in " ".join(res.output.split())
    interrupting_metric["interrupt"] = False
    res = _run(*args, "--resume")
    assert res.exit_code == 0, res.output
    ds = open_scores(out)
    assert sorted(ds.metric.values.tolist()) == ["cka", "ctrl_c", "svcca"]
    assert float(ds.score.sel(metric="ctrl_c").max()) == 0.5
    assert len(json.loads(ds.attrs["runs_json"])) == 2  # the partial run and the rest
    assert not partial.exists()  # merged into --out


def test_resume_needs_a_partial_file(tmp_path, feats):
    res = _run("compare", feats, "--out", tmp_path / "s.nc", "--resume")
    assert res.exit_code == 2 and "no s.partial*.nc" in " ".join(res.output.split())
