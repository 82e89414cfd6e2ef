"""demo_summary on small synthetic score Datasets (no training, no extraction)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from repalign.demo_summary import HEADLINE, SummaryInputs, ci_misses, write_summary
from repalign.store.scores import LayerAxis, MetricScores, scores_dataset

TEXT = LayerAxis(("text.layer.0", "text.layer.1"), ("text", "text"), (0.5, 1.0))
VISION = LayerAxis(("vision.block.0", "vision.block.1"), ("vision", "vision"), (0.5, 1.0))
METRICS = (HEADLINE, "mutual_knn")


def _scores(a=TEXT, b=VISION, metrics=METRICS, *, miss: str | None = None):
    """A score file whose intervals all hold their score, except ``miss``'s at one pair."""
    shape = (len(a.names), len(b.names))
    runs = []
    for label in metrics:
        score = np.full(shape, 0.5)
        low, high = score - 0.1, score + 0.1
        if label == miss:
            low[1, 1], high[1, 1] = 0.6, 0.7  # the interval lies above the score
        stats = dict(pvalue=np.full(shape, 0.01), null_mean=np.zeros(shape),
                     null_std=np.full(shape, 0.05), ci_low=low, ci_high=high)  # fmt: skip
        runs.append(MetricScores(label, label.split("[")[0], {}, (0.0, 1.0), True, score, stats))
    attrs = {
        "n_samples": 64,
        "config_json": json.dumps({"permutations": 99, "bootstrap": 50}),
        "feature_files": json.dumps(["f.nc"]),
    }
    return scores_dataset(a, b, runs, attrs)


def _summary(tmp_path, main, ctrl) -> str:
    for run in ("trained", "untrained"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "eval.json").write_text(json.dumps({"ap_accuracy": 0.75}))
    layers = LayerAxis(TEXT.names + VISION.names, TEXT.streams + VISION.streams,
                       TEXT.depths + VISION.depths)  # fmt: skip
    scores = {
        "scores": main,
        "scores-untrained": ctrl,
        "scores-baseline": _scores(),
        "scores-within": _scores(layers, layers, ("cka",)),
    }
    inputs = SummaryInputs(
        out=tmp_path, scores=scores, trained=tmp_path / "trained",
        untrained=tmp_path / "untrained", baseline="a tiny BERT and ViT",
        shuffled=("text.layer.1 vs vision.block.1", 0.5, 0.1), figures=[], seconds=60.0,
        reused=False, quick=True, tasks=["ap"], steps=10, batch_size=8, probe_seed=1,
        train_seed=0, device="cpu",
    )  # fmt: skip
    return write_summary(inputs).read_text()


def test_ci_misses_names_the_metric_whose_interval_misses_its_score():
    assert ci_misses(_scores()) == []
    assert ci_misses(_scores(miss="mutual_knn")) == ["mutual_knn"]


@pytest.mark.parametrize(
    ("main_miss", "ctrl_miss", "expected"),
    [
        (None, None, []),
        (HEADLINE, None, [f"Caveat (trained model): for `{HEADLINE}`"]),
        (None, "mutual_knn", ["Caveat (untrained model): for `mutual_knn`"]),
        (
            "mutual_knn",
            HEADLINE,
            [
                "Caveat (trained model): for `mutual_knn`",
                f"Caveat (untrained model): for `{HEADLINE}`",
            ],
        ),
    ],
)
def test_interval_misses_are_flagged_for_each_model(tmp_path, main_miss, ctrl_miss, expected):
    text = _summary(tmp_path, _scores(miss=main_miss), _scores(miss=ctrl_miss))
    caveats = [line for line in text.splitlines() if line.startswith("Caveat")]
    assert [c.split(" the resampling interval")[0] for c in caveats] == expected
    for caveat in caveats:
        assert "not a calibrated 95% interval" in caveat
    if ctrl_miss:  # the control's caveat follows the control's table, not the trained one's
        assert text.index("Caveat (untrained model)") > text.index(
            "The untrained model, the control"
        )
