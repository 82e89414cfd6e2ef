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


@pytest.fixture
def plain_metric():
    """A metric registered with the function alone (no prepare / combine)."""
    from repalign.metrics import register_metric

    @register_metric(bounds=(-1.0, 1.0), reference="test", name="first_column_corr")
    def first_column_corr(x, y, *, dtype=torch.float64, column: int = 0):
        a, b = x[:, column].to(dtype), y[:, column].to(dtype)
        return torch.corrcoef(torch.stack([a, b]))[0, 1]

    try:
        yield first_column_corr
    finally:
        del _registry._METRICS["first_column_corr"]


def test_a_metric_without_prepare_and_combine_works_everywhere(plain_metric):
    from repalign.metrics import bootstrap_ci

    x, y = related_pair(40, 6, 4)
    grid = pairwise({"x": x, "y": y}, metric="first_column_corr", column=1)
    assert float(grid[0, 1]) == pytest.approx(float(plain_metric(x, y, column=1)), rel=1e-12)
    out = permutation_test("first_column_corr", x, y, n_permutations=10, column=1)
    assert out["null"].shape == (10,)
    ci = bootstrap_ci("first_column_corr", x, y, n_boot=10, column=1)
    assert float(ci["ci_low"]) <= float(ci["ci_high"])


def test_prepare_without_combine_is_refused_at_registration():
    from repalign.metrics import register_metric

    with pytest.raises(ValueError, match="prepare and combine together"):
        register_metric(bounds=(0.0, 1.0), reference="test", prepare=lambda x: x)
