import json

import pytest

from repalign.train.plot import _probe_key, plot_training


def test_probe_keys_keep_underscored_metric_names():
    assert _probe_key("mutual_knn_fusion12") == ("mutual_knn", "fusion12")
    assert _probe_key("cka_tower") == ("cka", "tower")


def test_plot_with_probes_writes_a_png(tmp_path):
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
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_training(tmp_path)
    assert out == tmp_path / "training.png" and out.stat().st_size > 20_000


def test_empty_log_is_reported(tmp_path):
    (tmp_path / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        plot_training(tmp_path)
