"""The 'Your own metric' example of docs/comparing.md works as the page says."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from repalign.metrics import _registry, get_metric, pairwise, permutation_test
from tests.metrics._data import related_pair

DOC = Path(__file__).resolve().parents[2] / "docs" / "comparing.md"


@pytest.fixture
def rsa():
    text = DOC.read_text()
    section = text[text.index("### Your own metric") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # the page's code, as a reader runs it
    try:
        yield namespace["rsa"]
    finally:
        del _registry._METRICS["rsa"]


def test_the_documented_metric_registers_and_runs_everywhere(rsa):
    x, y = related_pair(40, 6, 4)
    spec = get_metric("rsa")
    assert spec.options == () and spec.permute is not None
    assert float(rsa(x, x)) == pytest.approx(1.0)
    grid = pairwise({"x": x, "y": y}, metric="rsa")
    assert float(grid[0, 1]) == pytest.approx(float(rsa(x, y)), rel=1e-12)
    out = permutation_test("rsa", x, y, n_permutations=20)
    slow = permutation_test(dataclasses.replace(spec, permute=None), x, y, n_permutations=20)
    torch.testing.assert_close(out["null"], slow["null"])
    assert float(out["pvalue"]) < 0.1  # related layers
