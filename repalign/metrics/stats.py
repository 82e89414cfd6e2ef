"""Permutation null and bootstrap intervals for any registered metric.

A permutation test prepares ``x`` once, and the shuffled ``y`` is either re-prepared
or, for metrics that register ``permute`` (CKA, CCA, SVCCA, PWCCA, mutual k-NN, CKNNA),
its prepared state is reordered (permuted rows or Gram, basis or neighbour graph: no
SVD, kernel or neighbour search per permutation). A bootstrap resample is scored from the
prepared layers where the metric registers ``resample`` (linear CKA: its centered rows,
or its Gram where that route is cheaper; mutual k-NN and CKNNA: a deeper neighbour list,
filtered to the subsample), otherwise by preparing the resampled rows.

:func:`pair_statistics` does both for many layer pairs at once: each layer is prepared
once, and each permutation or resample of a layer's state is made once and scored
against every layer it is paired with (a grid of L layers costs L, not L², state
derivations per draw). :func:`permutation_test` and :func:`bootstrap_ci` are its
one-pair case.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import torch

from repalign._numerics import check_matrix, check_pair, check_rows, require_variance
from repalign.metrics._registry import MetricSpec, get_metric

Pair = tuple[Hashable, Hashable]


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
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    x, y = check_pair(x, y, dtype=dtype, min_rows=max(spec.min_rows, 3))
    out = pair_statistics(
        spec, {"x": x, "y": y}, [("x", "y")], permutations=n_permutations, seed=seed,
        dtype=dtype, **options,
    )  # fmt: skip
    return out[("x", "y")]


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

    A resample on which the metric is undefined (e.g. every drawn row equal) is
    replaced by another draw.

    Returns 0-d tensors ``observed``, ``ci_low``, ``ci_high`` and ``subsample``
    (1 when the subsampling interval was used, else 0), and the 1-d ``boot``
    (the resampled scores).
    """
    spec = _spec(metric)
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    x, y = check_pair(x, y, dtype=dtype, min_rows=max(spec.min_rows, 3))
    out = pair_statistics(
        spec, {"x": x, "y": y}, [("x", "y")], bootstrap=n_boot, level=level, seed=seed,
        dtype=dtype, **options,
    )  # fmt: skip
    return out[("x", "y")]


def pair_statistics(
    metric: str | MetricSpec,
    layers: Mapping[Hashable, Any],
    pairs: Sequence[Pair],
    *,
    permutations: int = 0,
    bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    on_draw: Callable[[], None] | None = None,
    prepared: Mapping[Hashable, Any] | None = None,
    **options: Any,
) -> dict[Pair, dict[str, torch.Tensor]]:
    """Permutation null and/or bootstrap interval of every ``(a, b)`` in ``pairs``, ``a``
    and ``b`` keys of ``layers`` ((n, d) arrays of the same n stimuli).

    Per pair the result is what :func:`permutation_test` (``permutations`` > 0: keys
    ``observed``, ``null``, ``null_mean``, ``null_std``, ``pvalue``) and
    :func:`bootstrap_ci` (``bootstrap`` > 0: ``ci_low``, ``ci_high``, ``boot``,
    ``subsample``) return for it, with the same seed: every pair faces the same
    permutations and resamples. ``on_draw`` is called after each permutation and
    each resample (a progress bar). ``prepared`` may hold some layers' states already
    (``spec.prepare`` of the same rows, dtype and options, e.g. from
    :func:`repalign.metrics.grid.pairwise_prepared` scoring the grid); only the other
    layers are prepared. Memory: each layer's prepared state, plus at most one permuted
    or resampled state per layer at a time.
    """
    spec = _spec(metric)
    spec.check_options(options)
    if permutations < 0 or bootstrap < 0:
        raise ValueError(
            f"permutations and bootstrap must be >= 0, got {permutations} and {bootstrap}"
        )
    if not permutations and not bootstrap:
        raise ValueError("nothing to compute: give permutations > 0 and/or bootstrap > 0")
    if bootstrap == 1:
        raise ValueError("bootstrap needs at least 2 resamples, got 1")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rows = _checked_layers(spec, layers, pairs, dtype)
    n = next(iter(rows.values())).shape[0]
    if bootstrap and not spec.duplicates_ok and n // 2 < spec.min_rows + 1:
        # before any permutation runs: the subsampling interval needs n/2 usable rows
        raise ValueError(f"subsampling {spec.name} needs n >= {2 * (spec.min_rows + 1)}, got n={n}")
    grid = _PreparedGrid(spec, rows, options, prepared)
    results = grid.observed(list(dict.fromkeys(pairs)))
    tick = on_draw or (lambda: None)
    if permutations:
        grid.permutation_nulls(results, permutations, seed, tick)
    if bootstrap:
        grid.bootstrap_intervals(results, bootstrap, level, seed, tick)
    return results


def _checked_layers(
    spec: MetricSpec, layers: Mapping[Hashable, Any], pairs: Sequence[Pair], dtype: torch.dtype
) -> dict[Hashable, torch.Tensor]:
    """The layers the pairs use, validated and in the compute dtype."""
    if not pairs:
        raise ValueError("no layer pairs given")
    used = list(dict.fromkeys(name for pair in pairs for name in pair))
    missing = [name for name in used if name not in layers]
    if missing:
        raise KeyError(f"pairs name layers that are not given: {missing}; have {list(layers)}")
    rows = {name: check_matrix(layers[name], str(name), dtype=dtype) for name in used}
    sizes = {name: x.shape[0] for name, x in rows.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"layers have different numbers of rows {sizes}; rows must be the same stimuli"
        )
    devices = {x.device for x in rows.values()}
    if len(devices) > 1:
        raise ValueError(
            f"layers are on several devices {sorted(map(str, devices))}; move them to one"
        )
    check_rows(next(iter(sizes.values())), max(spec.min_rows, 3))
    for name, x in rows.items():
        require_variance(x, str(name))
    return rows


class _PreparedGrid:
    """Validated layers, each prepared once, and the draws that statistics score on them."""

    def __init__(
        self,
        spec: MetricSpec,
        rows: dict[Hashable, torch.Tensor],
        options: dict[str, Any],
        states: Mapping[Hashable, Any] | None = None,
    ) -> None:
        self.spec, self.rows, self.options = spec, rows, options
        given = states or {}
        self.states = {
            name: given[name] if name in given else spec.prepare(x, **options)
            for name, x in rows.items()
        }
        first = next(iter(rows.values()))
        self.n, self.device, self.dtype = first.shape[0], first.device, first.dtype

    def observed(self, pairs: Sequence[Pair]) -> dict[Pair, dict[str, torch.Tensor]]:
        combine, states = self.spec.combine, self.states
        return {
            (a, b): {"observed": combine(states[a], states[b], **self.options)} for a, b in pairs
        }

    def permutation_nulls(
        self,
        results: dict[Pair, dict[str, torch.Tensor]],
        n_permutations: int,
        seed: int,
        tick: Callable[[], None],
    ) -> None:
        """Shuffle the second layer of each pair; each layer's state is permuted once per
        draw and lives only while its pairs are scored."""
        spec, states, options = self.spec, self.states, self.options
        nulls = {pair: self._empty(n_permutations) for pair in results}
        by_shuffled: dict[Hashable, list[Pair]] = {}
        for pair in results:
            by_shuffled.setdefault(pair[1], []).append(pair)
        gen = _generator(seed)
        for p in range(n_permutations):
            perm = torch.randperm(self.n, generator=gen).to(self.device)
            for b, pairs in by_shuffled.items():
                permuted = (
                    spec.permute(states[b], perm)
                    if spec.permute
                    else spec.prepare(self.rows[b][perm], **options)
                )
                for a, _ in pairs:
                    nulls[(a, b)][p] = spec.combine(states[a], permuted, **options)
            tick()
        for pair, null in nulls.items():
            observed = results[pair]["observed"]
            extreme = (null >= observed) if spec.higher_is_more_similar else (null <= observed)
            results[pair].update(
                null=null,
                null_mean=null.mean(),
                null_std=null.std() if n_permutations > 1 else torch.zeros_like(observed),
                pvalue=((1.0 + extreme.sum()) / (1.0 + n_permutations)).to(self.dtype),
            )

    def bootstrap_intervals(
        self,
        results: dict[Pair, dict[str, torch.Tensor]],
        n_boot: int,
        level: float,
        seed: int,
        tick: Callable[[], None],
    ) -> None:
        """Resample the rows of both layers of each pair with the same indices; each layer's
        state is resampled once per draw. A pair whose score is undefined on a draw skips
        it and takes the next one (each pair sees the same sequence of draws)."""
        spec, n = self.spec, self.n
        subsample = not spec.duplicates_ok
        m = n // 2 if subsample else n
        boots = {pair: self._empty(n_boot) for pair in results}
        done = dict.fromkeys(results, 0)
        gen = _generator(seed)
        for _ in range(50 * n_boot):
            pending = [pair for pair in results if done[pair] < n_boot]
            if not pending:
                break
            if subsample:
                idx = torch.randperm(n, generator=gen)[:m].to(self.device)
            else:
                idx = torch.randint(n, (n,), generator=gen).to(self.device)
            for pair, score in self._resampled_scores(pending, idx):
                boots[pair][done[pair]] = score
                done[pair] += 1
            tick()
        short = {pair: count for pair, count in done.items() if count < n_boot}
        if short:
            pair, count = next(iter(short.items()))
            raise ValueError(
                f"only {count} of {n_boot} resamples were valid for {pair}; use more samples"
            )
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=self.dtype, device=self.device)
        for pair, boot in boots.items():
            observed = results[pair]["observed"]
            if subsample:
                q_low, q_high = torch.quantile(boot - boot.mean(), q) * (m / n) ** 0.5
                low, high = observed + q_low, observed + q_high
            else:
                low, high = torch.quantile(boot, q)
            results[pair].update(
                ci_low=low,
                ci_high=high,
                boot=boot,
                subsample=torch.tensor(int(subsample), device=self.device),
            )

    def _resampled_scores(
        self, pairs: Sequence[Pair], idx: torch.Tensor
    ) -> Iterator[tuple[Pair, torch.Tensor]]:
        """The score of each pair on rows ``idx``, for the pairs where it is defined. A
        resampled state is dropped after its last pair (memory: a Gram matrix each)."""
        last_use = {name: k for k, pair in enumerate(pairs) for name in pair}
        resampled: dict[Hashable, Any] = {}
        for k, pair in enumerate(pairs):
            for name in pair:
                if name not in resampled:
                    resampled[name] = self._resampled_state(name, idx)
            a, b = resampled[pair[0]], resampled[pair[1]]
            if a is not None and b is not None:
                try:
                    yield pair, self.spec.combine(a, b, **self.options)
                except ValueError:
                    pass  # undefined on this draw (e.g. every drawn row equal)
            for name in dict.fromkeys(pair):
                if last_use[name] == k:
                    del resampled[name]

    def _resampled_state(self, name: Hashable, idx: torch.Tensor) -> Any:
        """The state of rows ``idx`` of a layer: cut from its prepared state where the
        metric can (CKA's Gram, k-NN's deep neighbour list), else prepared from the rows;
        ``None`` when the metric is undefined on them."""
        spec, x = self.spec, self.rows[name]
        try:
            if spec.resample is not None:
                cut = spec.resample(self.states[name], x, idx)
                if cut is not None:
                    return cut
            rows = x[idx]
            require_variance(rows, "resample")
            return spec.prepare(rows, **self.options)
        except ValueError:
            return None

    def _empty(self, size: int) -> torch.Tensor:
        return torch.empty(size, dtype=self.dtype, device=self.device)
