"""Permutation null and bootstrap intervals for any registered metric.

A permutation test prepares ``x`` once, and the shuffled ``y`` is either re-prepared
or, for metrics that register ``permute`` (CKA, CCA, SVCCA, PWCCA, mutual k-NN, CKNNA),
its prepared state is reordered (a permuted Gram, basis or neighbour graph: no SVD,
kernel or neighbour search per permutation). A bootstrap resample is scored from the
prepared layers where the metric registers ``resample`` (biased linear CKA: its Gram;
mutual k-NN and CKNNA: a deeper neighbour list, filtered to the subsample), otherwise by
preparing the resampled rows.
"""

from __future__ import annotations

from typing import Any

import torch

from repalign._numerics import check_pair
from repalign.metrics._registry import MetricSpec, get_metric


def _spec(metric: str | MetricSpec) -> MetricSpec:
    return metric if isinstance(metric, MetricSpec) else get_metric(metric)


def _generator(seed: int) -> torch.Generator:
    # a CPU generator, so that a seed draws the same resamples on every device
    return torch.Generator().manual_seed(seed)


def permutation_test(
    metric: str | MetricSpec,
    x: Any,
    y: Any,
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    **options: Any,
) -> dict[str, torch.Tensor]:
    r"""Null distribution of ``metric(x, y[π])`` over random row permutations π.

    Shuffling the rows of ``y`` breaks the stimulus correspondence and keeps
    each side's own structure, so the null is what the metric gives to two
    unrelated representations of these shapes and this ``n``.
    p-value (Phipson & Smyth 2010): (1 + #{null at least as extreme}) / (1 + N),
    "extreme" meaning higher for similarities and lower for distances.

    Returns 0-d tensors ``observed``, ``null_mean``, ``null_std``, ``pvalue``
    and the 1-d tensor ``null``.
    """
    spec = _spec(metric)
    spec.check_options(options)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    x, y = check_pair(x, y, dtype=dtype, min_rows=max(spec.min_rows, 3))
    state_x, state_y = spec.prepare(x, **options), spec.prepare(y, **options)
    observed = spec.combine(state_x, state_y, **options)
    gen = _generator(seed)
    null = torch.empty(n_permutations, dtype=dtype, device=x.device)
    for b in range(n_permutations):
        perm = torch.randperm(y.shape[0], generator=gen).to(y.device)
        state = spec.permute(state_y, perm) if spec.permute else spec.prepare(y[perm], **options)
        null[b] = spec.combine(state_x, state, **options)
    extreme = (null >= observed) if spec.higher_is_more_similar else (null <= observed)
    pvalue = (1.0 + extreme.sum()) / (1.0 + n_permutations)
    return {
        "observed": observed,
        "null_mean": null.mean(),
        "null_std": null.std() if n_permutations > 1 else torch.zeros_like(observed),
        "pvalue": pvalue.to(dtype),
        "null": null,
    }


def _resampled_score(
    spec: MetricSpec,
    states: tuple[Any, Any] | None,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    dtype: torch.dtype,
    options: dict[str, Any],
) -> torch.Tensor:
    """The metric on rows ``idx`` of both layers: from the prepared states where the metric
    can resample them, else by preparing the rows anew."""
    if states is not None:
        sx = spec.resample(states[0], x, idx)
        sy = spec.resample(states[1], y, idx) if sx is not None else None
        if sy is not None:
            return spec.combine(sx, sy, **options)
    return spec.fn(x[idx], y[idx], dtype=dtype, **options)


def bootstrap_ci(
    metric: str | MetricSpec,
    x: Any,
    y: Any,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    **options: Any,
) -> dict[str, torch.Tensor]:
    r"""Confidence interval of ``metric(x, y)`` over the sampling of stimuli.

    Rows are resampled with the same indices for ``x`` and ``y``.

    - Most metrics: the percentile bootstrap (Efron & Tibshirani 1993),
      n rows drawn with replacement; the interval is the ((1-level)/2,
      (1+level)/2) quantiles of the resampled scores.
    - Metrics registered with ``duplicates_ok=False`` (mutual k-NN, CKNNA,
      SVCCA): a duplicated row is its own nearest neighbour in both spaces, or
      moves SVCCA's variance cut, which biases every resampled score. They use subsampling instead (Politis &
      Romano 1994): m = n/2 rows drawn without replacement; the interval is
      θ̂ + sqrt(m/n) · q(θ_m - mean θ_m), the spread of the half-size scores
      rescaled to n (the usual sqrt(n) rate) and centred on the full-sample
      score. Centring on the subsamples' own mean removes the drift of k-NN
      scores with n (chance overlap is about k/n), which would otherwise shift
      the whole interval.

    Returns 0-d tensors ``observed``, ``ci_low``, ``ci_high`` and ``subsample``
    (1 when the subsampling interval was used, else 0), and the 1-d ``boot``
    (the resampled scores).
    """
    spec = _spec(metric)
    spec.check_options(options)
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x, y = check_pair(x, y, dtype=dtype, min_rows=max(spec.min_rows, 3))
    # with a resample hook, each resample is cut from the prepared layers (CKA: its Gram)
    states = (spec.prepare(x, **options), spec.prepare(y, **options)) if spec.resample else None
    if states is not None:
        observed = spec.combine(*states, **options)
    else:
        observed = spec.fn(x, y, dtype=dtype, **options)
    gen = _generator(seed)
    n = x.shape[0]
    subsample = not spec.duplicates_ok
    m = n // 2 if subsample else n
    if subsample and m < spec.min_rows + 1:
        raise ValueError(f"subsampling {spec.name} needs n >= {2 * (spec.min_rows + 1)}, got n={n}")
    boot = torch.empty(n_boot, dtype=dtype, device=x.device)
    done = 0
    for _ in range(50 * n_boot):
        if done == n_boot:
            break
        if subsample:
            idx = torch.randperm(n, generator=gen)[:m].to(x.device)
        else:
            idx = torch.randint(n, (n,), generator=gen).to(x.device)
        try:
            boot[done] = _resampled_score(spec, states, x, y, idx, dtype, options)
        except ValueError:
            continue  # a degenerate resample (e.g. every row equal): draw another
        done += 1
    if done < n_boot:
        raise ValueError(f"only {done} of {n_boot} resamples were valid; use more samples")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=dtype, device=x.device)
    if subsample:
        q_low, q_high = torch.quantile(boot - boot.mean(), q) * (m / n) ** 0.5
        low, high = observed + q_low, observed + q_high
    else:
        low, high = torch.quantile(boot, q)
    return {
        "observed": observed,
        "ci_low": low,
        "ci_high": high,
        "boot": boot,
        "subsample": torch.tensor(int(subsample), device=x.device),
    }
