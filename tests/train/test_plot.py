import json

import pytest

from repalign.train.plot import _probe_key, plot_training, training_figure


def test_probe_keys_keep_underscored_metric_names():
    assert _probe_key("mutual_knn_fusion12") == ("mutual_knn", "fusion12")
    assert _probe_key("cka_tower") == ("cka", "tower")


def _write_log(run_dir):
    records = []
    for step in (10, 20, 30):
        records.append(
            {
                "step": step,
                "split": "train",
                "loss": 1.0 / step,
                "ap_loss": 0.5,
                "ap_accuracy": 0.5 + step / 100,
                "lr": 1e-3,
                "elapsed_s": step,
            }
        )
        records.append({"step": step, "split": "eval", "ap_accuracy": 0.6, "ap_loss": 0.4})
        records.append(
            {
                "step": step,
                "split": "probe",
                "cka_tower": 0.5,
                "cka_fusion0": 0.6,
                "mutual_knn_tower": 0.3,
                "mutual_knn_fusion0": 0.2,
                "elapsed_s": step,
            }
        )
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plot_with_probes_writes_a_png(tmp_path):
    _write_log(tmp_path)
    out = plot_training(tmp_path)
    assert out == tmp_path / "training.png" and out.stat().st_size > 20_000
    assert not list(tmp_path.glob(".*partial"))  # written through a temporary file, then renamed


def test_plotting_leaves_the_backend_and_pyplot_alone(tmp_path):
    """A notebook's inline backend must survive a plot: no matplotlib.use(), no pyplot figure."""
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    _write_log(tmp_path)
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        open_figures = plt.get_fignums()
        fig = training_figure(tmp_path)
        assert isinstance(fig, Figure)
        assert [ax.get_title() for ax in fig.axes] == [
            "loss", "accuracy", "cka (text vs vision)", "mutual_knn (text vs vision)"
        ]  # fmt: skip
        plot_training(tmp_path, tmp_path / "t.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == open_figures
    finally:
        matplotlib.use(before)
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_log_is_reported(tmp_path):
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        plot_training(tmp_path)
