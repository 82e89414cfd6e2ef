"""Heavy libraries are imported only by the code that needs them.

``import ot`` (POT) pulls in scikit-learn (about 1 s at startup); ``import torch`` about
2 s and 600 MiB of resident memory. ``repalign compare`` never needs POT unless the
wasserstein metric runs, and ``repalign plot`` never needs torch. Each check runs in a
fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(statement: str, modules: list[str]) -> dict[str, bool]:
    probe = f"import sys\n{statement}\nprint([m in sys.modules for m in {modules!r}])"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return dict(zip(modules, eval(out.stdout.strip().splitlines()[-1]), strict=True))


def test_metrics_and_compare_do_not_import_pot_until_wasserstein_runs():
    loaded = _loaded_after("import repalign.metrics, repalign.compare", ["ot", "sklearn"])
    assert loaded == {"ot": False, "sklearn": False}


def test_wasserstein_imports_pot_when_it_runs():
    statement = (
        "import torch\nfrom repalign.metrics import wasserstein_distance\n"
        "wasserstein_distance(torch.randn(8, 3), torch.randn(8, 4))"
    )
    assert _loaded_after(statement, ["ot"]) == {"ot": True}


@pytest.mark.parametrize("kind", ["heatmap", "profile"])
def test_plotting_a_score_file_does_not_import_torch(kind, tmp_path):
    statement = f"""
import numpy as np
from repalign.store.plot import plot_scores
from repalign.store.scores import LayerAxis, MetricScores, scores_dataset
a = LayerAxis(("t.0", "t.1"), ("text",) * 2, (0.5, 1.0))
b = LayerAxis(("v.0", "v.1", "v.2"), ("vision",) * 3, (1 / 3, 2 / 3, 1.0))
m = MetricScores("cka", "cka", {{}}, (0.0, 1.0), True, np.full((2, 3), 0.5))
ds = scores_dataset(a, b, [m], {{"n_samples": 8, "model_a": "m1", "model_b": "m2"}})
plot_scores(ds, {str(tmp_path / "fig.png")!r}, kind={kind!r})
"""
    assert _loaded_after(statement, ["torch"]) == {"torch": False}
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_matched_pairs_is_the_same_function_from_compare_and_store():
    from repalign.compare import matched_pairs as from_compare
    from repalign.compare.scoring import matched_pairs as from_scoring
    from repalign.store.scores import matched_pairs as from_store

    assert from_compare is from_scoring is from_store
