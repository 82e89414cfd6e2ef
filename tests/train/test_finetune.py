import json

import numpy as np
from typer.testing import CliRunner

from repalign.cli.main import app
from repalign.train.finetune import SyntheticMatching, classification_scores


def test_synthetic_matching_labels_and_negatives():
    data = SyntheticMatching(40, seed=3)
    labels = [s.label for s in data]
    assert 10 < sum(labels) < 30
    for s in data:
        true = s.text == data.scenes[s.meta["index"]].text
        assert true == bool(s.label)


def test_classification_scores():
    labels = np.array([0, 0, 1, 1])
    assert classification_scores(np.array([-2.0, -1.0, 1.0, 3.0]), labels) == {
        "accuracy": 1.0,
        "auroc": 1.0,
    }
    scores = classification_scores(np.array([1.0, -1.0, 2.0, -3.0]), labels)
    assert scores["accuracy"] == 0.5 and scores["auroc"] == 0.5
    assert np.isnan(classification_scores(np.array([1.0, 2.0]), np.array([1, 1]))["auroc"])


def test_finetune_from_scratch_cli(tmp_path):
    out = tmp_path / "ft"
    args = ["train", "finetune", "--from-scratch", "--out", str(out), "--steps", "2"]
    args += ["batch_size=8", "data.n_train=16", "data.n_eval=16", "loop.progress=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval.json").read_text())
    assert {"accuracy", "auroc", "dev_auroc", "test_auroc"} <= set(metrics)
    assert metrics["from_scratch"] is True and metrics["steps"] == 2
    assert (out / "best" / "model.safetensors").is_file()
