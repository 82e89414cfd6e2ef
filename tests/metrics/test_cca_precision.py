"""CCA's rank tolerance knows the precision of its rows: float32 rounding is not structure.

A feature file stores float32. A layer of rank 5 stored that way has 35 more singular
directions at about 1e-8 of the largest: rounding. NumPy's float64 tolerance (about
1e-13 of the largest) counted them, so CCA averaged 35 near-zero correlations into the
score; the tolerance now includes the rows' own rounding level.
"""

import pytest
import torch

from repalign.metrics import StreamingCCA, cca, pwcca, svcca
from repalign.metrics.cca import rounding_floor


def _low_rank_pair(n: int = 600, rank: int = 5, width: int = 40):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, rank, generator=g, dtype=torch.float64)
    x = z @ torch.randn(rank, width, generator=g, dtype=torch.float64)
    y = torch.tanh(z[:, :3]) @ torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = y + 0.3 * torch.randn(n, 6, generator=g, dtype=torch.float64)
    return x, y


def test_rounding_floor_follows_the_precision_the_values_carry():
    x = torch.randn(50, 4, dtype=torch.float64)
    norm = float(torch.linalg.norm(x))
    assert float(rounding_floor(x)) == pytest.approx(torch.finfo(torch.float64).eps * norm)
    x32 = x.float().double()  # float32 numbers, held in float64
    assert float(rounding_floor(x32)) == pytest.approx(
        torch.finfo(torch.float32).eps * norm, rel=1e-6
    )
    assert float(rounding_floor(x.float())) == pytest.approx(float(rounding_floor(x32)), rel=1e-6)


@pytest.mark.parametrize("metric", [cca, pwcca])
def test_a_low_rank_layer_stored_in_float32_scores_as_its_exact_self(metric):
    x, y = _low_rank_pair()
    exact = float(metric(x, y))  # float64, exactly rank 5: NumPy's tolerance finds 5
    stored = float(metric(x.float(), y))  # float32 rounding adds 35 tiny directions
    assert stored == pytest.approx(exact, abs=1e-5)
    assert float(metric(x.float(), x.float())) == pytest.approx(1.0, abs=1e-6)


def test_svcca_and_streaming_cca_agree_on_the_stored_layer():
    x, y = _low_rank_pair()
    x32 = x.float()
    assert float(svcca(x32, y, keep=1.0)) == pytest.approx(float(cca(x32, y)), abs=1e-6)
    acc = StreamingCCA()
    for start in range(0, 600, 150):
        acc.update(x32[start : start + 150], y[start : start + 150])
    assert float(acc.compute()) == pytest.approx(float(cca(x32, y)), abs=1e-6)
