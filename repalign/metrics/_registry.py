"""Registry of metrics: each registers its maths and what is known about it.

The CLI, ``pairwise`` and the property tests enumerate this registry, so a new
metric is tested for its declared bounds and invariances the moment it is
registered.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from repalign._suggest import did_you_mean

Invariance = Literal[
    "orthogonal", "isotropic_scaling", "translation", "invertible_linear", "permutation"
]


@dataclass(frozen=True)
class MetricSpec:
    """What the rest of repalign needs to know about one metric.

    ``prepare`` turns one validated, compute-dtype layer ``(n, d)`` into
    reusable state (a centered Gram matrix, an orthonormal basis, a kNN index
    set ...); ``combine`` turns two states into the score. ``pairwise`` calls
    ``prepare`` once per layer and ``combine`` once per pair, or, where the
    metric provides it, ``grid(states_x, states_y, same=...)`` once for the
    whole grid (one large matrix product instead of many small ones).
    ``permute(state, perm)``, where given, is the state of the same layer with its
    rows reordered by ``perm`` (for permutation tests: no re-preparing);
    ``resample(state, x, idx)`` the state of rows ``idx`` of the layer ``x`` it was
    prepared from (repeats allowed, for bootstrap intervals), or ``None`` where it
    cannot be derived (then ``fn`` is called on the rows).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    bounds: tuple[float, float]
    higher_is_more_similar: bool
    symmetric: bool
    invariances: frozenset[str]
    reference: str
    min_rows: int = 2
    # False when duplicated rows change the score spuriously (a duplicate is its own nearest
    # neighbour; duplicates shift SVCCA's variance cut): bootstrap_ci subsamples instead
    duplicates_ok: bool = True
    prepare: Callable[..., Any] | None = None
    combine: Callable[..., torch.Tensor] | None = None
    grid: Callable[..., torch.Tensor] | None = None
    permute: Callable[[Any, torch.Tensor], Any] | None = None
    resample: Callable[[Any, torch.Tensor, torch.Tensor], Any] | None = None
    options: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return "similarity" if self.higher_is_more_similar else "distance"

    def check_options(self, options: dict[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options) - {"dtype"})
        if unknown:
            accepted = ", ".join(self.options) or "none"
            raise TypeError(
                f"metric {self.name!r} takes no option(s) {unknown}; it accepts: {accepted}"
            )


_METRICS: dict[str, MetricSpec] = {}


def register_metric(
    *,
    bounds: tuple[float, float],
    higher_is_more_similar: bool = True,
    symmetric: bool = True,
    invariances: tuple[str, ...] = (),
    reference: str,
    min_rows: int = 2,
    duplicates_ok: bool = True,
    prepare: Callable[..., Any] | None = None,
    combine: Callable[..., torch.Tensor] | None = None,
    grid: Callable[..., torch.Tensor] | None = None,
    permute: Callable[[Any, torch.Tensor], Any] | None = None,
    resample: Callable[[Any, torch.Tensor, torch.Tensor], Any] | None = None,
    name: str | None = None,
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: register a metric function under its own name (or ``name``).

    ``prepare`` and ``combine`` come together or not at all: without them a layer's
    state is the layer itself and each pair calls the function (nothing is shared
    between the pairs of a grid, but every tool works)."""
    if (prepare is None) != (combine is None):
        raise ValueError(
            "register_metric: give prepare and combine together, or neither (then each pair "
            "calls the metric function)"
        )

    def decorate(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        key = name or fn.__name__
        if key in _METRICS:
            raise ValueError(f"metric {key!r} registered twice")
        own_prepare, own_combine = prepare, combine
        if own_prepare is None:
            own_prepare = _layer_as_state

            def own_combine(a: torch.Tensor, b: torch.Tensor, **opts: Any) -> torch.Tensor:
                return fn(a, b, dtype=a.dtype, **opts)

        options = tuple(
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != "dtype"
        )
        _METRICS[key] = MetricSpec(
            name=key,
            fn=fn,
            bounds=bounds,
            higher_is_more_similar=higher_is_more_similar,
            symmetric=symmetric,
            invariances=frozenset(invariances),
            reference=reference,
            min_rows=min_rows,
            duplicates_ok=duplicates_ok,
            prepare=own_prepare,
            combine=own_combine,
            grid=grid,
            permute=permute,
            resample=resample,
            options=options,
        )
        return fn

    return decorate


def _layer_as_state(x: torch.Tensor, **_: Any) -> torch.Tensor:
    return x


def list_metrics() -> list[str]:
    """Names of all registered metrics, sorted."""
    return sorted(_METRICS)


def get_metric(name: str) -> MetricSpec:
    """The :class:`MetricSpec` registered as ``name``; a 'did you mean' error otherwise."""
    try:
        return _METRICS[name]
    except KeyError:
        hint = did_you_mean(name, _METRICS)
        raise ValueError(
            f"unknown metric {name!r}.{hint} Available: {', '.join(list_metrics())}"
        ) from None
